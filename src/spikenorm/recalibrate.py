"""Exact re-calibration of BN running statistics from data (Re-BN of CaRe-BN; PreciseBN for SNNs).

:func:`recalibrate_bn` replaces the running mean and variance of every BN-like layer of a model by the
exact statistics of its inputs pooled over all samples of ``M`` batches (and over time, and space),
accumulated in float64 with Chan's parallel merge (per-call moments of float32 inputs are centred sums,
accurate to float32 precision, see :meth:`PooledMoments.add`) and reduced across processes when distributed:

    mu = (1 / N) sum_i x_i,    var = (1 / N) sum_i (x_i - mu)^2      (N = all samples of all batches)

written unbiased (``var N / (N - 1)``) for layers whose running variance is unbiased (torch convention).

Layers covered: every spikenorm norm layer (:class:`~spikenorm.norm.TimeMajorNorm`, including MPBN membrane
norms inside neurons) and every torch ``_BatchNorm`` with running statistics (``BatchNorm1d/2d/3d``,
``SyncBatchNorm``, SpikingJelly's multi-step ``layer.BatchNorm*d`` and ``layer.TemporalEffectiveBatchNorm*d``,
whose channel axis is 2 of ``[T, B, C, ...]``). A layer called several times per forward (a BN reused at every
time step, as snnTorch models loop over time) pools all of its calls, so its statistics are over batch and time.

Why not ``torch.optim.swa_utils.update_bn`` or PreciseBN (fvcore's ``update_bn_stats``): ``update_bn`` never
resets neuron state, so membranes leak from one batch into the next, and it skips BN layers that are not
``_BatchNorm`` (MPBN inside neurons); PreciseBN refuses a BN called more than once per forward; neither
pools over time steps exactly nor reduces across processes. Here every neuron's state is cleared before
every batch (:func:`spikenorm.interop.reset_neuron_states`: spikenorm, snnTorch ``reset_mem``, SpikingJelly
``reset``; then the user's ``reset_fn`` for neurons of their own).

Guards (each raises a ValueError unless said otherwise, and leaves the running statistics as they were):

* batches the model cannot take: without ``forward=``, a tuple or list batch (``(x, y)`` from a DataLoader) is
  refused with a TypeError before the model runs.
* batch-major input: where ``T`` is known (the ``time_steps`` argument; a norm built for ``T`` steps; a spikenorm
  model built with ``layers.time_steps``), every input of a time-major layer must be ``[T, B, ...]`` with that
  ``T`` (one shape comparison per call), and with ``time_steps`` a tensor batch must not look ``[B, T, ...]``.
* state the resets miss: a hand-written neuron that keeps ``self.v`` (a plain tensor attribute or a buffer)
  between calls would carry membranes from batch to batch. Before measuring, the first batch is run twice,
  each from reset state, and every module's tensors (buffers, plain attributes, tensors in list/tuple/dict
  attributes) are compared after the reset that follows each run: they differ exactly when some state
  survives the resets. The error names the modules and attributes and suggests ``reset_fn``. Cost: two
  forwards of one batch per call.
* NaN/Inf activations: a NaN or Inf in any input of a measured layer makes that layer's float64 moments
  non-finite, so the moments are checked once per batch (a few values per feature; no pass over the
  inputs). Only when the check fails is the batch run again from the same moments to count the NaN and
  Inf values; the error names the first layer whose inputs held them, the batch index and the counts.

Modes:

* ``"exact"`` (default): layer by layer in execution order, one pass over the batches per layer, so each
  layer's statistics are computed from inputs produced by upstream layers that already use their final
  re-calibrated statistics (the fixed point: running the model in eval mode afterwards feeds every layer
  inputs whose pooled statistics are exactly its running statistics). The first, full pass records the
  execution order and each layer's calls per batch while it measures the first layer; every later pass
  stops a batch's forward as soon as the layer it measures has seen all of that batch's inputs, so a
  layer ``k`` deep costs only the part of the network up to it (``benchmarks/recalibration.py``: 6.5 plain
  passes' worth for the 8 BN layers of a VGG-11, whose early high-resolution layers dominate).
  A membrane norm (MPBN) sees membranes that depend on its own earlier outputs through spikes and resets,
  so its pass is repeated on its written statistics until they reproduce themselves, or return to earlier
  values (a cycle: neurons sitting at the threshold fire or not depending on the statistics, so no exact
  fixed point exists; the report's ``fixed_point_gap`` says how far apart the cycle's statistics are), at
  most 10 more passes.
* ``"single_pass"``: the CaRe-BN reference code: one pass in which every layer normalises with its
  partially accumulated statistics, so downstream layers see upstream activations normalised with
  not-yet-final statistics (where the CaRe-BN paper's formula pools each layer exactly). Costs one forward
  per batch. A layer hands on what it would with those statistics: spikenorm norms their own map; torch and
  SpikingJelly BN layers run their own forward with the statistics in their buffers for the call, so what such a
  layer does besides normalising is kept (SpikingJelly's ``TemporalEffectiveBatchNorm*d`` scales step ``t`` by
  ``scale[t]``).

During the passes the model runs in eval mode under ``torch.no_grad``; the train/eval flags of every
module are restored afterwards and no momentum is touched. Layers whose statistics differ per time step
(BNTT) are re-calibrated per step; those whose step ``t`` uses the statistics accumulated over steps ``0..t``
(TAB, :attr:`~spikenorm.norm.TimeMajorNorm.accumulates_over_time`) get, for every ``t``, the statistics pooled over
steps ``0..t`` of all batches (merged from the per-step moments, every step pooling the same number of samples),
written unbiased with ``N_t = (t + 1) N`` samples.

Mixed precision: called under ``torch.autocast`` (a Lightning ``bf16-mixed`` run), the model runs as it does in
training, so each layer is measured on the half-precision inputs it actually sees. Those inputs are upcast to
float32 before they are summed (:meth:`PooledMoments.add`), the layer normalises in float32 during the passes
and hands on its output in its input's dtype, as its own forward does (:mod:`spikenorm.norm.base`), and the
float32 running statistics receive the float64 pooled moments.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.distributed import distributed_world_size
from spikenorm.interop import reset_neuron_states
from spikenorm.modes import eval_mode
from spikenorm.neurons import spiking_neurons
from spikenorm.norm import TimeMajorNorm, accumulate_over_steps, unbiased_accumulated
from spikenorm.norm.stats import accumulation_dtype
from spikenorm.validation import check_not_batch_major, check_time_steps

ResetFn = Callable[[nn.Module], None]
"""``reset_fn(model)``: clears neuron state that the built-in resets do not know (see :func:`recalibrate_bn`)."""


class PooledMoments:
    """Count, mean and sum of squared deviations (M2) per feature, merged exactly (Chan et al. 1979).

    Merging ``(n1, m1, M2_1)`` and ``(n2, m2, M2_2)``: ``n = n1 + n2``, ``m = m1 + (m2 - m1) n2 / n``,
    ``M2 = M2_1 + M2_2 + (m2 - m1)^2 n1 n2 / n``. Kept in float64.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.inspect: Callable[[Tensor], None] | None = None  # sees every input (set on an error path only)

    def add(self, x: Tensor, dims: tuple[int, ...]) -> None:
        """Merge the samples of ``x`` over ``dims`` (the remaining axes index the features).

        float64 input is reduced in float64. Half-precision input (bfloat16, float16) is upcast to float32 first
        (exact; its own sums would keep 8 or 11 significant bits). float32 input is summed in float32 around a
        per-feature shift ``c`` (the mean accumulated so far, or this batch's mean at first):
        ``mean = c + S1 / n``, ``M2 = S2 - S1^2 / n`` with ``S1 = sum (x - c)``, ``S2 = sum (x - c)^2``. Centering
        removes the cancellation of raw power sums, so the batch moments are accurate to a few float32
        ulps (about 1e-7 relative, the precision of the float32 running buffers); this costs two passes
        over ``x`` where torch's CPU Welford ``var_mean`` costs several times more.
        """
        x = x.detach().to(accumulation_dtype(x.dtype))
        if self.inspect is not None:
            self.inspect(x)
        n = math.prod(x.shape[d] for d in dims)
        if x.dtype == torch.float64:
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            self.merge(n, mean, var * n)
            return
        keepdim = [1 if d in dims else size for d, size in enumerate(x.shape)]
        shift = (x.mean(dim=dims) if self.mean is None else self.mean).to(x.dtype)
        centered = x - shift.reshape(keepdim)
        s1 = centered.sum(dim=dims).double()
        s2 = (centered * centered).sum(dim=dims).double()
        self.merge(n, shift.double() + s1 / n, (s2 - s1 * s1 / n).clamp_min(0))

    def state(self) -> tuple[int, Tensor | None, Tensor | None]:
        """What :meth:`restore` needs to undo later merges (never modified in place, so no copy is made)."""
        return self.count, self.mean, self.m2

    def restore(self, state: tuple[int, Tensor | None, Tensor | None]) -> None:
        self.count, self.mean, self.m2 = state

    def finite(self) -> bool:
        """Whether the moments are finite: a NaN or Inf in any merged input makes its feature's mean or M2
        non-finite (so does float overflow of the squared deviations)."""
        return self.mean is None or bool(torch.isfinite(self.mean).all() & torch.isfinite(self.m2).all())

    def merge(self, n: int, mean: Tensor, m2: Tensor) -> None:
        if n == 0:
            return
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean.clone(), m2.clone()
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def all_reduce(self) -> None:
        """Merge the moments of every process (exact), when running distributed."""
        if distributed_world_size() == 1 or self.mean is None:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.count, self.mean.cpu(), self.m2.cpu()))
        device = self.mean.device
        self.count, self.mean, self.m2 = 0, None, None
        for n, mean, m2 in gathered:
            self.merge(n, mean.to(device), m2.to(device))

    def variance(self, unbiased: bool) -> Tensor:
        if self.mean is None:
            raise ValueError("no samples were accumulated")
        return self.m2 / max(self.count - 1, 1) if unbiased else self.m2 / self.count


