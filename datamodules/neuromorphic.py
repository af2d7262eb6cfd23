"""DVS128 Gesture, CIFAR10-DVS and N-MNIST as Lightning DataModules over tonic: framed, cached, honest splits.

Every dataset is one row of :data:`DVS_DATASETS` (a :class:`DVSDatasetSpec`): its readers, sensor, classes,
how its test split is made, whether frames are cached by default and its paper augmentation. Adding a DVS
dataset is adding a row (and its name to :data:`TonicDatasetName`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from spikenorm.datamodules.base import stratified_holdout
from spikenorm.datamodules.event_frames import (
    EventFrameDataModule,
    EventsToFrames,
    FrameEngine,
    SplitBy,
    sample_list_signature,
)
from spikenorm.datamodules.frame_augment import FrameAugmentation
from spikenorm.datamodules.ibm_gesture import IBMGestureSegments
from spikenorm.datamodules.tonic_sources import CIFAR10DVS, NMNIST, DVSGesture
from spikenorm.validation import check_choice

TonicDatasetName = Literal["dvsgesture", "cifar10dvs", "nmnist"]
SplitConvention = Literal["tonic", "spikingjelly"]
TEST_HOLDOUT_SEED = 0  # the seed of a stratified test holdout, fixed whatever ``split_seed`` is


@dataclass(frozen=True)
class DVSDatasetSpec:
    """Everything :class:`TonicDataModule` needs to know about one DVS dataset.

    Attributes:
        readers: the tonic-style reader class per split convention, called as
            ``reader(root, transform=..., download=..., train=...)`` (no ``train`` when the dataset has no
            official test split).
        sensor_size: ``(width, height, polarities)`` of the sensor.
        num_classes: number of classes.
        test_holdout: ``None`` when the files come in an official train/test split; otherwise the fraction
            of the one pool of files held out as the test split (see ``test_split``).
        cache_by_default: whether ``cache=None`` caches frames (worth it for large recordings only).
        augmentation: the paper's train-time policy (``augment=True, augmentation=None``); ``None``: none.
    """

    readers: Mapping[str, type]
    sensor_size: tuple[int, int, int]
    num_classes: int
    test_holdout: float | None
    cache_by_default: bool
    augmentation: FrameAugmentation | None


DVS_DATASETS: dict[str, DVSDatasetSpec] = {
    "dvsgesture": DVSDatasetSpec(
        readers={"tonic": DVSGesture, "spikingjelly": IBMGestureSegments},
        sensor_size=(128, 128, 2),
        num_classes=11,
        test_holdout=None,
        cache_by_default=True,
        augmentation=FrameAugmentation(crop_scale=(0.7, 1.0), rotation=20.0),
    ),
    "cifar10dvs": DVSDatasetSpec(
        readers={"tonic": CIFAR10DVS},
        sensor_size=(128, 128, 2),
        num_classes=10,
        test_holdout=0.1,
        cache_by_default=True,
        augmentation=FrameAugmentation(hflip=True, nda=True),
    ),
    "nmnist": DVSDatasetSpec(
        readers={"tonic": NMNIST},
        sensor_size=(34, 34, 2),
        num_classes=10,
        test_holdout=None,
        cache_by_default=False,
        augmentation=None,
    ),
}
#: how a test split is held out of a dataset without an official one: stratified by class, or per class
TestSplit = Literal["stratified", "per_class"]


class TonicDataModule(EventFrameDataModule):
    """DVS128 Gesture, CIFAR10-DVS or N-MNIST as ``(frames, label)`` batches, read by tonic.

    ``frames`` is float32 ``[B, T, 2, H, W]`` (per-polarity event counts in ``T = time_bins`` slices;
    ``H = W = sensor_size`` when downsampling, else the sensor's 128 or 34), ``label`` is int64. What differs
    between the datasets is their row of :data:`DVS_DATASETS`. Use the
    task with ``encoding="frames"``. The pipeline is :mod:`spikenorm.datamodules.event_frames`: tonic's
    readers and ``Downsample``, exact framing (or tonic's ``ToFrame`` with ``frame_engine="tonic"``), then,
    with the cache on, a :class:`~spikenorm.datamodules.event_frames.FrameCache` (tonic's
    ``DiskCachedDataset`` layout) under ``cache_dir`` (default ``<root>/spikenorm_cache``), keyed by every
    setting that changes the frames, so that epochs after the first read one HDF5 file of frames per
    sample instead of the raw events. Reading an HDF5 file has a fixed cost, so the cache pays off for large
    recordings (a CIFAR10-DVS AEDAT4 file) and not for small ones (an N-MNIST file); ``benchmarks/dvs_loading.py``
    measures both. ``cache=None`` therefore means on for DVS128 Gesture and CIFAR10-DVS and off for N-MNIST
    (``cache_by_default``).

    Files (what tonic expects after download and extraction; ``download=True`` fetches them where tonic
    can, otherwise a ``FileNotFoundError`` says which files go where):

    * ``nmnist``: ``<root>/NMNIST/{Train,Test}/<digit>/*.bin``. Official train (60000) / test (10000).
    * ``cifar10dvs``: ``<root>/CIFAR10DVS/<class>/*.aedat4`` (needs the ``aedat`` package). There is no
      official split; the test split is a fixed stratified 10% (``test_split="stratified"``, scikit-learn's
      stratified split with seed 0, taken on the sorted file list, whatever ``split_seed`` is: 9000 / 1000
      on the full set), or ``test_split="per_class"``: the last 10% of each class's sorted files (the
      "first 900 / last 100 per class" rule several CIFAR10-DVS papers use).
    * ``dvsgesture`` with ``split_convention="tonic"``: tonic's preprocessed release,
      ``<root>/DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/<class>.npy`` (1077 / 264 samples).
      With ``split_convention="spikingjelly"``: IBM's original release, ``<root>/DvsGesture/`` with the
      ``.aedat`` recordings, labels CSVs and ``trials_to_{train,test}.txt``, one sample per labelled
      segment (SpikingJelly's convention, 1176 / 288; see
      :class:`~spikenorm.datamodules.ibm_gesture.IBMGestureSegments`). The two are not comparable.

    Damaged files: ``setup`` checks every data file (not empty, the format's header; the first bytes only, no
    events decoded) and raises a :class:`~spikenorm.datamodules.errors.CorruptDataError` naming the first bad one.
    Damage past the header is found when the file is read: a data file that cannot be read as its format raises a
    :class:`~spikenorm.datamodules.errors.CorruptDataError` naming it (absolute path), the format expected
    and where an intact copy comes from. A damaged cache entry is rebuilt from its source with a warning
    naming it; only an entry still unreadable after the rebuild raises, saying to delete it.

    Validation: a stratified ``val_fraction`` of the train split seeded by ``split_seed``; the test split
    is never used for model selection. Augmentation (train split only): ``augmentation``, or with
    ``augment=True`` and ``augmentation=None`` the paper policy of the dataset's row (Gesture: resized
    crop + rotation; CIFAR10-DVS: NDA; N-MNIST: none; see :mod:`spikenorm.datamodules.frame_augment`).
    Temporal deletion (``FrameAugmentation(keep_steps=14)`` with ``time_bins=20``) makes train batches
    ``[B, 14, ...]``: set the task's ``time_steps=14, eval_time_steps=20``.
    """

    def __init__(
        self,
        dataset: TonicDatasetName,
        root: str = "data",
        download: bool = False,
        time_bins: int = 10,
        sensor_size: int | None = None,
        split_by: SplitBy = "number",
        frame_engine: FrameEngine = "exact",
        augment: bool = True,
        augmentation: FrameAugmentation | None = None,
        cache: bool | None = None,
        cache_dir: str | None = None,
        split_convention: SplitConvention = "tonic",
        test_split: TestSplit = "stratified",
        val_fraction: float = 0.1,
        batch_size: int = 16,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DVS_DATASETS:
            raise ValueError(f"TonicDataModule expects dataset in {sorted(DVS_DATASETS)}, got {dataset!r}")
        check_choice(split_convention, SplitConvention, "split_convention")
        if split_convention not in DVS_DATASETS[dataset].readers:
            datasets = sorted(name for name, spec in DVS_DATASETS.items() if split_convention in spec.readers)
            raise ValueError(
                f"split_convention={split_convention!r} applies to {', '.join(datasets)} only, got dataset={dataset!r}"
            )
        check_choice(test_split, TestSplit, "test_split")
        self.save_hyperparameters(logger=False)  # the spikenorm tasks log them as data.* (run_config)
        self._check_common()
        self.dataset_name = dataset

    @property
    def spec(self) -> DVSDatasetSpec:
        """This dataset's row of :data:`DVS_DATASETS`."""
        return DVS_DATASETS[self.hparams.dataset]

    @property
    def native_sensor_size(self) -> tuple[int, int, int]:
        return self.spec.sensor_size

    @property
    def cache_enabled(self) -> bool:
        """``cache``; ``None``: the dataset's ``cache_by_default`` (on for DVS128 Gesture and CIFAR10-DVS)."""
        if self.hparams.cache is None:
            return self.spec.cache_by_default
        return bool(self.hparams.cache)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def default_augmentation(self) -> FrameAugmentation | None:
        return self.spec.augmentation

    def _cache_root(self) -> str:
        return self.hparams.cache_dir or os.path.join(self.hparams.root, "spikenorm_cache")

    def _source_signature(self, name: str, dataset: Any) -> str:
        return f"{self.hparams.split_convention}-{sample_list_signature(dataset, self.hparams.root)}"

    def _open(self, transform: EventsToFrames | None, **split: bool) -> Any:
        hp = self.hparams
        reader = self.spec.readers[hp.split_convention]
        return reader(hp.root, transform=transform, download=hp.download, **split)

    def _event_sources(self, transform: EventsToFrames | None) -> dict[str, Any]:
        """The readers of the dataset's files, each file checked first (``check_files``: not empty, a readable
        header), so that ``setup`` names a damaged file instead of the loader that reaches it."""
        if self.spec.test_holdout is not None:
            sources = {"all": self._open(transform)}
        else:
            sources = {"train": self._open(transform, train=True), "test": self._open(transform, train=False)}
        for source in sources.values():
            source.check_files()
        return sources

    def prepare_data(self) -> None:
        """Download the files when ``download=True`` (Lightning calls this on one process per node)."""
        if self.hparams.download:
            self._event_sources(transform=None)

    def _test_holdout(self, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        """The fixed test holdout of a dataset without an official split (CIFAR10-DVS), see the class docs."""
        targets, fraction = np.asarray(targets), self.spec.test_holdout
        if self.hparams.test_split == "stratified":
            held = int(np.ceil(fraction * len(targets)))
            return stratified_holdout(targets, held, TEST_HOLDOUT_SEED)
        kept, held = [], []
        for label in np.unique(targets):
            positions = np.flatnonzero(targets == label)  # sorted file order within the class
            n_test = int(np.ceil(fraction * len(positions)))
            kept.append(positions[: len(positions) - n_test])
            held.append(positions[len(positions) - n_test :])
        return np.concatenate(kept), np.concatenate(held)
