"""The event-camera writers of spikenorm.datamodules.testing, checked with readers that share none of their code.

AEDAT 4.0 (CIFAR10-DVS) is read back through tonic (``tonic.io.read_aedat4``, i.e. the Rust ``aedat``
decoder) and ``tonic.datasets.CIFAR10DVS``; AEDAT 3.1 (IBM DVS128 Gesture) is decoded by a few lines of
numpy written here from the format: skip the ``#`` header, walk the 28-byte packet headers, keep the valid
polarity events.
"""

from __future__ import annotations

import os

import numpy as np

from spikenorm.datamodules.testing import CIFAR10DVS_CLASSES, write_aedat4, write_cifar10dvs, write_ibm_gesture

# ------------------------------------------------------------------------------------------ AEDAT 4.0


def _events(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    events = np.zeros(n, [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "?")])
    events["t"] = 1_600_000_000_000_000 + np.cumsum(rng.integers(0, 50, n))  # DV writes Unix time in µs
    events["x"] = rng.integers(0, width, n)
    events["y"] = rng.integers(0, height, n)
    events["p"] = rng.integers(0, 2, n).astype(bool)
    events[0]["x"], events[0]["y"] = width - 1, height - 1
    return events


def test_aedat4_round_trip_through_tonic_over_several_packets(tmp_path):
    import aedat
    import tonic.io as tonic_io

    events = _events(np.random.default_rng(0), 1000, width=346, height=260)
    path = tmp_path / "recording.aedat4"
    write_aedat4(path, events, width=346, height=260, events_per_packet=300)

    assert path.read_bytes().startswith(b"#!AER-DAT4.0\r\n")
    decoder = aedat.Decoder(str(path))
    assert decoder.id_to_stream() == {0: {"type": "events", "width": 346, "height": 260}}
    assert [(p["stream_id"], len(p["events"])) for p in decoder] == [(0, 300), (0, 300), (0, 300), (0, 100)]
    read = tonic_io.read_aedat4(str(path))
    assert len(read) == len(events)
    for name, got in zip("txyp", read.dtype.names, strict=True):
        assert np.array_equal(read[got], events[name]), name


def test_aedat4_single_packet_default_sensor(tmp_path):
    import tonic.io as tonic_io

    events = _events(np.random.default_rng(1), 7, width=128, height=128)
    write_aedat4(tmp_path / "small.aedat4", events)
    read = tonic_io.read_aedat4(str(tmp_path / "small.aedat4"))
    assert [read[name].tolist() for name in read.dtype.names] == [events[name].tolist() for name in "txyp"]


def test_cifar10dvs_layout_read_by_tonic_dataset(tmp_path, monkeypatch):
    from tonic import datasets

    written = write_cifar10dvs(tmp_path, samples_per_class=2, rng=np.random.default_rng(2), num_events=40)
    assert sorted(written) == sorted(
        os.path.join("CIFAR10DVS", c, f"cifar10_{c}_{i}.aedat4") for c in CIFAR10DVS_CLASSES for i in range(2)
    )
    # tonic downloads unless CIFAR10DVS.zip and >= 1000 .aedat4 files are there; the walk is what is tested
    monkeypatch.setattr(datasets.CIFAR10DVS, "_check_exists", lambda self: True)
    dataset = datasets.CIFAR10DVS(str(tmp_path))
    assert len(dataset) == 20
    for index, path in enumerate(dataset.data):
        rel = os.path.relpath(path, tmp_path)
        events, target = dataset[index]
        assert target == CIFAR10DVS_CLASSES.index(rel.split(os.sep)[1])
        expected = written[rel]
        assert np.all(np.diff(expected["t"]) > 0) and expected["x"].max() < 128 and expected["y"].max() < 128
        for name in "txyp":
            assert np.array_equal(events[name], expected[name]), (rel, name)


# ------------------------------------------------------------------------------------------ AEDAT 3.1

