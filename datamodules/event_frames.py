"""The event-to-frame pipeline shared by the DVS DataModules: downsample, frame, cache, split, augment.

Per sample: structured events ``(x, y, t, p)`` -> optional spatial downsampling (tonic ``Downsample``)
-> ``T`` frames of per-polarity event counts (``[T, 2, H, W]`` int16, every event counted; tonic's
``ToFrame`` as an option) -> on-disk
cache (:class:`FrameCache`, one HDF5 file per sample, tonic's ``DiskCachedDataset`` layout) -> float32
tensor -> train-time augmentation (:class:`~spikenorm.datamodules.frame_augment.FrameAugmentation`, train
split only). Batches are ``[B, T, 2, H, W]``; the task transposes them once (``encoding="frames"``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from spikenorm.datamodules.base import (
    SplitDataModule,
    TransformedSubset,
    check_fraction,
    check_loader_options,
    stratified_holdout,
)
from spikenorm.datamodules.errors import (
    CorruptDataError,
    cache_entry_fix,
    load_or_rebuild,
    reading,
    temporary_path,
)
from spikenorm.datamodules.frame_augment import FrameAugmentation
from spikenorm.extras import needs_extra
from spikenorm.validation import check_choice

with needs_extra("dvs", __name__):
    import h5py
    from tonic.transforms import Downsample, ToFrame

SplitBy = Literal["number", "time"]
FrameEngine = Literal["exact", "tonic"]
CACHE_VERSION = 1  # bump when the cached frames of the same settings change


class EventsToFrames:
    """Structured events -> ``[T, P, H, W]`` int16 per-polarity event counts; the pre-cache transform.

    ``split_by="number"``: slice ``i < T - 1`` holds events ``[i d, (i + 1) d)`` with ``d = N // T`` and the
    last slice the rest (SpikingJelly's ``split_by='number'``, which the OSR/MPBN code uses).
    ``split_by="time"``: event ``k`` goes to slice ``min(T - 1, floor(T (t_k - t_0) / (t_{N-1} - t_0)))``
    (equal durations, the last slice closed). With ``size`` the ``x``/``y`` coordinates are first scaled by
    ``size / W`` and ``size / H`` and floored (tonic ``Downsample``), so frames are ``size x size``.
    Polarity ``p > 0`` is channel 1, else channel 0. An empty recording gives zero frames.

    ``engine="exact"`` (the default) counts every event. ``engine="tonic"`` frames with tonic's
    ``ToFrame(n_event_bins=T)`` / ``ToFrame(n_time_bins=T)`` instead, for bit-compatibility with tonic
    pipelines; tonic 1.7 drops the last ``N mod T`` events in the first mode and the events at the last
    timestamp in the second.
    """

    def __init__(
        self,
        sensor_size: tuple[int, int, int],
        time_bins: int,
        size: int | None = None,
        split_by: SplitBy = "number",
        engine: FrameEngine = "exact",
    ) -> None:
        if time_bins < 1:
            raise ValueError(f"EventsToFrames expects time_bins >= 1, got {time_bins}")
        check_choice(split_by, SplitBy, "split_by")
        check_choice(engine, FrameEngine, "frame engine")
        width, height, polarities = sensor_size
        if size is not None and not 1 <= size <= min(width, height):
            raise ValueError(f"sensor_size (the downsampled side) must be in [1, {min(width, height)}], got {size}")
        self.frame_size = (size or width, size or height, polarities)
        self.downsample = None if size is None else Downsample(spatial_factor=(size / width, size / height))
        self.time_bins, self.split_by = time_bins, split_by
        self.frame_shape = (time_bins, polarities, self.frame_size[1], self.frame_size[0])  # [T, P, H, W]
        bins = {"n_event_bins": time_bins} if split_by == "number" else {"n_time_bins": time_bins}
        self.tonic_frames = ToFrame(sensor_size=self.frame_size, **bins) if engine == "tonic" else None

    def __call__(self, events: np.ndarray) -> np.ndarray:
        width, height, polarities = self.frame_size
        if len(events) == 0:
            return np.zeros((self.time_bins, polarities, height, width), np.int16)
        if self.downsample is not None:
            events = self.downsample(events)
        if self.tonic_frames is not None:
            return self.tonic_frames(events)
        steps, count = self.time_bins, len(events)
        if self.split_by == "number":
            slice_of = np.minimum(np.arange(count) // max(count // steps, 1), steps - 1)
            if count < steps:
                slice_of[:] = steps - 1
        else:
            t = events["t"].astype(np.float64)
            span = t[-1] - t[0]
            slice_of = (
                np.zeros(count, np.int64)
                if span <= 0
                else np.minimum(steps - 1, (steps * (t - t[0]) / span).astype(np.int64))
            )
        channel = (events["p"].astype(np.int64) > 0).astype(np.int64) if polarities > 1 else 0
        flat = ((slice_of * polarities + channel) * height + events["y"].astype(np.int64)) * width + events["x"].astype(
            np.int64
        )
        counts = np.bincount(flat, minlength=steps * polarities * height * width)
        return counts.reshape(steps, polarities, height, width).astype(np.int16)


class FrameCache(Dataset):
    """The frames of ``dataset`` cached on disk: entry ``<cache_path>/<index>_0.hdf5`` per sample.

    An entry holds the int16 frames as HDF5 dataset ``data/0`` (lzf-compressed, with a Fletcher-32
    checksum) and the target as ``target/0``: tonic's ``DiskCachedDataset`` layout, so caches tonic wrote
    read too. A missing entry is computed from ``dataset`` and written whole under a temporary name, then
    renamed, so that DataLoader workers and DDP processes sharing the cache never read a half-written
    entry. An entry that cannot be read, fails its checksum, or holds frames of another shape than
    ``frame_shape`` or another target than ``dataset.targets[index]`` (e.g. truncated by a crash of an older
    writer, or damaged on disk) is rebuilt automatically with a warning naming it
    (:func:`~spikenorm.datamodules.errors.load_or_rebuild`): the cache holds derived data keyed by every
    setting, so rebuilding gives the same frames. A rebuilt entry that is still unreadable raises a
    :class:`~spikenorm.datamodules.errors.CorruptDataError` that names it and says to delete it.
    """

    entry_format = "a spikenorm frame-cache entry: HDF5 with int16 frames data/0 and the label target/0"

    def __init__(self, dataset: Any, cache_path: str, frame_shape: tuple[int, ...]) -> None:
        self.dataset, self.cache_path, self.frame_shape = dataset, cache_path, tuple(frame_shape)
        os.makedirs(cache_path, exist_ok=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def entry(self, index: int) -> str:
        """The path of sample ``index``'s entry."""
        return os.path.join(self.cache_path, f"{index}_0.hdf5")

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return load_or_rebuild(
            self.entry(index), lambda path: self._load(path, index), lambda path: self._write(path, index)
        )

    def _load(self, path: str, index: int) -> tuple[np.ndarray, int]:
        with reading(path, self.entry_format, cache_entry_fix(path)), h5py.File(path, "r") as f:
            frames, target = f["data/0"][()], f["target/0"][()]
        expected = self.dataset.targets[index]
        if frames.shape != self.frame_shape or target != expected:
            problem = (
                f"it holds frames of shape {frames.shape} and target {target}, the sample has frames of shape "
                f"{self.frame_shape} and target {expected}"
            )
            raise CorruptDataError.for_file(path, self.entry_format, problem, cache_entry_fix(path))
        return frames, int(target)

    def _write(self, path: str, index: int) -> None:
        frames, target = self.dataset[index]
        partial = temporary_path(path)
        with h5py.File(partial, "w") as f:
            f.create_dataset("data/0", data=np.asarray(frames), compression="lzf", fletcher32=True)
            f.create_dataset("target/0", data=target)
        os.replace(partial, path)


class FramesToTensor:
    """Cached count frames -> float32 tensor ``[T, P, H, W]``, then ``augmentation`` (if any)."""

    def __init__(self, augmentation: Callable[[Tensor], Tensor] | None = None) -> None:
        self.augmentation = augmentation

    def __call__(self, frames: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        return tensor if self.augmentation is None else self.augmentation(tensor)


def as_augmentation(value: FrameAugmentation | Mapping[str, Any] | None) -> FrameAugmentation | None:
    """``value`` as a :class:`FrameAugmentation`: LightningCLI hands the nested ``class_path``/``init_args``
    of a DataModule selected by class path over as a plain mapping, and a mapping of keyword arguments is
    accepted too."""
    if value is None or isinstance(value, FrameAugmentation):
        return value
    if isinstance(value, Mapping):
        if "class_path" in value and not str(value["class_path"]).endswith("FrameAugmentation"):
            raise TypeError(f"augmentation must be a FrameAugmentation, got class_path {value['class_path']!r}")
        return FrameAugmentation(**dict(value.get("init_args", {}) if "class_path" in value else value))
    raise TypeError(
        f"augmentation must be a FrameAugmentation, a mapping of its arguments or None, got {type(value).__name__}"
    )


def sample_list_signature(dataset: Any, root: str) -> str:
    """Fingerprint of a tonic-style dataset's samples (``data`` entries relative to ``root``, ``targets``)."""
    digest = hashlib.sha256()
    prefix = os.path.abspath(os.path.expanduser(root))
    for item, target in zip(dataset.data, dataset.targets, strict=True):
        digest.update(f"{str(item).replace(prefix, '')}|{int(target)}\n".encode())
    return f"n{len(dataset.targets)}-{digest.hexdigest()[:12]}"


class EventFrameDataModule(SplitDataModule):
    """Base of the event DataModules: subclasses say where events come from, this class does the rest.

    A subclass implements :meth:`_event_sources` (the event datasets, tonic style: ``data``, ``targets``,
    ``transform`` applied in ``__getitem__``) and :attr:`native_sensor_size`; it may override
    :meth:`_test_holdout`, :attr:`default_augmentation` and :attr:`dataset_name`. Its hyperparameters must
    include ``time_bins``, ``sensor_size``, ``split_by``, ``frame_engine``, ``augment``, ``augmentation``,
    ``cache``, ``val_fraction``, ``batch_size``, ``num_workers`` and ``split_seed``.

    Splits: with sources ``{"train", "test"}`` the official test set is the test split; with one source
    ``{"all"}`` the test split is a stratified holdout given by :meth:`_test_holdout`. Validation is a
    stratified holdout of ``ceil(val_fraction * n)`` of the remaining ``n`` samples, seeded by
    ``split_seed``; it never uses test samples and is never augmented.
    """

    dataset_name: str = "events"

    @property
    def native_sensor_size(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def _event_sources(self, transform: EventsToFrames) -> dict[str, Any]:
        raise NotImplementedError

    def _test_holdout(self, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} has no official test set and no holdout rule")

    def _cache_root(self) -> str:
        raise NotImplementedError

    def _source_signature(self, name: str, dataset: Any) -> str:
        raise NotImplementedError

    # -- shapes -------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        return self.native_sensor_size[2]

    @property
    def image_size(self) -> int:
        """Side length of the frames (the downsampled ``sensor_size`` if set)."""
        return self.hparams.sensor_size or self.native_sensor_size[0]

    @property
    def default_augmentation(self) -> FrameAugmentation | None:
        """The dataset's own train-time policy, used when ``augmentation`` is None; none by default."""
        return None

    @property
    def train_augmentation(self) -> FrameAugmentation | None:
        """The augmentation of the train split: ``augmentation``, else :attr:`default_augmentation`."""
        if not self.hparams.augment:
            return None
        return as_augmentation(self.hparams.augmentation) or self.default_augmentation

    @property
    def train_time_steps(self) -> int:
        """``T`` of a train batch: ``keep_steps`` under temporal deletion, else ``time_bins``."""
        augmentation = self.train_augmentation
        keep = getattr(augmentation, "keep_steps", None)
        return keep or self.hparams.time_bins

    # -- pipeline -----------------------------------------------------------------------------------
    def cache_path(self, source: str, dataset: Any) -> str:
        """Cache folder of one source: every setting that changes its frames is in the name."""
        hp = self.hparams
        settings = (
            f"v{CACHE_VERSION}|{self.dataset_name}|{source}|{self._source_signature(source, dataset)}|"
            f"T{hp.time_bins}|size{hp.sensor_size}|{hp.split_by}|{hp.frame_engine}"
        )
        key = hashlib.sha256(settings.encode()).hexdigest()[:16]
        return os.path.join(self._cache_root(), f"{self.dataset_name}-{source}-T{hp.time_bins}-{key}")

    @property
    def cache_enabled(self) -> bool:
        """Whether frames are cached on disk (``cache``)."""
        return bool(self.hparams.cache)

    def _framed(self, source: str, dataset: Any, frame_shape: tuple[int, ...]) -> Dataset:
        if not self.cache_enabled:
            return dataset
        return FrameCache(dataset, self.cache_path(source, dataset), frame_shape)

    def setup(self, stage: str | None = None) -> None:
        """Read the sample lists, make the splits and wrap them with cache and transforms (once)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        to_frames = EventsToFrames(self.native_sensor_size, hp.time_bins, hp.sensor_size, hp.split_by, hp.frame_engine)
        sources = self._event_sources(to_frames)
        if set(sources) == {"train", "test"}:
            fit_source, fit_positions = "train", np.arange(len(sources["train"].targets))
            test_source, test_positions = "test", np.arange(len(sources["test"].targets))
        elif set(sources) == {"all"}:
            fit_source = test_source = "all"
            fit_positions, test_positions = self._test_holdout(sources["all"].targets)
        else:
            raise RuntimeError(f"{type(self).__name__}._event_sources returned {sorted(sources)}")
        fit_targets = np.asarray(sources[fit_source].targets)[fit_positions]
        n_val = math.ceil(hp.val_fraction * len(fit_positions))
        train_rel, val_rel = stratified_holdout(fit_targets, n_val, hp.split_seed)
        self.train_indices = fit_positions[train_rel]
        self.val_indices = fit_positions[val_rel]
        self.test_indices = test_positions
        framed = {name: self._framed(name, dataset, to_frames.frame_shape) for name, dataset in sources.items()}
        evaluate = FramesToTensor()
        self.train_dataset = TransformedSubset(
            framed[fit_source], self.train_indices, FramesToTensor(self.train_augmentation)
        )
        self.val_dataset = TransformedSubset(framed[fit_source], self.val_indices, evaluate)
        self.test_dataset = TransformedSubset(framed[test_source], self.test_indices, evaluate)

    def _check_common(self) -> None:
        """Validate the shared hyperparameters (call after ``save_hyperparameters``)."""
        hp, name = self.hparams, type(self).__name__
        if hp.time_bins < 1:
            raise ValueError(f"{name} expects time_bins >= 1, got {hp.time_bins}")
        check_choice(hp.frame_engine, FrameEngine, f"{name} frame_engine")
        check_choice(hp.split_by, SplitBy, f"{name} split_by")
        side = min(self.native_sensor_size[:2])
        if hp.sensor_size is not None and not 1 <= hp.sensor_size <= side:
            raise ValueError(
                f"{name} expects sensor_size (the downsampled side) in [1, {side}] or None, got {hp.sensor_size}"
            )
        check_fraction(name, "val_fraction", hp.val_fraction)
        check_loader_options(name, hp.batch_size, hp.num_workers)
        keep = getattr(as_augmentation(hp.augmentation), "keep_steps", None)
        if keep is not None and keep > hp.time_bins:
            raise ValueError(f"{name}: augmentation keeps {keep} steps of only time_bins={hp.time_bins}")
