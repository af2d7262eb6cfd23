"""Damaged data and cache files: every read error names the file, its format and the fix (issue 16, row 11).

Each test writes a small valid dataset in its own on-disk format (spikenorm.datamodules.testing), damages one
file (truncated, overwritten with garbage), and checks that the error names exactly that file by its
absolute path. Broken cache entries spikenorm wrote are rebuilt with a warning naming them.
"""

from __future__ import annotations

import glob
import os
import re
import struct

import h5py
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

from spikenorm.datamodules import (
    CorruptDataError,
    EventDigits,
    TonicDataModule,
    TorchvisionDataModule,
)
from spikenorm.datamodules import event_digits as event_digits_module
from spikenorm.datamodules.event_frames import FrameCache
from spikenorm.datamodules.ibm_gesture import read_aedat31_polarity
from spikenorm.datamodules.testing import (
    AEDAT31_HEADER,
    write_cifar10,
    write_cifar10dvs,
    write_cifar100,
    write_dvsgesture_npy,
    write_ibm_gesture,
    write_mnist,
    write_nmnist,
)

GESTURE_TRIALS = {"ibmGestureTrain": ["user01_led", "user03_led"], "ibmGestureTest": ["user02_led"]}


def _truncate(path: str, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def _overwrite(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _garbage(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _names(info: pytest.ExceptionInfo, path: str, *words: str) -> None:
    """The error is a CorruptDataError whose message names ``path`` (absolute) and says ``words``."""
    err = info.value
    assert isinstance(err, CorruptDataError) and isinstance(err, ValueError)
    assert os.path.isabs(path) and err.path == path and str(err).startswith(f"{path} is corrupt: expected ")
    for word in words:
        assert word in str(err)


def _module(root, dataset, tmp_path, **kwargs) -> TonicDataModule:
    defaults = {"time_bins": 4, "batch_size": 4, "cache_dir": str(tmp_path / "cache"), "augment": False}
    dm = TonicDataModule(dataset, root=str(root), **{**defaults, **kwargs})
    dm.setup()
    return dm


def _source(dataset) -> object:
    """The tonic-style event dataset under a split (``TransformedSubset`` -> optional cache -> source)."""
    inner = dataset.dataset
    return inner.dataset if isinstance(inner, FrameCache) else inner


# ------------------------------------------------------------------------------------------ source files


@pytest.fixture
def nmnist(tmp_path):
    write_nmnist(str(tmp_path / "data"), {"Train": 2, "Test": 1}, np.random.default_rng(0), num_events=40)
    dm = _module(tmp_path / "data", "nmnist", tmp_path, cache=False, val_fraction=0.5)
    return dm, _source(dm.test_dataset)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: _truncate(path, 7), "its size, 7 bytes, is not a positive multiple of 5"),  # was IndexError
        (lambda path: _truncate(path, 0), "its size, 0 bytes"),  # was silently an empty recording
        (lambda path: _overwrite(path, _garbage(200)), "events outside the 34x34 sensor"),  # was wrong pixels
    ],
)
def test_nmnist_damaged_bin_is_named(nmnist, damage, problem):
    dm, source = nmnist
    path = source.data[3]
    damage(path)
    with pytest.raises(CorruptDataError) as info:
        dm.test_dataset[3]
    _names(info, path, "N-MNIST .bin", problem, "Replace it with an intact copy", "test.zip")
    with pytest.raises(CorruptDataError, match=re.escape(path)):  # through the DataLoader too
        list(dm.test_dataloader())


def test_corrupt_data_error_keeps_its_type_through_a_loader_worker(nmnist):
    """torch re-raises a worker's exception by calling its type with one message: that must still work."""
    dm, source = nmnist
    _truncate(source.data[3], 7)
    dm.hparams.num_workers = 1
    with pytest.raises(CorruptDataError, match=rf"in DataLoader worker(?s:.*){re.escape(source.data[3])}"):
        list(dm.test_dataloader())


