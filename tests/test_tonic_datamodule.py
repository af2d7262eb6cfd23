"""TonicDataModule end to end on small files in each dataset's own on-disk format (no network).

Frames are checked against an independent numpy histogram of the events the writers put in the files.
"""

from __future__ import annotations

import os
import typing

import numpy as np
import pytest
import tonic
import torch

from spikenorm.datamodules import FrameAugmentation, TonicDataModule
from spikenorm.datamodules.ibm_gesture import read_aedat31_polarity
from spikenorm.datamodules.neuromorphic import DVS_DATASETS, TonicDatasetName
from spikenorm.datamodules.testing import write_cifar10dvs, write_dvsgesture_npy, write_ibm_gesture, write_nmnist


def _histogram(events: np.ndarray, width: int, height: int, size: int | None = None) -> np.ndarray:
    """Per-polarity event counts ``[2, H, W]`` over the whole recording (float64), downsampled like the module."""
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    if size is not None:
        x, y = np.floor(x * size / width).astype(np.int64), np.floor(y * size / height).astype(np.int64)
        width = height = size
    counts = np.zeros((2, height, width))
    np.add.at(counts, (events["p"].astype(np.int64), y, x), 1.0)
    return counts


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nmnist"))
    written = write_nmnist(root, {"Train": 4, "Test": 2}, np.random.default_rng(0))
    return root, written


@pytest.fixture(scope="module")
def gesture_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gesture"))
    trials = {"ibmGestureTrain": ["user01_fluorescent", "user02_led"], "ibmGestureTest": ["user24_natural"]}
    written = write_dvsgesture_npy(root, trials, np.random.default_rng(1))
    original = write_ibm_gesture(
        root, ["user01_fluorescent", "user02_led"], ["user24_natural"], np.random.default_rng(2)
    )
    return root, written, original


@pytest.fixture(scope="module")
def cifar10dvs_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar10dvs"))
    written = write_cifar10dvs(root, 10, np.random.default_rng(3))
    return root, written


def _module(root, dataset, tmp_path, **kwargs):
    defaults = {"time_bins": 5, "batch_size": 4, "cache_dir": str(tmp_path / "cache")}
    return TonicDataModule(dataset, root=root, **{**defaults, **kwargs})


def test_nmnist_batches_shapes_dtypes_labels(nmnist_root, tmp_path):
    root, _ = nmnist_root
    dm = _module(root, "nmnist", tmp_path, val_fraction=0.25)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (30, 10, 20)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 5, 2, 34, 34) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 10
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    assert sorted(labels.tolist()) == sorted(list(range(10)) * 2)
    assert dm.in_channels == 2 and dm.image_size == 34 and dm.num_classes == 10


def test_nmnist_frames_hold_every_event(nmnist_root, tmp_path):
    """split_by='number' keeps every event: summed over T the frames are the events' pixel histogram."""
    root, written = nmnist_root
    dm = _module(root, "nmnist", tmp_path, val_fraction=0.25)
    dm.setup("test")
    files = sorted(path for path in written if path.startswith(os.path.join("NMNIST", "Test")))
    for position in (0, 7, 19):
        frames, label = dm.test_dataset[position]
        events = written[files[position]]
        assert label == int(files[position].split(os.sep)[2])
        np.testing.assert_array_equal(frames.sum(0).numpy(), _histogram(events, 34, 34))


def test_downsampled_gesture_frames(gesture_root, tmp_path):
    root, written, _ = gesture_root
    dm = _module(root, "dvsgesture", tmp_path, sensor_size=32, val_fraction=0.5, augment=False)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (11, 11, 11)
    relative = os.path.join("DVSGesture", "ibmGestureTest", "user24_natural", "3.npy")
    position = dm.test_dataset.dataset.dataset.data.index(os.path.join(root, relative))  # sorted: 0, 1, 10, 2, 3...
    frames, label = dm.test_dataset[position]
    assert frames.shape == (5, 2, 32, 32) and label == 3
    events = written[relative]
    np.testing.assert_array_equal(frames.sum(0).numpy(), _histogram(events, 128, 128, size=32))