_PACKET_HEADER = np.dtype(
    [("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"), ("ts_overflow", "<i4"),
     ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")]
)  # fmt: skip
_EVENT8 = np.dtype([("data", "<u4"), ("ts", "<i4")])
_END = b"#!END-HEADER\r\n"


def _read_aedat31(path) -> tuple[list, np.ndarray, np.ndarray]:
    """(packet headers, polarity events x/y/p/t/valid from the first eventNumber slots, special events)."""
    data = path.read_bytes()
    assert data.startswith(b"#!AER-DAT3.1\r\n")
    pos = data.index(_END) + len(_END)
    assert all(line.startswith(b"#") for line in data[:pos].split(b"\r\n")[:-1])
    headers, polarity, special = [], [], []
    while pos < len(data):
        head = np.frombuffer(data, _PACKET_HEADER, 1, pos)[0]
        assert head["size"] == 8 and head["ts_offset"] == 4 and head["number"] <= head["capacity"]
        slots = np.frombuffer(data, _EVENT8, int(head["capacity"]), pos + _PACKET_HEADER.itemsize)
        pos += _PACKET_HEADER.itemsize + int(head["capacity"]) * int(head["size"])
        headers.append(head)
        used = slots[: head["number"]]
        assert np.count_nonzero(used["data"] & 1) == head["valid"]
        t = (np.int64(head["ts_overflow"]) << 31) | used["ts"].astype(np.int64)
        if head["type"] == 1:
            ev = np.zeros(len(used), [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8"), ("valid", "?")])
            ev["x"], ev["y"] = (used["data"] >> 17) & 0x7FFF, (used["data"] >> 2) & 0x7FFF
            ev["p"], ev["t"], ev["valid"] = (used["data"] >> 1) & 1, t, used["data"] & 1
            polarity.append(ev)
        elif head["type"] == 0:
            special.append(t)
    assert pos == len(data)
    return headers, np.concatenate(polarity), np.concatenate(special)


def test_ibm_gesture_release_files_and_aedat31_events(tmp_path):
    train, test = ["user01_fluorescent", "user01_led"], ["user24_lab"]
    rng = np.random.default_rng(3)
    out = write_ibm_gesture(tmp_path, train, test, rng, events_per_gesture=30, events_per_packet=50)
    folder = tmp_path / "DvsGesture"
    assert (folder / "trials_to_train.txt").read_text().splitlines() == [f"{t}.aedat" for t in train]
    assert (folder / "trials_to_test.txt").read_text().splitlines() == [f"{t}.aedat" for t in test]
    assert sorted(out) == sorted(train + test)
    for trial in train + test:
        headers, events, special_t = _read_aedat31(folder / f"{trial}.aedat")
        types = [int(h["type"]) for h in headers]
        assert types.count(0) >= 1 and types.count(1) >= 2  # special packets to skip, several polarity packets
        assert any(h["capacity"] > h["number"] for h in headers)  # unused slots
        assert np.all(np.diff(events["t"]) >= 0)
        invalid = events[~events["valid"]]
        assert len(invalid) == 1
        events = events[events["valid"]]

        assert (folder / f"{trial}_labels.csv").read_text().splitlines()[0] == "class,startTime_usec,endTime_usec"
        labels = np.loadtxt(folder / f"{trial}_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
        assert labels.shape == (12, 3) and sorted(set(labels[:, 0])) == list(range(1, 12))
        assert np.all(labels[:-1, 2] < labels[1:, 1])  # disjoint, in time order
        segments = out[trial]
        assert [s["class"] for s in segments] == (labels[:, 0] - 1).tolist()

        covered = np.zeros(len(events), bool)
        for row, seg in zip(labels, segments, strict=True):
            assert (seg["start"], seg["end"]) == (row[1], row[2])
            inside = (events["t"] >= row[1]) & (events["t"] < row[2])
            covered |= inside
            assert len(seg["events"]) == 30 and seg["events"]["t"][0] == row[1]  # start is inclusive
            for name in ("x", "y", "p", "t"):
                assert np.array_equal(events[name][inside], seg["events"][name]), (trial, row, name)
        assert row[2] in events["t"]  # an event at the end of a segment, hence outside it
        assert events["t"][0] < labels[0, 1] and events["t"][-1] >= labels[-1, 2]
        assert np.count_nonzero(~covered) >= 13 * 2  # before, between and after segments
        # the invalid event and the external-input special event fall inside segments: readers must drop them
        for t in (invalid["t"][0], special_t.max()):
            assert np.any((labels[:, 1] <= t) & (t < labels[:, 2]))


def test_ibm_gesture_invalid_event_in_a_gap_on_request(tmp_path):
    out = write_ibm_gesture(tmp_path, ["user02_lab"], [], np.random.default_rng(4), invalid_in_segment=False)
    _, events, _ = _read_aedat31(tmp_path / "DvsGesture" / "user02_lab.aedat")
    t = events["t"][~events["valid"]][0]
    assert not any(s["start"] <= t < s["end"] for s in out["user02_lab"])
    assert (tmp_path / "DvsGesture" / "trials_to_test.txt").read_text() == ""
