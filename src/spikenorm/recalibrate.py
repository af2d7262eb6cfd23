"""Exact re-calibration of BN running statistics from data (Re-BN of CaRe-BN; PreciseBN for SNNs).

:func:`recalibrate_bn` replaces the running mean and variance of every BN-like layer of a model by the
exact statistics of its inputs pooled over all samples of ``M`` batches (and over time, and space),
accumulated in float64 with Chan's parallel merge and reduced across processes when distributed:

    mu = (1 / N) sum_i x_i,    var = (1 / N) sum_i (x_i - mu)^2      (N = all samples of all batches)

written unbiased (``var N / (N - 1)``) for layers whose running variance is unbiased (torch convention).

Layers covered: every spikenorm norm layer (:class:`~spikenorm.norm.TimeMajorNorm`, including MPBN membrane
norms inside neurons) and every torch ``_BatchNorm`` with running statistics (``BatchNorm1d/2d/3d``,
``SyncBatchNorm``, SpikingJelly's multi-step ``layer.BatchNorm*d``, whose channel axis is 2 of
``[T, B, C, ...]``). A layer called several times per forward (a BN reused at every time step, as snnTorch
models loop over time) pools all of its calls, so its statistics are over batch and time.

Why not ``torch.optim.swa_utils.update_bn`` or PreciseBN (peers.md section 4): ``update_bn`` never resets
neuron state, so membranes leak from one batch into the next, and it skips BN layers that are not
``_BatchNorm`` (MPBN inside neurons); PreciseBN refuses a BN called more than once per forward; neither
pools over time steps exactly nor reduces across processes. Here every neuron's state is cleared before
every batch (:func:`spikenorm.interop.reset_neuron_states`: spikenorm, snnTorch ``reset_mem``, SpikingJelly
``reset``).

Modes:

* ``"exact"`` (default): layer by layer in execution order, one pass over the batches per layer, so each
  layer's statistics are computed from inputs produced by upstream layers that already use their final
  re-calibrated statistics (the fixed point: running the model in eval mode afterwards feeds every layer
  inputs whose pooled statistics are exactly its running statistics). ``L + 1`` passes for ``L`` layers.
  A membrane norm (MPBN) sees membranes that depend on its own earlier outputs through spikes and resets,
  so its pass is repeated on its written statistics until they reproduce themselves (usually 1 to 3 more
  passes; a warning if they have not settled after 20).
* ``"single_pass"``: the CaRe-BN reference code: one pass in which every layer normalises with its
  partially accumulated statistics, so downstream layers see upstream activations normalised with
  not-yet-final statistics (methods.md 1.3 and 6.8). Costs one forward per batch.

During the passes the model runs in eval mode under ``torch.no_grad``; the train/eval flags of every
module are restored afterwards and no momentum is touched. Layers whose statistics differ per time step
(BNTT) are re-calibrated per step.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.interop import reset_neuron_states
from spikenorm.neurons import spiking_neurons
from spikenorm.norm import TimeMajorNorm
from spikenorm.norm.stats import distributed_world_size


class PooledMoments:
    """Count, mean and sum of squared deviations (M2) per feature, merged exactly (Chan et al. 1979).

    Merging ``(n1, m1, M2_1)`` and ``(n2, m2, M2_2)``: ``n = n1 + n2``, ``m = m1 + (m2 - m1) n2 / n``,
    ``M2 = M2_1 + M2_2 + (m2 - m1)^2 n1 n2 / n``. Kept in float64.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor, dims: tuple[int, ...]) -> None:
        """Merge the samples of ``x`` over ``dims`` (the remaining axes index the features)."""
        x = x.detach().double()
        n = 1
        for d in dims:
            n *= x.shape[d]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        self.merge(n, mean, var * n)

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
    between N(mu_before, var_before) and N(mu_after, var_after) over features (``stat_error``), and the
    number of samples pooled per feature."""

    mean_shift: float
    var_shift: float
    stat_error: float
    samples: int


@dataclass
class RecalibrationReport:
    layers: dict[str, LayerRecalibration] = field(default_factory=dict)
    seconds: float = 0.0
    batches: int = 0
    mode: str = "exact"


class StatisticsLayer:
    """A BN-like layer seen through what re-calibration needs: its pooled axes, its eval-mode map given
    statistics, and its running-statistics buffers."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def running_mean(self) -> Tensor:
        return self.module.running_mean

    @property
    def running_var(self) -> Tensor:
        return self.module.running_var

    unbiased: bool = True

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """The layer's eval-mode output for input ``x`` had its running statistics been ``mean, var``."""
        raise NotImplementedError

    def write(self, moments: PooledMoments) -> None:
        self.running_mean.copy_(moments.mean.to(self.running_mean.dtype))
        self.running_var.copy_(moments.variance(unbiased=self.unbiased).to(self.running_var.dtype))