@dataclass
class LayerRecalibration:
    """How far a layer's running statistics moved: mean absolute changes and the mean W2 distance
    between N(mu_before, var_before) and N(mu_after, var_after) over features (``stat_error``), the
    number of samples pooled per feature, and for membrane norms the W2 distance between the last two
    iterates of the fixed-point iteration (``fixed_point_gap``, 0 when the statistics reproduce exactly)."""

    mean_shift: float
    var_shift: float
    stat_error: float
    samples: int
    fixed_point_gap: float = 0.0


@dataclass
class RecalibrationReport:
    layers: dict[str, LayerRecalibration] = field(default_factory=dict)
    seconds: float = 0.0
    batches: int = 0
    mode: str = "exact"


class StatisticsLayer:
    """A BN-like layer seen through what re-calibration needs: its pooled axes, its eval-mode map given
    statistics, its running-statistics buffers, and the ``T`` its inputs must have.

    Args:
        module: the layer.
        name: its qualified name in the model (for messages).
        time_steps: ``T`` of the model's multi-step forward, when known: the leading axis every input of a
            time-major layer (``[T, B, ...]``) must have. A layer built for ``T`` steps (``bntt``, ``tebn``, ``tab``)
            checks its own ``T`` instead; a layer called once per step (``[B, C, ...]``, snnTorch) checks none.
    """

    def __init__(self, module: nn.Module, name: str = "", time_steps: int | None = None) -> None:
        self.module = module
        self.name = name
        self.time_steps = self.own_time_steps() or (time_steps if self.time_major else None)

    @property
    def time_major(self) -> bool:
        """Whether the layer's inputs are laid out ``[T, B, ...]``."""
        return True

    def own_time_steps(self) -> int | None:
        """The ``T`` the layer itself was built for, if any."""
        return None

    def measure(self, moments: PooledMoments, x: Tensor) -> None:
        """Merge the input ``x`` of one call into ``moments``, after checking its leading axis against ``T``
        (a shape comparison; catches batch-major ``[B, T, ...]`` input before any statistic is written). A norm
        called step by step inside a :func:`~spikenorm.neurons.stateful` scope (its ``in_sequence``) is not checked."""
        if self.time_steps is not None and not getattr(self.module, "in_sequence", False):
            check_time_steps(x, f"recalibrate_bn: layer '{self.name}' ({type(self.module).__name__})", self.time_steps)
        moments.add(x, self.reduce_dims(x))

    @property
    def running_mean(self) -> Tensor:
        return self.module.running_mean

    @property
    def running_var(self) -> Tensor:
        return self.module.running_var

    unbiased: bool = True

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def step_reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        """The axes to pool for the statistics of one time step: ``x`` is one step ``[1, B, ...]`` of a time-major
        layer, or one call ``[B, ...]`` of a layer called once per step; the result has the shared feature shape."""
        return self.reduce_dims(x)

    def running_at(self, step: int) -> tuple[Tensor, Tensor]:
        """The running mean and variance the layer normalises step ``step`` with in eval mode."""
        return self.running_mean, self.running_var

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """The layer's eval-mode output for input ``x`` had its running statistics been ``mean, var``."""
        raise NotImplementedError

    def statistics(self, moments: PooledMoments, unbiased: bool) -> tuple[Tensor, Tensor]:
        """The mean and variance the layer normalises with, given the pooled ``moments`` of its inputs."""
        return moments.mean, moments.variance(unbiased)

    def normalized_by(self, x: Tensor, moments: PooledMoments) -> Tensor:
        """:meth:`normalized` with the mean and biased variance accumulated in ``moments`` so far (given in the
        accumulation dtype of ``x``, float32 for half precision), returned in the dtype of ``x``."""
        dtype = accumulation_dtype(x.dtype)
        mean, var = self.statistics(moments, unbiased=False)
        return self.normalized(x, mean.to(dtype), var.to(dtype)).to(x.dtype)

    def write(self, moments: PooledMoments) -> None:
        mean, var = self.statistics(moments, unbiased=self.unbiased)
        self.running_mean.copy_(mean.to(self.running_mean.dtype))
        self.running_var.copy_(var.to(self.running_var.dtype))


