"""DVS128 Gesture from IBM's original release, cut into one sample per labelled segment.

The original archive ``DvsGesture.tar.gz`` extracts to ``DvsGesture/`` holding, per recording ("trial"),
``userNN_<lighting>.aedat`` (jAER AEDAT 3.1) and ``userNN_<lighting>_labels.csv``
(``class,startTime_usec,endTime_usec``, classes 1..11), plus ``trials_to_train.txt`` and
``trials_to_test.txt`` naming the recordings of each split. Cutting every CSV row into a sample is the
convention SpikingJelly follows (its docs report 1176 train / 288 test samples); tonic's preprocessed
``DVSGesture`` gives 1077 / 264 (its ``ibmGesture{Train,Test}`` folders hold one file per recording and class),
so results from the two are not comparable.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from spikenorm.datamodules.errors import CorruptDataError, reading
from spikenorm.datamodules.event_dtype import EVENT_DTYPE

_PACKET_HEADER = np.dtype(
    [
        ("type", "<i2"),
        ("source", "<i2"),
        ("size", "<i4"),
        ("ts_offset", "<i4"),
        ("ts_overflow", "<i4"),
        ("capacity", "<i4"),
        ("number", "<i4"),
        ("valid", "<i4"),
    ]
)
_POLARITY_EVENT = np.dtype([("data", "<u4"), ("timestamp", "<i4")])
_POLARITY_TYPE = 1
_AEDAT31_MAGIC = b"#!AER-DAT3.1"
_HEADER_END = b"#!END-HEADER\r\n"
_AEDAT31_FORMAT = "a jAER AEDAT 3.1 recording ('#!AER-DAT3.1' header lines, then typed event packets)"
_REPLACE_RECORDING = (
    "Replace it with an intact copy from IBM's DvsGesture.tar.gz (https://research.ibm.com/dvsgesture/)."
)


def read_aedat31_polarity(path: str) -> np.ndarray:
    """The valid polarity events of a jAER AEDAT 3.1 file, as :data:`~spikenorm.datamodules.event_dtype.EVENT_DTYPE`
    (``t`` in microseconds).

    Format (iniVation's AEDAT 3.1 specification): ASCII header lines starting with ``#`` up to
    ``#!END-HEADER\\r\\n``; then packets, each a 28-byte little-endian header (``eventType``,
    ``eventSource`` int16; ``eventSize``, ``eventTSOffset``, ``eventTSOverflow``, ``eventCapacity``,
    ``eventNumber``, ``eventValid`` int32) followed by ``eventCapacity * eventSize`` bytes. Polarity
    events (type 1, 8 bytes) hold a uint32 ``data`` (bit 0 valid, bit 1 polarity, bits 2..16 ``y``,
    bits 17..31 ``x``) and an int32 timestamp; the full time is ``(eventTSOverflow << 31) | timestamp``.

    Only the first ``eventNumber`` slots of a packet hold events; packets of other types are skipped;
    events whose valid bit is 0 are dropped. (tonic's ``read_dvs_ibm`` reads every slot of every packet as
    a polarity event, ignores the valid bit and the overflow, and does not run on tonic 1.7 at all: it
    unpacks two values from a function that returns three.) A file that does not follow the format
    (truncated, overwritten) raises a :class:`~spikenorm.datamodules.errors.CorruptDataError` naming it.
    """
    with open(path, "rb") as f:
        raw = f.read()
    with reading(path, _AEDAT31_FORMAT, _REPLACE_RECORDING):
        return _parse_aedat31_polarity(path, raw)


def _corrupt_recording(path: str, problem: str) -> CorruptDataError:
    return CorruptDataError.for_file(path, _AEDAT31_FORMAT, problem, _REPLACE_RECORDING)


def _parse_aedat31_polarity(path: str, raw: bytes) -> np.ndarray:
    if not raw.startswith(_AEDAT31_MAGIC):
        raise _corrupt_recording(path, f"it starts with {raw[:12]!r}")
    end = raw.find(_HEADER_END)
    if end < 0:
        raise _corrupt_recording(path, f"the header has no {_HEADER_END!r} line")
    offset, chunks = end + len(_HEADER_END), []
    while offset + _PACKET_HEADER.itemsize <= len(raw):
        packet, header = offset, np.frombuffer(raw, _PACKET_HEADER, count=1, offset=offset)[0]
        body = offset + _PACKET_HEADER.itemsize
        if not 0 <= header["number"] <= header["capacity"] or header["size"] < 0:
            counts = f"eventSize {header['size']}, eventCapacity {header['capacity']}, eventNumber {header['number']}"
            raise _corrupt_recording(path, f"the packet at byte {packet} has {counts}")
        offset = body + int(header["capacity"]) * int(header["size"])
        if offset > len(raw):
            raise _corrupt_recording(path, f"it is truncated inside the packet at byte {packet}")
        if header["type"] != _POLARITY_TYPE:
            continue
        if header["size"] != _POLARITY_EVENT.itemsize:
            raise _corrupt_recording(path, f"a polarity packet says its events have {int(header['size'])} bytes, not 8")
        events = np.frombuffer(raw, _POLARITY_EVENT, count=int(header["number"]), offset=body)
        events = events[(events["data"] & 1) == 1]
        out = np.empty(len(events), EVENT_DTYPE)
        out["x"] = (events["data"] >> 17) & 0x7FFF
        out["y"] = (events["data"] >> 2) & 0x7FFF
        out["p"] = (events["data"] >> 1) & 1
        out["t"] = (np.int64(header["ts_overflow"]) << 31) | events["timestamp"].astype(np.int64)
        chunks.append(out)
    return np.concatenate(chunks) if chunks else np.empty(0, EVENT_DTYPE)


@functools.lru_cache(maxsize=2)
def _recording(path: str) -> np.ndarray:
    """One recording's events, kept for the next samples of the same file (samples are grouped by file)."""
    return read_aedat31_polarity(path)


