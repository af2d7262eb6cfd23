"""Loggers that lose nothing: Weights & Biases with or without an API key, CSV that resumes.

:class:`CSVLogger` is Lightning's ``CSVLogger`` except that a run resumed into its existing version folder
(``spikenorm fit --ckpt_path last``) continues its ``metrics.csv`` instead of deleting it, without the rows the
crashed process logged after the checkpoint, and that a run that fails before it logs anything leaves no empty
version folder.

:class:`WandbLogger` is Lightning's ``WandbLogger`` with research-friendly defaults and these changes:
``offline=None`` (the default) decides at construction time whether the run can go online; every checkpoint
waits until the W&B service has written what was logged to the run's transaction log, so a crash (SIGKILL
included) loses no history that the checkpoint covers; and a fit that raises ends its W&B run with exit code 1
(a crashed run, not a finished one). Without an API key the run is written to a local
``<save_dir>/wandb/offline-run-*`` folder instead of failing or prompting for a login; upload it later with::

    wandb sync <save_dir>/wandb/offline-run-<timestamp>-<id>
    wandb sync --sync-all          # every unsynced run under ./wandb

:func:`spikenorm.wandb_runs.read_offline_run` reads such a folder back without syncing it.
"""

import csv
import netrc
import os
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _CSVExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from spikenorm.wandb_runs import last_history_step

__all__ = ["CSVLogger", "WandbLogger", "resolve_offline", "wandb_api_key_available"]

_DEFAULT_BASE_URL = "https://api.wandb.ai"
_OFFLINE_MODES = frozenset({"offline", "dryrun"})


