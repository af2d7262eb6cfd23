"""Reinforcement-learning models: the population-coded spiking actor of CaRe-BN and ANN critics.

The actor (:class:`PopSANActor`, the CaRe-BN actor after PopSAN, Tang et al., CoRL 2020) takes a plain batch of
observations ``[B, obs_dim]`` and encodes time itself:

    obs -> tanh -> Gaussian receptive fields (``pop_dim`` neurons per observation dimension)
        -> deterministic regular spike trains over ``T`` steps                 [T, B, obs_dim * pop_dim]
        -> [Linear -> norm -> neuron] x len(hidden)
        -> Linear -> norm -> neuron   (the output population, normalised too)  [T, B, act_dim * pop_dim]
        -> mean over T -> one learned weighted sum per action dimension       [B, act_dim]
        -> tanh * max_action

Inside the network every activation is time-major ``[T, B, ...]``, so the norm layers, neurons and
:func:`spikenorm.fold.fold_model` treat it like every other spikenorm model. The neurons are multi-step and
stateless: every call (every environment step) starts from zero membrane state.

The critics (:class:`TwinQCritic` for TD3, :class:`DDPGCritic` for DDPG) are the reference code's ANN
critics on ``concat[obs, action]`` (TD3: Fujimoto et al., ICML 2018; DDPG: Lillicrap et al., ICLR 2016).
:class:`MLPActor` is TD3's ANN actor, the "ANN" row of the CaRe-BN paper's comparison.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, spiking_linear
from spikenorm.traceable import traceable
from spikenorm.validation import check_time_major

__all__ = [
    "POPSAN_LAYERS",
    "DDPGCritic",
    "MLPActor",
    "PopSANActor",
    "PopulationDecoder",
    "PopulationEncoder",
    "TwinQCritic",
    "regular_spike_train",
]


# --- input checks ------------------------------------------------------------------------------------


@traceable
def check_batch_input(x: Tensor, where: str, features: int, name: str = "obs") -> None:
    """Raise a clear error unless ``x`` is a floating batch ``[B, features]`` with ``B >= 1``.

    :func:`~spikenorm.traceable.traceable`: a traced (folded) actor keeps the check as one graph node.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{where} expects {name} as a torch.Tensor [B, {features}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where} expects a floating-point {name} [B, {features}], got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != features or x.shape[0] < 1:
        hint = ""
        if x.ndim == 1 and x.shape[0] == features:
            hint = f"; a single {name} needs a batch axis: {name}.unsqueeze(0)"
        elif x.ndim == 3:
            hint = " (the actor encodes time itself: give a plain batch, not [T, B, ...])"
        raise ValueError(f"{where} expects {name} of shape [B, {features}], got shape {tuple(x.shape)}{hint}")


@traceable
def check_spike_input(x: Tensor, where: str, features: int) -> None:
    """Raise a clear error unless ``x`` is time-major ``[T, B, features]`` (traceable like the above)."""
    check_time_major(x, where, min_ndim=3, channels=features)
    if x.ndim != 3:
        raise ValueError(f"{where} expects spikes of shape [T, B, {features}], got shape {tuple(x.shape)}")


def check_sizes(obs_dim: int, act_dim: int) -> None:
    """Raise a clear error unless both sizes are at least 1."""
    if obs_dim < 1 or act_dim < 1:
        raise ValueError(f"obs_dim and act_dim must be >= 1, got obs_dim={obs_dim}, act_dim={act_dim}")


def check_widths(hidden: Sequence[int]) -> list[int]:
    """``hidden`` as a list of ints; raise a clear error unless it holds at least one positive width."""
    widths = [int(h) for h in hidden]
    if not widths or min(widths) < 1:
        raise ValueError(f"hidden must hold at least one positive width, got {widths}")
    return widths


def _check_same_batch(obs: Tensor, action: Tensor, where: str) -> None:
    if obs.shape[0] != action.shape[0]:
        raise ValueError(
            f"{where} expects obs and action with the same batch size, got obs {tuple(obs.shape)} and "
            f"action {tuple(action.shape)}"
        )


# --- encoder -----------------------------------------------------------------------------------------


