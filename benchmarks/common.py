"""Shared helpers of the benchmark scripts: timing, machine description, writing results."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def stamp(device: torch.device) -> str:
    """Heading line: UTC date and time, machine, torch version."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"## {now} — {machine(device)} ({device.type}), torch {torch.__version__}"


def seed_cells(values: list[float], digits: int = 2) -> str:
    """Table cells ``mean ± std | v1, v2, ...`` for per-seed results (no std for a single seed)."""
    spread = f"{statistics.mean(values):.{digits}f}"
    if len(values) > 1:
        spread += f" ± {statistics.stdev(values):.{digits}f}"
    return f"{spread} | {', '.join(f'{v:.{digits}f}' for v in values)}"


def publish(name: str, title: str, report: str, save: bool) -> None:
    """Print a report and, when ``save``, append it to ``benchmarks/results/<name>.md``."""
    print(report)
    if save:
        append_result(name, title, report)


def append_result(name: str, title: str, report: str) -> Path:
    """Append a report to ``benchmarks/results/<name>.md`` (created with ``title`` as its heading)."""
    path = RESULTS_DIR / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "" if path.exists() else f"# {title}\n\n"
    with path.open("a") as f:
        f.write(header + report + "\n")
    return path


def fit_and_test(task: LightningModule, data: LightningDataModule, epochs: int,
                 callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train on CPU deterministically, then test the best-validation checkpoint; returns the test metrics."""
    with tempfile.TemporaryDirectory() as root:
        checkpoint = ModelCheckpoint(dirpath=root, monitor="val/acc", mode="max")
        trainer = Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          accelerator="cpu", deterministic=True, default_root_dir=root,
                          callbacks=[checkpoint, *callbacks])
        trainer.fit(task, data)
        return trainer.test(task, data, ckpt_path="best", verbose=False)[0]
