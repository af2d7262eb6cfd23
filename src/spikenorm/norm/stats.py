"""Batch moments for norm layers, pooled across processes when ``torch.distributed`` is initialised.

Every spikenorm norm layer computes its training statistics here, so that under DDP the statistics are
those of the global batch (exactly what one process would compute on the concatenated data) and the
gradient flows through the cross-process reduction, like ``SyncBatchNorm``. The reduction uses the
two-pass form ``mean = sum(x)/N``, ``var = sum((x - mean)^2)/N`` (both sums all-reduced), which avoids the
cancellation of ``E[x^2] - E[x]^2`` in float32.

Mixed precision: half-precision inputs (bfloat16, float16; what a convolution returns under ``torch.autocast``)
are upcast to float32 before any reduction (:func:`accumulation_dtype`), so the statistics, and the running
buffers they update, are float32 whatever the input precision. The upcast is exact; summing ``B T H W``
values in bfloat16 (8 significant bits) would not be.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from spikenorm.distributed import distributed_world_size


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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype spikenorm computes statistics and neuron state in for inputs of ``dtype``: float32 for the half
    precisions (bfloat16, float16), ``dtype`` itself otherwise (float32 stays float32, float64 float64)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _all_reduce_sum(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


def batch_moments(x: Tensor, dims: Sequence[int], sync: bool = True) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance of ``x`` over ``dims`` and the number of samples they pool.

    Args:
        x: input tensor; half precision is reduced in float32 (:func:`accumulation_dtype`; the gradient flows
            back through the upcast).
        dims: axes to reduce; the remaining axes index the statistics.
        sync: pool over all processes when distributed (requires equal shapes on every rank).

    Returns:
        ``(mean, var, count)``, in :func:`accumulation_dtype` of ``x``; ``mean`` and ``var`` have the shape of
        ``x`` with ``dims`` removed.
    """
    x = x.to(accumulation_dtype(x.dtype))
    dims = tuple(d % x.ndim for d in dims)
    local_count = 1
    for d in dims:
        local_count *= x.shape[d]
    world = distributed_world_size() if sync else 1
    if world == 1:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return mean, var, local_count
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
