"""Exact re-calibration of BN running statistics from data (Re-BN of CaRe-BN; PreciseBN for SNNs).

:func:`recalibrate_bn` replaces the running mean and variance of every spikenorm norm layer of a model by
the exact statistics of its inputs pooled over all samples of ``M`` batches (and over time, and space),
accumulated in float64 with Chan's parallel merge and reduced across processes when distributed:

    mu = (1 / N) sum_i x_i,    var = (1 / N) sum_i (x_i - mu)^2      (N = all samples of all batches)

written unbiased (``var N / (N - 1)``) for layers whose running variance is unbiased (torch convention).

Modes:

* ``"exact"`` (default): layer by layer in execution order, one pass over the batches per layer, so each
  layer's statistics are computed from inputs produced by upstream layers that already use their final
  re-calibrated statistics. ``L + 1`` passes for ``L`` layers.
* ``"single_pass"``: the CaRe-BN reference code: one pass in which every layer normalises with its
  partially accumulated statistics, so downstream layers see upstream activations normalised with
  not-yet-final statistics (methods.md 1.3 and 6.8).

During the passes the model runs in eval mode (neurons are stateless across calls, so no state leaks
between batches) under ``torch.no_grad``; the train/eval flags of every module are restored afterwards.
Layers whose statistics differ per time step (BNTT) are re-calibrated per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

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
        mean = x.mean(dim=dims)
        m2 = ((x - x.mean(dim=dims, keepdim=True)) ** 2).sum(dim=dims)
        self.merge(n, mean, m2)

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


def _reduce_dims(norm: TimeMajorNorm, x: Tensor) -> tuple[int, ...]:
    per_step = norm.running_mean.ndim > len(norm.feature_shape)  # BNTT: statistics per time step
    return norm.reduce_dims(x, over_time=not per_step)


def _normalized(norm: TimeMajorNorm, x: Tensor, moments: PooledMoments) -> Tensor:
    mean = moments.mean.to(x.dtype)
    var = moments.variance(unbiased=False).to(x.dtype)
    return norm.affine_transform(norm.normalize(x, mean, var))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    mode: Literal["exact", "single_pass"] = "exact",
) -> RecalibrationReport:
    """Overwrite the running statistics of every spikenorm norm layer with exact pooled statistics.

    Args:
        model: the network (its norm layers are found by type).
        batches: the data, e.g. ``M`` batches of replay-buffer states; each is passed to ``forward``.
        forward: ``forward(model, batch)``; defaults to ``model(batch)``.
        mode: ``"exact"`` (layer by layer) or ``"single_pass"`` (the reference code), see the module doc.

    Returns:
        A :class:`RecalibrationReport` (per-layer shift and statistics error, seconds spent).

    Raises:
        ValueError: no batches, an unknown mode, or a model without norm layers with running statistics.
    """
    if mode not in ("exact", "single_pass"):
        raise ValueError(f"unknown recalibration mode {mode!r}; available: exact, single_pass")
    batches = list(batches)
    if not batches:
        raise ValueError("recalibrate_bn needs at least one batch, got an empty iterable")
    norms = {name: m for name, m in model.named_modules() if isinstance(m, TimeMajorNorm) and hasattr(m, "running_mean")}
    if not norms:
        raise ValueError(f"{type(model).__name__} has no norm layer with running statistics to recalibrate")
    run = forward or (lambda m, batch: m(batch))
    flags = {m: m.training for m in model.modules()}
    start = time.perf_counter()
    before = {name: (n.running_mean.clone(), n.running_var.clone()) for name, n in norms.items()}
    samples: dict[str, int] = {}
    model.eval()
    try:
        if mode == "single_pass":
            moments = _pass(model, norms, batches, run, active=set(norms))
        else:
            moments = {}
            for name in _execution_order(model, norms, batches[0], run):
                moments.update(_pass(model, norms, batches, run, active={name}))
                _write(norms[name], moments[name])
        for name, m in moments.items():
            _write(norms[name], m)
            samples[name] = m.count
    finally:
        for module, flag in flags.items():
            module.training = flag
    report = RecalibrationReport(seconds=time.perf_counter() - start, batches=len(batches), mode=mode)
    for name, norm in norms.items():
        mean0, var0 = before[name]
        report.layers[name] = LayerRecalibration(
            mean_shift=float((norm.running_mean - mean0).abs().mean()),
            var_shift=float((norm.running_var - var0).abs().mean()),
            stat_error=float(torch.sqrt((mean0 - norm.running_mean) ** 2
                                        + (var0.clamp_min(0).sqrt() - norm.running_var.clamp_min(0).sqrt()) ** 2).mean()),
            samples=samples[name],
        )
    return report


def _execution_order(model: nn.Module, norms: dict[str, TimeMajorNorm], batch: Any, run: Callable) -> list[str]:
    order: list[str] = []
    handles = [
        norm.register_forward_hook(lambda m, i, o, name=name: order.append(name) if name not in order else None)
        for name, norm in norms.items()
    ]
    try:
        run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in norms if name not in order]
    if missing:
        raise ValueError(f"the forward never called these norm layers, so they cannot be recalibrated: {missing}")
    return order


def _pass(
    model: nn.Module, norms: dict[str, TimeMajorNorm], batches: list[Any], run: Callable, active: set[str]
) -> dict[str, PooledMoments]:
    """One pass over the batches; active layers accumulate their inputs and normalise with them."""
    moments = {name: PooledMoments() for name in active}

    def hook(name: str) -> Callable:
        def accumulate(norm: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            x = inputs[0]
            moments[name].add(x, _reduce_dims(norm, x))
            return _normalized(norm, x, moments[name])

        return accumulate

    handles = [norms[name].register_forward_hook(hook(name)) for name in active]
    try:
        for batch in batches:
            run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    for m in moments.values():
        m.all_reduce()
    return moments


def _write(norm: TimeMajorNorm, moments: PooledMoments) -> None:
    norm.running_mean.copy_(moments.mean.to(norm.running_mean.dtype))
    norm.running_var.copy_(moments.variance(unbiased=norm.running_var_unbiased).to(norm.running_var.dtype))