class _SpikenormNorm(StatisticsLayer):
    """A :class:`~spikenorm.norm.TimeMajorNorm` (``[T, B, *features, ...]``; BNTT keeps one statistic per step)."""

    def __init__(self, module: TimeMajorNorm) -> None:
        super().__init__(module)
        self.unbiased = module.running_var_unbiased

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        per_step = self.module.running_mean.ndim > len(self.module.feature_shape)
        return self.module.reduce_dims(x, over_time=not per_step)

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return self.module.affine_transform(self.module.normalize(x, mean, var))


class _TorchBatchNorm(StatisticsLayer):
    """A torch ``_BatchNorm``: channels on axis 1 of ``[N, C, ...]``, or on axis 2 of ``[T, B, C, ...]`` for
    SpikingJelly's multi-step BN (``step_mode == "m"``)."""

    def channel_axis(self) -> int:
        return 2 if getattr(self.module, "step_mode", "s") == "m" else 1

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(d for d in range(x.ndim) if d != self.channel_axis())

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[self.channel_axis()] = -1
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.module.eps)
        if self.module.affine:
            y = y * self.module.weight.reshape(shape) + self.module.bias.reshape(shape)
        return y


def statistics_layers(model: nn.Module) -> dict[str, StatisticsLayer]:
    """Every layer of ``model`` with running statistics to re-calibrate, by qualified name."""
    layers: dict[str, StatisticsLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, TimeMajorNorm) and hasattr(module, "running_mean"):
            layers[name] = _SpikenormNorm(module)
        elif isinstance(module, _BatchNorm) and module.running_mean is not None:
            layers[name] = _TorchBatchNorm(module)
    return layers


def _take(batches: Iterable[Any], num_batches: int | None) -> list[Any]:
    if num_batches is None:
        taken = list(batches)
        if not taken:
            raise ValueError("recalibrate_bn needs at least one batch, got an empty iterable")
        return taken
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    taken = list(itertools.islice(batches, num_batches))
    if len(taken) < num_batches:
        raise ValueError(
            f"recalibrate_bn was asked for num_batches={num_batches} but the data gave only {len(taken)} "
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
) -> RecalibrationReport:
    """Overwrite the running statistics of every BN-like layer with exact pooled statistics.

    Args:
        model: the network (its BN-like layers are found by type, see the module doc).
        batches: the data, e.g. ``M`` batches of replay-buffer states; each is passed to ``forward``.
        forward: ``forward(model, batch)``; defaults to ``model(batch)``.
        mode: ``"exact"`` (layer by layer) or ``"single_pass"`` (the reference code), see the module doc.
        num_batches: use exactly this many batches from ``batches`` (all of them when None).

    Returns:
        A :class:`RecalibrationReport` (per-layer shift and statistics error, seconds spent).

    Raises:
        ValueError: no batches, fewer batches than ``num_batches``, ``num_batches < 1``, an unknown mode,
            a model without BN-like layers with running statistics, or a layer the forward never calls.
    """
    if mode not in ("exact", "single_pass"):
        raise ValueError(f"unknown recalibration mode {mode!r}; available: exact, single_pass")
    layers = statistics_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BN layer with running statistics to recalibrate "
            "(looked for spikenorm norm layers and torch _BatchNorm layers with track_running_stats=True)"
        )
    batches = _take(batches, num_batches)
    run = forward or (lambda m, batch: m(batch))
    flags = {m: m.training for m in model.modules()}
    start = time.perf_counter()
    before = {name: (layer.running_mean.clone(), layer.running_var.clone()) for name, layer in layers.items()}
    samples: dict[str, int] = {}
    model.eval()
    try:
        if mode == "single_pass":
            moments = _pass(model, layers, batches, run, active=set(layers))
        else:
            moments = {}
            recurrent = _membrane_norm_names(model, layers)
            for name in _execution_order(model, layers, batches[0], run):
                moments.update(_pass(model, layers, batches, run, active={name}))
                layers[name].write(moments[name])
                if name in recurrent:
                    moments[name] = _fixed_point(model, layers, batches, run, name, moments[name])
        for name, m in moments.items():
            layers[name].write(m)
            samples[name] = m.count
    finally:
        reset_neuron_states(model)
        for module, flag in flags.items():
            module.training = flag
    report = RecalibrationReport(seconds=time.perf_counter() - start, batches=len(batches), mode=mode)
    for name, layer in layers.items():
        mean0, var0 = before[name]
        mean1, var1 = layer.running_mean, layer.running_var
        report.layers[name] = LayerRecalibration(
            mean_shift=float((mean1 - mean0).abs().mean()),
            var_shift=float((var1 - var0).abs().mean()),
            stat_error=float(torch.sqrt((mean0 - mean1) ** 2
                                        + (var0.clamp_min(0).sqrt() - var1.clamp_min(0).sqrt()) ** 2).mean()),
            samples=samples[name],
        )
    return report


