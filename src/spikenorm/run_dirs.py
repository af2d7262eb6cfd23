"""Where a run's files go, and how the latest run of a configuration is found again to resume it.

* :func:`free_path`: a file name that overwrites nothing (``config.yaml``, ``config-1.yaml``, ...).
* :func:`logger_versions` / :data:`LOGGER_VERSIONS_KEY`: what a checkpoint records about its loggers (class and
  version: the CSV ``version_<n>``, the W&B run id), so that a resumed run writes into the same log folder
  and continues the same W&B run.
* :func:`matching_last_checkpoint`: the newest ``last.ckpt``, among the runs a logger configuration writes, of a
  run started with the same configuration (:func:`result_config`: every key that changes results, seed
  included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spikenorm.checkpoint_files import check_checkpoint_file
from spikenorm.config import class_path_of

#: checkpoint entry written by the CLI: ``[{"class_path": ..., "version": ...}, ...]``, one per logger
LOGGER_VERSIONS_KEY = "spikenorm_loggers"
#: checkpoint entry written by the CLI: the run's :func:`result_config`, matched by ``--ckpt_path last``
RUN_CONFIG_KEY = "spikenorm_run_config"
#: keys of a fit configuration that a resumed run may change: how long it trains (``max_*``/``min_*``, the RL
#: budget ``total_env_steps``), where and how it logs, the checkpoint to resume, and the callbacks (a user adds
#: or drops monitors between the two halves of a run; callbacks that change the weights are not told apart)
RESUME_FREE_KEYS = frozenset(
    {
        "config",
        "ckpt_path",
        "trainer.max_epochs",
        "trainer.min_epochs",
        "trainer.max_steps",
        "trainer.min_steps",
        "trainer.max_time",
        "model.init_args.total_env_steps",
        "trainer.logger",
        "trainer.callbacks",
        "trainer.default_root_dir",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
    }
)


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


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat keys (``"model.init_args.time_steps": 4``) of a CLI run configuration that decide what the run
    computes: every key but those in :data:`RESUME_FREE_KEYS` (and below them). Values are plain Python (str,
    numbers, bools, None, lists, dicts), so a checkpoint that stores them loads with ``weights_only=True``."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in RESUME_FREE_KEYS:
                continue
            if isinstance(value, Mapping) and value:
                walk(value, f"{name}.")
            else:
                flat[name] = _plain(value)

    walk(config, "")
    return flat


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def config_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``key: stored -> given`` for each key whose values differ; a key only one side has is left out (an
    option added or removed by another spikenorm version, set to its default on the other side)."""
    return [
        f"{key}: {stored[key]!r} -> {given[key]!r}"
        for key in sorted(stored.keys() & given.keys())
        if stored[key] != given[key]
    ]


def matching_last_checkpoint(folder: Path, pattern: str, given: Mapping[str, Any]) -> Path:
    """The most recently written ``last.ckpt`` under ``folder/pattern`` whose run configuration
    (:data:`RUN_CONFIG_KEY`, stored by the CLI) agrees with ``given`` (a :func:`result_config`) on every key.

    Raises:
        FileNotFoundError: there is no ``last.ckpt`` at all, with what was searched and how to get one.
        ValueError: a candidate is empty or truncated (named); or none matches: lists every candidate with the
            keys it differs in (or that it stores no configuration), and how to resume one of them anyway.
    """
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt matches {folder / pattern}, so there is no run of this "
            "configuration to resume. The run must keep one (trainer.callbacks: spikenorm.callbacks.LastCheckpoint, "
            "as every recipe does); to start afresh, leave out --ckpt_path."
        )
    reasons = []
    for path in found:
        check_checkpoint_file(path)
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(RUN_CONFIG_KEY)
        differences = ["it stores no run configuration"] if stored is None else config_differences(stored, given)
        if not differences:
            return path
        shown = differences[:8] + ([f"... and {len(differences) - 8} more"] if len(differences) > 8 else [])
        reasons.append(f"{path}:\n      " + "\n      ".join(shown))
    raise ValueError(
        f"--ckpt_path last: none of the {len(found)} runs under {folder} was started with this configuration "
        "(the seed, the model, the data and every trainer option that changes results must agree; budgets, "
        "loggers and callbacks may change). Candidates, newest first (stored -> given):\n  "
        + "\n  ".join(reasons)
        + "\nGive the options of the run you mean, start afresh without --ckpt_path, or resume one run "
        "whatever its configuration with --ckpt_path <its last.ckpt>."
    )


def recorded_logger_versions(checkpoint_path: Path) -> Sequence[dict[str, Any]]:
    """The logger versions a checkpoint recorded (empty if it was not written by the spikenorm CLI)."""
    check_checkpoint_file(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get(LOGGER_VERSIONS_KEY, [])