class _StraightThroughSpike(torch.autograd.Function):
    """Forward ``1[v > threshold]``; backward passes the gradient unchanged (identity)."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, threshold: float) -> Tensor:
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output, None


@traceable
def regular_spike_train(act: Tensor, time_steps: int, threshold: float = 0.999) -> Tensor:
    """Deterministic regular spike trains of ``act`` (``[B, ...]`` in ``[0, 1]``) over ``time_steps`` steps.

    An integrate-and-fire generator with soft reset, per element::

        v_t = v_{t-1} + a;   s_t = 1[v_t > threshold];   v_t <- v_t - threshold * s_t     (v_0 = 0)

    so ``a`` fires about ``floor(t a / threshold)`` times in the first ``t`` steps (``a = 0.5`` fires at
    steps 2 and 4 of 5). The spike's gradient w.r.t. ``v_t`` is the identity (straight-through, PopSAN's
    ``PseudoEncoderSpikeRegular``); as in the reference code the reset is not detached, so
    ``ds_t/da = sum_{k<t} (1 - threshold)^k``, i.e. 1 up to 0.1 %.

    Returns:
        Spikes ``[time_steps, B, ...]`` (time-major).
    """
    v = torch.zeros_like(act)
    spikes = []
    for _ in range(time_steps):
        v = v + act
        s = _StraightThroughSpike.apply(v, threshold)
        v = v - threshold * s
        spikes.append(s)
    return torch.stack(spikes)


class PopulationEncoder(nn.Module):
    """Learnable Gaussian population coding of observations into regular spike trains (PopSAN).

    ``obs [B, obs_dim] -> o = tanh(obs)``; neuron ``j`` of dimension ``i`` has activation
    ``a_ij = exp(-(o_i - m_ij)^2 / (2 s_ij^2))`` with learnable means ``m`` (initialised evenly spaced on
    ``mean_range`` for every dimension) and stds ``s`` (initialised to ``std``), both ``nn.Parameter``
    of shape ``[obs_dim, pop_dim]``; then :func:`regular_spike_train` over ``time_steps`` steps.

    Output: spikes ``[T, B, obs_dim * pop_dim]``, dimension-major (the ``pop_dim`` neurons of observation
    dimension ``i`` are features ``i * pop_dim ... (i + 1) * pop_dim - 1``).
    """

    def __init__(
        self,
        obs_dim: int,
        pop_dim: int = 10,
        mean_range: tuple[float, float] = (-1.0, 1.0),
        std: float = math.sqrt(0.05),
        time_steps: int = 5,
        threshold: float = 0.999,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or pop_dim < 1:
            raise ValueError(f"obs_dim and pop_dim must be >= 1, got obs_dim={obs_dim}, pop_dim={pop_dim}")
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        low, high = (float(v) for v in mean_range)
        self.obs_dim = obs_dim
        self.pop_dim = pop_dim
        self.time_steps = time_steps
        self.threshold = float(threshold)
        centres = torch.linspace(low, high, pop_dim) if pop_dim > 1 else torch.tensor([(low + high) / 2])
        self.mean = nn.Parameter(centres.repeat(obs_dim, 1))
        self.std = nn.Parameter(torch.full((obs_dim, pop_dim), float(std)))

    @property
    def out_features(self) -> int:
        return self.obs_dim * self.pop_dim

    def activation(self, obs: Tensor) -> Tensor:
        """Receptive-field activations ``[B, obs_dim * pop_dim]`` of ``obs [B, obs_dim]`` (in ``(0, 1]``)."""
        check_batch_input(obs, type(self).__name__, self.obs_dim)
        o = torch.tanh(obs).unsqueeze(-1)  # [B, obs_dim, 1]
        act = torch.exp(-0.5 * (o - self.mean) ** 2 / self.std**2)
        return act.flatten(1)

    def forward(self, obs: Tensor) -> Tensor:
        return regular_spike_train(self.activation(obs), self.time_steps, self.threshold)

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, pop_dim={self.pop_dim}, time_steps={self.time_steps}, threshold={self.threshold}"
        )


# --- decoder -----------------------------------------------------------------------------------------


class PopulationDecoder(nn.Module):
    """Firing rates of the output populations -> one learned weighted sum per action dimension.

    ``spikes [T, B, act_dim * pop_dim] -> rate = mean over T -> [B, act_dim, pop_dim]`` -> grouped
    ``Conv1d(act_dim, act_dim, kernel_size=pop_dim, groups=act_dim)`` (weights and a bias per action
    dimension) -> raw actions ``[B, act_dim]`` (the actor applies ``tanh * max_action``).
    """

    def __init__(self, act_dim: int, pop_dim: int = 10) -> None:
        super().__init__()
        if act_dim < 1 or pop_dim < 1:
            raise ValueError(f"act_dim and pop_dim must be >= 1, got act_dim={act_dim}, pop_dim={pop_dim}")
        self.act_dim = act_dim
        self.pop_dim = pop_dim
        self.decoder = nn.Conv1d(act_dim, act_dim, kernel_size=pop_dim, groups=act_dim)

    def forward(self, spikes: Tensor) -> Tensor:
        check_spike_input(spikes, type(self).__name__, self.act_dim * self.pop_dim)
        rate = spikes.mean(0)  # [B, act_dim * pop_dim]
        return self.decoder(rate.unflatten(1, (self.act_dim, self.pop_dim))).squeeze(-1)

    def extra_repr(self) -> str:
        return f"act_dim={self.act_dim}, pop_dim={self.pop_dim}"


# --- actor -------------------------------------------------------------------------------------------


def carebn_layer_factory(layers: LayerSpec, time_steps: int, owner: str, what: str) -> SpikingLayerFactory:
    """The layer factory of the CaRe-BN reference networks (PopSAN actor, DSQN): ``layers`` with ``neuron_kwargs``'
    ``threshold`` defaulting to 0.5 and, for ``lif``, ``decay`` to 0.75 (the reference's LIF), ``T = time_steps``,
    and the neuron threshold given as ``v_th`` to every norm whose constructor takes it (``carebn``:
    ``gamma = beta = v_th / 2``; ``tdbn``) unless ``norm_kwargs`` sets it.

    Raises:
        ValueError: ``binary_weights`` or ``shortcuts`` set (``owner``, ``what``: "the actor", is a plain stack of
            full-precision linear layers), or ``layers.time_steps`` set to another ``T``.
    """
    layers.refuse(
        owner, "binary_weights", "shortcuts", reason=f"{what} is a plain stack of full-precision linear layers"
    )
    if layers.time_steps not in (None, time_steps):
        raise ValueError(f"{owner}: layers.time_steps={layers.time_steps} disagrees with time_steps={time_steps}")
    neuron_kwargs = {
        "threshold": 0.5,
        **({"decay": 0.75} if layers.neuron.lower() == "lif" else {}),
        **layers.neuron_kwargs,
    }
    layers = replace(layers, neuron_kwargs=neuron_kwargs, time_steps=time_steps)
    threshold = neuron_kwargs["threshold"]
    context = {"v_th": float(threshold)} if isinstance(threshold, (int, float)) else {}
    return SpikingLayerFactory(layers, norm_context=context)


#: The CaRe-BN reference actor's layers: CaRe-BN norms, CLIF neurons, rectangular surrogate (width 1).
POPSAN_LAYERS = LayerSpec(norm="carebn", neuron="clif", surrogate="rectangle")


class PopSANActor(nn.Module):
    """Population-coded spiking actor of CaRe-BN: ``obs [B, obs_dim] -> action [B, act_dim]``.

    ``encoder`` (:class:`PopulationEncoder`) -> ``snn``: ``[Linear -> norm -> neuron]`` for every width in
    ``hidden`` and once more for the output population (``act_dim * pop_dim`` neurons), so there are
    ``len(hidden) + 1`` norm layers, the output population's included, as in the reference -> ``decoder``
    (:class:`PopulationDecoder`) -> ``tanh(.) * max_action``.

    The linear layers have no bias when followed by a norm (it would be cancelled by the normalisation);
    with ``norm="none"`` they keep it. Every call starts from zero neuron state (the neurons are stateless
    multi-step modules), i.e. the state is reset at every environment step as in the reference.

    Defaults follow the reference code (:data:`POPSAN_LAYERS`): CLIF neurons (current decay 0.5, voltage decay
    0.75, threshold 0.5, hard reset, reset gradient not detached), rectangular surrogate of width 1, CaRe-BN
    norms with ``gamma = beta = v_th / 2``.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        max_action: action bound, one float for every dimension or one per dimension (a buffer).
        hidden: widths of the hidden spiking layers.
        pop_dim: encoder and output neurons per observation / action dimension.
        time_steps: ``T`` of the spike trains; also ``layers.time_steps`` (which, if set, must agree).
        layers: the spiking layers (:class:`~spikenorm.models.layers.LayerSpec`; norm ``carebn``, ``bn``,
            ``tdbn``, ``none``, ...; neuron ``clif``, ``lif``, ``if``). ``neuron_kwargs``' ``threshold`` defaults
            to 0.5 and, for ``lif``, ``decay`` to 0.75 (the reference's LIF). Every norm whose constructor takes
            ``v_th`` (``carebn``, ``tdbn``) gets the neuron threshold unless ``norm_kwargs`` sets it; one that
            takes ``time_steps`` (``bntt``) gets ``time_steps``. ``binary_weights`` and ``shortcuts`` are
            refused.
        mean_range: initial span of the encoder means.
        encoder_std: initial std of the encoder's receptive fields.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float | list[float],
        hidden: Sequence[int] = (256, 256),
        pop_dim: int = 10,
        time_steps: int = 5,
        layers: LayerSpec = POPSAN_LAYERS,
        mean_range: tuple[float, float] = (-1.0, 1.0),
        encoder_std: float = math.sqrt(0.05),
    ) -> None:
        super().__init__()
        check_sizes(obs_dim, act_dim)
        hidden = check_widths(hidden)
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.pop_dim = pop_dim
        self.time_steps = time_steps
        self.register_buffer("max_action", _action_bound(max_action, act_dim))

        factory = carebn_layer_factory(layers, time_steps, type(self).__name__, "the actor")

        self.encoder = PopulationEncoder(obs_dim, pop_dim, mean_range, encoder_std, time_steps)
        widths = [self.encoder.out_features, *hidden, act_dim * pop_dim]
        self.snn = nn.Sequential(*(spiking_linear(factory, a, b) for a, b in zip(widths, widths[1:])))
        self.decoder = PopulationDecoder(act_dim, pop_dim)

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [B, obs_dim]`` -> actions ``[B, act_dim]`` in ``[-max_action, max_action]``."""
        check_batch_input(obs, type(self).__name__, self.obs_dim)
        return torch.tanh(self.decoder(self.output_spikes(obs))) * self.max_action

    def output_spikes(self, obs: Tensor) -> Tensor:
        """Spikes of the output populations ``[T, B, act_dim * pop_dim]``."""
        return self.snn(self.encoder(obs))

    def receive_time_steps(self, time_steps: int) -> None:
        """The task's ``T`` (:func:`spikenorm.time_steps.bind_time_steps`): the actor's spike trains are built for
        its own ``time_steps``, so another ``T`` is refused."""
        if time_steps != self.time_steps:
            raise ValueError(f"the actor's spike trains are built for T={self.time_steps}, not T={time_steps}")

    def norm_layers(self) -> list[nn.Module]:
        """The norm layer of every spiking layer, input side first (the output population's last)."""
        return [block[1] for block in self.snn]

    def extra_repr(self) -> str:
        return f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, time_steps={self.time_steps}"


class MLPActor(nn.Module):
    """TD3's ANN actor (Fujimoto et al., "Addressing Function Approximation Error in Actor-Critic Methods", ICML
    2018), the "ANN" row of the CaRe-BN paper (Xu et al., ICLR 2026): ``obs [B, obs_dim] -> action [B, act_dim]``.

    With the default ``hidden = (256, 256)``::

        a = max_action * tanh(W3 relu(W2 relu(W1 obs + b1) + b2) + b3)

    i.e. ``Linear(obs_dim, 256) -> ReLU -> Linear(256, 256) -> ReLU -> Linear(256, act_dim) -> tanh``, times
    ``max_action``; no norm, no neurons, no time axis (PyTorch's default ``nn.Linear`` initialisation, as the
    reference code). It takes and returns the same tensors as :class:`PopSANActor`, so the TD3 task, the
    collectors and the target updates treat both alike.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        max_action: action bound, one float for every dimension or one per dimension (a buffer).
        hidden: widths of the hidden ReLU layers.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, max_action: float | list[float], hidden: Sequence[int] = (256, 256)
    ) -> None:
        super().__init__()
        check_sizes(obs_dim, act_dim)
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.register_buffer("max_action", _action_bound(max_action, act_dim))
        self.net = _mlp(obs_dim, check_widths(hidden), act_dim)

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [B, obs_dim]`` -> actions ``[B, act_dim]`` in ``[-max_action, max_action]``."""
        check_batch_input(obs, type(self).__name__, self.obs_dim)
        return torch.tanh(self.net(obs)) * self.max_action

    def extra_repr(self) -> str:
        return f"obs_dim={self.obs_dim}, act_dim={self.act_dim}"


def _action_bound(max_action: float | Sequence[float] | Tensor, act_dim: int) -> Tensor:
    bound = torch.as_tensor(max_action, dtype=torch.get_default_dtype()).detach().clone()
    if bound.ndim == 0:
        bound = bound.expand(act_dim).clone()
    if bound.shape != (act_dim,):
        raise ValueError(
            f"max_action must be one float or {act_dim} floats (one per action dimension), got shape "
            f"{tuple(bound.shape)}"
        )
    if not bool(torch.isfinite(bound).all()) or not bool((bound > 0).all()):
        raise ValueError(f"max_action must be finite and > 0, got {bound.tolist()}")
    return bound


# --- critics -----------------------------------------------------------------------------------------


def _mlp(in_features: int, hidden: Sequence[int], out_features: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class _Critic(nn.Module):
    obs_dim: int
    act_dim: int

    def check_inputs(self, obs: Tensor, action: Tensor) -> None:
        where = type(self).__name__
        check_batch_input(obs, where, self.obs_dim, "obs")
        check_batch_input(action, where, self.act_dim, "action")
        _check_same_batch(obs, action, where)


class TwinQCritic(_Critic):
    """TD3's clipped double-Q critic: two independent ReLU MLPs on ``concat[obs, action]``.

    Each is ``Linear(obs_dim + act_dim, 256) -> ReLU -> Linear(256, 256) -> ReLU -> Linear(256, 1)`` (with
    the default ``hidden``). ``forward(obs, action) -> (q1, q2)``, each ``[B, 1]``; :meth:`q1` evaluates
    only the first (the actor loss).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        check_sizes(obs_dim, act_dim)
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.q1_net = _mlp(obs_dim + act_dim, hidden)
        self.q2_net = _mlp(obs_dim + act_dim, hidden)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        self.check_inputs(obs, action)
        x = torch.cat([obs, action], dim=1)
        return self.q1_net(x), self.q2_net(x)

    def q1(self, obs: Tensor, action: Tensor) -> Tensor:
        """The first Q estimate ``[B, 1]``."""
        self.check_inputs(obs, action)
        return self.q1_net(torch.cat([obs, action], dim=1))


class DDPGCritic(_Critic):
    """DDPG critic of the CaRe-BN reference code (after Lillicrap et al., ICLR 2016): the action joins after the
    first layer.

    ``h = ReLU(Linear(obs_dim, 400)(obs))``, ``h = ReLU(Linear(400 + act_dim, 300)(concat[h, action]))``,
    ``q = Linear(300, 1)(h)`` ``[B, 1]``. :meth:`q1` is the same (so TD3 and DDPG tasks share one actor
    loss call).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, int] = (400, 300)) -> None:
        super().__init__()
        check_sizes(obs_dim, act_dim)
        if len(hidden) != 2:
            raise ValueError(f"DDPGCritic takes two hidden widths (obs layer, joint layer), got {hidden}")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.l1 = nn.Linear(obs_dim, hidden[0])
        self.l2 = nn.Linear(hidden[0] + act_dim, hidden[1])
        self.l3 = nn.Linear(hidden[1], 1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        self.check_inputs(obs, action)
        h = torch.relu(self.l1(obs))
        h = torch.relu(self.l2(torch.cat([h, action], dim=1)))
        return self.l3(h)

    def q1(self, obs: Tensor, action: Tensor) -> Tensor:
        """Same as :meth:`forward`: the single Q estimate ``[B, 1]``."""
        return self(obs, action)
