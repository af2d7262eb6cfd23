"""Host memory for CPU training: let glibc's ``malloc`` keep freed memory for reuse.

A training step frees and reallocates its activations, hundreds of MiB of them at CIFAR size. With
glibc's defaults every block larger than the (adaptive, at most 32 MiB) ``mmap`` threshold is a fresh
``mmap``: the kernel zeroes its pages as they are first touched, once per block per step, and the heap's top
is handed back to the system whenever more than 128 KiB of it is free. :func:`retain_freed_memory` turns
both off (``M_MMAP_MAX = 0``: every block comes from the heap; ``M_TRIM_THRESHOLD``: the heap is only
trimmed above 2 GiB free), so later steps reuse pages that are already mapped. The price is that the
process's resident memory stays at its peak, as GPU caching allocators do.

``benchmarks/compare.py --retain-freed-memory`` measures the effect on training throughput (every library
gains; ``benchmarks/results/compare.md`` holds the current numbers, with their machine). jemalloc or tcmalloc
through ``LD_PRELOAD`` do the same job.

The ``spikenorm`` console script calls it at start-up unless ``SPIKENORM_MALLOC=default`` is set in the
environment; a library import never does (it would change the whole process).
"""

from __future__ import annotations

import ctypes

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory(trim_threshold: int = 2**31 - 1) -> bool:
    """Keep freed memory in this process's glibc heap (see the module docstring).

    Args:
        trim_threshold: bytes of free memory at the top of the heap above which glibc may return it to the
            system (at most ``2**31 - 1``, an ``int`` for ``mallopt``).

    Returns:
        True when both settings took effect; False where there is no glibc ``mallopt`` (macOS, Windows,
        musl), and then nothing changed.
    """
    if not 0 < trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in (0, 2**31), got {trim_threshold}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
