"""Find runs under folders and read each back: its configuration, seed, status and metric histories.

Two kinds of run folder are recognised while walking the given paths:

* a CSV run folder (the CSV logger's ``<save_dir>/<name>/<version>/``, or a study's ``<cell>/seed_<s>/``): it
  holds ``metrics.csv`` and/or ``run.json``; its configuration is ``config.yaml`` as the spikenorm CLI wrote it
  (a resumed run adds ``config-1.yaml``...: the first one is the run's), else the logger's ``hparams.yaml``; its
  status is ``run.json`` (:func:`spikenorm.run_status.read_run_status`);
* an offline W&B run folder (``wandb/offline-run-*``), read with :func:`spikenorm.wandb_runs.read_offline_run`:
  its config is the flat hyperparameter dict the task logged; exit code 0 is ``finished``, another ``crashed``,
  none (killed, or still writing) ``running``.

One run logged to both loggers is counted once: a W&B folder inside a CSV run folder (a study's layout) belongs
to it, and so does a W&B run elsewhere (the recipes' ``logs/wandb/`` beside ``logs/<name>/version_<n>/``) whose
config equals the CSV run's ``hparams.yaml`` and whose final values equal the CSV run's. The CSV side is kept; a
CSV run without ``run.json`` takes its status from its W&B run, else it is ``unknown``.

The final value of a metric is its last finite value (a ``run.json`` ``results`` entry, the post-fit test, wins);
its best is the maximum, or the minimum for the keys :func:`lower_is_better` names.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RunRecord",
    "describe_search",
    "find_runs",
    "flatten_config",
    "lower_is_better",
    "read_csv_run",
    "read_wandb_run",
]

#: words that, in the last component of a metric key, mean lower is better
LOWER_IS_BETTER = ("loss", "error", "w2", "gap", "shift", "kl", "diff", "flipped")
#: logged columns that are x-axes or bookkeeping, not metrics
NOT_METRICS = frozenset({"epoch", "step", "trainer/global_step", "_step", "_runtime", "_timestamp"})
#: the x-axis of ``rl/`` metrics when a row logs it
ENV_STEPS = "rl/env_steps"
_WANDB_RUN = re.compile(r"^(offline-)?run-\d{8}_\d{6}-\w+$")

History = list[tuple[float, float]]


@dataclass
class RunRecord:
    """One run read back: where it is, what it ran, whether it finished, and what it logged.

    ``histories`` maps a metric to its ``(step, value)`` points in logging order; ``final`` and ``best`` map it to
    its last finite and best finite value (metrics with no finite value are absent from both).
    """

    path: Path
    config: dict[str, Any]
    seed: int | None
    status: str
    error: str | None = None
    histories: dict[str, History] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    wandb_path: Path | None = None


def lower_is_better(metric: str) -> bool:
    """Whether the last ``/`` component of ``metric`` names a loss, error, distance, gap, shift, divergence or
    difference (``val/loss``, ``diagnostics/w2/...``, ``test/flipped_spikes_folded``)."""
    last = metric.rsplit("/", 1)[-1].lower()
    return any(word in last for word in LOWER_IS_BETTER)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; a list of mappings (callbacks, loggers) as ``key[i].…`` keys, the way a
    study override names them; any other list or value is kept as it is."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flatten_config(item, f"{name}[{index}]."))
        else:
            flat[name] = value
    return flat


def _finalize(record: RunRecord, results: Mapping[str, float] | None = None) -> RunRecord:
    """Fill ``final`` and ``best`` from the histories, then let ``results`` set final values."""
    for metric, points in record.histories.items():
        finite = [value for _, value in points if math.isfinite(value)]
        if finite:
            record.final[metric] = finite[-1]
            record.best[metric] = (min if lower_is_better(metric) else max)(finite)
    for metric, value in (results or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            record.final[metric] = float(value)
            record.best.setdefault(metric, float(value))
    return record


def _add_row(histories: dict[str, History], row: Mapping[str, Any], step: float | None) -> None:
    """Append a logged row's numeric metrics at ``step`` (``rl/`` ones at ``rl/env_steps`` when the row has it)."""
    env_steps = row.get(ENV_STEPS)
    for key, value in row.items():
        if key in NOT_METRICS or key.startswith("_") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        at = env_steps if key.startswith("rl/") and isinstance(env_steps, int | float) else step
        histories.setdefault(key, []).append((float("nan") if at is None else float(at), float(value)))


def _read_metrics_csv(path: Path) -> dict[str, History]:
    histories: dict[str, History] = {}
    if not path.is_file():
        return histories
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            values = {key: float(text) for key, text in row.items() if key and text not in (None, "")}
            _add_row(histories, values, values.get("step"))
    return histories


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        data = yaml.safe_load(file)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return dict(data)


def _seed(config: Mapping[str, Any]) -> int | None:
    seed = config.get("seed_everything", config.get("seed"))
    return int(seed) if isinstance(seed, int | float) and not isinstance(seed, bool) else None


