"""Peak tensor memory of a call, on CPU or CUDA.

``peak_memory_bytes(fn)`` is the highest amount of tensor memory that torch held live while ``fn()`` ran,
above the amount held when it started.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` at the start (the caching allocator's live-tensor bytes, not its reserve).
- CPU: torch keeps no peak counter, so ``fn`` runs under ``torch.profiler.profile(profile_memory=True)``.
  Every allocation and free of torch's CPU allocator is then reported to the profiler as an
  ``_ExtraFields_Allocation`` event carrying ``alloc_size`` (+ on allocation, - on free) and
  ``total_allocated``, the allocator's running total of live bytes it has seen allocated (kept under a
  lock by c10's ``ProfiledCPUMemoryReporter``). The peak is ``max(total_allocated)`` over the events,
  minus the level before the first event. Caveats: frees of blocks allocated *before* the profiler
  started are not reported (c10 warns once), so memory released by ``fn`` that it did not allocate is
  not credited and the result is an upper bound in that case; memory that oneDNN or other libraries
  allocate outside torch's allocator (e.g. convolution scratchpads) is not tensor memory and not seen.
  The profiler slows ``fn`` down; time it separately.

    python benchmarks/memory.py   # self-check: three 10 MB tensors at once ~30 MB, one at a time ~10 MB
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak live tensor bytes allocated while ``fn()`` runs, above the level at its start.

    ``device`` picks the accounting: CUDA allocator statistics for a CUDA device, the profiler's CPU
    allocation events otherwise. Default: CUDA when available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    if device.type != "cpu":
        raise ValueError(f"peak_memory_bytes supports cpu and cuda devices, got {device}")
    return _cpu_peak(fn)


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - start, 0)


def _walk(nodes) -> Iterator:
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def cpu_allocation_events(fn: Callable[[], object]) -> list[tuple[int, int, int]]:
    """``(time ns, bytes (+alloc / -free), allocator total after it)`` of every CPU allocation event of
    ``fn()``, in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None or not hasattr(results, "experimental_event_tree"):
        raise RuntimeError("this torch profiler exposes no event tree; cannot measure CPU memory")
    alloc_type = torch._C._profiler._ExtraFields_Allocation
    events = []
    for node in _walk(results.experimental_event_tree()):
        fields = node.extra_fields
        if isinstance(fields, alloc_type) and fields.device.type == "cpu":
            events.append(
                (
                    node.start_time_ns,
                    int(fields.alloc_size),
                    int(fields.total_allocated),
                )
            )
    events.sort(key=lambda e: e[0])
    return events


def _cpu_peak(fn: Callable[[], object]) -> int:
    events = cpu_allocation_events(fn)
    if not events:
        return 0
    _, first_size, first_total = events[0]
    baseline = first_total - first_size  # allocator total just before fn's first allocation event
    return max(max(total for _, _, total in events) - baseline, 0)


def _self_check() -> None:
    mb = 10 * 2**20
    n = mb // 4  # float32 elements of 10 MiB

    def together() -> None:
        a, b, c = torch.empty(n), torch.empty(n), torch.empty(n)
        del a, b, c

    def one_at_a_time() -> None:
        for _ in range(3):
            a = torch.ones(n)
            del a

    def chained() -> None:  # x -> y -> z with x freed after y: peak is two live tensors, 20 MiB
        x = torch.ones(n)
        y = x * 2
        del x
        z = y + 1
        del y, z

    def autograd() -> None:  # forward saves nothing big for add; mul saves both inputs
        w = torch.ones(n, requires_grad=True)
        (w * w).sum().backward()  # live: w, w*w (10+10), then grad (10) while w*w freed -> ~30 MiB max

    checks = [
        ("three 10 MiB at once", together, 3 * mb),
        ("three 10 MiB one at a time", one_at_a_time, mb),
        ("chained ops, two live", chained, 2 * mb),
    ]
    ok = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, fn, expected in checks:
        if device == "cuda":
            fn_dev = _on_cuda(fn)
        else:
            fn_dev = fn
        got = peak_memory_bytes(fn_dev, device)
        good = abs(got - expected) <= 0.03 * expected
        ok &= good
        print(f"{name}: {got / 2**20:.2f} MiB (expected {expected / 2**20:.0f}) {'ok' if good else 'WRONG'}")
    got = peak_memory_bytes(autograd, "cpu")
    print(f"autograd w*w backward (cpu, informational): {got / 2**20:.2f} MiB")
    print("PASS" if ok else "FAIL")
    if not ok:
        raise SystemExit(1)


def _on_cuda(fn: Callable[[], object]) -> Callable[[], object]:
    def wrapped() -> None:
        with torch.device("cuda"):
            fn()

    return wrapped


if __name__ == "__main__":
    _self_check()