def test_cifar10dvs_truncated_aedat4_is_named(tmp_path):
    write_cifar10dvs(str(tmp_path / "data"), 10, np.random.default_rng(1), num_events=30)
    dm = _module(tmp_path / "data", "cifar10dvs", tmp_path, cache=False, val_fraction=0.2)
    path = _source(dm.test_dataset).data[dm.test_indices[0]]
    _truncate(path, os.path.getsize(path) - 10)
    with pytest.raises(CorruptDataError) as info:
        dm.test_dataset[0]
    _names(info, path, "AEDAT 4.0", "failed to fill whole buffer", "CIFAR10DVS.zip")
    assert isinstance(info.value.__cause__, RuntimeError)  # the parser's error is kept as the cause
    _overwrite(path, _garbage(500))
    with pytest.raises(CorruptDataError, match=re.escape(path)):
        dm.test_dataset[0]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: _truncate(path, os.path.getsize(path) - 10), "Failed to read all data"),
        (lambda path: _overwrite(path, _garbage(300)), "reading it failed"),
        (lambda path: np.save(path, np.zeros((5, 3), np.int64)), "an array of shape (5, 3)"),
    ],
)
def test_dvsgesture_damaged_npy_is_named(tmp_path, damage, problem):
    write_dvsgesture_npy(str(tmp_path / "data"), GESTURE_TRIALS, np.random.default_rng(2), num_events=30)
    dm = _module(tmp_path / "data", "dvsgesture", tmp_path, cache=False, val_fraction=0.5)
    path = _source(dm.test_dataset).data[5]
    damage(path)
    with pytest.raises(CorruptDataError) as info:
        dm.test_dataset[5]
    _names(info, path, "DVS128 Gesture .npy", problem, "ibmGestureTest.tar.gz")


@pytest.fixture
def ibm_recording(tmp_path):
    root = str(tmp_path / "data")
    write_ibm_gesture(root, ["user01_led"], ["user02_led"], np.random.default_rng(3), events_per_gesture=10)
    return os.path.join(root, "DvsGesture", "user01_led.aedat")


def test_ibm_gesture_truncated_aedat31_is_named(ibm_recording):
    _truncate(ibm_recording, os.path.getsize(ibm_recording) - 5)
    with pytest.raises(CorruptDataError) as info:
        read_aedat31_polarity(ibm_recording)
    _names(info, ibm_recording, "AEDAT 3.1", "truncated inside the packet", "DvsGesture.tar.gz")


def test_ibm_gesture_impossible_packet_header_is_named(ibm_recording):
    """A negative eventCapacity used to move the reader backwards (possibly for ever); now it is refused."""
    with open(ibm_recording, "rb") as f:
        raw = f.read()
    first_packet = len(AEDAT31_HEADER)
    header = struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, -10, 0, 0)
    _overwrite(ibm_recording, raw[:first_packet] + header + raw[first_packet + len(header) :])
    with pytest.raises(CorruptDataError) as info:
        read_aedat31_polarity(ibm_recording)
    _names(info, ibm_recording, f"the packet at byte {first_packet}", "eventCapacity -10")


def test_ibm_gesture_damaged_labels_csv_is_named(ibm_recording, tmp_path):
    labels = ibm_recording.replace(".aedat", "_labels.csv")
    _overwrite(labels, b"class,startTime_usec,endTime_usec\n1,20,x\n")
    with pytest.raises(CorruptDataError) as info:
        _module(tmp_path / "data", "dvsgesture", tmp_path, split_convention="spikingjelly")
    _names(info, labels, "labels CSV", "could not convert")


# ------------------------------------------------------------------------------- checked at setup


NMNIST_FILES = (
    "nmnist",
    lambda root: write_nmnist(root, {"Train": 2, "Test": 1}, np.random.default_rng(0), 40),
    ".bin",
)
GESTURE_NPY = (
    "dvsgesture",
    lambda root: write_dvsgesture_npy(root, GESTURE_TRIALS, np.random.default_rng(2), 30),
    ".npy",
)


