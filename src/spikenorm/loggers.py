"""Loggers that lose nothing: Weights & Biases with or without an API key, CSV that resumes.

:class:`CSVLogger` is Lightning's ``CSVLogger`` except that a run resumed into its existing version folder
(``spikenorm fit --ckpt_path last``) appends to its ``metrics.csv`` instead of deleting it.

:class:`WandbLogger` is Lightning's ``WandbLogger`` with research-friendly defaults and one change:
``offline=None`` (the default) decides at construction time whether the run can go online. Without an
API key the run is written to a local ``<save_dir>/wandb/offline-run-*`` folder instead of failing or
prompting for a login; upload it later with::

    wandb sync <save_dir>/wandb/offline-run-<timestamp>-<id>
    wandb sync --sync-all          # every unsynced run under ./wandb

:func:`spikenorm.wandb_runs.read_offline_run` reads such a folder back without syncing it.
"""

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _CSVExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn

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
    """Lightning's ``WandbLogger`` that goes offline by itself when there is no API key.

    Every argument of :class:`lightning.pytorch.loggers.WandbLogger` is accepted (``name``,
    ``version``, ``id``, ``prefix``, ...); extra keyword arguments go to ``wandb.init``. Offline runs
    land in ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync <that folder>`` or
    inspect them with :func:`spikenorm.wandb_runs.read_offline_run`.

    Args:
        save_dir: directory that receives the ``wandb/`` run folder; created when the run starts.
        offline: ``True``/``False`` to force the mode; ``None`` (default) decides with
            :func:`resolve_offline` (``WANDB_MODE`` first, then whether an API key is available).
        project: W&B project name.
        log_model: upload checkpoints as artifacts (``True`` at the end, ``"all"`` as they are saved).
            When ``offline=None`` resolves to offline, checkpoints cannot be uploaded: a warning is
            emitted and ``log_model`` is turned off (an explicit ``offline=True`` with ``log_model``
            still raises, as in Lightning).
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
        **kwargs: Any,
    ) -> None:
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

    @property
    def offline(self) -> bool:
        """Whether this logger's run is (or will be) offline."""
        return self._offline

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access; ``save_dir`` is created first."""
        if self._experiment is None and self._save_dir is not None:
            os.makedirs(self._save_dir, exist_ok=True)
        return super().experiment


class _AppendingExperimentWriter(_CSVExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = file.readline().strip()
            self.metrics_keys = sorted(header.split(",")) if header else []


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same arguments) that appends to an existing ``metrics.csv``.

    Lightning's logger deletes ``<save_dir>/<name>/version_<n>/metrics.csv`` when it writes into a version
    folder that already has one, which is exactly what resuming a crashed run does. This one keeps the rows
    and appends; rows the crashed process logged after its last checkpoint stay in the file, so a step can
    appear twice (the later row is the resumed run's).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _CSVExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
