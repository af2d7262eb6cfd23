"""What a study does with one of its runs, from what the run's folder holds.

A study writes each run's composed configuration to ``<run folder>/study_run.yaml`` (:data:`STUDY_CONFIG`) and the
run itself keeps ``run.json`` there (:mod:`spikenorm.run_status`). Rerunning a study decides per run
(:func:`decide`):

=====================================================  =========================================================
the folder holds                                       action
=====================================================  =========================================================
nothing (or only the study's own files)                ``start``
a ``crashed`` run                                      ``restart``: moved aside (``seed_0.crashed-1``), run afresh
a run of another composed configuration                ``changed``: refused, with the keys that differ (or, when
                                                       asked to replace it, moved aside as ``seed_0.changed-1``)
a ``finished`` run of the same configuration           ``skip``
a ``running`` run whose process lives on this host     ``busy``: refused
``running`` (process gone) or ``interrupted``, with    ``resume``: ``spikenorm fit --ckpt_path last``
its ``last.ckpt``
the same without ``last.ckpt``; files but no           ``restart`` (moved aside as ``.interrupted-<n>`` /
``run.json``                                           ``.incomplete-<n>``)
=====================================================  =========================================================

Nothing is deleted: a folder moved aside keeps every file, under the first free ``<folder>.<why>-<n>``.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spikenorm.run_status import RUN_STATUS_FILE, RunStatus, read_run_status
from spikenorm.studies.study_files import flatten

__all__ = [
    "STUDY_CONFIG",
    "STUDY_LOG",
    "Action",
    "Decision",
    "config_differences",
    "decide",
    "move_aside",
]

#: the composed configuration of a study run, in its folder; the run is ``spikenorm fit --config`` of it
STUDY_CONFIG = "study_run.yaml"
#: what the run's ``spikenorm fit`` printed (appended to when it is resumed)
STUDY_LOG = "study_run.log"
#: the files a study writes into a run folder before the run starts
_STUDY_FILES = frozenset({STUDY_CONFIG, STUDY_LOG})


class Action(str, enum.Enum):
    """What a study does with a run (see the module docstring)."""

    START = "start"
    RESUME = "resume"
    RESTART = "restart"
    SKIP = "skip"
    CHANGED = "changed"
    BUSY = "busy"


@dataclass(frozen=True)
class Decision:
    """The :class:`Action` for a run, why (``reason``), the differing keys (``changed``: ``key: stored -> new``),
    the run's status file (None where there is none) and, for ``restart``, the name its folder is moved aside
    under (``aside``: ``crashed``, ``interrupted``, ``incomplete``, ``changed``)."""

    action: Action
    reason: str
    differences: tuple[str, ...] = ()
    status: RunStatus | None = None
    aside: str | None = None


def stored_config(folder: Path) -> dict[str, Any] | None:
    """The composed configuration a study stored in ``folder`` (None when there is none)."""
    path = folder / STUDY_CONFIG
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def config_differences(stored: Any, given: Any, ignore: Collection[str] = ()) -> list[str]:
    """``key: stored -> given`` for every leaf (:func:`~spikenorm.studies.study_files.flatten`) that differs or that
    one side lacks (``<absent>``), except the keys in ``ignore``."""
    old, new = flatten(stored), flatten(given)
    missing = "<absent>"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(old.keys() | new.keys())
        if key not in ignore and (key not in old or key not in new or old[key] != new[key])
    ]


def last_checkpoint(folder: Path) -> Path | None:
    """The run's ``checkpoints/last.ckpt`` (:class:`~spikenorm.callbacks.LastCheckpoint`), if there."""
    path = folder / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def _process_alive(status: RunStatus) -> bool:
    """Whether the process that last wrote ``status`` still runs (only knowable on the host it ran on)."""
    if status.host != socket.gethostname() or status.pid <= 0 or status.pid == os.getpid():
        return False
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def decide(folder: Path, config: Mapping[str, Any], ignore: Collection[str] = ()) -> Decision:
    """What to do with the run whose folder is ``folder`` and whose composed configuration is ``config`` (the
    module docstring's table); keys in ``ignore`` are not compared (values not known yet, such as another run's
    best checkpoint).

    Raises:
        ValueError: the folder's ``run.json`` is not a run status file.
    """
    status = read_run_status(folder)
    if status is None:
        if not folder.exists() or {p.name for p in folder.iterdir()} <= _STUDY_FILES:
            return Decision(Action.START, "new")
        return Decision(Action.RESTART, f"holds files but no {RUN_STATUS_FILE}", aside="incomplete")
    if status.status == "running" and _process_alive(status):
        return Decision(Action.BUSY, f"running now (pid {status.pid} on {status.host})", status=status)
    if status.status == "crashed":
        return Decision(Action.RESTART, f"crashed ({status.error})", status=status, aside="crashed")
    stored = stored_config(folder)
    if stored is None:
        differences = (f"no {STUDY_CONFIG}: a run this study did not start",)
    else:
        differences = tuple(config_differences(stored, config, ignore))
    if differences:
        return Decision(Action.CHANGED, f"{status.status}, another configuration", differences, status, "changed")
    if status.status == "finished":
        return Decision(Action.SKIP, "finished", status=status)
    if last_checkpoint(folder) is not None:
        return Decision(Action.RESUME, f"{status.status}, resumes from last.ckpt", status=status)
    return Decision(Action.RESTART, f"{status.status} before its first last.ckpt", status=status, aside="interrupted")


def move_aside(folder: Path, why: str) -> Path:
    """Rename ``folder`` to the first free ``<folder>.<why>-<n>`` (n = 1, 2, ...) beside it and return that."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.{why}-{n}")).exists():
        n += 1
    folder.rename(target)
    return target