@pytest.mark.parametrize(
    ("files", "kwargs", "damage", "problem"),
    [
        (NMNIST_FILES, {}, lambda path: _truncate(path, 0), "it is empty (0 bytes)"),
        (NMNIST_FILES, {}, lambda path: _truncate(path, 12), "its size, 12 bytes, is not a positive multiple of 5"),
        (
            ("cifar10dvs", lambda root: write_cifar10dvs(root, 10, np.random.default_rng(1), 30), ".aedat4"),
            {},
            lambda path: _overwrite(path, b"#!AER-DAT2.0" + _garbage(100)),
            "it starts with b'#!AER-DAT2.0'",
        ),
        (GESTURE_NPY, {}, lambda path: _overwrite(path, _garbage(300)), "reading it failed"),
        (GESTURE_NPY, {}, lambda path: np.save(path, np.zeros((5, 3), np.int64)), "an array of shape (5, 3)"),
        (
            (
                "dvsgesture",
                lambda root: write_ibm_gesture(root, ["user01_led"], ["user02_led"], np.random.default_rng(3), 10),
                ".aedat",
            ),
            {"split_convention": "spikingjelly"},
            lambda path: _truncate(path, 0),
            "it is empty (0 bytes)",
        ),
    ],
    ids=["nmnist-empty", "nmnist-size", "cifar10dvs-header", "gesture-npy-garbage", "gesture-npy-shape", "ibm-empty"],
)
def test_a_damaged_file_is_named_at_setup(tmp_path, files, kwargs, damage, problem):
    """setup checks every data file's size and header: the damaged one is named before any loader runs."""
    dataset, write, extension = files
    root = str(tmp_path / "data")
    write(root)
    paths = sorted(glob.glob(os.path.join(os.path.abspath(root), "**", f"*{extension}"), recursive=True))
    path = paths[len(paths) // 2]
    damage(path)
    with pytest.raises(CorruptDataError) as info:
        _module(root, dataset, tmp_path, cache=False, val_fraction=0.5, **kwargs)
    _names(info, path, problem)


# ----------------------------------------------------------------------------------------- frame cache


@pytest.fixture
def cached_gesture(tmp_path):
    """DVS128 Gesture with the frame cache on: every test sample read once, so its entry exists."""
    write_dvsgesture_npy(str(tmp_path / "data"), GESTURE_TRIALS, np.random.default_rng(4), num_events=30)
    dm = _module(tmp_path / "data", "dvsgesture", tmp_path, cache=True, sensor_size=16, val_fraction=0.5)
    frames = [dm.test_dataset[i][0] for i in range(len(dm.test_dataset))]
    cache = dm.test_dataset.dataset
    assert isinstance(cache, FrameCache) and all(os.path.isfile(cache.entry(i)) for i in range(len(frames)))
    return dm, cache, frames


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: _truncate(path, os.path.getsize(path) // 2),  # a writer killed mid-file
        lambda path: _truncate(path, 0),
        lambda path: _overwrite(path, _garbage(os.path.getsize(path))),
        lambda path: h5py.File(path, "w").close(),  # valid HDF5 without data: was a bare KeyError
    ],
)
def test_broken_frame_cache_entry_is_named_and_rebuilt(cached_gesture, damage):
    dm, cache, frames = cached_gesture
    entry = os.path.abspath(cache.entry(3))
    damage(entry)
    with pytest.warns(UserWarning, match=re.escape(entry) + r" is a corrupt cache entry .*rebuilds it"):
        rebuilt, label = dm.test_dataset[3]
    assert torch.equal(rebuilt, frames[3]) and label == cache.dataset.targets[3]
    with h5py.File(entry, "r") as f:
        assert f["data/0"].fletcher32  # the rewritten entry carries a checksum
    assert glob.glob(os.path.join(cache.cache_path, "*.tmp")) == []


def test_flipped_byte_in_frame_cache_entry_is_caught_by_its_checksum(cached_gesture):
    """A damaged lzf chunk used to decode silently into other frames; the Fletcher-32 checksum catches it."""
    dm, cache, frames = cached_gesture
    entry = os.path.abspath(cache.entry(2))
    with h5py.File(entry, "r") as f:
        chunk = f["data/0"].id.get_chunk_info(0)
    offset, size = chunk.byte_offset, chunk.size
    with open(entry, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match=re.escape(entry)):
        assert torch.equal(dm.test_dataset[2][0], frames[2])