class IBMGestureSegments:
    """DVS128 Gesture read from the original release, one sample per row of each labels CSV.

    A tonic-style dataset: ``data`` (``(recording, start, end)`` per sample), ``targets`` (class 0..10),
    ``sensor_size = (128, 128, 2)``, and ``__getitem__`` returning ``(events, target)`` with ``events`` the
    :data:`~spikenorm.datamodules.event_dtype.EVENT_DTYPE` records of the segment ``start <= t < end``, ``t``
    counted from ``start`` (microseconds), passed through ``transform``. Samples follow the order of the
    split's trial list and of each CSV.

    ``download`` is accepted for the same signature as tonic's readers, but IBM distributes the archive by
    manual download only: missing files always raise a ``FileNotFoundError`` saying where to get them.
    """

    sensor_size = (128, 128, 2)
    folder = "DvsGesture"
    classes: ClassVar[list[str]] = [
        "hand clapping",
        "right hand wave",
        "left hand wave",
        "right arm clockwise",
        "right arm counter-clockwise",
        "left arm clockwise",
        "left arm counter-clockwise",
        "arm roll",
        "air drums",
        "air guitar",
        "other gestures",
    ]

    def __init__(
        self, root: str, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        self.location = os.path.join(os.path.expanduser(root), self.folder)
        self.train = train
        self.transform = transform
        trial_list = os.path.join(self.location, "trials_to_train.txt" if train else "trials_to_test.txt")
        if not os.path.isfile(trial_list):
            raise FileNotFoundError(
                f"DVS128 Gesture (original release) not found: expected {trial_list} next to the "
                f"userNN_<lighting>.aedat and userNN_<lighting>_labels.csv files in {self.location}. IBM "
                "distributes DvsGesture.tar.gz by manual download only (https://research.ibm.com/dvsgesture/); "
                f"extract it in {os.path.dirname(self.location) or '.'}."
            )
        with open(trial_list) as f:
            trials = [line.strip() for line in f if line.strip()]
        self.data: list[tuple[str, int, int]] = []
        self.targets: list[int] = []
        for trial in trials:
            recording = os.path.join(self.location, trial)
            labels_csv = recording[: -len(".aedat")] + "_labels.csv"
            for path in (recording, labels_csv):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{trial_list} lists {trial}, but {path} does not exist")
            with reading(labels_csv, "a labels CSV with rows class,startTime_usec,endTime_usec", _REPLACE_RECORDING):
                rows = np.loadtxt(labels_csv, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2, usecols=(0, 1, 2))
            for label, start, end in rows:
                if not 1 <= label <= len(self.classes):
                    raise ValueError(f"{labels_csv}: class {label} outside 1..{len(self.classes)}")
                self.data.append((recording, int(start), int(end)))
                self.targets.append(int(label) - 1)

    def check_files(self) -> None:
        """Raise a :class:`~spikenorm.datamodules.errors.CorruptDataError` naming the first recording that is empty
        or does not start with the AEDAT 3.1 version line (reads 12 bytes per recording, no events), so a damaged
        recording is named before a loader reaches it."""
        for recording in dict.fromkeys(path for path, _, _ in self.data):
            with open(recording, "rb") as f:
                start = f.read(len(_AEDAT31_MAGIC))
            if start != _AEDAT31_MAGIC:
                problem = f"it starts with {start!r}, not {_AEDAT31_MAGIC!r}" if start else "it is empty (0 bytes)"
                raise _corrupt_recording(recording, problem)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        recording, start, end = self.data[index]
        events = _recording(recording)
        segment = events[(events["t"] >= start) & (events["t"] < end)].copy()
        segment["t"] -= start
        target = self.targets[index]
        if self.transform is not None:
            segment = self.transform(segment)
        return segment, target