class _SpikenormNorm(StatisticsLayer):
    """A :class:`~spikenorm.norm.TimeMajorNorm` (``[T, B, *features, ...]``; BNTT keeps one statistic per step, TAB
    one per step accumulated over the steps up to it)."""

    def __init__(self, module: TimeMajorNorm, name: str = "", time_steps: int | None = None) -> None:
        super().__init__(module, name, time_steps)
        self.unbiased = module.running_var_unbiased

    def own_time_steps(self) -> int | None:
        """``time_steps`` of a norm built for ``T`` steps (BNTT, TEBN, TAB: per-step statistics or parameters)."""
        return getattr(self.module, "time_steps", None)

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        per_step = self.module.running_mean.ndim > len(self.module.feature_shape)
        if per_step and x.shape[0] != self.module.running_mean.shape[0]:
            raise ValueError(
                f"recalibrate_bn: {type(self.module).__name__} keeps statistics for each of "
                f"T={self.module.running_mean.shape[0]} steps but was called on {x.shape[0]} step(s) (shape "
                f"{tuple(x.shape)}); re-calibrate it with multi-step forwards over all T steps"
            )
        return self.module.reduce_dims(x, over_time=not per_step)

    def step_reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return self.module.reduce_dims(x, over_time=True)

    def running_at(self, step: int) -> tuple[Tensor, Tensor]:
        """Row ``step`` of per-step statistics (BNTT, TEBN, TAB), the shared statistics otherwise."""
        if self.running_mean.ndim > len(self.module.feature_shape):
            return self.running_mean[step], self.running_var[step]
        return self.running_mean, self.running_var

    def statistics(self, moments: PooledMoments, unbiased: bool) -> tuple[Tensor, Tensor]:
        """The pooled statistics, or, for a layer that :attr:`~spikenorm.norm.TimeMajorNorm.accumulates_over_time`,
        those of steps ``0..t`` merged from the per-step moments (``moments.count`` samples per step)."""
        if not self.module.accumulates_over_time:
            return super().statistics(moments, unbiased)
        mean, var = accumulate_over_steps(moments.mean, moments.variance(unbiased=False))
        return mean, unbiased_accumulated(var, moments.count) if unbiased else var

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return self.module.affine_transform(self.module.normalize(x, mean, var))


