"""Where a run's files go, and how the latest run of a configuration is found again to resume it.

* :func:`free_path`: a file name that overwrites nothing (``config.yaml``, ``config-1.yaml``, ...).
* :func:`logger_versions` / :data:`LOGGER_VERSIONS_KEY`: what a checkpoint records about its loggers (class and
  version: the CSV ``version_<n>``, the W&B run id), so that a resumed run writes into the same log folder
  and continues the same W&B run.
* :func:`latest_last_checkpoint`: the newest ``last.ckpt`` among the runs a logger configuration writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from spikenorm.config import class_path_of

#: checkpoint entry written by the CLI: ``[{"class_path": ..., "version": ...}, ...]``, one per logger
LOGGER_VERSIONS_KEY = "spikenorm_loggers"


def free_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-<n><suffix>`` beside it."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def logger_versions(loggers: Iterable[Any]) -> list[dict[str, Any]]:
    """Class path and version of each logger (``version`` is the CSV/TensorBoard version, the W&B run id)."""
    return [{"class_path": class_path_of(type(logger)), "version": logger.version} for logger in loggers]


def run_folders(first_logger: Any | None, default_root_dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """The folder that holds one subfolder per run, and the pattern of a run's ``last.ckpt`` inside it.

    Lightning puts checkpoints in ``<save_dir>/<name>/<version>/checkpoints`` of the first logger (CSV:
    ``version_<n>``; W&B: the run id) and in ``<default_root_dir>/checkpoints`` without a logger.
    """
    if first_logger is None:
        return Path(default_root_dir), "checkpoints/last.ckpt"
    save_dir = first_logger.save_dir or default_root_dir
    return Path(save_dir) / str(first_logger.name or ""), "*/checkpoints/last.ckpt"


def latest_last_checkpoint(folder: Path, pattern: str) -> Path:
    """The most recently written ``last.ckpt`` matching ``folder/pattern``.

    Raises:
        FileNotFoundError: there is none, with what was searched and how to get one.
    """
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt matches {folder / pattern}, so there is no run of this "
            "configuration to resume. The run must keep one (trainer.callbacks: spikenorm.callbacks.LastCheckpoint, "
            "as every recipe does); to start afresh, leave out --ckpt_path."
        )
    return found[-1]


def recorded_logger_versions(checkpoint_path: Path) -> Sequence[dict[str, Any]]:
    """The logger versions a checkpoint recorded (empty if it was not written by the spikenorm CLI)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get(LOGGER_VERSIONS_KEY, [])