def read_csv_run(folder: str | os.PathLike[str]) -> RunRecord:
    """Read a CSV run folder (see the module docstring)."""
    from spikenorm.run_status import read_run_status

    folder = Path(folder)
    config_file = next((p for p in (folder / "config.yaml", folder / "hparams.yaml") if p.is_file()), None)
    config = flatten_config(_read_yaml(config_file)) if config_file else {}
    status = read_run_status(folder)
    record = RunRecord(
        path=folder,
        config=config,
        seed=_seed(config),
        status=status.status if status else "unknown",
        error=status.error if status else None,
        histories=_read_metrics_csv(folder / "metrics.csv"),
    )
    return _finalize(record, status.results if status else None)


def read_wandb_run(folder: str | os.PathLike[str]) -> RunRecord:
    """Read an offline W&B run folder (see the module docstring)."""
    from spikenorm.wandb_runs import read_offline_run

    folder = Path(folder)
    run = read_offline_run(folder)
    config = {key: value for key, value in flatten_config(run["config"]).items() if not key.startswith("_wandb")}
    exit_code = run["exit_code"]
    histories: dict[str, History] = {}
    for row in run["history"]:
        step = row.get("trainer/global_step", row.get("_step"))
        _add_row(histories, flatten_config(row, ""), step if isinstance(step, int | float) else None)
    record = RunRecord(
        path=folder,
        config=config,
        seed=_seed(config),
        status="running" if exit_code is None else "finished" if exit_code == 0 else "crashed",
        error=None if exit_code in (None, 0) else f"exit code {exit_code}",
        histories=histories,
        wandb_path=folder,
    )
    return _finalize(record)


def _is_csv_run(folder: Path) -> bool:
    return (folder / "metrics.csv").is_file() or (folder / "run.json").is_file()


def _is_wandb_run(folder: Path) -> bool:
    return folder.parent.name == "wandb" and bool(_WANDB_RUN.match(folder.name)) and not folder.is_symlink()


def _walk(path: Path) -> Iterator[tuple[Path, Path | None]]:
    """``(run folder, CSV run folder holding it or None)`` for every run folder at or under ``path``."""
    owner: dict[Path, Path] = {}
    for root, dirs, _ in os.walk(path):
        here = Path(root)
        inside = owner.get(here)
        if _is_wandb_run(here):
            yield here, inside
            dirs.clear()
            continue
        if inside is None and _is_csv_run(here):
            inside = here
            yield here, None
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
        if inside is not None:
            owner.update({here / d: inside for d in dirs})


def _hparams(folder: Path) -> dict[str, Any] | None:
    """The CSV logger's ``hparams.yaml`` in ``folder``, flat; None when there is none."""
    path = folder / "hparams.yaml"
    return flatten_config(_read_yaml(path)) if path.is_file() else None


def _same_run(csv_run: RunRecord, hparams: dict[str, Any] | None, wandb_run: RunRecord) -> bool:
    """Whether a W&B run is the CSV run logged a second time: the CSV run's ``hparams`` are the W&B config and the
    two logged the same metrics with the same last points."""
    if hparams != wandb_run.config:
        return False
    logged = set(csv_run.histories)
    return (
        bool(logged)
        and logged == set(wandb_run.histories)
        and all(csv_run.histories[m][-1] == wandb_run.histories[m][-1] for m in logged)
    )


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[RunRecord]:
    """Every run at or under ``paths`` (run folders or folders holding them), each once, in path order.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    csv_runs: dict[Path, RunRecord] = {}
    wandb_runs: dict[Path, tuple[RunRecord, Path | None]] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no run folder or folder of runs at {path}")
        for folder, owner in _walk(path.resolve()):
            if _is_wandb_run(folder):
                wandb_runs.setdefault(folder, (read_wandb_run(folder), owner))
            else:
                csv_runs.setdefault(folder, read_csv_run(folder))
    alone: list[RunRecord] = []
    hparams: dict[Path, dict[str, Any] | None] = {}
    for wandb_run, owner in wandb_runs.values():
        if owner is None:
            unpaired = [(path, run) for path, run in csv_runs.items() if run.wandb_path is None]
            for path, _ in unpaired:
                hparams.setdefault(path, _hparams(path))
            owner = next((path for path, run in unpaired if _same_run(run, hparams[path], wandb_run)), None)
        if owner is None:
            alone.append(wandb_run)
            continue
        csv_run = csv_runs[owner]
        csv_run.wandb_path = csv_run.wandb_path or wandb_run.path
        if csv_run.status == "unknown":
            csv_run.status, csv_run.error = wandb_run.status, wandb_run.error
    return sorted([*csv_runs.values(), *alone], key=lambda record: str(record.path))


def describe_search(paths: Sequence[str | os.PathLike[str]]) -> str:
    """What :func:`find_runs` looks for and where, for an error message."""
    where = ", ".join(str(Path(p).resolve()) for p in paths)
    return (
        f"looked under {where} for CSV run folders (holding metrics.csv or run.json) and W&B run folders "
        "(wandb/offline-run-*)"
    )