class _TorchBatchNorm(StatisticsLayer):
    """A torch ``_BatchNorm``: channels on axis 1 of ``[N, C, ...]``, or on axis 2 of ``[T, B, C, ...]`` for
    SpikingJelly's multi-step layers (``step_mode == "m"``: ``BatchNorm*d``, ``TemporalEffectiveBatchNorm*d``)."""

    @property
    def time_major(self) -> bool:
        return getattr(self.module, "step_mode", "s") == "m"

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        channels = 2 if self.time_major else 1
        return tuple(d for d in range(x.ndim) if d != channels)

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """The layer's own (class) forward in eval mode with ``mean, var`` in its running buffers for the call
        (restored after it), so a subclass that does more than normalise hands on what it would: SpikingJelly's
        TEBN multiplies step ``t`` by its learned ``scale[t]``."""
        saved = self.running_mean.clone(), self.running_var.clone()
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        try:
            return type(self.module).forward(self.module, x)
        finally:
            self.running_mean.copy_(saved[0])
            self.running_var.copy_(saved[1])


def statistics_layers(model: nn.Module, time_steps: int | None = None) -> dict[str, StatisticsLayer]:
    """Every layer of ``model`` with running statistics to re-calibrate, by qualified name (``time_steps``: ``T`` of
    the model's multi-step forward, when known; see :class:`StatisticsLayer`)."""
    layers: dict[str, StatisticsLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, TimeMajorNorm) and hasattr(module, "running_mean"):
            layers[name] = _SpikenormNorm(module, name, time_steps)
        elif isinstance(module, _BatchNorm) and module.running_mean is not None:
            layers[name] = _TorchBatchNorm(module, name, time_steps)
    return layers


