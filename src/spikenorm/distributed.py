"""Process-group helpers: the world size, and summing monitoring totals (spike counts, operation counts)
across processes.

Monitors accumulate plain sums on every process; under DDP each process has seen a shard of the data, so
the totals of the whole run are the element-wise sums over processes. :func:`sum_across_processes` does
that with two collective calls, whatever the tensors' lengths: a process that recorded fewer time steps
(or nothing at all, an empty tensor) contributes zeros to the missing tail.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_world_size() -> int:
    """Number of processes to reduce over (1 when not running distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _collective_device() -> torch.device:
    """Where the process group can reduce tensors: the current GPU for NCCL, the CPU otherwise."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_processes(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise sums over processes of 1-D tensors, padded with zeros to the longest length.

    Every process must call this with the same keys (their order does not matter) and tensors of one
    dtype; lengths may differ between processes. Without an initialised ``torch.distributed`` process
    group the tensors come back unchanged. Results keep each input tensor's device.

    Raises:
        ValueError: a tensor that is not 1-D, or tensors of different dtypes.
    """
    if not tensors:
        return {}
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise ValueError(f"sum_across_processes needs tensors of one dtype, got {sorted(map(str, dtypes))}")
    bad = [k for k, t in tensors.items() if t.ndim != 1]
    if bad:
        raise ValueError(f"sum_across_processes needs 1-D tensors; not 1-D: {bad}")
    if distributed_world_size() == 1:
        return dict(tensors)
    keys = sorted(tensors)
    device = _collective_device()
    lengths = torch.tensor([tensors[k].numel() for k in keys], dtype=torch.int64, device=device)
    dist.all_reduce(lengths, op=dist.ReduceOp.MAX)
    sizes = lengths.tolist()
    flat = torch.zeros(sum(sizes), dtype=dtypes.pop(), device=device)
    start = 0
    for key, size in zip(keys, sizes):
        local = tensors[key]
        flat[start : start + local.numel()] = local.to(device)
        start += size
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return {key: part.to(tensors[key].device) for key, part in zip(keys, flat.split(sizes))}
