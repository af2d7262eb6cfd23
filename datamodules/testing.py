"""Writers of small stand-in files in each real dataset's own on-disk format, for tests and benchmarks.

The real loaders (torchvision's, tonic's, :mod:`spikenorm.datamodules.ibm_gesture`) read these files
exactly as they read the downloaded datasets, so tests and benchmarks run without network. Event writers
take and return :data:`~spikenorm.datamodules.event_dtype.EVENT_DTYPE` records.

CIFAR-10/100: Python 2 pickles of dicts, as in the official archives. MNIST/Fashion-MNIST: big-endian
idx files under ``<root>/<Name>/raw/``, as torchvision expects after download and extraction.
N-MNIST: 40-bit event records in ``<root>/NMNIST/{Train,Test}/<digit>/*.bin``. tonic's DVS128 Gesture:
``[N, 4]`` int64 ``.npy`` tables (x, y, p, t in ms) under ``<root>/DVSGesture/ibmGesture{Train,Test}/``.
CIFAR10-DVS: AEDAT 4.0 files (iniVation DV: size-prefixed flatbuffers, uncompressed) under
``<root>/CIFAR10DVS/<class>/``, as ``tonic.datasets.CIFAR10DVS`` walks them after extraction.
DVS128 Gesture: the original IBM release (``DvsGesture/``): jAER/cAER AEDAT 3.1 files (ASCII header,
then little-endian typed event packets), ``*_labels.csv`` segment tables and the
``trials_to_train.txt``/``trials_to_test.txt`` lists, as SpikingJelly reads them.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct

import numpy as np

from spikenorm.datamodules.event_dtype import EVENT_DTYPE


class _Py2Str(bytes):
    """Bytes that pickle as a Python 2 ``str``, as in the official CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing ``_Py2Str`` with the BINSTRING opcodes Python 2 used for ``str``.

    Loaded with ``encoding="latin1"`` (torchvision) such a value is a ``str``; with ``encoding="bytes"``
    (the CIFAR web page's recipe) it is ``bytes``: the behaviour of the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2_dict(d: dict) -> dict:
    def conv(v):
        if isinstance(v, str):
            return _Py2Str(v.encode())
        if isinstance(v, list):
            return [conv(e) for e in v]
        return v

    return {_Py2Str(k.encode()): conv(v) for k, v in d.items()}


def _write_py2_pickle(path, d: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2_dict(d))


def _cifar_batch(rng, n: int, num_classes: int, coarse: bool) -> dict:
    batch = {
        "batch_label": "stand-in batch",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    if coarse:
        batch["fine_labels"] = labels
        batch["coarse_labels"] = [v // 5 for v in labels]
    else:
        batch["labels"] = labels
    return batch


def write_cifar10(root, per_batch: int = 8, n_test: int = 6, seed: int = 0) -> None:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        _write_py2_pickle(os.path.join(folder, name), _cifar_batch(rng, per_batch, 10, coarse=False))
    _write_py2_pickle(os.path.join(folder, "test_batch"), _cifar_batch(rng, n_test, 10, coarse=False))
    meta = {"num_cases_per_batch": per_batch, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    _write_py2_pickle(os.path.join(folder, "batches.meta"), meta)


def write_cifar100(root, n_train: int = 30, n_test: int = 7, seed: int = 0) -> None:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    _write_py2_pickle(os.path.join(folder, "train"), _cifar_batch(rng, n_train, 100, coarse=True))
    _write_py2_pickle(os.path.join(folder, "test"), _cifar_batch(rng, n_test, 100, coarse=True))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    _write_py2_pickle(os.path.join(folder, "meta"), meta)


def _write_idx(path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim> (unsigned bytes), big-endian int32 dims, then the raw bytes."""
    magic = 0x0800 | array.ndim  # 2051 for images [N, 28, 28], 2049 for labels [N]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, folder_name: str = "MNIST", n_train: int = 20, n_test: int = 10, seed: int = 0) -> None:
    raw = os.path.join(root, folder_name, "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n))


# ------------------------------------------------------------------------------ AEDAT 4.0 (CIFAR10-DVS)

AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The flatbuffer struct dv::Event {int64 timestamp; int16 x; int16 y; bool polarity}: 13 bytes of fields
# padded to 16, the struct's alignment being that of its largest member.
_AEDAT4_EVENT = np.dtype(
    {"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"], "offsets": [0, 8, 10, 12], "itemsize": 16}
)


def _aedat4_info_node(width: int, height: int) -> str:
    """The IOHeader's infoNode: DV's XML config tree naming each output stream of the file (here one, id 0)."""
    base = "/mainloop/Recorder/outInfo/"
    attrs = (
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalModuleName" type="string">capture</attr>'
        '<attr key="originalOutputName" type="string">events</attr>'
        '<attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
    )
    info = (
        f'<node name="info" path="{base}0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        '<attr key="source" type="string">DVS128</attr></node>'
    )
    stream = f'<node name="0" path="{base}0/">{attrs}{info}</node>'
    return f'<dv version="2.0"><node name="outInfo" path="{base}">{stream}</node></dv>'


def _aedat4_ioheader(info_node: str) -> bytes:
    """IOHeader flatbuffer (identifier ``IOHE``; {compression: int32, dataTablePosition: int64, infoNode: string}).

    Laid out by hand, offsets from the buffer start: root offset (-> 20), identifier, vtable at 8 (its size 10,
    table size 12, field offsets 4, 0, 8), 2 bytes padding, table at 20 (soffset 12 back to the vtable,
    compression 0 = NONE, offset 4 to the string at 32), then the string (length, UTF-8 bytes, NUL).
    dataTablePosition is left out (vtable entry 0), so it reads as the schema default -1: no FileDataTable,
    readers walk packets to the end of the file. Everything is 4-byte aligned, whether alignment is counted
    from the size prefix or from after it.
    """
    text = info_node.encode()
    buf = struct.pack("<I", 20) + b"IOHE" + struct.pack("<5H", 10, 12, 4, 0, 8) + bytes(2)
    buf += struct.pack("<iiI", 12, 0, 4) + struct.pack("<I", len(text)) + text + b"\0"
    return buf + bytes(-len(buf) % 4)


def _aedat4_event_packet(packed: np.ndarray) -> bytes:
    """Size-prefixed EventPacket flatbuffer (identifier ``EVTS``; table {elements: [Event]}).

    Offsets from the size prefix (from which flatbuffer alignment counts): size prefix, root offset (-> 20),
    identifier, vtable at 12 (size 6, table size 8, field offset 4), 2 bytes padding, table at 20 (soffset 8,
    offset 4 to the vector at 28), vector length at 28, 16-byte structs from 32 (8-byte aligned).
    """
    body = struct.pack("<I", 16) + b"EVTS" + struct.pack("<3H", 6, 8, 4) + bytes(2) + struct.pack("<iI", 8, 4)
    body += struct.pack("<I", len(packed)) + packed.tobytes()
    return struct.pack("<I", len(body)) + body


def write_aedat4(path, events: np.ndarray, width: int = 128, height: int = 128, events_per_packet: int = 256) -> None:
    """Write ``events`` (fields t, x, y, p) as an uncompressed AEDAT 4.0 file with one event stream (id 0).

    File: ``#!AER-DAT4.0\\r\\n``, the size-prefixed IOHeader, then packets, each a PacketHeader (int32 stream
    id, int32 byte size) and a size-prefixed EventPacket of at most ``events_per_packet`` events (one empty
    packet if there are no events). ``aedat.Decoder`` (``tonic.io.read_aedat4``) returns the events as given.
    """
    events = np.asarray(events)
    assert events.size == 0 or (events["x"].max() < width and events["y"].max() < height)
    packed = np.zeros(len(events), _AEDAT4_EVENT)
    for src, dst in (("t", "t"), ("x", "x"), ("y", "y"), ("p", "on")):
        packed[dst] = events[src]
    header = _aedat4_ioheader(_aedat4_info_node(width, height))
    with open(path, "wb") as f:
        f.write(AEDAT4_MAGIC + struct.pack("<I", len(header)) + header)
        for start in range(0, max(len(packed), 1), events_per_packet):
            packet = _aedat4_event_packet(packed[start : start + events_per_packet])
            f.write(struct.pack("<iI", 0, len(packet)) + packet)


def _random_dvs_events(rng: np.random.Generator, n: int, width: int = 128, height: int = 128) -> np.ndarray:
    """``n`` events at random pixels and polarities, t strictly increasing from a random start (microseconds)."""
    events = np.zeros(n, EVENT_DTYPE)
    events["t"] = int(rng.integers(0, 1_000_000)) + np.cumsum(rng.integers(1, 200, n))
    events["x"] = rng.integers(0, width, n)
    events["y"] = rng.integers(0, height, n)
    events["p"] = rng.integers(0, 2, n)
    return events


def write_cifar10dvs(root, samples_per_class: int, rng: np.random.Generator, num_events: int = 300) -> dict:
    """CIFAR10-DVS as extracted: ``<root>/CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4`` (128x128 sensor).

    ``tonic.datasets.CIFAR10DVS(root)`` labels each file by its folder's name. Returns {path relative to
    ``root``: events written}. Note tonic only skips its download when the archive
    ``CIFAR10DVS/CIFAR10DVS.zip`` exists and at least 1000 ``.aedat4`` files are present.
    """
    written = {}
    for name in CIFAR10DVS_CLASSES:
        os.makedirs(os.path.join(root, "CIFAR10DVS", name), exist_ok=True)
        for i in range(samples_per_class):
            rel = os.path.join("CIFAR10DVS", name, f"cifar10_{name}_{i}.aedat4")
            events = _random_dvs_events(rng, num_events)
            write_aedat4(os.path.join(root, rel), events)
            written[rel] = events
    return written


# ---------------------------------------------------------------------------- AEDAT 3.1 (DVS128 Gesture)

# The required header lines: version (first), format, sources, start time, end of header (last).
AEDAT31_HEADER = (
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
    b"#Start-Time: 2017-03-02 16:38:42 (TZ-0800)\r\n#!END-HEADER\r\n"
)
# eventType, eventSource, eventSize, eventTSOffset, eventTSOverflow, eventCapacity, eventNumber, eventValid
_AEDAT31_PACKET_HEADER = struct.Struct("<hhiiiiii")  # 28 bytes
_SPECIAL_EVENT, _POLARITY_EVENT = 0, 1
_TIMESTAMP_RESET, _EXTERNAL_INPUT_RISING_EDGE = 1, 2  # special event types (data bits 1-7)


def _aedat31_packet(event_type: int, words: np.ndarray, timestamps: np.ndarray, spare_slots: int = 0) -> bytes:
    """One AEDAT 3.1 packet of 8-byte events {uint32 data, int32 timestamp}, source 1, TS overflow 0.

    eventCapacity = eventNumber + ``spare_slots`` (zero-filled unused slots follow the events);
    eventValid counts the events with bit 0 (valid mark) set.
    """
    slots = np.zeros(len(words) + spare_slots, [("data", "<u4"), ("ts", "<i4")])
    slots["data"][: len(words)] = words
    slots["ts"][: len(words)] = timestamps
    valid = int(np.count_nonzero(words & 1))
    header = _AEDAT31_PACKET_HEADER.pack(event_type, 1, 8, 4, 0, len(slots), len(words), valid)
    return header + slots.tobytes()


def _polarity_words(x: np.ndarray, y: np.ndarray, p: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Polarity event data: bit 0 valid mark, bit 1 polarity (1 = ON), bits 2-16 y, bits 17-31 x."""
    u = np.uint32
    return (x.astype(u) << u(17)) | (y.astype(u) << u(2)) | (p.astype(u) << u(1)) | valid.astype(u)


def _gesture_trial(rng: np.random.Generator, events_per_gesture: int, invalid_in_segment: bool):
    """One recording: events before, between and after 12 labelled segments (classes 1..11, one twice).

    Returns (all events with a ``valid`` field, [(class 1..11, start, end)], time of the special event).
    Each segment has an event at its start (inclusive) and the gap after it an event at its end (exclusive).
    """
    classes = list(range(1, 12))
    repeated = int(rng.integers(1, 12))
    classes.insert(repeated, repeated)  # right after its first occurrence, as in user01_fluorescent (8, 8)
    n_gap = max(2, events_per_gesture // 4)
    times, segments = [], []
    cursor = int(rng.integers(1_000_000, 5_000_000))  # recordings start well after t = 0
    for c in [*classes, None]:  # None: the tail after the last segment
        gap_end = cursor + int(rng.integers(50_000, 200_000))
        times.append(np.concatenate([[cursor], np.sort(rng.integers(cursor, gap_end, n_gap - 1))]))
        if c is None:
            break
        start, end = gap_end, gap_end + int(rng.integers(200_000, 600_000))
        times.append(np.concatenate([[start], np.sort(rng.integers(start, end, events_per_gesture - 1))]))
        segments.append((c, start, end))
        cursor = end
    t = np.concatenate(times)
    k = int(rng.integers(len(segments)))
    _, start, end = segments[k]
    t_invalid = int(rng.integers(start + 1, end)) if invalid_in_segment else start - 1  # in a gap otherwise
    t = np.sort(np.concatenate([t, [t_invalid]]), kind="stable")
    events = np.zeros(len(t), [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8"), ("valid", "?")])
    events["t"] = t
    events["x"] = rng.integers(0, 128, len(t))
    events["y"] = rng.integers(0, 128, len(t))
    events["p"] = rng.integers(0, 2, len(t)).astype(bool)
    events["valid"] = True
    events["valid"][np.searchsorted(t, t_invalid)] = False  # on a tie either event may take it: x, y, p come after
    _, start, end = segments[(k + 1) % len(segments)]
    t_special = int(rng.integers(start + 1, end))
    return events, segments, t_special


def _write_aedat31_polarity(path, events: np.ndarray, t_special: int, events_per_packet: int) -> None:
    """AEDAT 3.1 file: header, a special packet (TIMESTAMP_RESET at t=0), then polarity packets of at most
    ``events_per_packet`` events with one more special packet (EXTERNAL_INPUT_RISING_EDGE at ``t_special``)
    between them; the last polarity packet has 3 unused slots (eventCapacity = eventNumber + 3)."""
    assert events["t"].max() < 2**31  # fits the int32 timestamp with eventTSOverflow 0
    words = _polarity_words(events["x"], events["y"], events["p"], events["valid"])
    u = np.uint32
    reset = _aedat31_packet(_SPECIAL_EVENT, np.array([_TIMESTAMP_RESET << 1 | 1], u), np.array([0]))
    # data bits 8-31 set: read as a polarity event this would be a valid event inside a segment
    edge_word = np.array([0xABCD << 8 | _EXTERNAL_INPUT_RISING_EDGE << 1 | 1], u)
    edge = _aedat31_packet(_SPECIAL_EVENT, edge_word, np.array([t_special]))
    split = int(np.searchsorted(events["t"], t_special))
    bounds = sorted(set(range(0, len(events), events_per_packet)) | {split} | {len(events)})
    with open(path, "wb") as f:
        f.write(AEDAT31_HEADER + reset)
        for lo, hi in itertools.pairwise(bounds):
            if lo == split:
                f.write(edge)
            spare = 3 if hi == len(events) else 0
            f.write(_aedat31_packet(_POLARITY_EVENT, words[lo:hi], events["t"][lo:hi], spare))


def write_ibm_gesture(
    root,
    train_trials,
    test_trials,
    rng: np.random.Generator,
    events_per_gesture: int = 40,
    events_per_packet: int = 64,
    invalid_in_segment: bool = True,
) -> dict:
    """The original IBM DVS128 Gesture release as ``DvsGesture.tar.gz`` extracts, under ``<root>/DvsGesture/``.

    Per trial name (e.g. ``user01_fluorescent``): ``<trial>.aedat`` (AEDAT 3.1, 128x128 DVS128 polarity events,
    see ``_write_aedat31_polarity``) and ``<trial>_labels.csv`` (``class,startTime_usec,endTime_usec``, one
    row per segment: classes 1..11 in order with one class repeated, 12 rows); plus ``trials_to_train.txt``
    and ``trials_to_test.txt`` listing ``<trial>.aedat`` one per line. Events also lie outside every segment
    (before the first, between segments, after the last). Each file has one polarity event with the valid
    mark cleared: inside a segment if ``invalid_in_segment``, else in a gap (SpikingJelly's
    ``load_aedat_v3`` does not check the valid mark; a reader following the format drops the event).

    Returns {trial: [{"class": 0-based class, "start": µs, "end": µs, "events": the valid polarity events with
    start <= t < end, t absolute as in the file}, ...] in CSV row order}.
    """
    folder = os.path.join(root, "DvsGesture")
    os.makedirs(folder)
    out = {}
    for trial in list(train_trials) + list(test_trials):
        events, segments, t_special = _gesture_trial(rng, events_per_gesture, invalid_in_segment)
        _write_aedat31_polarity(os.path.join(folder, f"{trial}.aedat"), events, t_special, events_per_packet)
        with open(os.path.join(folder, f"{trial}_labels.csv"), "w") as f:
            f.write("class,startTime_usec,endTime_usec\n")
            f.writelines(f"{c},{start},{end}\n" for c, start, end in segments)
        valid = events[events["valid"]]
        out[trial] = [
            {
                "class": c - 1,
                "start": start,
                "end": end,
                "events": valid[(valid["t"] >= start) & (valid["t"] < end)][list(EVENT_DTYPE.names)].astype(
                    EVENT_DTYPE
                ),
            }
            for c, start, end in segments
        ]
    for split, trials in (("train", train_trials), ("test", test_trials)):
        with open(os.path.join(folder, f"trials_to_{split}.txt"), "w") as f:
            f.writelines(f"{trial}.aedat\n" for trial in trials)
    return out


# ------------------------------------------------------------------------------- N-MNIST (.bin, 40-bit)


def write_nmnist(root, samples_per_class: dict[str, int], rng: np.random.Generator, num_events: int = 300) -> dict:
    """N-MNIST as extracted: ``<root>/NMNIST/{Train,Test}/<digit>/<nnnnn>.bin`` (34x34 sensor).

    Every event is 5 bytes (Orchard et al.'s format): byte 0 ``x``, byte 1 ``y``, bit 7 of byte 2 the
    polarity, and the other 23 bits (byte 2 bits 0-6, bytes 3-4, big-endian) the time in microseconds.
    ``samples_per_class`` maps ``Train``/``Test`` to a count per digit. Returns {path relative to ``root``:
    events written}.
    """
    written = {}
    for split, count in samples_per_class.items():
        for digit in range(10):
            os.makedirs(os.path.join(root, "NMNIST", split, str(digit)), exist_ok=True)
            for i in range(count):
                events = _random_dvs_events(rng, num_events, 34, 34)
                events["t"] -= events["t"][0]  # a recording starts near 0 and lasts about 300 ms (< 2**23 us)
                t = events["t"].astype(np.uint32)
                raw = np.stack(
                    [
                        events["x"].astype(np.uint8),
                        events["y"].astype(np.uint8),
                        ((events["p"].astype(np.uint32) << 7) | ((t >> 16) & 0x7F)).astype(np.uint8),
                        ((t >> 8) & 0xFF).astype(np.uint8),
                        (t & 0xFF).astype(np.uint8),
                    ],
                    axis=1,
                )
                rel = os.path.join("NMNIST", split, str(digit), f"{i:05d}.bin")
                raw.tofile(os.path.join(root, rel))
                written[rel] = events
    return written


# ------------------------------------------------------------------- DVS128 Gesture (tonic's .npy files)


def write_dvsgesture_npy(root, trials: dict[str, list[str]], rng: np.random.Generator, num_events: int = 300) -> dict:
    """tonic's preprocessed DVS128 Gesture: ``<root>/DVSGesture/ibmGesture{Train,Test}/<trial>/<class>.npy``.

    ``trials`` maps ``ibmGestureTrain``/``ibmGestureTest`` to trial folders (``user01_fluorescent``...);
    each gets one file per class 0..10 holding an ``[N, 4]`` int64 array with columns ``x, y, p, t`` and
    ``t`` in milliseconds (tonic's reader multiplies it by 1000). Returns {path relative to ``root``:
    events written (``t`` in microseconds)}.
    """
    written = {}
    for split, names in trials.items():
        for trial in names:
            os.makedirs(os.path.join(root, "DVSGesture", split, trial), exist_ok=True)
            for label in range(11):
                events = _random_dvs_events(rng, num_events)
                events["t"] = (events["t"] // 1000) * 1000  # millisecond precision
                table = np.stack([events["x"], events["y"], events["p"], events["t"] // 1000], axis=1).astype(np.int64)
                rel = os.path.join("DVSGesture", split, trial, f"{label}.npy")
                np.save(os.path.join(root, rel), table)
                written[rel] = events
    return written