def test_frame_cache_entry_of_another_sample_is_rebuilt(cached_gesture):
    dm, cache, frames = cached_gesture
    os.replace(cache.entry(4), cache.entry(5))  # entry 5 now holds sample 4's frames and label
    label = cache.dataset.targets[4]
    with pytest.warns(UserWarning, match=re.escape(os.path.abspath(cache.entry(5))) + f".* and target {label}, "):
        assert torch.equal(dm.test_dataset[5][0], frames[5])


def test_frame_cache_entry_broken_after_rebuild_says_delete_it(cached_gesture, monkeypatch):
    """If the rebuilt entry is unreadable too (a failing disk), the error names it and says to delete it."""
    dm, cache, _ = cached_gesture
    entry = os.path.abspath(cache.entry(1))
    _truncate(entry, 10)
    monkeypatch.setattr(FrameCache, "_write", lambda self, path, index: _overwrite(path, b"broken"))
    with pytest.warns(UserWarning, match=re.escape(entry)), pytest.raises(CorruptDataError) as info:
        dm.test_dataset[1]
    _names(info, entry, "frame-cache entry", "cache entry spikenorm wrote", f"rm '{entry}'")


# ------------------------------------------------------------------------------------ event-digits cache


@pytest.fixture
def few_digits(monkeypatch):
    """EventDigits over the first 20 digits only, so that generating the archive takes no time."""
    digits = load_digits()
    monkeypatch.setattr(
        event_digits_module, "load_digits", lambda: Bunch(images=digits.images[:20], target=digits.target[:20])
    )


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (lambda path: _truncate(path, os.path.getsize(path) // 2), "BadZipFile"),  # was a bare BadZipFile
        (lambda path: _truncate(path, 0), "EOFError"),
    ],
)
def test_broken_event_digits_archive_is_named_and_rebuilt(tmp_path, few_digits, damage, cause):
    first = EventDigits(str(tmp_path), progress=False)
    damage(first.path)
    entry = re.escape(os.path.abspath(first.path))
    with pytest.warns(UserWarning, match=rf"{entry} is a corrupt cache entry .*{cause}"):
        again = EventDigits(str(tmp_path), progress=False)
    assert again.targets == first.targets and len(again) == 20
    for a, b in zip(again.data, first.data, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------- torchvision readers


@pytest.mark.parametrize(
    ("name", "writer", "relative", "words"),
    [
        ("cifar10", write_cifar10, "cifar-10-batches-py/data_batch_3", ["pickle", "pickle data was truncated"]),
        ("cifar100", write_cifar100, "cifar-100-python/train", ["pickle", "pickle data was truncated"]),
        ("mnist", write_mnist, "MNIST/raw/train-images-idx3-ubyte", ["idx3-ubyte", "is invalid for input"]),
        (
            "fashion_mnist",
            lambda root: write_mnist(root, "FashionMNIST"),
            "FashionMNIST/raw/t10k-labels-idx1-ubyte",
            ["idx1-ubyte"],
        ),
    ],
)
def test_torchvision_truncated_file_is_named(tmp_path, name, writer, relative, words):
    writer(str(tmp_path))
    path = str(tmp_path / relative)
    _truncate(path, os.path.getsize(path) // 2)
    dm = TorchvisionDataModule(name, root=str(tmp_path), verify_checksums=False)
    with pytest.raises(CorruptDataError) as info:
        dm.setup()
    _names(info, path, *words, "Replace it with an intact copy")


def test_temporary_names_never_collide_and_transient_os_errors_are_not_corruption(tmp_path):
    """Two writers of one cache entry (workers, ranks, nodes on a shared disk) get different temporary files;
    an OSError with an errno (EIO, a locked file) is passed on, not reported as a corrupt file to delete."""
    import errno

    from spikenorm.datamodules.errors import reading, temporary_path

    target = str(tmp_path / "entry.h5")
    names = {temporary_path(target) for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(target + ".") and n.endswith(".tmp") for n in names)
    with pytest.raises(OSError) as caught, reading(target, "an HDF5 file", "fix"):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(caught.value, CorruptDataError)
    with pytest.raises(CorruptDataError, match="file signature not found"), reading(target, "an HDF5 file", "fix"):
        raise OSError("Unable to open file (file signature not found)")
