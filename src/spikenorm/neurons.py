"""Multi-step spiking neurons over time-major tensors ``[T, B, ...]``.

Every neuron runs the same three phases at each step ``t`` (``x_t`` is the input current):

1. charge: ``h_t = f(v_{t-1}, x_t)`` (see each class), the membrane before firing;
2. fire: ``u_t = N(h_t)`` where ``N`` is the optional ``membrane_norm`` hook (identity by default; MPBN
   plugs in here; it is called once per step with the time-major view ``[1, B, ...]``, so any registered
   norm layer can serve), then ``s_t = H(u_t - theta_t)`` with ``H`` the Heaviside step with a surrogate
   gradient; ``theta_t = theta`` unless the optional ``threshold_stabilizer`` computes it from ``u_t``
   (OTS plugs in here, :mod:`spikenorm.threshold_stabilizers`);
3. reset, acting on the un-normalised membrane ``h_t``:
   hard ``v_t = h_t (1 - s_t) + v_reset s_t``, or soft ``v_t = h_t - theta_t s_t``.

``theta`` is a buffer: a scalar, per-channel (``[C]``) or per-element (``[C, H, W]``, the feature shape)
tensor; folding writes into it. ``detach_reset`` stops the gradient through ``s_t`` in the reset;
``detach_membrane`` stops it through every state carried from step ``t-1`` (online training cuts the
temporal path this way: Xiao et al., "Online Training Through Time for Spiking Neural Networks", NeurIPS 2022).

Extending: a new neuron subclasses :class:`SpikingNeuron`. If its charge is linear (a membrane decay, an input
gain and a chain of current stages, :class:`~spikenorm.recurrence.LinearCharge`), it declares only the numbers
in :meth:`SpikingNeuron.linear_charge` and gets the eager loop, the fused kernels (:mod:`spikenorm.fused`)
and the NIR export (:meth:`SpikingNeuron.nir_node`) from that one declaration. Otherwise it overrides
:meth:`SpikingNeuron.charge` (and :attr:`SpikingNeuron.state_names`): the eager loop runs it, the fused path
is refused with the reason, and NIR export needs an override of :meth:`SpikingNeuron.nir_node`.

Mixed precision: for a half-precision input (bfloat16 or float16) the state, the charge, the membrane norm
and the threshold comparison run in float32 (:meth:`SpikingNeuron.state_dtype`), on the eager loop and the
fused kernels alike, and the spikes (0 and 1, exact in every float format) come back in the input's dtype: a
bfloat16 membrane (8 significant bits) would flip spikes near the threshold and accumulate rounding over the
time steps.

State: a multi-step forward starts from zero state and keeps none, so no reset call can be forgotten.
Single-step (online) use goes through :meth:`SpikingNeuron.step` with an explicit state dict, or through
the :func:`stateful` scope, inside which successive forwards continue from the state the last one left
(it is cleared on entry and on exit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from spikenorm import fused
from spikenorm.precision import accumulation_dtype
from spikenorm.recurrence import LinearCharge
from spikenorm.registry import Registry
from spikenorm.sequence import SequenceAware
from spikenorm.surrogate import Surrogate, build_surrogate
from spikenorm.threshold_stabilizers import OnlineThresholdStabilizer, OtsEval, ThresholdStabilizer
from spikenorm.validation import check_choice, check_time_major

if TYPE_CHECKING:
    import nir
    import numpy as np

NEURONS: Registry[SpikingNeuron] = Registry("neuron")

State = dict[str, Tensor]
ThresholdLike = float | Sequence[float] | Tensor
Reset = Literal["hard", "soft"]
Backend = Literal["auto", "eager", "fused"]


class SpikingNeuron(nn.Module):
    """Base class for multi-step neurons; a subclass declares its charge (:meth:`linear_charge`, or
    :meth:`charge` with :attr:`state_names`), the base class fires and resets.

    Args:
        threshold: firing threshold theta: a float, or a tensor shaped ``[C]`` (per channel) or like the
            feature shape ``[C, H, W]`` (per element). Stored as the buffer ``threshold``.
        reset: ``"hard"`` (to ``reset_value``) or ``"soft"`` (subtract theta).
        reset_value: membrane value after a spike under hard reset.
        detach_reset: cut the gradient through the spike in the reset term.
        detach_membrane: cut the gradient through the state carried between steps (online training).
        surrogate: a registered surrogate name, a :class:`~spikenorm.surrogate.Surrogate`, or any
            spike callable such as an ``snntorch.surrogate`` function.
        surrogate_kwargs: parameters of a named surrogate (e.g. ``{"alpha": 4.0}``).
        membrane_norm: optional module applied to the membrane ``h_t`` before the spike comparison, called
            with ``[1, B, ...]`` at every step; leak and reset keep acting on ``h_t`` itself, so only
            hard reset is allowed with it (a soft reset would subtract a normalised threshold from a
            raw membrane).
        ots: a shorthand (the configs' spelling) for
            ``threshold_stabilizer=OnlineThresholdStabilizer(ots_eval, ots_momentum)``, the Online Threshold
            Stabilizer (Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR 2024).
        ots_eval: OTS at inference: ``"dynamic"`` (recomputed on every batch, the paper) or ``"running"`` (a
            running average, batch-independent and foldable); see
            :class:`~spikenorm.threshold_stabilizers.OnlineThresholdStabilizer`.
        ots_momentum: the momentum of OTS's running threshold.
        backend: how a multi-step forward runs. ``"eager"``: the Python loop over :meth:`step`, the
            reference. ``"fused"``: all ``T`` steps of charge, fire and reset in one ``torch.compile``-d
            kernel with a hand-written BPTT backward (:mod:`spikenorm.fused`), same spikes bit for bit (on
            CPU) and the same gradients up to rounding; cases it does not cover (a threshold stabiliser,
            training-mode membrane norm, ``detach_membrane``, ``stateful`` scopes, callable surrogates, ...)
            and failed compilations run the eager loop instead. ``"auto"`` (default): fused for inputs of at
            least ``spikenorm.fused.AUTO_MIN_NUMEL[device]`` elements (a first compilation is slow), eager
            otherwise.
        threshold_stabilizer: optional :class:`~spikenorm.threshold_stabilizers.ThresholdStabilizer` that sets the
            threshold ``theta_t`` of every step from the membrane ``u_t`` (called after the membrane norm).
    """

    #: the state a step carries: the membrane ``"v"`` first, then (for a :meth:`linear_charge`) one name per
    #: current stage, input side first
    state_names: tuple[str, ...] = ("v",)
    #: ``probe(u_t, theta_t)``, called at every eager step with the pre-firing membrane ``u_t`` (after the membrane
    #: norm) and the threshold it is compared with; None (the class default) calls nothing. Set for the span of a
    #: measurement by :class:`spikenorm.membrane.MembraneRecorder`, which also runs the eager loop meanwhile.
    membrane_probe: Callable[[Tensor, Tensor], None] | None = None

    def __init__(
        self,
        threshold: ThresholdLike = 1.0,
        reset: Reset = "hard",
        reset_value: float = 0.0,
        detach_reset: bool = False,
        detach_membrane: bool = False,
        surrogate: str | Surrogate | Callable[[Tensor], Tensor] = "sigmoid",
        surrogate_kwargs: dict[str, Any] | None = None,
        membrane_norm: nn.Module | None = None,
        ots: bool = False,
        ots_eval: OtsEval = "dynamic",
        ots_momentum: float = 0.025,
        backend: Backend = "auto",
        threshold_stabilizer: ThresholdStabilizer | None = None,
    ) -> None:
        super().__init__()
        self.backend = check_choice(backend, Backend, "backend")
        self.reset = check_choice(reset, Reset, "reset")
        check_choice(ots_eval, OtsEval, "ots_eval")
        if ots and threshold_stabilizer is not None:
            raise ValueError(
                f"give either ots=True or a threshold_stabilizer, not both (got {type(threshold_stabilizer).__name__})"
            )
        if threshold_stabilizer is not None and not isinstance(threshold_stabilizer, ThresholdStabilizer):
            raise TypeError(
                "threshold_stabilizer must be a spikenorm.threshold_stabilizers.ThresholdStabilizer, got "
                f"{type(threshold_stabilizer).__name__}"
            )
        if membrane_norm is not None and reset == "soft":
            raise ValueError(
                "soft reset with a membrane norm would subtract a normalised threshold from the raw membrane; "
                "use reset='hard' (MPBN resets the un-normalised membrane, as in its reference code)"
            )
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.get_default_dtype()).clone())
        self.reset_value = float(reset_value)
        self.detach_reset = detach_reset
        self.detach_membrane = detach_membrane
        self.surrogate = build_surrogate(surrogate, **(surrogate_kwargs or {}))
        self.membrane_norm = membrane_norm
        if ots:
            threshold_stabilizer = OnlineThresholdStabilizer(ots_eval, ots_momentum)
        if threshold_stabilizer is not None:
            threshold_stabilizer.attach(self.threshold)
        self.threshold_stabilizer = threshold_stabilizer
        self._carried_state: State | None = None  # only used inside a `stateful` scope

    # -- dynamics -----------------------------------------------------------------------------------
    def linear_charge(self) -> LinearCharge | None:
        """The charge as data, or None when it is not linear (the base class: declared by no one).

        Return ``LinearCharge(decay=b, input_scale=s, current_decays=(a_1, ..., a_K))`` for the charge
        ``c1_t = a_1 c1_{t-1} + s x_t``, ..., ``h_t = b v_{t-1} + cK_t`` (:mod:`spikenorm.recurrence`), with
        :attr:`state_names` ``("v", <one name per stage>)``. It is read at every forward, so it may depend on
        attributes. From it come :meth:`charge` (the eager step), the fused kernels and :meth:`nir_node`.
        """
        return None

    def declared_charge(self) -> LinearCharge | None:
        """The :meth:`linear_charge` if it describes the charge that runs, else None; what the fused kernels and
        :meth:`nir_node` compute from.

        It does when the :meth:`charge` that runs is the base class's (which computes the declaration), or is
        defined by the same class that declares ``linear_charge`` (it states both). A class or mixin that writes
        its own ``charge`` under an inherited declaration gets None: its neuron runs the eager loop only.

        Raises:
            ValueError: the declared current stages do not match :attr:`state_names`.
        """
        law = self.linear_charge()
        if law is None:
            return None
        charge_owner = next(cls for cls in type(self).__mro__ if "charge" in cls.__dict__)
        if charge_owner is not SpikingNeuron and "linear_charge" not in charge_owner.__dict__:
            return None
        return self._checked(law)

    def _checked(self, law: LinearCharge) -> LinearCharge:
        """``law`` after checking that :attr:`state_names` names one state per current stage after ``"v"``."""
        if len(self.state_names) - 1 != len(law.current_decays):
            raise ValueError(
                f"{type(self).__name__}.linear_charge() declares {len(law.current_decays)} current stages but "
                f"state_names {self.state_names} names {len(self.state_names) - 1} after 'v'; give one state name "
                "per stage"
            )
        return law

    def charge(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Return the membrane before firing ``h_t`` and the updated non-membrane states.

        The base class computes the declared :meth:`linear_charge`; a neuron with another charge overrides
        this method instead (it then runs eager only, see the module docstring).
        """
        law = self.linear_charge()
        if law is None:
            raise NotImplementedError(f"{type(self).__name__} must define linear_charge() or charge()")
        law = self._checked(law)
        names = self.state_names[1:]
        if not names:
            return law.charge(x, state["v"], ())[0], state
        h, currents = law.charge(x, state["v"], [state[name] for name in names])
        return h, {**state, **dict(zip(names, currents))}

    def nir_node(
        self, threshold: np.ndarray, reset_value: np.ndarray, dt: float, metadata: dict[str, Any]
    ) -> nir.NIRNode:
        """The NIR node of this neuron (:func:`spikenorm.export.to_nir`), for a forward-Euler step ``dt``.

        ``threshold`` and ``reset_value`` are arrays of the per-sample feature shape (the reset already
        sign-flipped where a fold left a :class:`~spikenorm.fold.SignFlip`); ``metadata`` goes into the node.
        The base class maps the :meth:`linear_charge` to NIR ``IF``, ``LIF`` or ``CubaLIF``
        (:meth:`spikenorm.recurrence.LinearCharge.nir_node`); override it for any other neuron.

        Raises:
            ValueError: the neuron declares no NIR mapping (no linear charge, or one NIR cannot express).
        """
        law = self.declared_charge()
        if law is None:
            raise ValueError(
                f"{type(self).__name__} declares no NIR mapping: no linear_charge() describes its charge; override "
                f"{type(self).__name__}.nir_node(threshold, reset_value, dt, metadata)"
            )
        return law.nir_node(threshold, reset_value, dt, metadata, owner=type(self).__name__)

    def state_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the state, charge, membrane norm and threshold comparison for inputs of ``dtype``: float32
        for half precision (bfloat16, float16), ``dtype`` itself otherwise
        (:func:`~spikenorm.precision.accumulation_dtype`). The fused kernels read it from here."""
        return accumulation_dtype(dtype)

    def init_state(self, x: Tensor) -> State:
        """Zero state shaped like one step of input ``x`` (``[B, ...]``)."""
        return {name: torch.zeros_like(x) for name in self.state_names}

    def threshold_for(self, u: Tensor) -> Tensor:
        """The threshold buffer broadcast against one step ``u`` of shape ``[B, *features]``."""
        theta = self.threshold
        if theta.ndim == 0:
            return theta
        features = u.shape[1:]
        if theta.shape != features[: theta.ndim]:
            raise ValueError(
                f"{type(self).__name__} threshold of shape {tuple(theta.shape)} does not fit features "
                f"{tuple(features)}; expected a scalar, per-channel ({features[0]},) or per-element "
                f"{tuple(features)} threshold"
            )
        return theta.reshape(theta.shape + (1,) * (len(features) - theta.ndim))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: ``x`` is ``[B, ...]``; returns spikes ``s_t`` and the new state, computed in the dtypes
        of ``x`` and ``state`` (:meth:`forward` passes both in :meth:`state_dtype`)."""
        if self.detach_membrane:
            state = {k: v.detach() for k, v in state.items()}
        h, state = self.charge(x, state)
        u = h if self.membrane_norm is None else self.membrane_norm(h.unsqueeze(0)).squeeze(0)
        theta = self.threshold_for(u)
        if self.threshold_stabilizer is not None:
            theta, state = self.threshold_stabilizer(u, theta, state)
        if self.membrane_probe is not None:
            self.membrane_probe(u, theta)
        spike = self.surrogate(u - theta)
        s_reset = spike.detach() if self.detach_reset else spike
        if self.reset == "hard":
            v = h * (1 - s_reset) + self.reset_value * s_reset
        else:
            v = h - theta * s_reset
        return spike, {**state, "v": v}

    def forward(self, x: Tensor) -> Tensor:
        """Multi-step forward: ``x`` is ``[T, B, ...]``; returns spikes of the same shape and dtype (the state in
        :meth:`state_dtype`: float32 for a half-precision ``x``, see the module doc)."""
        check_time_major(x, type(self).__name__)
        plan = fused.fused_plan(self, x, self.backend)  # (None for backend="eager")
        if plan is not None:
            return fused.fused_forward(self, x, plan=plan)
        spike_dtype, x = x.dtype, x.to(self.state_dtype(x.dtype))  # no-op unless half precision
        state = self._carried_state if self._carried_state else self.init_state(x[0])
        spikes = []
        for x_t in x.unbind(0):
            s_t, state = self.step(x_t, state)
            spikes.append(s_t)
        if self._carried_state is not None:
            self._carried_state = state
        return torch.stack(spikes).to(spike_dtype)

    def forward_normalized(self, norm: nn.Module, x: Tensor) -> Tensor:
        """Spikes of this neuron on ``norm(x)``: with ``norm`` applied inside the fused kernels when they cover both
        (:func:`spikenorm.fused.input_norm_unsupported_reason`; the same statistics, running update, spikes and
        gradients as the two layers one after the other, one pass fewer over the tensor each way), else
        ``self(norm(x))``. Neither layer may carry forward hooks for the fused call (they would see other
        arguments), so a hooked layer runs unfused. :class:`spikenorm.models.layers.SpikingStage` calls this for
        every norm followed by a neuron."""
        hooked = bool(self._forward_hooks or self._forward_pre_hooks)
        plan = None if hooked else fused.fused_plan(self, x, self.backend)
        if plan is not None and fused.input_norm_unsupported_reason(norm, x) is None:
            check_time_major(x, type(self).__name__)
            return fused.fused_forward(self, x, norm, plan)
        return self(norm(x))

    def extra_repr(self) -> str:
        theta = self.threshold
        shown = f"{theta.item():g}" if theta.ndim == 0 else f"tensor{tuple(theta.shape)}"
        return (
            f"threshold={shown}, reset={self.reset!r}, detach_reset={self.detach_reset}, "
            f"detach_membrane={self.detach_membrane}"
            + (f", backend={self.backend!r}" if self.backend != "auto" else "")
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # spikenorm 0.1.0 kept the OTS running threshold on the neuron itself
        legacy = f"{prefix}ots_running_threshold"
        if legacy in state_dict and isinstance(self.threshold_stabilizer, OnlineThresholdStabilizer):
            state_dict[f"{prefix}threshold_stabilizer.running_threshold"] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (and :func:`spikenorm.fold.load_folded`): neurons saved by spikenorm 0.1.0 or earlier have no
        ``backend`` (they ran eager) and hold OTS as the flags ``ots``, ``ots_eval``, ``ots_momentum`` with the
        buffer ``ots_running_threshold``; they become a ``threshold_stabilizer``."""
        state = dict(state)
        ots = state.pop("ots", False)
        ots_eval, ots_momentum = state.pop("ots_eval", "dynamic"), state.pop("ots_momentum", 0.025)
        state.setdefault("backend", "eager")
        super().__setstate__(state)
        if not hasattr(self, "threshold_stabilizer"):
            stabilizer = OnlineThresholdStabilizer(ots_eval, ots_momentum) if ots else None
            if stabilizer is not None:
                stabilizer.running_threshold = self._buffers.pop("ots_running_threshold")
                stabilizer.train(self.training)
            self.threshold_stabilizer = stabilizer


def _decay(decay: float | None, tau: float | None, default: float) -> float:
    """Resolve a decay factor from ``decay`` or a time constant ``tau`` (``decay = 1 - 1/tau``)."""
    if decay is not None and tau is not None:
        raise ValueError(f"give either decay or tau, not both (got decay={decay}, tau={tau})")
    if tau is not None:
        if tau < 1:
            raise ValueError(f"tau must be >= 1 so that decay = 1 - 1/tau is in [0, 1), got {tau}")
        return 1.0 - 1.0 / tau
    value = default if decay is None else float(decay)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {value}")
    return value


@NEURONS.register("if")
class IF(SpikingNeuron):
    """Integrate-and-fire: ``h_t = v_{t-1} + x_t``."""

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=1.0)


@NEURONS.register("lif")
class LIF(SpikingNeuron):
    """Leaky integrate-and-fire: ``h_t = decay * v_{t-1} + x_t`` (input not scaled by the leak).

    ``decay`` defaults to 0.5 (``tau = 2``, the OSR/OTTT setting); pass ``tau`` instead to get
    ``decay = 1 - 1/tau``. MPBN uses ``decay = 0.25``, CaRe-BN ``0.75``.
    """

    def __init__(self, decay: float | None = None, tau: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decay = _decay(decay, tau, default=0.5)

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, " + super().extra_repr()


@NEURONS.register("clif")
class CLIF(SpikingNeuron):
    """Current-based LIF of CaRe-BN: ``c_t = a c_{t-1} + x_t``, ``h_t = b v_{t-1} + c_t``.

    With hard reset to 0 this is ``v_t = b v_{t-1}(1 - s_{t-1}) + c_t``, the neuron of the population-coded
    spiking actor (PopSAN; Tang et al., "Deep Reinforcement Learning with Population-Coded Spiking Neural
    Network for Continuous Control", CoRL 2020) that CaRe-BN trains. Defaults are the CaRe-BN reference
    code's: ``current_decay a = 0.5``, ``decay b = 0.75``, threshold 0.5.
    """

    state_names = ("v", "c")

    def __init__(
        self,
        decay: float | None = None,
        tau: float | None = None,
        current_decay: float = 0.5,
        threshold: ThresholdLike = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(threshold=threshold, **kwargs)
        self.decay = _decay(decay, tau, default=0.75)
        self.current_decay = _decay(current_decay, None, default=0.5)

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay, current_decays=(self.current_decay,))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, current_decay={self.current_decay}, " + super().extra_repr()


def available_neurons() -> list[str]:
    """Names accepted by :func:`build_neuron`."""
    return NEURONS.names()


def build_neuron(name: str, **kwargs: Any) -> SpikingNeuron:
    """Build a registered neuron by name, e.g. ``build_neuron("lif", decay=0.25, threshold=0.5)``."""
    return NEURONS.get(name)(**kwargs)


def spiking_neurons(model: nn.Module) -> Iterator[tuple[str, SpikingNeuron]]:
    """``(qualified name, neuron)`` for every spikenorm neuron inside ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SpikingNeuron):
            yield name, module


@contextlib.contextmanager
def stateful(model: nn.Module, detach_membrane: bool | None = None) -> Iterator[nn.Module]:
    """Scope in which the neurons of ``model`` carry their state from one forward call to the next.

    Use it for single-step (online) execution: feed ``x[t:t+1]`` one step at a time and the neurons
    continue from where the previous call left. State is cleared on entry and on exit, so nothing
    leaks out of the scope::

        with stateful(net):
            for t in range(T):
                out_t = net(x[t : t + 1])

    Args:
        detach_membrane: when given, every neuron's ``detach_membrane`` is set to it inside the scope
            (online training passes True to cut the temporal gradient path) and restored on exit.
    """
    neurons = [n for _, n in spiking_neurons(model)]
    aware = [m for m in model.modules() if isinstance(m, SequenceAware)]
    saved = [n.detach_membrane for n in neurons]
    for neuron in neurons:
        neuron._carried_state = {}
        if detach_membrane is not None:
            neuron.detach_membrane = detach_membrane
    for module in aware:
        module.begin_sequence()
    try:
        yield model
    except BaseException:
        for module in aware:
            module.abort_sequence()
        raise
    else:
        for module in aware:
            module.end_sequence()
    finally:
        for neuron, flag in zip(neurons, saved):
            neuron._carried_state = None
            neuron.detach_membrane = flag
