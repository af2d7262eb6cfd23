"""Exact re-calibration of BN running statistics from data (Re-BN of CaRe-BN; PreciseBN for SNNs).

:func:`recalibrate_bn` replaces the running mean and variance of every layer with running statistics
(:func:`~spikenorm.statistics_layers.statistics_layers`: spikenorm norms, MPBN inside neurons, torch and SpikingJelly
BN) by the exact statistics of its inputs pooled over all samples of ``M`` batches (and over time, and space),
accumulated in float64 (:class:`~spikenorm.norm.stats.PooledMoments`) and reduced across processes when distributed:

    mu = (1 / N) sum_i x_i,    var = (1 / N) sum_i (x_i - mu)^2      (N = all samples of all batches)

written unbiased (``var N / (N - 1)``) for layers whose running variance is unbiased (torch convention). A layer
called several times per forward (a BN reused at every time step, as snnTorch models loop over time) pools all of
its calls, so its statistics are over batch and time.

Why not ``torch.optim.swa_utils.update_bn`` or PreciseBN (fvcore's ``update_bn_stats``): ``update_bn`` never
resets neuron state, so membranes leak from one batch into the next, and it skips BN layers that are not
``_BatchNorm`` (MPBN inside neurons); PreciseBN refuses a BN called more than once per forward; neither
pools over time steps exactly nor reduces across processes. Here every batch runs from reset neuron state
(:mod:`spikenorm.statistics_passes`), and the audits of :mod:`spikenorm.recalibration_audits` refuse state that
survives the resets and NaN/Inf activations before any statistic is written.

Modes (:data:`RecalibrationMode`; their costs are in ``benchmarks/results/recalibration.md``):

* ``"exact"`` (default): layer by layer in execution order, one pass over the batches per layer, so each
  layer's statistics are computed from inputs produced by upstream layers that already use their final
  re-calibrated statistics (the fixed point: running the model in eval mode afterwards feeds every layer
  inputs whose pooled statistics are exactly its running statistics). The first, full pass records the
  execution order and each layer's calls per batch while it measures the first layer; every later pass
  stops a batch's forward as soon as the layer it measures has seen all of that batch's inputs, so a
  layer ``k`` deep runs only the part of the network up to it.
  A membrane norm (MPBN) sees membranes that depend on its own earlier outputs through spikes and resets,
  so its pass is repeated on its written statistics until they reproduce themselves, or return to earlier
  values (a cycle: neurons sitting at the threshold fire or not depending on the statistics, so no exact
  fixed point exists; the report's ``fixed_point_gap`` says how far apart the cycle's statistics are), at
  most 10 more passes.
* ``"single_pass"``: the CaRe-BN reference code: one pass in which every layer normalises with its
  partially accumulated statistics, so downstream layers see upstream activations normalised with
  not-yet-final statistics (where the CaRe-BN paper's formula pools each layer exactly). A layer hands on what
  it would with those statistics (:meth:`~spikenorm.statistics_layers.StatisticsLayer.normalized`).

During the passes the model runs in eval mode under ``torch.no_grad``; the train/eval flags of every
module are restored afterwards and no momentum is touched. Layers whose statistics differ per time step
(BNTT) are re-calibrated per step; those whose step ``t`` uses the statistics accumulated over steps ``0..t``
(TAB, :attr:`~spikenorm.norm.TimeMajorNorm.accumulates_over_time`) get, for every ``t``, the statistics pooled over
steps ``0..t`` of all batches, written unbiased with ``N_t = (t + 1) N`` samples.

Mixed precision: called under ``torch.autocast`` (a Lightning ``bf16-mixed`` run), the model runs as it does in
training, so each layer is measured on the half-precision inputs it actually sees, upcast to float32 before they
are summed; the layer normalises in float32 during the passes and hands on its output in its input's dtype, and
the float32 running statistics receive the float64 pooled moments.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from spikenorm.modes import eval_mode
from spikenorm.neurons import spiking_neurons
from spikenorm.norm.stats import PooledMoments
from spikenorm.recalibration_audits import check_resets, check_resettable, measure_all_batches
from spikenorm.statistics_layers import StatisticsLayer, statistics_layers
from spikenorm.statistics_passes import PassContext, ResetFn, StopForward, intercepted, take_batches
from spikenorm.time_steps import check_time_steps_value
from spikenorm.validation import check_choice

__all__ = [
    "LayerRecalibration",
    "PooledMoments",
    "RecalibrationMode",
    "RecalibrationReport",
    "ResetFn",
    "StatisticsLayer",
    "check_resettable",
    "recalibrate_bn",
    "statistics_layers",
    "take_batches",
    "w2_distance",
]

RecalibrationMode = Literal["exact", "single_pass"]
"""How :func:`recalibrate_bn` schedules its passes (see the module doc)."""


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


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    mode: RecalibrationMode = "exact",
    num_batches: int | None = None,
    reset_fn: ResetFn | None = None,
    time_steps: int | None = None,
) -> RecalibrationReport:
    """Overwrite the running statistics of every BN-like layer with exact pooled statistics.

    Args:
        model: the network (its BN-like layers are found by type:
            :func:`~spikenorm.statistics_layers.statistics_layers`).
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
            module whose state survives the resets (:func:`~spikenorm.recalibration_audits.check_resets`; pass
            ``reset_fn``), a NaN/Inf in the inputs of a measured layer (the layer, batch index and counts are
            named), or a layer input or batch that is not ``[T, B, ...]`` with the known ``T`` (see
            ``time_steps``). On any error the running statistics are left as they were.
        TypeError: without ``forward``, a batch that is a tuple or list (e.g. ``(x, y)``), before the model runs.
    """
    check_choice(mode, RecalibrationMode, "recalibration mode")
    if time_steps is not None:
        check_time_steps_value(time_steps, "recalibrate_bn: time_steps")
    layers = statistics_layers(model, time_steps)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BN layer with running statistics to recalibrate "
            "(looked for spikenorm norm layers and torch _BatchNorm layers with track_running_stats=True)"
        )
    ctx = PassContext(model, layers, take_batches(batches, num_batches), forward, reset_fn)
    ctx.check_batches(time_steps)
    start = time.perf_counter()
    before = {name: (layer.running_mean.clone(), layer.running_var.clone()) for name, layer in layers.items()}
    with eval_mode(model):
        try:
            check_resets(ctx)
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


def _exact(ctx: PassContext) -> tuple[dict[str, PooledMoments], dict[str, float]]:
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


def _first_layer_pass(ctx: PassContext) -> tuple[dict[str, PooledMoments], list[str], dict[str, list[int]]]:
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

    with intercepted(ctx.layers, make):
        measure_all_batches(ctx, measured, start)
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


def _fixed_point(
    ctx: PassContext, name: str, calls: list[int], max_iterations: int = 10
) -> tuple[PooledMoments, float]:
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


def _single_pass(ctx: PassContext) -> dict[str, PooledMoments]:
    """Every layer accumulates its inputs and normalises with what it has accumulated so far."""
    moments = {name: PooledMoments() for name in ctx.layers}

    def make(name: str, original: Callable) -> Callable:
        layer, m = ctx.layers[name], moments[name]

        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            layer.measure(m, x)
            return layer.normalized_by(x, m)

        return forward

    with intercepted(ctx.layers, make):
        measure_all_batches(ctx, moments, lambda index: None)
    for m in moments.values():
        m.all_reduce()
    return moments


def _pass(ctx: PassContext, name: str, normalize: bool, stop_after: list[int]) -> PooledMoments:
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
                raise StopForward
            if not normalize:
                return original(x, *args, **kwargs)
            return layer.normalized_by(x, moments)

        return forward

    with intercepted({name: layer}, make):
        measure_all_batches(ctx, {name: moments}, start)
    moments.all_reduce()
    return moments
