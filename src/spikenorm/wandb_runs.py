"""Read an offline Weights & Biases run back (history rows, summary, config) without syncing it.

An offline run (see :class:`spikenorm.loggers.WandbLogger`) lives in ``<save_dir>/wandb/offline-run-*``;
wandb (0.31) writes no summary or history file for it, only the transaction log ``run-<id>.wandb`` that
``wandb sync`` uploads. :func:`read_offline_run` decodes that log, so tests and users can check what a run
holds on a machine with no network.
"""

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["last_history_step", "read_offline_run"]

# A ``run-<id>.wandb`` file is a LevelDB-style log: a 7-byte file header (ident ":W&B", magic 0xBEE1,
# version 0), then 32 KiB blocks of chunks. Each chunk has a 7-byte header (CRC-32 of type byte + data,
# data length, chunk type); a record is one FULL chunk or FIRST, MIDDLE..., LAST. A block tail shorter
# than a chunk header is zero padding. Every record is a serialized ``wandb.proto`` ``Record``.

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_IDENT, _MAGIC, _VERSION = b":W&B", 0xBEE1, 0
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _iter_records(data: bytes, path: Path, start: int = 0) -> Iterator[tuple[bytes, int]]:
    """Yield each complete serialized record of a ``.wandb`` log with the file offset just after it.

    ``data`` is the file's content from byte ``start`` on, where ``start`` is 0 (then the file header is checked)
    or an offset this function returned (a record boundary). An incomplete trailing record is not yielded.
    """
    if start == 0:
        if len(data) < _FILE_HEADER.size:
            raise ValueError(f"{path} is not a W&B run log: expected a 7-byte header, got {len(data)} bytes")
        ident, magic, version = _FILE_HEADER.unpack_from(data)
        if ident != _IDENT or magic != _MAGIC:
            raise ValueError(f"{path} is not a W&B run log: header {data[:7]!r} lacks ident ':W&B'/magic 0xBEE1")
        if version != _VERSION:
            raise ValueError(f"{path}: unsupported W&B log version {version}, expected {_VERSION}")
    pos, end_of_data, pending = start or _FILE_HEADER.size, start + len(data), None
    while pos + _CHUNK_HEADER.size <= end_of_data:
        block_left = _BLOCK - pos % _BLOCK
        if block_left < _CHUNK_HEADER.size:
            pos += block_left
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos - start)
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += block_left
            continue
        end = pos + _CHUNK_HEADER.size + length
        if end > end_of_data:  # the writer was interrupted mid-record (run still going, or killed)
            return
        if _CHUNK_HEADER.size + length > block_left or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise ValueError(f"{path}: corrupt chunk at byte {pos} (type {kind}, length {length})")
        chunk, at, pos = data[end - length - start : end - start], pos, end
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch in the chunk at byte {at}")
        if kind in (_FULL, _FIRST) and pending is not None:
            raise ValueError(f"{path}: record at byte {at} starts inside an unfinished record")
        if kind in (_MIDDLE, _LAST) and pending is None:
            raise ValueError(f"{path}: continuation chunk at byte {at} has no first chunk")
        if kind == _FULL:
            yield chunk, pos
        elif kind == _FIRST:
            pending = [chunk]
        else:
            pending.append(chunk)
            if kind == _LAST:
                yield b"".join(pending), pos
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


def last_history_step(log: str | os.PathLike[str], start: int = 0) -> tuple[int | None, int]:
    """The ``_step`` of the last history row that a run's transaction log holds on disk, read from byte ``start``.

    For following a log that the W&B service is still writing (online or offline run): the service buffers
    records and writes them out every ``x_transaction_log_flush_interval`` seconds, so what a killed process
    leaves behind is what this function finds.

    Args:
        log: the ``run-<id>.wandb`` file.
        start: 0, or the offset a previous call returned: only the records from there on are read.

    Returns:
        ``(step, offset)``: the ``_step`` of the last complete history record from ``start`` on (``None`` if there
        is none yet) and the offset just after the last complete record, where the next call can start. A log
        not written yet, or holding less than its file header, gives ``(None, start)``.

    Raises:
        ValueError: the bytes are not a readable W&B run log.
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(log)
    try:
        with path.open("rb") as file:
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return None, start
    if start == 0 and len(data) < _FILE_HEADER.size:
        return None, start
    step, offset = None, start
    for raw, offset in _iter_records(data, path, start):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            step = next((json.loads(i.value_json) for i in record.history.item if _item_path(i) == ["_step"]), step)
    return step, offset


def read_offline_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read what an offline W&B run holds, without syncing it.

    wandb (0.31) writes no ``wandb-summary.json`` or history file for offline runs: everything lives
    in the run's transaction log ``run-<id>.wandb``, the same file ``wandb sync`` uploads. This
    function decodes that log with the protobuf schema shipped in ``wandb.proto``.

    The result is a dict with

    - ``"history"``: one dict per ``log`` call, in order, e.g. ``{"val/acc": 0.5,
      "trainer/global_step": 9, "_step": 3, "_runtime": ..., "_timestamp": ...}``; keys logged as
      nested dicts come back nested;
    - ``"summary"``: the run summary as ``wandb sync`` would upload it (last value per key unless
      the summary was set explicitly or via ``define_metric``), including wandb's ``_``-prefixed keys;
    - ``"config"``: the run config (hyperparameters), including wandb's internal ``_wandb`` entry;
    - ``"exit_code"``: the exit code in the run's exit record (written by ``wandb.finish`` or when the process
      exits): 0 for a run that ended normally, non-zero for one that raised (e.g. 1 for a fit that failed at
      setup); ``None`` when there is no exit record: the run is still being written or its process was killed
      (SIGKILL, power loss), and an incomplete last record is dropped;
    - ``"finished"``: whether the run ended normally, ``exit_code == 0``; ``False`` for a run that crashed, was
      killed or is still running.

    Args:
        run_dir: a ``wandb/offline-run-<timestamp>-<id>`` folder (``wandb/latest-run`` works too), or
            the ``run-<id>.wandb`` file inside it.

    Returns:
        The run's ``history``, ``summary``, ``config``, ``exit_code`` and ``finished`` entries described above.

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
    exit_code = None
    for raw, _ in _iter_records(path.read_bytes(), path):
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
            exit_code = record.exit.exit_code
    return {
        "history": history,
        "summary": summary,
        "config": config,
        "exit_code": exit_code,
        "finished": exit_code == 0,
    }