def _run_fresh(model: nn.Module, run: Callable, batch: Any) -> None:
    """One forward from fresh neuron state."""
    reset_neuron_states(model)
    run(model, batch)


def _execution_order(model: nn.Module, layers: dict[str, StatisticsLayer], batch: Any, run: Callable) -> list[str]:
    order: list[str] = []
    handles = [
        layer.module.register_forward_hook(lambda m, i, o, name=name: order.append(name) if name not in order else None)
        for name, layer in layers.items()
    ]
    try:
        _run_fresh(model, run, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in order]
    if missing:
        raise ValueError(f"the forward never called these BN layers, so they cannot be recalibrated: {missing}")
    return order


def _membrane_norm_names(model: nn.Module, layers: dict[str, StatisticsLayer]) -> set[str]:
    """Layers that normalise a neuron's membrane: their input at step t depends on their own output at
    earlier steps (through the spike and reset), so their statistics are a fixed point."""
    membrane_norms = {id(n.membrane_norm) for _, n in spiking_neurons(model) if n.membrane_norm is not None}
    return {name for name, layer in layers.items() if id(layer.module) in membrane_norms}


def _fixed_point(
    model: nn.Module, layers: dict[str, StatisticsLayer], batches: list[Any], run: Callable, name: str,
    moments: PooledMoments, max_iterations: int = 20,
) -> PooledMoments:
    """Re-measure a membrane norm's inputs with its written statistics until they reproduce themselves.

    The first pass normalised with partially accumulated statistics, which changes the spikes, resets and
    hence the membranes it measured. Each further pass runs the layer on the statistics written by the last
    one; spike trains are discrete, so the iteration usually lands on statistics that reproduce exactly.
    """
    for _ in range(max_iterations):
        again = _pass(model, layers, batches, run, active={name}, normalize=False)[name]
        layers[name].write(again)
        if torch.allclose(again.mean, moments.mean, rtol=1e-12, atol=1e-15) and torch.allclose(
            again.m2, moments.m2, rtol=1e-12, atol=1e-15
        ):
            return again
        moments = again
    warnings.warn(
        f"recalibrate_bn: the statistics of membrane norm {name!r} did not settle in {max_iterations} passes "
        "(spikes keep changing with them); the last pass's statistics were written",
        stacklevel=3,
    )
    return moments


def _pass(
    model: nn.Module, layers: dict[str, StatisticsLayer], batches: list[Any], run: Callable, active: set[str],
    normalize: bool = True,
) -> dict[str, PooledMoments]:
    """One pass over the batches; active layers accumulate their inputs and, when ``normalize``, normalise
    with what they accumulated so far (otherwise they run on their running statistics)."""
    moments = {name: PooledMoments() for name in active}

    def hook(name: str) -> Callable:
        layer = layers[name]

        def accumulate(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            x = inputs[0]
            moments[name].add(x, layer.reduce_dims(x))
            if not normalize:
                return None
            m = moments[name]
            return layer.normalized(x, m.mean.to(x.dtype), m.variance(unbiased=False).to(x.dtype))

        return accumulate

    handles = [layers[name].module.register_forward_hook(hook(name)) for name in active]
    try:
        for batch in batches:
            _run_fresh(model, run, batch)
    finally:
        for handle in handles:
            handle.remove()
    for m in moments.values():
        m.all_reduce()
    return moments
