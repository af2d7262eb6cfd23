"""The norm-layer protocol shared by every spikenorm normalisation layer.

A norm layer takes time-major input ``[T, B, C, ...]`` (``C`` = ``num_features``), owns its running
statistics as buffers, documents its training and inference equations, and declares how it folds at
inference through :attr:`TimeMajorNorm.fold_target`:

* ``"weights"``: an affine map per channel at inference, folded into the preceding conv/linear;
* ``"threshold"``: acts on the membrane, folded into the next neuron's threshold;
* ``"identity"``: nothing to fold;
* ``"unfoldable"``: inference depends on the time step (or the batch); folding raises a ValueError.

Why the layers are not subclasses of ``torch.nn.modules.batchnorm._BatchNorm``: Lightning's
``sync_batchnorm=True`` calls ``SyncBatchNorm.convert_sync_batchnorm``, which replaces every
``_BatchNorm`` instance by a plain ``SyncBatchNorm`` expecting ``[N, C, ...]``; a time-major layer would
then be silently normalised over the wrong axes (SpikingJelly issue #393). Instead the layers pool their
statistics across processes themselves (:func:`spikenorm.norm.stats.batch_moments`) whenever
``torch.distributed`` is initialised, so DDP needs no conversion at all. Parameter and buffer names
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) follow torch BN.

Mixed precision. Under ``torch.autocast`` a convolution hands its norm a bfloat16 (or float16) tensor while
the layer's parameters and buffers stay float32. Statistics are then computed in float32
(:func:`~spikenorm.norm.stats.batch_moments` upcasts half precision; torch's ``batch_norm`` accepts a half
input with float32 weight and running statistics and accumulates in float32), the running buffers stay
float32, normalisation and the affine map run in float32 (type promotion), and the output comes back in the
input's dtype. Autocast casts none of these ops itself: its lists hold matrix products, convolutions, attention
and losses, not reductions, elementwise arithmetic or ``batch_norm``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.distributed import distributed_world_size
from spikenorm.precision import accumulation_dtype
from spikenorm.registry import Registry
from spikenorm.sequence import SequenceAware
from spikenorm.time_steps import check_time_steps_value
from spikenorm.validation import check_time_major

FoldTarget = Literal["weights", "threshold", "identity", "unfoldable"]

NORMS: Registry[TimeMajorNorm] = Registry("norm")


class TimeMajorNorm(nn.Module):
    """Base class: input checking, affine parameters and running-statistics buffers.

    Args:
        num_features: channels ``C`` of ``[T, B, C, ...]`` input.
        eps: added to the variance before the square root.
        momentum: EMA factor of the running statistics, torch convention
            (``running <- (1 - momentum) * running + momentum * batch``).
        affine: learn ``weight`` (gamma) and ``bias`` (beta).
        stats_shape: leading shape of the statistics buffers before the features (``(T,)`` for BNTT).
        feature_shape: the axes that own separate statistics: ``(C,)`` (channel-wise, the default) or
            ``(C, H, W)`` (element-wise: one mean and variance per neuron, pooled over the batch only).
    """

    fold_target: ClassVar[FoldTarget] = "unfoldable"
    #: why an ``"unfoldable"`` norm cannot be folded; :func:`spikenorm.fold.fold_model` puts it in its error
    unfoldable_reason: ClassVar[str] = "its inference map depends on the time step, so no shared weights can absorb it"
    #: whether the running variance estimates the unbiased (Bessel-corrected) variance, as torch BN does;
    #: exact re-calibration (:func:`spikenorm.recalibrate.recalibrate_bn`) writes the same kind
    running_var_unbiased: ClassVar[bool] = True
    #: whether :meth:`batch_statistics` returns the mean and biased variance of its input over the axes the
    #: statistics broadcast along (the batch, and time unless per step), pooled across processes: then the fused
    #: kernels differentiate through them in closed form (:meth:`fused_input_parameters`)
    batch_statistics_are_moments: ClassVar[bool] = True
    #: for per-step statistics (``[T, *feature_shape]``): whether those of step ``t`` pool the steps ``0..t``
    #: (TAB's accumulated statistics) rather than step ``t`` alone; exact re-calibration writes the same kind
    accumulates_over_time: ClassVar[bool] = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        stats_shape: tuple[int, ...] = (),
        feature_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        feature_shape = (num_features,) if feature_shape is None else tuple(int(d) for d in feature_shape)
        if feature_shape[0] != num_features or min(feature_shape) < 1:
            raise ValueError(
                f"feature_shape must start with num_features={num_features} and be positive, got {feature_shape}"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.feature_shape = feature_shape
        shape = (*stats_shape, *feature_shape)
        if affine:
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error unless ``x`` is ``[T, B, *feature_shape, ...]``."""
        check_time_major(x, type(self).__name__, min_ndim=2 + len(self.feature_shape), channels=self.num_features)
        if tuple(x.shape[2 : 2 + len(self.feature_shape)]) != self.feature_shape:
            raise ValueError(
                f"{type(self).__name__} expects input [T, B, {', '.join(map(str, self.feature_shape))}], "
                f"got shape {tuple(x.shape)}"
            )

    def reduce_dims(self, x: Tensor, over_time: bool) -> tuple[int, ...]:
        """Axes of ``x`` = ``[T, B, *feature_shape, *rest]`` that a statistic pools: the batch, the axes
        after the feature shape, and the time axis when ``over_time``."""
        rest = tuple(range(2 + len(self.feature_shape), x.ndim))
        return (0, 1, *rest) if over_time else (1, *rest)

    def feature_view(self, stat: Tensor, x: Tensor) -> Tensor:
        """Reshape statistics ``[*feature_shape]`` or ``[T, *feature_shape]`` to broadcast against ``x``.

        A leading time axis of ``stat`` lines up with the time axis of ``x`` = ``[T, B, *features, ...]``.
        """
        k = len(self.feature_shape)
        trailing = [1] * (x.ndim - 2 - k)
        if stat.ndim == k:
            return stat.reshape(*stat.shape, *trailing)
        return stat.reshape(stat.shape[0], 1, *stat.shape[1:], *trailing)

    def affine_transform(self, x_hat: Tensor) -> Tensor:
        """``gamma * x_hat + beta`` (identity when ``affine=False``)."""
        if not self.affine:
            return x_hat
        return x_hat * self.feature_view(self.weight, x_hat) + self.feature_view(self.bias, x_hat)

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training statistics ``(mean, biased var)`` of ``x``, updating the running estimate."""
        raise NotImplementedError

    @property
    def normalization_gain(self) -> float:
        """A constant gain ``k`` of the normalised input, before the affine map (1 here; tdBN's ``alpha * v_th``)."""
        return 1.0

    def normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``k (x - mean) / sqrt(var + eps)`` with per-feature (optionally per-step) statistics and ``k`` the
        :attr:`normalization_gain` (computed as ``((x - mean) * rsqrt(var + eps)) * k``, the product skipped when
        ``k = 1``)."""
        x_hat = (x - self.feature_view(mean, x)) * torch.rsqrt(self.feature_view(var, x) + self.eps)
        gain = self.normalization_gain
        return x_hat if gain == 1.0 else x_hat * gain

    def uses_torch_batch_norm(self, x: Tensor) -> bool:
        """Whether this training forward is exactly torch's channel-wise batch norm of ``x`` with the time
        axis folded into the batch (statistics pooled over every axis but the channels, one EMA update, no
        process synchronisation needed); then :meth:`forward` calls :meth:`torch_batch_norm`, one fused kernel,
        instead of the reference ops. Subclasses say when; the base class never does."""
        return False

    def forward(self, x: Tensor) -> Tensor:
        """Batch statistics in training, running statistics in eval, then the affine map; the output has the
        dtype of ``x`` (statistics and arithmetic in float32 for a half-precision ``x``, see the module doc)."""
        self.check_input(x)
        if self.training and self.uses_torch_batch_norm(x):
            return self.torch_batch_norm(x)
        if self.training:
            mean, var = self.batch_statistics(x)
        else:
            mean, var = self.running_statistics(x)
        return self.affine_transform(self.normalize(x, mean, var)).to(x.dtype)

    def torch_batch_norm(self, x: Tensor) -> Tensor:
        """The training forward as one ``F.batch_norm`` call over ``x`` with time folded into the batch (used when
        :meth:`uses_torch_batch_norm`): the same statistics, normalisation, gain and EMA update (unbiased variance)
        as the reference path; a half-precision ``x`` with float32 weight and running statistics is accumulated in
        float32 by torch."""
        y = F.batch_norm(
            x.flatten(0, 1),
            self.running_mean,
            self.running_var,
            self.effective_weight,
            self.bias,
            training=True,
            momentum=self.momentum,
            eps=self.eps,
        )
        self.num_batches_tracked += 1
        return y.unflatten(0, x.shape[:2])

    def running_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The statistics ``(mean, var)`` that normalise ``x`` in eval mode: the running buffers."""
        return self.running_mean, self.running_var

    @property
    def effective_weight(self) -> Tensor:
        """The gain applied to the normalised input: ``gamma`` (ones when ``affine=False``)."""
        return self.weight if self.affine else torch.ones_like(self.running_mean)

    @torch.no_grad()
    def inference_affine(self) -> tuple[Tensor, Tensor]:
        """The eval-mode map as ``y = scale * x + shift`` per feature, in float64.

        ``scale = gain / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``; this is what
        :func:`spikenorm.fold.fold_model` folds into weights or thresholds.
        """
        scale = self.effective_weight.double() / torch.sqrt(self.running_var.double() + self.eps)
        bias = self.bias.double() if self.bias is not None else torch.zeros_like(scale)
        return scale, bias - self.running_mean.double() * scale

    def fused_membrane_parameters(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None] | str:
        """The eval-mode map as the fused neuron kernels (:mod:`spikenorm.fused`) compute it on the membrane of a
        neuron whose input is ``x`` (``[T, B, *feature_shape, ...]``): ``(mean, rstd, weight, bias)`` per feature
        for ``u = (h - mean) * rstd * weight + bias`` (weight and bias None when ``affine=False``: ``u = (h -
        mean) * rstd``), with ``rstd = rsqrt(running_var + eps)``, the same tensors and ops as :meth:`normalize`
        and :meth:`affine_transform`, so the fused spikes equal the eager ones bit for bit. Or the reason the
        kernels cannot stand in for this layer: training mode, a forward, normalize, affine_transform or
        feature_view of a subclass, statistics not per feature (per step, like BNTT), parameters that want a
        gradient, or tensors that do not fit ``x`` (feature shape, device, or a dtype other than that of the
        membrane, which is :func:`~spikenorm.precision.accumulation_dtype` of ``x``: float32 for a half-precision
        input)."""
        for name in ("forward", "normalize", "affine_transform", "feature_view"):
            if getattr(type(self), name) is not getattr(TimeMajorNorm, name):
                return f"membrane norm {type(self).__name__} overrides {name}"
        if self.training:
            return "membrane norm in training mode (batch statistics)"
        if tuple(self.running_mean.shape) != self.feature_shape:
            return "membrane norm statistics are not per feature"
        if tuple(x.shape[2 : 2 + len(self.feature_shape)]) != self.feature_shape:
            return "membrane norm feature shape does not fit the input"
        if torch.is_grad_enabled() and self.affine and (self.weight.requires_grad or self.bias.requires_grad):
            return "membrane norm parameters require grad"
        affine = (self.weight, self.bias) if self.affine else ()
        membrane = accumulation_dtype(x.dtype)
        if any(t.dtype != membrane or t.device != x.device for t in (self.running_mean, self.running_var, *affine)):
            return f"membrane norm tensors of another dtype than the membrane ({membrane}) or on another device"
        with torch.no_grad():
            rstd = torch.rsqrt(self.running_var + self.eps)  # exactly normalize()
        weight, bias = affine if affine else (None, None)
        return self.running_mean, rstd, weight, bias

    def fused_membrane_training_parameters(self, x: Tensor) -> tuple[Tensor | None, Tensor | None, float] | str:
        """As a membrane norm in training mode: ``(weight, bias, eps)`` for the fused neuron kernels, which compute
        the batch statistics of every step themselves (mean and biased variance of the membrane ``h_t`` over the
        batch and the axes after the feature shape, as :meth:`forward` does on the ``[1, B, ...]`` step the neuron
        hands it) and give them back through :meth:`record_step_moments`; or the reason they cannot: the
        overrides and dtypes of :meth:`fused_input_unsupported_reason`, no per-step running update
        (:attr:`records_step_moments`), a normalisation gain, one value per feature and step, or statistics that
        would be pooled across processes at every step (DDP)."""
        reason = self.fused_input_unsupported_reason(x)
        if reason is not None:
            return reason
        name = type(self).__name__
        if not self.records_step_moments:
            return f"membrane norm {name} in training mode updates no running statistics from per-step moments"
        if self.normalization_gain != 1.0:
            return f"membrane norm {name} with a normalisation gain"
        if distributed_world_size() > 1:
            return "membrane norm in training under DDP (its statistics are pooled across processes at every step)"
        if math.prod(x.shape[2 + len(self.feature_shape) :]) * x.shape[1] < 2:
            return "membrane norm in training with one value per feature and step"
        return (self.weight, self.bias, self.eps) if self.affine else (None, None, self.eps)

    #: whether :meth:`record_step_moments` makes the running update of a forward on one step (then a training-mode
    #: membrane norm can run inside the fused kernels); the base class makes none
    records_step_moments: ClassVar[bool] = False

    def record_step_moments(self, mean: Tensor, var: Tensor, count: int) -> None:
        """The running update :meth:`forward` makes on one step whose batch moments (biased ``var``, over ``count``
        values per feature) are given, computed by the fused kernels."""
        raise NotImplementedError(f"{type(self).__name__} records no per-step moments (records_step_moments)")

    def fused_input_unsupported_reason(self, x: Tensor) -> str | None:
        """Why the fused neuron kernels (:mod:`spikenorm.fused`) cannot apply this layer to ``x``, the input of
        the neuron that follows it, or None when they can. Pure (nothing computed or updated). They can when the
        layer's forward is this class's reference forward (:meth:`forward`, :meth:`normalize`,
        :meth:`affine_transform`, :meth:`feature_view` not overridden; :meth:`batch_statistics` and
        :meth:`running_statistics` may be) and its tensors have the dtype of the neuron's membrane
        (:func:`~spikenorm.precision.accumulation_dtype` of ``x``) and ``x``'s device."""
        for name in ("forward", "normalize", "affine_transform", "feature_view"):
            if getattr(type(self), name) is not getattr(TimeMajorNorm, name):
                return f"{type(self).__name__} overrides {name}"
        membrane = accumulation_dtype(x.dtype)
        tensors = (self.running_mean, self.running_var, *((self.weight, self.bias) if self.affine else ()))
        if any(t.dtype != membrane or t.device != x.device for t in tensors):
            return f"{type(self).__name__} tensors of another dtype than the membrane ({membrane}) or on another device"
        return None

    def fused_input_parameters(self, x: Tensor) -> tuple[Tensor, Tensor, float, Tensor | None, Tensor | None, bool]:
        """What the fused neuron kernels need to apply this layer to ``x`` themselves: ``(mean, rstd, gain,
        weight, bias, own)`` for ``y = ((x - mean) * rstd) * gain * weight + bias`` (weight and bias None without
        affine), the tensors shaped to broadcast against ``x`` (:meth:`feature_view`), ``rstd = rsqrt(var +
        eps)``. In training the batch statistics are computed and the running ones updated here, by
        :meth:`batch_statistics` exactly as :meth:`forward`'s reference path does (pooled across processes under
        DDP), and they keep their autograd history. ``own``: the statistics are the batch moments of ``x`` alone
        (training on one process, :attr:`batch_statistics_are_moments`), so the kernels may differentiate through
        them in closed form. Call only when :meth:`fused_input_unsupported_reason` is None.

        Raises:
            ValueError: ``x`` does not fit the layer (as :meth:`forward` would).
        """
        self.check_input(x)
        mean, var = self.batch_statistics(x) if self.training else self.running_statistics(x)
        rstd = torch.rsqrt(self.feature_view(var, x) + self.eps)
        affine = (self.feature_view(self.weight, x), self.feature_view(self.bias, x)) if self.affine else (None, None)
        own = self.training and self.batch_statistics_are_moments and distributed_world_size() == 1
        return self.feature_view(mean, x), rstd, self.normalization_gain, *affine, own

    @torch.no_grad()
    def update_running(self, mean: Tensor, var_unbiased: Tensor) -> None:
        """EMA update ``running <- (1 - m) running + m batch`` of both running statistics."""
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(var_unbiased.to(self.running_var.dtype), self.momentum)
        self.num_batches_tracked += 1

    def extra_repr(self) -> str:
        features = f"{self.num_features}" if len(self.feature_shape) == 1 else f"feature_shape={self.feature_shape}"
        return f"{features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class StepIndexedNorm(TimeMajorNorm, SequenceAware):
    """Base of norms built for exactly ``time_steps`` steps, whose parameters (and maybe statistics) have a row per
    step ``t`` (BNTT, TEBN, TAB).

    A multi-step input must have ``T = time_steps``. Inside a :func:`spikenorm.neurons.stateful` scope (online,
    single-step execution) a layer that :attr:`runs_step_by_step` may instead be called on consecutive windows of
    steps, e.g. ``x[t : t + 1]`` for ``t = 0..T-1``: it counts the steps of the sequence, so the call covering step
    ``t`` uses row ``t`` (:meth:`step_rows`), and refuses a sequence longer than ``time_steps``. Outside a scope
    every call starts at step 0.

    ``T`` has one home, the task: a layer built without it (``time_steps=None``) holds its per-step tensors with no
    rows until :meth:`receive_time_steps` (:func:`spikenorm.time_steps.bind_time_steps`) gives it ``T``, and refuses
    a forward before that.

    Args:
        time_steps: ``T``, the number of rows of the per-step tensors; None: given later by the task.
    """

    #: whether the affine parameters and running statistics have a row per step (BNTT, TAB), not one for all (TEBN)
    per_step_statistics: ClassVar[bool] = False
    #: whether a ``stateful`` scope may call the layer on windows of steps (TEBN, TAB), or every call needs all ``T``
    runs_step_by_step: ClassVar[bool] = True

    def __init__(self, num_features: int, time_steps: int | None = None, **kwargs: object) -> None:
        if time_steps is not None:
            check_time_steps_value(time_steps, f"{type(self).__name__} time_steps")
        rows = 0 if time_steps is None else time_steps
        super().__init__(num_features, stats_shape=(rows,) if self.per_step_statistics else (), **kwargs)
        self.time_steps = time_steps
        self._sequence_step: int | None = None  # steps seen in the open stateful scope, None outside one
        # the tensors with a row per step and the value every row starts at
        self._step_tensor_fills: dict[str, float] = (
            {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0} if self.per_step_statistics else {}
        )

    def register_step_parameter(self, name: str, fill: float) -> None:
        """Register a learnt parameter ``name`` of shape ``[time_steps]`` (one scalar per step) filled with ``fill``."""
        rows = 0 if self.time_steps is None else self.time_steps
        self.register_parameter(name, nn.Parameter(torch.full((rows,), fill)))
        self._step_tensor_fills[name] = fill

    def receive_time_steps(self, time_steps: int) -> None:
        """Adopt the task's ``T`` if the layer has none: its per-step tensors get ``T`` rows with the values, dtype,
        device and ``requires_grad`` a layer built with ``time_steps=T`` (then moved like this one) would have, under
        the same names. A layer built for ``T`` keeps it; one built for another ``T`` refuses.

        Raises:
            ValueError: the layer was built for another ``T`` (both are named), or ``time_steps`` is not a positive int.
        """
        check_time_steps_value(time_steps)
        if self.time_steps is not None:
            if time_steps != self.time_steps:
                name = type(self).__name__
                raise ValueError(f"{name} was built for T={self.time_steps} steps, not the T={time_steps} it was given")
            return
        for name, fill in self._step_tensor_fills.items():
            empty = getattr(self, name)
            if empty is None:  # e.g. BNTT's bias when bias=False, or no affine parameters
                continue
            full = torch.full((time_steps, *empty.shape[1:]), fill, dtype=empty.dtype, device=empty.device)
            if isinstance(empty, nn.Parameter):
                full = nn.Parameter(full, requires_grad=empty.requires_grad)
            setattr(self, name, full)
        self.time_steps = time_steps

    # -- sequence protocol ------------------------------------------------------------------------------
    def begin_sequence(self) -> None:
        self._sequence_step = 0 if self.runs_step_by_step else None

    def end_sequence(self) -> None:
        self._sequence_step = None

    def abort_sequence(self) -> None:
        self._sequence_step = None

    @property
    def in_sequence(self) -> bool:
        """Whether a ``stateful`` scope is open (calls then cover consecutive windows of steps)."""
        return self._sequence_step is not None

    def first_step(self) -> int:
        """The step index of the next call's first step (0 outside a ``stateful`` scope)."""
        return self._sequence_step or 0

    def step_rows(self, tensor: Tensor, x: Tensor) -> Tensor:
        """The rows of a per-step ``tensor`` (``[time_steps, ...]``) for the steps of ``x`` (``[T', B, ...]``)."""
        start = self.first_step()
        return tensor[start : start + x.shape[0]]

    def step_view(self, per_step: Tensor, x: Tensor) -> Tensor:
        """The rows of a per-step scalar ``per_step`` (``[time_steps]``) for the steps of ``x``, shaped
        ``[T', 1, ...]`` to broadcast against it."""
        return self.step_rows(per_step, x).reshape(-1, *([1] * (x.ndim - 1)))

    def check_input(self, x: Tensor) -> None:
        name, steps = type(self).__name__, x.shape[0]
        if self.time_steps is None:
            raise ValueError(
                f"{name} keeps parameters for each time step, so it needs time_steps: give it to the task (time_steps) "
                "or in LayerSpec(time_steps=...)"
            )
        super().check_input(x)
        if not self.in_sequence and steps != self.time_steps:
            hint = "; call it step by step only inside spikenorm.neurons.stateful" if self.runs_step_by_step else ""
            raise ValueError(
                f"{name} was built for T={self.time_steps} steps but got input [T, B, C, ...] with T={steps} "
                f"(shape {tuple(x.shape)}){hint}"
            )
        if self.in_sequence and self.first_step() + steps > self.time_steps:
            raise ValueError(
                f"{name} was built for T={self.time_steps} steps, but this stateful sequence has already seen "
                f"{self.first_step()} and the call adds {steps} (shape {tuple(x.shape)})"
            )

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.in_sequence:
            self._sequence_step += x.shape[0]
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", time_steps={self.time_steps}"


@NORMS.register("none")
class NoNorm(TimeMajorNorm):
    """No normalisation: ``y = x`` (input layout still checked). Nothing to fold."""

    fold_target: ClassVar[FoldTarget] = "identity"

    def __init__(self, num_features: int, **kwargs: object) -> None:
        nn.Module.__init__(self)
        if kwargs:
            raise TypeError(f"norm 'none' takes no options, got {sorted(kwargs)}")
        self.num_features = num_features
        self.feature_shape = (num_features,)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x

    def extra_repr(self) -> str:
        return str(self.num_features)