def test_cache_is_hit_from_the_second_epoch(nmnist_root, tmp_path, monkeypatch):
    root, _ = nmnist_root
    reads = []
    original = tonic.datasets.nmnist.read_mnist_file
    monkeypatch.setattr(tonic.datasets.nmnist, "read_mnist_file", lambda *a, **k: reads.append(1) or original(*a, **k))
    dm = _module(root, "nmnist", tmp_path, val_fraction=0.25, cache=True)
    dm.setup("fit")
    first = [x for x, _ in dm.train_dataloader()]
    assert len(reads) == 30
    cache = dm.cache_path("train", dm.train_dataset.dataset.dataset)
    assert len([f for f in os.listdir(cache) if f.endswith(".hdf5")]) == 30
    second = [x for x, _ in dm.train_dataloader()]
    assert len(reads) == 30  # the second epoch read no event file
    assert sum(float(x.sum()) for x in first) == sum(float(x.sum()) for x in second)
    fresh = _module(root, "nmnist", tmp_path, val_fraction=0.25, cache=True)  # a new run with the same settings
    fresh.setup("fit")
    list(fresh.train_dataloader())
    assert len(reads) == 30
    other = _module(root, "nmnist", tmp_path, val_fraction=0.25, time_bins=3, cache=True)  # other frames, other cache
    other.setup("fit")
    assert other.cache_path("train", other.train_dataset.dataset.dataset) != cache


def test_no_cache_reads_events_every_epoch(nmnist_root, tmp_path, monkeypatch):
    root, _ = nmnist_root
    reads = []
    original = tonic.datasets.nmnist.read_mnist_file
    monkeypatch.setattr(tonic.datasets.nmnist, "read_mnist_file", lambda *a, **k: reads.append(1) or original(*a, **k))
    assert not _module(root, "nmnist", tmp_path).cache_enabled  # the default: N-MNIST files are cheap to read
    assert _module(root, "cifar10dvs", tmp_path).cache_enabled and _module(root, "dvsgesture", tmp_path).cache_enabled
    dm = _module(root, "nmnist", tmp_path, val_fraction=0.25, cache=False)
    dm.setup("fit")
    for _ in range(2):
        list(dm.train_dataloader())
    assert len(reads) == 60 and not os.path.exists(tmp_path / "cache")


def test_augmentation_only_in_train(gesture_root, tmp_path):
    root, _, _ = gesture_root
    dm = _module(root, "dvsgesture", tmp_path, sensor_size=32, val_fraction=0.5)
    dm.setup()
    assert dm.train_augmentation is not None and dm.train_augmentation.crop_scale == (0.7, 1.0)
    torch.manual_seed(0)
    train_draws = [dm.train_dataset[0][0] for _ in range(4)]
    assert any(not torch.equal(train_draws[0], other) for other in train_draws[1:])
    for dataset in (dm.val_dataset, dm.test_dataset):
        assert torch.equal(dataset[1][0], dataset[1][0])
    plain = _module(root, "dvsgesture", tmp_path, sensor_size=32, val_fraction=0.5, augment=False)
    plain.setup()
    assert torch.equal(plain.val_dataset[1][0], dm.val_dataset[1][0])
    assert torch.equal(plain.train_dataset[0][0], plain.train_dataset[0][0])


def test_temporal_deletion_shortens_train_batches_only(gesture_root, tmp_path):
    root, _, _ = gesture_root
    augmentation = FrameAugmentation(keep_steps=3)
    dm = _module(root, "dvsgesture", tmp_path, sensor_size=16, val_fraction=0.5, augmentation=augmentation)
    dm.setup()
    assert dm.train_time_steps == 3
    assert next(iter(dm.train_dataloader()))[0].shape[1] == 3
    assert next(iter(dm.val_dataloader()))[0].shape[1] == 5
    with pytest.raises(ValueError, match="keeps 6 steps"):
        _module(root, "dvsgesture", tmp_path, augmentation=FrameAugmentation(keep_steps=6))


def test_gesture_spikingjelly_convention_cuts_segments(gesture_root, tmp_path):
    root, _, original = gesture_root
    dm = _module(root, "dvsgesture", tmp_path, split_convention="spikingjelly", val_fraction=0.5, augment=False)
    dm.setup()
    rows = {trial: len(segments) for trial, segments in original.items()}
    assert len(dm.test_dataset) == rows["user24_natural"] == 12
    assert len(dm.train_dataset) + len(dm.val_dataset) == rows["user01_fluorescent"] + rows["user02_led"]
    for position, segment in enumerate(original["user24_natural"]):
        frames, label = dm.test_dataset[position]
        assert label == segment["class"]
        np.testing.assert_array_equal(frames.sum(0).numpy(), _histogram(segment["events"], 128, 128))


