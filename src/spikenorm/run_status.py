"""Whether a run finished: the ``run.json`` file every ``spikenorm fit`` keeps in its run folder.

A run folder (the first logger's log folder: ``<save_dir>/<name>/<version>/``, beside ``metrics.csv``,
``config.yaml`` and ``checkpoints/``; without a logger, ``<default_root_dir>``) holds one :class:`RunStatus`:

* ``running`` from setup on (a run killed by SIGKILL or a power cut stays ``running``: nothing can write then);
* ``finished`` once the fit *and* the CLI's post-fit test are done, with the test results (RL: the metrics at the
  end of fit) and the best and last checkpoints;
* ``crashed`` when fit or test raised (``error`` names the exception), ``interrupted`` on Ctrl-C.

``spikenorm fit --ckpt_path last`` resumes into the same folder: the file goes back to ``running`` and counts the
resume. ``spikenorm compare`` averages only ``finished`` runs and lists the others apart; ``spikenorm study`` skips
``finished`` runs, resumes ``running``/``interrupted`` ones and reruns ``crashed`` ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer

from spikenorm.validation import check_choice

__all__ = ["RUN_STATUS_FILE", "RunState", "RunStatus", "RunStatusRecorder", "read_run_status", "write_run_status"]

#: the status file's name inside a run folder
RUN_STATUS_FILE = "run.json"
RunState = Literal["running", "finished", "crashed", "interrupted"]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunStatus:
    """The state of one run (see the module docstring). Times are ISO 8601 in UTC."""

    status: RunState
    started: str
    ended: str | None = None
    command: list[str] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    error: str | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    results: dict[str, float] = field(default_factory=dict)
    resumes: int = 0

    def __post_init__(self) -> None:
        check_choice(self.status, RunState, "run status")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        """The status from its JSON form; keys another spikenorm version added are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def read_run_status(folder: str | os.PathLike[str]) -> RunStatus | None:
    """The :class:`RunStatus` in ``folder/run.json``; None when there is none.

    Raises:
        ValueError: the file is not a run status (not JSON, or without ``status``/``started``), named.
    """
    path = Path(folder) / RUN_STATUS_FILE
    if not path.is_file():
        return None
    try:
        return RunStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a spikenorm run status file: {error}") from error


def write_run_status(folder: str | os.PathLike[str], status: RunStatus) -> Path:
    """Write ``status`` to ``folder/run.json`` atomically (a reader never sees half a file)."""
    path = Path(folder) / RUN_STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{RUN_STATUS_FILE}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(dataclasses.asdict(status), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


class RunStatusRecorder(Callback):
    """Keep ``run.json`` in the run folder of a fit (the spikenorm CLI adds it to every ``fit``).

    ``running`` at setup (a resume keeps ``started`` and counts ``resumes``), ``crashed``/``interrupted`` when fit
    or test raise; :meth:`finish`, called by the CLI after its post-fit test, writes ``finished``. Only the global
    rank zero writes; a ``fast_dev_run`` writes nothing.
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.checkpoints: dict[str, str | None] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.folder is not None or getattr(stage, "value", stage) != "fit" or trainer.fast_dev_run:
            return  # a fast_dev_run writes no files (Lightning gives it no loggers and no checkpoints)
        log_dir = trainer.log_dir  # a collective call: every process asks
        self.folder = Path(log_dir if trainer.loggers and log_dir is not None else trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        previous = read_run_status(self.folder)
        status = RunStatus(
            "running",
            started=previous.started if previous else _now(),
            command=list(sys.argv),
            host=socket.gethostname(),
            pid=os.getpid(),
            resumes=previous.resumes + 1 if previous else 0,
        )
        write_run_status(self.folder, status)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note the best and last checkpoints now: a test of the best checkpoint restores the checkpoint
        callbacks' state as it was when that checkpoint was saved."""
        self.checkpoints = _checkpoint_paths(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)
        error = None if interrupted else f"{type(exception).__name__}: {exception}"
        self._end(trainer, "interrupted" if interrupted else "crashed", error=error)

    def finish(self, trainer: Trainer, results: Mapping[str, Any]) -> None:
        """Mark the run ``finished`` with its final ``results`` and checkpoints (after the CLI's post-fit test)."""
        self._end(trainer, "finished", results={k: float(v) for k, v in results.items()})

    def _end(self, trainer: Trainer, state: RunState, **entries: Any) -> None:
        if self.folder is None or not trainer.is_global_zero:
            return
        status = read_run_status(self.folder)
        if status is None:
            return
        status.status, status.ended = state, _now()
        for key, value in {**(self.checkpoints or _checkpoint_paths(trainer)), **entries}.items():
            setattr(status, key, value)
        write_run_status(self.folder, status)


def _checkpoint_paths(trainer: Trainer) -> dict[str, str | None]:
    """The best checkpoint (the trainer's ``ModelCheckpoint``) and the ``last.ckpt`` any checkpoint callback
    keeps, as absolute paths (None where there is none)."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    last = next(
        (
            path
            for cb in trainer.checkpoint_callbacks
            if (path := getattr(cb, "last_model_path", "")) and Path(path).is_file()
        ),
        None,
    )
    return {
        "best_checkpoint": str(Path(best).resolve()) if best else None,
        "last_checkpoint": str(Path(last).resolve()) if last else None,
    }
