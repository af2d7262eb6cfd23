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

__all__ = ["read_offline_run"]

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

    The result is a dict with

    - ``"history"``: one dict per ``log`` call, in order, e.g. ``{"val/acc": 0.5,
      "trainer/global_step": 9, "_step": 3, "_runtime": ..., "_timestamp": ...}``; keys logged as
      nested dicts come back nested;
    - ``"summary"``: the run summary as ``wandb sync`` would upload it (last value per key unless
      the summary was set explicitly or via ``define_metric``), including wandb's ``_``-prefixed keys;
    - ``"config"``: the run config (hyperparameters), including wandb's internal ``_wandb`` entry;
    - ``"finished"``: whether the run was finished (``wandb.finish``); ``False`` for a run still
      being written or one that was killed, whose incomplete last record is dropped.

    Args:
        run_dir: a ``wandb/offline-run-<timestamp>-<id>`` folder (``wandb/latest-run`` works too), or
            the ``run-<id>.wandb`` file inside it.

    Returns:
        The run's ``history``, ``summary``, ``config`` and ``finished`` entries described above.

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