def _netrc_path() -> Path:
    """Where W&B looks for a netrc file: ``$NETRC``, else ``~/.netrc``, else ``~/_netrc`` (Windows)."""
    if env_path := os.environ.get("NETRC"):
        return Path(env_path).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def wandb_api_key_available() -> bool:
    """Whether a W&B API key can be found without prompting.

    Looks where ``wandb`` itself looks: a non-empty ``WANDB_API_KEY`` environment variable, or a netrc
    entry (with a password) for the host of ``WANDB_BASE_URL`` (default ``api.wandb.ai``) in ``$NETRC``
    or ``~/.netrc``. A missing, unreadable or malformed netrc counts as "no key". The key is never
    checked against the server.
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or _DEFAULT_BASE_URL).netloc
    if not host:
        return False
    try:
        entry = netrc.netrc(str(_netrc_path())).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_offline(offline: bool | None = None) -> bool:
    """Decide whether a W&B run should be offline.

    Args:
        offline: an explicit choice, returned unchanged; ``None`` means decide automatically.

    Returns:
        With ``offline=None``: ``True`` when ``WANDB_MODE`` is ``offline``/``dryrun``; ``False`` for any
        other non-empty ``WANDB_MODE`` (``online``, ``disabled``, ... are left to ``wandb`` to apply);
        otherwise ``True`` exactly when no API key is available (see :func:`wandb_api_key_available`).
    """
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode in _OFFLINE_MODES
    return not wandb_api_key_available()


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline by itself when there is no API key, keeps what a crash would
    lose, and marks a failed fit as crashed.

    Every argument of :class:`lightning.pytorch.loggers.WandbLogger` is accepted (``name``,
    ``version``, ``id``, ``prefix``, ...); extra keyword arguments go to ``wandb.init``. Offline runs
    land in ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync <that folder>`` or
    inspect them with :func:`spikenorm.wandb_runs.read_offline_run`.

    What a crash loses: the W&B service buffers the run's records and writes them to the run's transaction log
    (``run-<id>.wandb``, the file ``wandb sync`` uploads) every ``flush_interval`` seconds; a process killed with
    SIGKILL takes the service down with it, and what was not written yet is gone (with wandb's default of 15 s, a
    short run keeps nothing but the file header). So whenever a checkpoint is saved (``after_save_checkpoint``),
    and again at the next ``save()`` (Lightning calls it after every ``log_metrics``, so this covers the rows
    Lightning logs right after a checkpoint in the same training step), the logger waits until the log on disk
    holds the last history row logged so far: a run resumed from that checkpoint (``--ckpt_path last``) finds the
    config and every row up to it in the killed run's folder. A wait costs at most about ``flush_interval``
    seconds; one that takes longer than ``flush_timeout`` seconds ends with a warning. This needs a wandb whose
    settings have ``x_transaction_log_flush_interval`` (0.31 has); with an older wandb nothing is waited for.

    Args:
        save_dir: directory that receives the ``wandb/`` run folder; created when the run starts.
        offline: ``True``/``False`` to force the mode; ``None`` (default) decides with
            :func:`resolve_offline` (``WANDB_MODE`` first, then whether an API key is available).
        project: W&B project name.
        log_model: upload checkpoints as artifacts (``True`` at the end, ``"all"`` as they are saved).
            When ``offline=None`` resolves to offline, checkpoints cannot be uploaded: a warning is
            emitted and ``log_model`` is turned off (an explicit ``offline=True`` with ``log_model``
            still raises, as in Lightning).
        flush_interval: seconds between the service's writes of the transaction log (wandb's
            ``x_transaction_log_flush_interval``), unless ``settings`` passed to ``wandb.init`` set it.
        flush_timeout: seconds a checkpoint waits at most for the service's write.
        **kwargs: the remaining arguments of Lightning's ``WandbLogger`` and of ``wandb.init``.

    Note:
        As in Lightning, an offline logger sets ``WANDB_MODE=dryrun`` in ``os.environ`` when its run
        starts.
    """

    def __init__(
        self,
        *,
        save_dir: str | Path = "logs",
        offline: bool | None = None,
        project: str = "spikenorm",
        log_model: Literal["all"] | bool = False,
        flush_interval: float = 0.1,
        flush_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        if flush_interval <= 0 or flush_timeout <= 0:
            raise ValueError(
                f"flush_interval and flush_timeout must be > 0 seconds, got {flush_interval} and {flush_timeout}"
            )
        if offline is None:
            offline = resolve_offline()
            if offline and log_model:
                rank_zero_warn(
                    "No W&B API key found (or WANDB_MODE is offline), so the run is offline and "
                    f"log_model={log_model!r} is ignored: offline runs cannot upload checkpoints. Set an "
                    "API key (`wandb login` or WANDB_API_KEY) to log models."
                )
                log_model = False
        super().__init__(save_dir=save_dir, offline=offline, project=project, log_model=log_model, **kwargs)
        # Lightning always passes ``anonymous`` (None when unset) and wandb (0.31) warns that the
        # setting is deprecated whenever it is passed at all; only pass it when the user set it.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._flush_interval, self._flush_timeout = flush_interval, flush_timeout
        self._written: tuple[int | None, int] = (None, 0)  # (last history _step in the log on disk, bytes read)
        self._checkpoint_to_sync = False

    @property
    def offline(self) -> bool:
        """Whether this logger's run is (or will be) offline."""
        return self._offline

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access (``save_dir`` is created first) with the transaction log
        written every ``flush_interval`` seconds."""
        if self._experiment is None:
            if self._save_dir is not None:
                os.makedirs(self._save_dir, exist_ok=True)
            _set_flush_interval(self._wandb_init, self._flush_interval)
            self._written = (None, 0)
        return super().experiment

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Lightning's (which may upload the checkpoint), then wait until the rows logged so far are on disk."""
        super().after_save_checkpoint(checkpoint_callback)
        self._wait_until_written()
        self._checkpoint_to_sync = True

    @rank_zero_only
    def save(self) -> None:
        """After a checkpoint, wait until the rows logged since (in the checkpoint's training step) are on disk."""
        super().save()
        if self._checkpoint_to_sync:
            self._checkpoint_to_sync = False
            self._wait_until_written()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning's; on ``"failed"`` (the fit raised) the W&B run is finished with exit code 1, so that it reads
        as crashed (``read_offline_run(...)["exit_code"]``), and a later use of this logger starts a new run."""
        super().finalize(status)
        if status == "failed" and self._experiment is not None:
            self._experiment.finish(exit_code=1)
            self._experiment = None

    def _wait_until_written(self) -> None:
        """Block until the run's transaction log on disk holds the last history row logged so far (see the class
        docstring); warn after ``flush_timeout`` seconds."""
        run = self._experiment
        settings = getattr(run, "settings", None)
        if not getattr(settings, "x_transaction_log_flush_interval", 0) or settings.x_skip_transaction_log:
            return  # no run, no log, or a wandb that writes its log only when a buffer fills: nothing to wait for
        last = run.step - 1  # a round trip through the service: every row logged before it has been handled
        log = Path(run.settings.sync_file)
        deadline = time.monotonic() + self._flush_timeout
        while last >= 0:
            step, offset = last_history_step(log, self._written[1])
            self._written = (self._written[0] if step is None else step, offset)
            if self._written[0] is not None and self._written[0] >= last:
                return
            if time.monotonic() > deadline:
                rank_zero_warn(
                    f"W&B has not written history row {last} to {log} within {self._flush_timeout} s; if this "
                    "process is killed now, the W&B run loses the rows after the last one written"
                )
                return
            time.sleep(0.01)


def _set_flush_interval(wandb_init: dict[str, Any], seconds: float) -> None:
    """Ask for the transaction log to be written every ``seconds`` in the ``settings`` given to ``wandb.init``,
    unless they set it already or this wandb has no such setting."""
    import wandb

    name = "x_transaction_log_flush_interval"
    if name not in wandb.Settings.model_fields:
        return
    settings = wandb_init.get("settings")
    if settings is None:
        wandb_init["settings"] = wandb.Settings(**{name: seconds})
    elif isinstance(settings, dict):
        wandb_init["settings"] = {name: seconds, **settings}
    elif name not in settings.model_fields_set:
        wandb_init["settings"] = settings.model_copy(update={name: seconds})


#: columns of a CSV row that every row has (Lightning adds ``epoch`` to each); the others say what the row logged
_ROW_INDEX = frozenset({"step", "epoch"})


def _logged(row: dict[str, Any]) -> frozenset[str]:
    """The metric keys a ``metrics.csv`` row (read back: blank where not logged) or a new row holds."""
    return frozenset(k for k, v in row.items() if k not in _ROW_INDEX and v not in ("", None))


class _ResumingExperimentWriter(_CSVExperimentWriter):
    """Lightning's CSV writer, except that it creates the version folder only when it first writes, continues an
    existing ``metrics.csv`` instead of deleting it, and (``resume``) drops the rows a resumed run logs again."""

    def __init__(self, log_dir: str, resume: bool) -> None:
        # Lightning's __init__ would create the folder now and delete an existing metrics.csv; the same fields:
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._resuming = resume and self._fs.isfile(self.metrics_file_path)
        self._crashed_rows: int | None = None  # the file's first rows, the crashed process's (None: all of them)
        self._resume_step: int | None = None  # the step of the resumed run's first row
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = file.readline().strip()
            self.metrics_keys = sorted(header.split(",")) if header else []

    def log_hparams(self, params: dict[str, Any]) -> None:
        self._fs.makedirs(self.log_dir, exist_ok=True)
        super().log_hparams(params)

    def save(self) -> None:
        if not self.metrics:
            return
        self._fs.makedirs(self.log_dir, exist_ok=True)
        if self._resuming:
            self._drop_logged_again()
        super().save()

    def _drop_logged_again(self) -> None:
        """Remove from ``metrics.csv`` the crashed process's rows that the resumed run logs again: every row at a
        step after the resumed run's first step, and each row at that step whose metric keys a new row at that
        step has. Called before each save until the resumed run's rows pass its first step."""
        if self._resume_step is None:
            self._resume_step = int(self.metrics[0]["step"])
        first = self._resume_step
        again = {_logged(row) for row in self.metrics if int(row["step"]) == first}
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows, header = list(reader), reader.fieldnames or []
        end = len(rows) if self._crashed_rows is None else self._crashed_rows
        crashed = [
            row
            for row in rows[:end]
            if int(row["step"]) < first or (int(row["step"]) == first and _logged(row) not in again)
        ]
        if len(crashed) < end:
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=header)
                writer.writeheader()
                writer.writerows(crashed + rows[end:])
        self._crashed_rows = len(crashed)
        self._resuming = not any(int(row["step"]) > first for row in self.metrics)


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` that continues an existing ``metrics.csv`` and creates its version folder only
    when it writes into it.

    Lightning's logger deletes ``<save_dir>/<name>/version_<n>/metrics.csv`` when it writes into a version
    folder that already has one, which is exactly what resuming a crashed run does. This one keeps the rows and
    appends. With ``resume=True`` (``spikenorm fit --ckpt_path last`` sets it) it also drops the rows that the
    crashed process logged after the checkpoint the run resumes from, since the resumed run logs them again:
    when the resumed run writes its first rows (at step ``s``), the rows of the file at steps after ``s``, and
    those at ``s`` with the metric keys of a new row at ``s``, are removed. The file then holds the rows an
    uninterrupted run would have (a row Lightning logs right after a checkpoint, in the same training step, is
    not logged again on resume, and stays). Without ``resume`` nothing is removed.

    Lightning creates a logger's experiment before ``setup``; this logger's version folder appears only when
    something is written into it (the hyperparameters, right after ``setup``, or metrics), so a fit that fails at
    setup leaves no empty ``version_<n>`` behind.

    Args:
        save_dir: the folder that holds ``<name>/version_<n>``.
        name: the experiment's folder name (``None`` or ``""``: versions go straight into ``save_dir``).
        version: the version (``version_<n>`` for an int, the name itself for a string); ``None``: the next free.
        prefix: put at the start of every metric key.
        flush_logs_every_n_steps: how often Lightning's ``log_metrics`` writes the rows out (Lightning's trainer
            also saves after each logging call).
        resume: the run resumes the one in ``version``'s folder: drop the rows it logs again (see above).
    """

    def __init__(
        self,
        save_dir: str | Path,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        resume: bool = False,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> _CSVExperimentWriter:
        """The CSV writer of ``log_dir``; the folder is made when the writer first writes."""
        if self._experiment is None:
            self._experiment = _ResumingExperimentWriter(log_dir=self.log_dir, resume=self._resume)
        return self._experiment
