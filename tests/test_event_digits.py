"""Event-digits, the frame pipeline pieces (EventsToFrames, FrameAugmentation) and eval_time_steps."""

from __future__ import annotations

import numpy as np
import pytest
import tonic
import torch
from sklearn.datasets import load_digits

from spikenorm.datamodules import (
    DigitsDataModule,
    EventDigits,
    EventDigitsDataModule,
    FrameAugmentation,
)
from spikenorm.datamodules import event_digits as event_digits_module
from spikenorm.datamodules.dvs_emulator import image_to_events
from spikenorm.datamodules.event_frames import EventsToFrames
from spikenorm.datamodules.neuromorphic import DVS_DATASETS
from spikenorm.models import SpikingVGG
from spikenorm.tasks import SpikingClassifier


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("event_digits"))


def test_streams_are_the_emulator_output_per_digit(cache_dir):
    dataset = EventDigits(cache_dir, progress=False)
    digits = load_digits()
    assert len(dataset) == 1797 and dataset.targets == digits.target.tolist()
    for index in (0, 5, 1796):
        expected = image_to_events(
            digits.images[index] / 16.0,
            canvas=16,
            threshold=0.2,
            noise_rate_hz=1.0,
            rng=np.random.default_rng([0, index]),
        )
        np.testing.assert_array_equal(dataset.data[index], expected)
        assert dataset[index][1] == digits.target[index]


def test_streams_are_generated_once_and_keyed_by_settings(cache_dir, monkeypatch):
    first = EventDigits(cache_dir, progress=False)

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached streams should have been loaded")

    monkeypatch.setattr(event_digits_module, "image_to_events", no_generation)
    again = EventDigits(cache_dir, progress=False)
    assert again.path == first.path
    np.testing.assert_array_equal(again.data[42], first.data[42])
    with pytest.raises(AssertionError, match="should have been loaded"):
        EventDigits(cache_dir, threshold=0.3, progress=False)  # other settings: another file, generated anew


def test_streams_work_with_tonic_transforms(cache_dir):
    transform = tonic.transforms.Compose(
        [
            tonic.transforms.Denoise(filter_time=10_000),
            tonic.transforms.ToFrame(sensor_size=(16, 16, 2), n_time_bins=3),
        ]
    )
    frames, _ = EventDigits(cache_dir, transform=transform, progress=False)[7]
    assert frames.shape == (3, 2, 16, 16) and frames.sum() > 0