def take_batches(batches: Iterable[Any], num_batches: int | None, caller: str = "recalibrate_bn") -> list[Any]:
    """The first ``num_batches`` of ``batches`` (all of them when None) as a list.

    Raises:
        ValueError: no batch, ``num_batches < 1``, or fewer batches than ``num_batches`` (``caller`` names the
            function in the message).
    """
    if num_batches is None:
        taken = list(batches)
        if not taken:
            raise ValueError(f"{caller} needs at least one batch, got an empty iterable")
        return taken
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    taken = list(itertools.islice(batches, num_batches))
    if len(taken) < num_batches:
        raise ValueError(
            f"{caller} was asked for num_batches={num_batches} but the data gave only {len(taken)} "
            "batch(es); lower num_batches or give more data"
        )
    return taken


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    mode: Literal["exact", "single_pass"] = "exact",
    num_batches: int | None = None,
    reset_fn: ResetFn | None = None,
    time_steps: int | None = None,
) -> RecalibrationReport:
    """Overwrite the running statistics of every BN-like layer with exact pooled statistics.

    Args:
        model: the network (its BN-like layers are found by type, see the module doc).
        batches: the data, e.g. ``M`` batches of replay-buffer states; each is passed to ``forward``. Without
            ``forward``, each batch is the model's input (a tensor, not an ``(x, y)`` pair).
        forward: ``forward(model, batch)``; defaults to ``model(batch)``.
        mode: ``"exact"`` (layer by layer) or ``"single_pass"`` (the reference code), see the module doc.
        num_batches: use exactly this many batches from ``batches`` (all of them when None).
        reset_fn: ``reset_fn(model)`` clears the state of neurons spikenorm does not know (e.g.
            ``lambda m: [n.reset() for n in m.modules() if isinstance(n, MyLIF)]``). Called with ``model``
            before every forward, after (in addition to) the built-in resets, and once at the end.
        time_steps: ``T`` of the model's multi-step forward. Every input of a time-major layer (spikenorm norms,
            SpikingJelly multi-step BN) must then be ``[T, B, ...]`` with this ``T``, and a batch that is a tensor
            of rank >= 3 must not look batch-major (axis 1 ``T`` and axis 0 not). Without it, ``T`` is known only
            where the model knows it: norms built for ``T`` steps (``bntt``, ``tebn``, ``tab``) check their own, and
            spikenorm models built with ``layers.time_steps`` check their input; elsewhere batch-major ``[B, T, ...]``
            input whose channels fit is not detected.

    Returns:
        A :class:`RecalibrationReport` (per-layer shift and statistics error, seconds spent).

    Raises:
        ValueError: no batches, fewer batches than ``num_batches``, ``num_batches < 1``, an unknown mode,
            a model without BN-like layers with running statistics, a layer the forward never calls, a
            module whose state survives the resets (see the module doc; pass ``reset_fn``), a NaN/Inf
            in the inputs of a measured layer (the layer, batch index and counts are named), or a layer input or
            batch that is not ``[T, B, ...]`` with the known ``T`` (see ``time_steps``). On any error the
            running statistics are left as they were.
        TypeError: without ``forward``, a batch that is a tuple or list (e.g. ``(x, y)``), before the model runs.
    """
    if mode not in ("exact", "single_pass"):
        raise ValueError(f"unknown recalibration mode {mode!r}; available: exact, single_pass")
    if time_steps is not None and (isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1):
        raise ValueError(f"recalibrate_bn: time_steps must be a positive int or None, got {time_steps!r}")
    layers = statistics_layers(model, time_steps)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BN layer with running statistics to recalibrate "
            "(looked for spikenorm norm layers and torch _BatchNorm layers with track_running_stats=True)"
        )
    ctx = _Context(model, layers, take_batches(batches, num_batches), forward, reset_fn)
    ctx.check_batches(time_steps)
    start = time.perf_counter()
    before = {name: (layer.running_mean.clone(), layer.running_var.clone()) for name, layer in layers.items()}
    with eval_mode(model):
        try:
            _check_resets(ctx)
            moments, gaps = (_single_pass(ctx), {}) if mode == "single_pass" else _exact(ctx)
            for name, m in moments.items():
                layers[name].write(m)
        except BaseException:
            for name, (mean0, var0) in before.items():
                layers[name].running_mean.copy_(mean0)
                layers[name].running_var.copy_(var0)
            raise
        finally:
            ctx.reset()
    report = RecalibrationReport(seconds=time.perf_counter() - start, batches=len(ctx.batches), mode=mode)
    for name, layer in layers.items():
        mean0, var0 = before[name]
        mean1, var1 = layer.running_mean, layer.running_var
        report.layers[name] = LayerRecalibration(
            mean_shift=float((mean1 - mean0).abs().mean()),
            var_shift=float((var1 - var0).abs().mean()),
            stat_error=w2_distance((mean0, var0), (mean1, var1)),
            samples=moments[name].count,
            fixed_point_gap=gaps.get(name, 0.0),
        )
    return report


def check_resettable(
    model: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    reset_fn: ResetFn | None = None,
) -> None:
    """Raise now if :func:`recalibrate_bn` would refuse ``model`` for state that survives its resets.

    Runs the check :func:`recalibrate_bn` starts with (two eval-mode forwards of ``batch`` from reset state; no
    statistics change), so a callback can refuse a model before training instead of at its first
    recalibration. Arguments as for :func:`recalibrate_bn`.
    """
    ctx = _Context(model, statistics_layers(model), [batch], forward, reset_fn)
    ctx.check_batches(None)
    with eval_mode(model), torch.no_grad():
        try:
            _check_resets(ctx)
        finally:
            ctx.reset()


class _StopForward(Exception):
    """Raised inside a forward once the layer being measured has seen all of its inputs for this batch."""