def test_aedat31_reader_drops_invalid_and_other_packets(gesture_root):
    root, _, original = gesture_root
    events = read_aedat31_polarity(os.path.join(root, "DvsGesture", "user24_natural.aedat"))
    for segment in original["user24_natural"]:
        inside = events[(events["t"] >= segment["start"]) & (events["t"] < segment["end"])]
        for field in ("x", "y", "p", "t"):
            np.testing.assert_array_equal(inside[field], segment["events"][field])


def test_cifar10dvs_fixed_nine_to_one_split(cifar10dvs_root, tmp_path):
    root, written = cifar10dvs_root
    dm = _module(root, "cifar10dvs", tmp_path, val_fraction=0.2, split_seed=0, augment=False)
    dm.setup()
    assert (len(dm.train_dataset) + len(dm.val_dataset), len(dm.test_dataset)) == (90, 10)
    labels = [dm.test_dataset[i][1] for i in range(10)]
    assert sorted(labels) == list(range(10))
    frames, _ = dm.test_dataset[0]
    assert frames.shape == (5, 2, 128, 128)
    other_seed = _module(root, "cifar10dvs", tmp_path, val_fraction=0.2, split_seed=1, augment=False)
    other_seed.setup()
    np.testing.assert_array_equal(other_seed.test_indices, dm.test_indices)  # the test split is fixed
    assert not np.array_equal(np.sort(other_seed.val_indices), np.sort(dm.val_indices))  # validation follows the seed
    per_class = _module(root, "cifar10dvs", tmp_path, val_fraction=0.2, test_split="per_class", augment=False)
    per_class.setup()
    source = per_class.test_dataset.dataset.dataset
    names = [os.path.basename(source.data[i]) for i in per_class.test_indices]
    assert names == [
        f"cifar10_{c}_9.aedat4"
        for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    frames, _ = per_class.test_dataset[0]
    expected = written[os.path.join("CIFAR10DVS", "airplane", "cifar10_airplane_9.aedat4")]
    np.testing.assert_array_equal(frames.sum(0).numpy(), _histogram(expected, 128, 128))


def test_samples_are_listed_in_sorted_order(cifar10dvs_root, tmp_path):
    root, _ = cifar10dvs_root
    dm = _module(root, "cifar10dvs", tmp_path, val_fraction=0.2)
    dm.setup()
    source = dm.test_dataset.dataset.dataset
    assert source.data == sorted(source.data)


@pytest.mark.parametrize(
    ("dataset", "convention", "expected"),
    [
        ("nmnist", "tonic", "NMNIST/Train/<digit>/*.bin"),
        ("cifar10dvs", "tonic", "CIFAR10DVS/<class>/*.aedat4"),
        ("dvsgesture", "tonic", "DVSGesture/ibmGestureTrain/userNN_<lighting>/<class>.npy"),
        ("dvsgesture", "spikingjelly", "DvsGesture/trials_to_train.txt"),
    ],
)
def test_missing_files_say_what_goes_where(tmp_path, dataset, convention, expected):
    dm = TonicDataModule(dataset, root=str(tmp_path), split_convention=convention)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    assert expected in str(info.value)
    assert "download=True" in str(info.value) or "manual download" in str(info.value)


def test_failed_download_says_what_goes_where(tmp_path, monkeypatch):
    """download=True without network: tonic's downloader fails, the error still names the expected files."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", offline)
    dm = TonicDataModule("nmnist", root=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match=r"downloading failed \(URLError.*NMNIST/Train/<digit>/\*\.bin"):
        dm.prepare_data()


def test_every_dataset_name_has_one_spec_row():
    assert set(typing.get_args(TonicDatasetName)) == set(DVS_DATASETS)
    for name, spec in DVS_DATASETS.items():
        assert "tonic" in spec.readers, name
        for reader in spec.readers.values():
            assert tuple(reader.sensor_size) == spec.sensor_size, (name, reader)
            assert len(reader.classes) == spec.num_classes, (name, reader)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="dataset in"):
        TonicDataModule("dvs_lips", root=str(tmp_path))
    with pytest.raises(ValueError, match="dvsgesture only"):
        TonicDataModule("nmnist", root=str(tmp_path), split_convention="spikingjelly")
    with pytest.raises(ValueError, match="time_bins"):
        TonicDataModule("nmnist", root=str(tmp_path), time_bins=0)
    with pytest.raises(ValueError, match="val_fraction"):
        TonicDataModule("nmnist", root=str(tmp_path), val_fraction=0.0)
    with pytest.raises(ValueError, match="sensor_size"):
        TonicDataModule("nmnist", root=str(tmp_path), sensor_size=40)