def test_datamodule_matches_static_digits_split_and_counts(cache_dir):
    dm = EventDigitsDataModule(cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup()
    static = DigitsDataModule()
    static.setup()
    for ours, theirs in (
        (dm.train_indices, static.train_indices),
        (dm.val_indices, static.val_indices),
        (dm.test_indices, static.test_indices),
    ):
        np.testing.assert_array_equal(ours, theirs)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 6, 2, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    events = EventDigits(cache_dir, progress=False)
    frames, label = dm.test_dataset[0]
    index = int(dm.test_indices[0])
    assert label == events.targets[index] and float(frames.sum()) == len(events.data[index])


def test_datamodule_disk_cache_gives_the_same_frames(cache_dir, tmp_path):
    plain = EventDigitsDataModule(cache_dir=cache_dir)
    cached = EventDigitsDataModule(cache_dir=cache_dir, cache=True)
    for dm in (plain, cached):
        dm.setup()
    for position in (0, 100):
        assert torch.equal(plain.val_dataset[position][0], cached.val_dataset[position][0])


def _ramp_events(count: int) -> np.ndarray:
    events = np.zeros(count, [("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
    events["x"], events["y"], events["t"], events["p"] = (
        np.arange(count) % 8,
        np.arange(count) % 3,
        np.arange(count) * 10,
        np.arange(count) % 2,
    )
    return events


def test_exact_frames_equal_tonic_where_tonic_keeps_every_event():
    """With N divisible by T, tonic's ToFrame(n_event_bins) drops nothing: both engines must agree."""
    events = _ramp_events(40)
    exact = EventsToFrames((8, 4, 2), time_bins=4, split_by="number")(events)
    reference = EventsToFrames((8, 4, 2), time_bins=4, split_by="number", engine="tonic")(events)
    np.testing.assert_array_equal(exact, reference)
    assert exact.dtype == np.int16 and exact.shape == (4, 2, 4, 8)


def test_exact_frames_count_every_event():
    events = _ramp_events(42)
    by_number = EventsToFrames((8, 4, 2), time_bins=4, split_by="number")(events)
    np.testing.assert_array_equal(by_number.sum(axis=(1, 2, 3)), [10, 10, 10, 12])  # the last slice takes the rest
    assert EventsToFrames((8, 4, 2), time_bins=4, split_by="number", engine="tonic")(events).sum() == 40
    by_time = EventsToFrames((8, 4, 2), time_bins=4, split_by="time")(events)  # t = 0..410: bins of 102.5
    np.testing.assert_array_equal(by_time.sum(axis=(1, 2, 3)), [11, 10, 10, 11])  # the last timestamp included
    few = EventsToFrames((8, 4, 2), time_bins=4, split_by="number")(events[:3])
    np.testing.assert_array_equal(few.sum(axis=(1, 2, 3)), [0, 0, 0, 3])
    downsampled = EventsToFrames((8, 4, 2), time_bins=2, size=2, split_by="time")(events)
    assert downsampled.shape == (2, 2, 2, 2) and downsampled.sum() == 42
    empty = EventsToFrames((8, 4, 2), time_bins=3)(events[:0])
    assert empty.shape == (3, 2, 4, 8) and empty.dtype == np.int16 and not empty.any()
    with pytest.raises(ValueError, match="split_by"):
        EventsToFrames((8, 4, 2), time_bins=3, split_by="count")
    with pytest.raises(ValueError, match="engine"):
        EventsToFrames((8, 4, 2), time_bins=3, engine="fast")


def test_frame_augmentation_draws_once_per_sample():
    torch.manual_seed(0)
    frame = torch.rand(2, 16, 16)
    frames = frame.expand(6, 2, 16, 16).contiguous()
    for augmentation in (DVS_DATASETS["dvsgesture"].augmentation, DVS_DATASETS["cifar10dvs"].augmentation):
        for _ in range(5):
            out = augmentation(frames)
            assert out.shape == frames.shape
            assert all(torch.equal(out[0], out[t]) for t in range(1, 6))  # one geometric draw for all T frames
    steps = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 2, 4, 4)
    kept = FrameAugmentation(keep_steps=4)(steps)[:, 0, 0, 0]
    assert kept.shape == (4,) and bool((kept[1:] > kept[:-1]).all())  # time order preserved
    assert DVS_DATASETS["nmnist"].augmentation is None
    with pytest.raises(ValueError, match="keep_steps"):
        FrameAugmentation(keep_steps=0)
    with pytest.raises(ValueError, match="crop_scale"):
        FrameAugmentation(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        FrameAugmentation()(torch.zeros(2, 4, 4))


def test_classifier_uses_eval_time_steps_outside_training():
    model = SpikingVGG(cfg=[4, "A"], in_channels=2, num_classes=3)
    task = SpikingClassifier(model, time_steps=3, eval_time_steps=5, encoding="frames")
    assert task(torch.rand(2, 3, 2, 8, 8)).shape == (3, 2, 3)
    task.eval()
    assert task.time_steps == 5 and task(torch.rand(2, 5, 2, 8, 8)).shape == (5, 2, 3)
    with pytest.raises(ValueError, match="T=5"):
        task(torch.rand(2, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="eval_time_steps"):
        SpikingClassifier(model, eval_time_steps=0)


def test_augmentation_given_as_mapping():
    """LightningCLI hands a class-path-selected DataModule its nested FrameAugmentation as a mapping."""
    nested = {"class_path": "spikenorm.datamodules.FrameAugmentation", "init_args": {"keep_steps": 4}}
    dm = EventDigitsDataModule(augmentation=nested)
    assert isinstance(dm.train_augmentation, FrameAugmentation) and dm.train_time_steps == 4
    assert EventDigitsDataModule(augmentation={"rotation": 10.0}).train_augmentation.rotation == 10.0
    with pytest.raises(TypeError, match="class_path"):
        EventDigitsDataModule(augmentation={"class_path": "torch.nn.Identity"})
    with pytest.raises(TypeError, match="FrameAugmentation"):
        EventDigitsDataModule(augmentation=3)
    with pytest.raises(ValueError, match="keeps 9 steps"):
        EventDigitsDataModule(augmentation={"keep_steps": 9})
