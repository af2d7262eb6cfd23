"""Moments (count, mean, variance per feature): the one place spikenorm computes and pools them.

Three accumulators, because three needs differ in an essential way:

* :func:`batch_moments`: one batch, differentiable, in the input's precision (float32 for half precision); pooled
  across processes by an autograd-aware all-reduce of sums, so a norm's gradient flows through the global
  statistics as with ``SyncBatchNorm``. Used by every norm layer in training.
* :class:`PooledMoments`: many batches of any sizes, no gradient, float64, merged exactly (Chan et al.) and gathered
  across processes once at the end. Used by re-calibration and diagnostics.
* :class:`SequenceMoments`: the per-step moments of the ``T`` steps of one sequence (each already pooled over the
  batch and the processes, every step weighing the same), summed in float64 over the calls of an online sequence;
  it also keeps the mean per-step variance, which pooled moments lose. Used by the once-per-sequence running
  updates (:mod:`spikenorm.norm.sequence_update`).

Under DDP the training statistics are those of the global batch (exactly what one process would compute on the
concatenated data). The reduction uses the two-pass form ``mean = sum(x)/N``, ``var = sum((x - mean)^2)/N`` (both
sums all-reduced), which avoids the cancellation of ``E[x^2] - E[x]^2`` in float32.

Mixed precision: half-precision inputs (bfloat16, float16; what a convolution returns under ``torch.autocast``)
are upcast to float32 before any reduction (:func:`~spikenorm.precision.accumulation_dtype`), so the statistics,
and the running buffers they update, are float32 whatever the input precision. The upcast is exact; summing ``B T H W``
values in bfloat16 (8 significant bits) would not be.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from spikenorm import fused
from spikenorm.distributed import distributed_world_size
from spikenorm.precision import accumulation_dtype


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` over processes. Every rank's loss depends on ``y``, so the gradient of the
    total loss with respect to ``x_r`` is the sum over ranks of ``dL_r/dy``: all-reduce in backward."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_reduce_sum(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


def batch_moments(x: Tensor, dims: Sequence[int], sync: bool = True) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance of ``x`` over ``dims`` and the number of samples they pool.

    Args:
        x: input tensor; half precision is reduced in float32 (:func:`~spikenorm.precision.accumulation_dtype`;
            the gradient flows back through the upcast).
        dims: axes to reduce; the remaining axes index the statistics.
        sync: pool over all processes when distributed (requires equal shapes on every rank).

    Returns:
        ``(mean, var, count)``, in :func:`~spikenorm.precision.accumulation_dtype` of ``x``; ``mean`` and ``var``
        have the shape of ``x`` with ``dims`` removed.
    """
    dims = tuple(d % x.ndim for d in dims)
    local_count = math.prod([x.shape[d] for d in dims])
    world = distributed_world_size() if sync else 1
    if world == 1:
        var, mean = fused.var_mean(x, dims, accumulation_dtype(x.dtype))
        return mean, var, local_count
    x = x.to(accumulation_dtype(x.dtype))
    count = local_count * world
    mean = _all_reduce_sum(x.sum(dim=dims)) / count
    centred = x - mean.reshape(_keepdim_shape(x, dims))
    var = _all_reduce_sum(centred.pow(2).sum(dim=dims)) / count
    return mean, var, count


def _keepdim_shape(x: Tensor, dims: tuple[int, ...]) -> list[int]:
    return [1 if d in dims else size for d, size in enumerate(x.shape)]


def unbiased(var: Tensor, count: int) -> Tensor:
    """Bessel-corrected variance ``var * n / (n - 1)`` (the running-variance convention of torch BN)."""
    return var * (count / max(count - 1, 1))


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

        float64 input is reduced in float64 (:func:`batch_moments`). Half-precision input (bfloat16, float16) is
        upcast to float32 first (exact; its own sums would keep 8 or 11 significant bits). float32 input is summed
        in float32 around a per-feature shift ``c`` (the mean accumulated so far, or this batch's mean at first):
        ``mean = c + S1 / n``, ``M2 = S2 - S1^2 / n`` with ``S1 = sum (x - c)``, ``S2 = sum (x - c)^2``. Centering
        removes the cancellation of raw power sums, so the batch moments are accurate to a few float32 ulps (the
        precision of the float32 running buffers), in two passes over ``x``.
        """
        x = x.detach().to(accumulation_dtype(x.dtype))
        if self.inspect is not None:
            self.inspect(x)
        if x.dtype == torch.float64:
            mean, var, n = batch_moments(x, dims, sync=False)
            self.merge(n, mean, var * n)
            return
        n = math.prod([x.shape[d] for d in dims])
        shift = (x.mean(dim=dims) if self.mean is None else self.mean).to(x.dtype)
        centered = x - shift.reshape(_keepdim_shape(x, dims))
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


class SequenceMoments:
    """Float64 sums over the steps of one sequence of ``mu_t``, ``var_t`` and ``var_t + mu_t^2`` (per feature).

    Each training forward adds the per-step batch moments ``mu_t`` and biased ``var_t`` of its steps (``[T', C]``,
    already pooled across processes by :func:`batch_moments`); the sums give

    * ``mean_t mu_t`` (:meth:`mean`),
    * ``mean_t var_t``, the mean per-step variance without the between-step spread of ``mu_t``
      (:meth:`mean_step_variance`),
    * ``mean_t (var_t + mu_t^2) - (mean_t mu_t)^2``, the biased variance pooled over all ``T B H W`` samples
      (:meth:`pooled_variance`).
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.steps = 0
        self._sum_mean: Tensor | None = None
        self._sum_var: Tensor | None = None
        self._sum_square: Tensor | None = None

    @torch.no_grad()
    def add(self, mean_t: Tensor, var_t: Tensor) -> None:
        """Add the moments ``[T', *features]`` of ``T'`` more steps (``var_t`` biased)."""
        mean_t, var_t = mean_t.double(), var_t.double()
        sums = (mean_t.sum(0), var_t.sum(0), (var_t + mean_t**2).sum(0))
        if self.steps:
            sums = (self._sum_mean + sums[0], self._sum_var + sums[1], self._sum_square + sums[2])
        self._sum_mean, self._sum_var, self._sum_square = sums
        self.steps += mean_t.shape[0]

    def _require_steps(self) -> None:
        if not self.steps:
            raise ValueError("no training step has been accumulated in this sequence")

    def mean(self) -> Tensor:
        """``mean_t mu_t`` (float64)."""
        self._require_steps()
        return self._sum_mean / self.steps

    def mean_step_variance(self) -> Tensor:
        """``mean_t var_t``: the average per-step biased variance (float64)."""
        self._require_steps()
        return self._sum_var / self.steps

    def pooled_variance(self) -> Tensor:
        """``mean_t (var_t + mu_t^2) - (mean_t mu_t)^2``: the biased variance of all samples of all steps
        (float64, clamped at 0 against rounding)."""
        mean = self.mean()
        return (self._sum_square / self.steps - mean**2).clamp_min(0)
