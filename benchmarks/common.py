"""Shared helpers of the benchmark scripts: timing, machine description, writing results."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
from lightning.pytorch import Trainer
from torch import Tensor

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def benchmark_parser(doc: str | None, device: bool = False) -> argparse.ArgumentParser:
    """The command line every benchmark shares: ``--no-save`` (print only) and, with ``device``, ``--device``
    (a ``torch.device``; default ``cuda`` when available, else ``cpu``). The script adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-save", action="store_true", help="print the report, leave benchmarks/results alone")
    if device:
        parser.add_argument("--device", type=torch.device, default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def seeds_parser(doc: str | None) -> argparse.ArgumentParser:
    """:func:`benchmark_parser` with ``--seeds`` (default 5: seeds 0..4) and ``--epochs`` (default 20), the
    options of the benchmarks that train every variant once per seed."""
    parser = benchmark_parser(doc)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    return parser


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) to finish its queued work; nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


Key = TypeVar("Key")


def interleaved(fns: dict[Key, Callable[[], object]], device: torch.device, repeats: int) -> dict[Key, list[float]]:
    """Seconds per call of each fn: ``repeats`` rounds in which every fn is timed once, the order rotated by one
    each round (warm-up calls are the caller's)."""
    names = list(fns)
    times: dict[Key, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def channels_last_steps(x: Tensor) -> Tensor:
    """``x`` (``[T, B, C, H, W]``) with each step's ``[B, C, H, W]`` in channels-last layout, what spikenorm's
    convolutions return on CPU."""
    t, b, *features = x.shape
    return x.reshape(t * b, *features).contiguous(memory_format=torch.channels_last).reshape(x.shape)


def forward_and_backward(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two calls to time: ``fn(x)`` without autograd, and ``fn(x').backward(ones)`` on a leaf copy ``x'`` of
    ``x`` whose gradient is reset first."""
    x_grad = x.clone().requires_grad_(True)
    grad_out = torch.ones_like(x)

    def forward() -> None:
        with torch.no_grad():
            fn(x)

    def forward_backward() -> None:
        x_grad.grad = None
        fn(x_grad).backward(grad_out)

    return forward, forward_backward


def machine(device: torch.device) -> str:
    """CPU model and cores, or the GPU name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def cpu_flag_set() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (``amx_bf16``, ``avx512_bf16``, ...); empty where it is absent."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    line = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


def cpu_flags() -> str:
    """AVX-512 and AMX presence from /proc/cpuinfo, and the ISA torch's CPU kernels dispatch to.

    Results depend on them: oneDNN picks other kernels (and rounds differently) on CPUs with AVX-512 BF16/AMX.
    """
    flags = cpu_flag_set()
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    amx = sorted(f for f in flags if f.startswith("amx"))
    return (
        f"AVX-512: {'yes (' + ' '.join(avx512) + ')' if avx512 else 'no'}; "
        f"AMX: {'yes (' + ' '.join(amx) + ')' if amx else 'no'}; "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def stamp(device: torch.device) -> str:
    """The run's heading and CPU line: UTC date and time, machine, torch version; then :func:`cpu_flags`."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"## {now} — {machine(device)} ({device.type}), torch {torch.__version__}\n\nCPU flags: {cpu_flags()}."


def markdown_table(header: str, rows: Iterable[str]) -> list[str]:
    """The lines of a markdown table: ``| header |``, the separator row (one ``---`` per ``" | "``-separated
    column of ``header``), then ``rows`` (each a finished ``| a | b |`` line)."""
    return [f"| {header} |", "|" + "---|" * (header.count(" | ") + 1), *rows]


def print_as_made(rows: Iterable[str]) -> list[str]:
    """``rows`` as a list, each row printed as soon as it is made (the progress of a long benchmark)."""
    made = []
    for row in rows:
        print(row, flush=True)
        made.append(row)
    return made


def table_report(
    device: torch.device, description: str, header: str, rows: Iterable[str], notes: Sequence[str] = ()
) -> str:
    """A benchmark's report: :func:`stamp`, the ``description`` paragraph, the :func:`markdown_table` of ``rows``
    under ``header``, then the ``notes`` lines."""
    return "\n".join([stamp(device), "", description, "", *markdown_table(header, rows), "", *notes])


def seed_cells(values: list[float], digits: int = 2) -> str:
    """Table cells ``mean ± std | v1, v2, ...`` for per-seed results (no std for a single seed)."""
    spread = f"{statistics.mean(values):.{digits}f}"
    if len(values) > 1:
        spread += f" ± {statistics.stdev(values):.{digits}f}"
    return f"{spread} | {', '.join(f'{v:.{digits}f}' for v in values)}"


def publish(name: str, title: str, report: str, save: bool) -> None:
    """Print a report and, when ``save``, make it the current result in ``benchmarks/results/<name>.md``."""
    print(report)
    if save:
        write_result(name, title, report)


def write_result(name: str, title: str, report: str) -> Path:
    """Replace ``benchmarks/results/<name>.md`` with ``# title`` and ``report`` (its :func:`stamp` and tables).

    A results file holds the current result of its benchmark only; earlier results live in git's history.
    """
    return write_report(RESULTS_DIR / f"{name}.md", title, report)


def write_report(path: Path, title: str, report: str) -> Path:
    """Replace the file at ``path`` with ``# title`` and ``report``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{report.rstrip()}\n")
    return path


def quiet_trainer(**options: Any) -> Trainer:
    """A Lightning ``Trainer`` on the CPU that logs, checkpoints, shows progress and summarises nothing;
    ``options`` add to these settings or replace them."""
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
    }
    return Trainer(**{**quiet, **options})