@dataclass
class _Context:
    """What every pass needs: the model, its layers, the batches, the user's forward (None: ``model(batch)``) and
    extra reset."""

    model: nn.Module
    layers: dict[str, StatisticsLayer]
    batches: list[Any]
    forward: Callable[[nn.Module, Any], Any] | None = None
    reset_fn: ResetFn | None = None

    def run(self, model: nn.Module, batch: Any) -> Any:
        return model(batch) if self.forward is None else self.forward(model, batch)

    def check_batches(self, time_steps: int | None) -> None:
        """Refuse, before the model runs, batches that ``model(batch)`` cannot take (a tuple or list, when no
        ``forward`` unpacks it) and, with ``time_steps``, tensor batches of rank >= 3 that look batch-major."""
        for index, batch in enumerate(self.batches):
            if self.forward is None and isinstance(batch, (tuple, list)):
                parts = ", ".join(
                    f"Tensor{list(part.shape)}" if isinstance(part, Tensor) else type(part).__name__ for part in batch
                )
                raise TypeError(
                    f"recalibrate_bn runs model(batch) when no forward= is given, so each batch must be the model's "
                    f"input (a tensor); batch {index} is a {type(batch).__name__} ({parts}), e.g. (x, y) from a "
                    "DataLoader. Expected a tensor, or a forward= that unpacks the batch: "
                    "forward=lambda model, batch: model(batch[0])"
                )
            if time_steps is not None and isinstance(batch, Tensor) and batch.ndim >= 3:
                check_not_batch_major(batch, f"recalibrate_bn (time_steps={time_steps}): batch {index}", time_steps)

    def reset(self) -> None:
        """The built-in neuron resets (:func:`~spikenorm.interop.reset_neuron_states`), then ``reset_fn``."""
        reset_neuron_states(self.model)
        if self.reset_fn is not None:
            self.reset_fn(self.model)

    def fresh(self, batch: Any) -> None:
        """One forward from fresh neuron state (ended early by :class:`_StopForward`)."""
        self.reset()
        try:
            self.run(self.model, batch)
        except _StopForward:
            pass

    def measure(self, moments: dict[str, PooledMoments], start: Callable[[int], None]) -> None:
        """Run every batch from fresh state (``start(index)`` first) while layers accumulate into ``moments``
        (which may gain entries during the first batch), and check after each batch that they are finite.

        The check reads the per-feature moments once per batch, not the inputs, so it costs next to nothing;
        only on failure is the batch run again (from the moments it started with, so every measured input is
        the same) to count the NaN and Inf values of each measured layer's inputs.

        Under ``torch.distributed`` every process learns whether any process failed (one collective per pass,
        which every process reaches), so all of them raise instead of leaving the others waiting in the next
        all-reduce.

        Raises:
            ValueError: the first batch after which some moments are not finite (see :class:`_NonFinite`), or,
                on the other processes, that a process found one.
        """
        error = None
        for index, batch in enumerate(self.batches):
            saved = {name: m.state() for name, m in moments.items()}
            start(index)
            self.fresh(batch)
            if all(m.finite() for m in moments.values()):
                continue
            audit = _NonFinite()
            for name, m in moments.items():
                m.restore(saved.get(name, (0, None, None)))
                m.inspect = functools.partial(audit.record, name)
            start(index)
            self.fresh(batch)
            error = audit.error(self.layers, index, [name for name, m in moments.items() if not m.finite()])
            break
        _raise_on_every_process(error)


def _raise_on_every_process(error: ValueError | None) -> None:
    """Raise ``error`` here and a ValueError on every other process when any process has an error."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        failed: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(failed, error is not None)
        if error is None and any(failed):
            ranks = [rank for rank, flag in enumerate(failed) if flag]
            raise ValueError(
                f"recalibrate_bn: process(es) {ranks} found NaN/Inf values in the inputs of a measured "
                "layer (their error names the layer and batch); the running statistics are unchanged"
            )
    if error is not None:
        raise error


@dataclass
class _NonFinite:
    """NaN, Inf and element counts of every measured layer's inputs over one batch, in the order of their calls."""

    counts: dict[str, list[int]] = field(default_factory=dict)  # name -> [NaN, Inf, elements]
    culprits: list[str] = field(default_factory=list)  # layers whose inputs held NaN/Inf, first one first

    def record(self, name: str, x: Tensor) -> None:
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        counts = self.counts.setdefault(name, [0, 0, 0])
        counts[0] += nan
        counts[1] += inf
        counts[2] += x.numel()
        if (nan or inf) and name not in self.culprits:
            self.culprits.append(name)

    def error(self, layers: dict[str, StatisticsLayer], index: int, non_finite: list[str]) -> ValueError:
        """The error naming the first layer whose inputs held NaN/Inf (or whose moments overflowed)."""
        unchanged = "no statistics were written (the model keeps its previous ones)"
        if self.culprits:
            name = self.culprits[0]
            nan, inf, elements = self.counts[name]
            return ValueError(
                f"recalibrate_bn: the inputs of layer '{name}' ({type(layers[name].module).__name__}) in batch "
                f"{index} (0-based, of the batches used) hold {nan} NaN and {inf} Inf values among {elements} "
                f"elements; {unchanged}. Expected finite activations: check that batch with torch.isfinite and "
                f"the layers before '{name}'"
            )
        name = next((n for n in self.counts if n in non_finite), non_finite[0])
        return ValueError(
            f"recalibrate_bn: the inputs of layer '{name}' ({type(layers[name].module).__name__}) in batch {index} "
            f"are finite but so large that their squared deviations overflow; {unchanged}. Expected activations "
            f"whose squares fit in their dtype: check the layers before '{name}', or recalibrate in float64"
        )


