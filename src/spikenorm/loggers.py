"""Loggers that lose nothing: Weights & Biases with or without an API key, CSV that resumes.

:class:`CSVLogger` is Lightning's ``CSVLogger`` except that a run resumed into its existing version folder
(``spikenorm fit --ckpt_path last``) appends to its ``metrics.csv`` instead of deleting it.

:class:`WandbLogger` is Lightning's ``WandbLogger`` with research-friendly defaults and one change:
``offline=None`` (the default) decides at construction time whether the run can go online. Without an
API key the run is written to a local ``<save_dir>/wandb/offline-run-*`` folder instead of failing or
prompting for a login; upload it later with::

    wandb sync <save_dir>/wandb/offline-run-<timestamp>-<id>
    wandb sync --sync-all          # every unsynced run under ./wandb

:func:`read_offline_run` reads such a folder back (history rows, summary, config) without syncing it,
so tests and users can check what a run holds on a machine with no network.
"""

import json
import netrc
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _CSVExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["CSVLogger", "WandbLogger", "read_offline_run", "resolve_offline", "wandb_api_key_available"]

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
    inspect them with :func:`read_offline_run`.

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


# --- reading offline runs -------------------------------------------------------------------------
# A ``run-<id>.wandb`` file is a LevelDB-style log: a 7-byte file header (ident ":W&B", magic 0xBEE1,
# version 0), then 32 KiB blocks of chunks. Each chunk has a 7-byte header (CRC-32 of type byte + data,
# data length, chunk type); a record is one FULL chunk or FIRST, MIDDLE..., LAST. A block tail shorter
# than a chunk header is zero padding. Every record is a serialized ``wandb.proto`` ``Record``.

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _iter_record_bytes(data: bytes, path: Path) -> Iterator[bytes]:
    """Yield the serialized records of a ``.wandb`` log; an incomplete trailing record is dropped."""
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path} is not a W&B run log: expected a 7-byte header, got {len(data)} bytes")
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError(f"{path} is not a W&B run log: header {data[:7]!r} lacks ident ':W&B'/magic 0xBEE1")
    if version != _VERSION:
        raise ValueError(f"{path}: unsupported W&B log version {version}, expected {_VERSION}")
    pos, pending = _FILE_HEADER.size, None
    while pos + _CHUNK_HEADER.size <= len(data):
        block_left = _BLOCK - pos % _BLOCK
        if block_left < _CHUNK_HEADER.size:
            pos += block_left
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += block_left
            continue
        start, end = pos + _CHUNK_HEADER.size, pos + _CHUNK_HEADER.size + length
        if end > len(data):  # the writer was interrupted mid-record (run still going, or killed)
            return
        if _CHUNK_HEADER.size + length > block_left or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise ValueError(f"{path}: corrupt chunk at byte {pos} (type {kind}, length {length})")
        chunk, at, pos = data[start:end], pos, end
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch in the chunk at byte {at}")
        if kind == _FULL:
            if pending is not None:
                raise ValueError(f"{path}: record at byte {at} starts inside an unfinished record")
            yield chunk
        elif kind == _FIRST:
            if pending is not None:
                raise ValueError(f"{path}: record at byte {at} starts inside an unfinished record")
            pending = [chunk]
        else:
            if pending is None:
                raise ValueError(f"{path}: continuation chunk at byte {at} has no first chunk")
            pending.append(chunk)
            if kind == _LAST:
                yield b"".join(pending)
                pending = None


def _item_path(item: Any) -> list[str]:
    """The key path of a history/summary/config item (``key`` or ``nested_key``)."""
    return list(item.nested_key) if item.nested_key else [item.key]


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``target[p0][p1]...[pn] = value``, creating intermediate dicts."""
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[path[-1]] = value


def _del_path(target: dict[str, Any], path: list[str]) -> None:
    """Remove ``target[p0]...[pn]`` if present."""
    for part in path[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply_updates(target: dict[str, Any], section: Any) -> None:
    """Apply a config or summary record (its ``update`` items, then its ``remove`` items) to ``target``."""
    for item in section.update:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in section.remove:
        _del_path(target, _item_path(item))


def _find_log(run_dir: Path) -> Path:
    """The ``run-*.wandb`` file of an offline run folder (or ``run_dir`` itself if it is that file)."""
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"W&B run folder {run_dir} does not exist")
    logs = sorted(run_dir.glob("run-*.wandb"))
    if len(logs) != 1:
        raise ValueError(
            f"expected one run-*.wandb file in {run_dir} (a wandb/offline-run-* folder), found {len(logs)}"
        )
    return logs[0]


def read_offline_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read what an offline W&B run holds, without syncing it.

    wandb (0.31) writes no ``wandb-summary.json`` or history file for offline runs: everything lives
    in the run's transaction log ``run-<id>.wandb``, the same file ``wandb sync`` uploads. This
    function decodes that log with the protobuf schema shipped in ``wandb.proto``.

    Args:
        run_dir: a ``wandb/offline-run-<timestamp>-<id>`` folder (``wandb/latest-run`` works too), or
            the ``run-<id>.wandb`` file inside it.

    Returns:
        A dict with

        - ``"history"``: one dict per ``log`` call, in order, e.g. ``{"val/acc": 0.5,
          "trainer/global_step": 9, "_step": 3, "_runtime": ..., "_timestamp": ...}``; keys logged as
          nested dicts come back nested;
        - ``"summary"``: the run summary as ``wandb sync`` would upload it (last value per key unless
          the summary was set explicitly or via ``define_metric``), including wandb's ``_``-prefixed keys;
        - ``"config"``: the run config (hyperparameters), including wandb's internal ``_wandb`` entry;
        - ``"finished"``: whether the run was finished (``wandb.finish``); ``False`` for a run still
          being written or one that was killed, whose incomplete last record is dropped.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: no single ``run-*.wandb`` file, or the file is not a readable W&B run log.

    To upload the run later, on a machine with an API key: ``wandb sync <run_dir>``.
    """
    from wandb.proto import wandb_internal_pb2

    path = _find_log(Path(run_dir))
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    finished = False
    for raw in _iter_record_bytes(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_path(row, _item_path(item), json.loads(item.value_json))
            history.append(row)
        elif kind == "run":  # config given to wandb.init (and the summary of a resumed run)
            _apply_updates(config, record.run.config)
            _apply_updates(summary, record.run.summary)
        elif kind == "config":
            _apply_updates(config, record.config)
        elif kind == "summary":
            _apply_updates(summary, record.summary)
        elif kind == "exit":
            finished = True
    return {"history": history, "summary": summary, "config": config, "finished": finished}