def _tensor_state(model: nn.Module) -> dict[tuple[str, str], Tensor]:
    """Copies of the tensors every module holds besides its parameters and submodules (buffers, plain
    attributes, and tensors directly inside list, tuple or dict attributes), keyed ``(module, attribute)``."""
    state: dict[tuple[str, str], Tensor] = {}
    for name, module in model.named_modules():
        attributes = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        attributes.update(module._buffers)
        for attribute, value in attributes.items():
            if isinstance(value, dict):
                items = [(f"{attribute}[{k!r}]", v) for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                items = [(f"{attribute}[{i}]", v) for i, v in enumerate(value)]
            else:
                items = [(attribute, value)]
            for key, tensor in items:
                if isinstance(tensor, Tensor) and not isinstance(tensor, nn.Parameter):
                    state[name, key] = tensor.detach().clone()
    return state


def _check_resets(ctx: _Context) -> None:
    """Refuse a model whose state survives the resets, which would make every batch's statistics depend on
    the batches before it.

    The first batch runs twice, each time from reset state, and the module tensors are compared after the
    reset that follows each run: resets that clear every state leave the same tensors both times, while a
    state they miss (e.g. a hand-written neuron's ``self.v``) holds what two forwards left rather than one.
    Costs two forwards of one batch, once per call.

    Raises:
        ValueError: naming the modules and attributes whose state survived, and suggesting ``reset_fn``.
    """
    snapshots = []
    for _ in range(2):
        ctx.fresh(ctx.batches[0])
        ctx.reset()
        snapshots.append(_tensor_state(ctx.model))
    first, second = snapshots
    survived = sorted(
        k
        for k in first.keys() | second.keys()
        if k not in first
        or k not in second
        or first[k].shape != second[k].shape
        or not torch.equal(first[k], second[k])
    )
    if not survived:
        return
    modules = dict(ctx.model.named_modules())
    owners = {modules[name] for name, _ in survived}
    classes = ", ".join(sorted({type(m).__name__ for m in owners}))
    if all(callable(getattr(m, "reset", None)) for m in owners):
        example = f"reset_fn=lambda model: [m.reset() for m in model.modules() if isinstance(m, ({classes},))]"
    else:
        example = "reset_fn=<a function of the model that clears these states>"
    named = ", ".join(f"'{name or '<root>'}' ({type(modules[name]).__name__}.{attr})" for name, attr in survived)
    resets = "spikenorm neurons, snnTorch reset_mem(), SpikingJelly reset()" + (", reset_fn" if ctx.reset_fn else "")
    raise ValueError(
        f"recalibrate_bn: state kept by these modules survives the resets before each batch ({resets}): {named}; "
        f"every batch's statistics would depend on the batches before it. Expected resets that clear it: pass {example}"
    )


@contextlib.contextmanager
def _intercepted(layers: dict[str, StatisticsLayer], make: Callable[[str, Callable], Callable]) -> Iterator[None]:
    """Replace the forward of each named layer by ``make(name, original_forward)`` for the scope.

    Replacing the forward (rather than hooking it) spares computing an output that would be thrown away."""
    own = {name: layer.module.__dict__.get("forward") for name, layer in layers.items()}  # instance overrides
    for name, layer in layers.items():
        layer.module.forward = make(name, layer.module.forward)
    try:
        yield
    finally:
        for name, layer in layers.items():
            if own[name] is None:
                del layer.module.forward
            else:
                layer.module.forward = own[name]


def _exact(ctx: _Context) -> tuple[dict[str, PooledMoments], dict[str, float]]:
    """Layer by layer in execution order (see the module doc); passes after the first stop each forward
    as soon as the layer being measured has seen all of its inputs of that batch."""
    moments, order, calls = _first_layer_pass(ctx)
    recurrent = _membrane_norm_names(ctx.model, ctx.layers)
    gaps: dict[str, float] = {}
    for name in order:
        if name != order[0]:
            moments[name] = _pass(ctx, name, normalize=True, stop_after=calls[name])
        ctx.layers[name].write(moments[name])
        if name in recurrent:
            moments[name], gaps[name] = _fixed_point(ctx, name, calls[name])
    return moments, gaps


def _first_layer_pass(ctx: _Context) -> tuple[dict[str, PooledMoments], list[str], dict[str, list[int]]]:
    """A full pass that records the execution order of the layers and their calls per batch, and
    measures the first layer (whose inputs depend on no other layer)."""
    order: list[str] = []
    calls = {name: [0] * len(ctx.batches) for name in ctx.layers}
    measured: dict[str, PooledMoments] = {}  # the first layer's, once it has been called
    current = 0

    def start(index: int) -> None:
        nonlocal current
        current = index

    def make(name: str, original: Callable) -> Callable:
        layer = ctx.layers[name]

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            calls[name][current] += 1
            if name not in order:
                order.append(name)
            if name != order[0]:
                return original(x, *args, **kwargs)
            first = measured.setdefault(name, PooledMoments())
            layer.measure(first, x)
            return layer.normalized_by(x, first)

        return forward

    with _intercepted(ctx.layers, make):
        ctx.measure(measured, start)
    missing = [name for name in ctx.layers if name not in order]
    if missing:
        raise ValueError(f"the forward never called these BN layers, so they cannot be recalibrated: {missing}")
    measured[order[0]].all_reduce()
    return measured, order, calls


def _membrane_norm_names(model: nn.Module, layers: dict[str, StatisticsLayer]) -> set[str]:
    """Layers that normalise a neuron's membrane: their input at step t depends on their own output at
    earlier steps (through the spike and reset), so their statistics are a fixed point."""
    membrane_norms = {id(n.membrane_norm) for _, n in spiking_neurons(model) if n.membrane_norm is not None}
    return {name for name, layer in layers.items() if id(layer.module) in membrane_norms}


def w2_distance(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """Mean over features of the W2 distance between N(mean_a, var_a) and N(mean_b, var_b)."""
    return float(torch.sqrt((a[0] - b[0]) ** 2 + (a[1].clamp_min(0).sqrt() - b[1].clamp_min(0).sqrt()) ** 2).mean())


def _fixed_point(ctx: _Context, name: str, calls: list[int], max_iterations: int = 10) -> tuple[PooledMoments, float]:
    """Re-measure a membrane norm's inputs with its written statistics until they reproduce themselves.

    The first pass normalised with partially accumulated statistics, which changes the spikes, resets and
    hence the membranes it measured. Each further pass runs the layer on the statistics written by the last
    one. Spike trains are discrete, so the iteration either lands on statistics that reproduce exactly (a
    fixed point) or returns to earlier ones (a cycle: a few neurons at the threshold fire or not depending on
    the statistics, and no exact fixed point exists). Returns the last moments and the gap: the W2 distance
    between the last two written statistics, 0 at a fixed point.
    """
    layer = ctx.layers[name]
    history = [(layer.running_mean.clone(), layer.running_var.clone())]
    for _ in range(max_iterations):
        moments = _pass(ctx, name, normalize=False, stop_after=calls)
        layer.write(moments)
        state = (layer.running_mean.clone(), layer.running_var.clone())
        if any(torch.equal(state[0], h[0]) and torch.equal(state[1], h[1]) for h in history):
            return moments, w2_distance(state, history[-1])
        history.append(state)
    warnings.warn(
        f"recalibrate_bn: the statistics of membrane norm {name!r} neither settled nor cycled in {max_iterations} "
        f"passes (last change {w2_distance(history[-1], history[-2]):.3g}); the last pass's statistics were written",
        stacklevel=3,
    )
    return moments, w2_distance(history[-1], history[-2])


def _single_pass(ctx: _Context) -> dict[str, PooledMoments]:
    """Every layer accumulates its inputs and normalises with what it has accumulated so far."""
    moments = {name: PooledMoments() for name in ctx.layers}

    def make(name: str, original: Callable) -> Callable:
        layer, m = ctx.layers[name], moments[name]

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            layer.measure(m, x)
            return layer.normalized_by(x, m)

        return forward

    with _intercepted(ctx.layers, make):
        ctx.measure(moments, lambda index: None)
    for m in moments.values():
        m.all_reduce()
    return moments


def _pass(ctx: _Context, name: str, normalize: bool, stop_after: list[int]) -> PooledMoments:
    """One pass measuring layer ``name``: it accumulates its inputs and, when ``normalize``, normalises
    with what it has accumulated so far (otherwise it runs on its running statistics). The forward of
    batch ``b`` stops after the layer's ``stop_after[b]``-th call."""
    layer, moments = ctx.layers[name], PooledMoments()
    seen = 0
    current = 0

    def start(index: int) -> None:
        nonlocal seen, current
        seen, current = 0, index

    def make(_: str, original: Callable) -> Callable:
        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            nonlocal seen
            layer.measure(moments, x)
            seen += 1
            if seen == stop_after[current]:
                raise _StopForward
            if not normalize:
                return original(x, *args, **kwargs)
            return layer.normalized_by(x, moments)

        return forward

    with _intercepted({name: layer}, make):
        ctx.measure({name: moments}, start)
    moments.all_reduce()
    return moments
