"""DVS128 Gesture, CIFAR10-DVS and N-MNIST as Lightning DataModules over tonic: framed, cached, honest splits."""

from __future__ import annotations

import os
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

TonicDatasetName = Literal["dvsgesture", "cifar10dvs", "nmnist"]
SplitConvention = Literal["tonic", "spikingjelly"]

_NUM_CLASSES = {"dvsgesture": 11, "cifar10dvs": 10, "nmnist": 10}
_SENSOR_SIZE = {"dvsgesture": (128, 128, 2), "cifar10dvs": (128, 128, 2), "nmnist": (34, 34, 2)}
CIFAR10DVS_TEST_FRACTION = 0.1
CIFAR10DVS_TEST_SEED = 0


class TonicDataModule(EventFrameDataModule):
    """DVS128 Gesture, CIFAR10-DVS or N-MNIST as ``(frames, label)`` batches, read by tonic.

    ``frames`` is float32 ``[B, T, 2, H, W]`` (per-polarity event counts in ``T = time_bins`` slices;
    ``H = W = sensor_size`` when downsampling, else the sensor's 128 or 34), ``label`` is int64. Use the
    task with ``encoding="frames"``. The pipeline is :mod:`spikenorm.datamodules.event_frames`: tonic's
    readers and ``Downsample``, exact framing (or tonic's ``ToFrame`` with ``frame_engine="tonic"``), then,
    with the cache on, a :class:`~spikenorm.datamodules.event_frames.FrameCache` (tonic's
    ``DiskCachedDataset`` layout) under ``cache_dir`` (default ``<root>/spikenorm_cache``), keyed by every
    setting that changes the frames, so that epochs after the first read one HDF5 file of frames per
    sample instead of the raw events. Reading an HDF5 file costs
    about 0.7 ms, so the cache pays off for large recordings only (benchmarks/dvs_loading.py: 6.6x faster
    at 100k events per AEDAT4 file, 6x slower at 4k events per N-MNIST file); ``cache=None`` therefore
    means on for DVS128 Gesture and CIFAR10-DVS and off for N-MNIST.

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

    Damaged files: a data file that cannot be read as its format raises a
    :class:`~spikenorm.datamodules.errors.CorruptDataError` naming it (absolute path), the format expected
    and where an intact copy comes from. A damaged cache entry is rebuilt from its source with a warning
    naming it; only an entry still unreadable after the rebuild raises, saying to delete it.

    Validation: a stratified ``val_fraction`` of the train split seeded by ``split_seed``; the test split
    is never used for model selection. Augmentation (train split only): ``augmentation``, or with
    ``augment=True`` and ``augmentation=None`` the paper policy of
    :meth:`FrameAugmentation.paper_default` (Gesture: resized crop + rotation; CIFAR10-DVS: NDA;
    N-MNIST: none). Temporal deletion (``FrameAugmentation(keep_steps=14)`` with ``time_bins=20``) makes
    train batches ``[B, 14, ...]``: set the task's ``time_steps=14, eval_time_steps=20``.
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
        test_split: Literal["stratified", "per_class"] = "stratified",
        val_fraction: float = 0.1,
        batch_size: int = 16,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in _NUM_CLASSES:
            raise ValueError(f"TonicDataModule expects dataset in {sorted(_NUM_CLASSES)}, got {dataset!r}")
        if split_convention not in ("tonic", "spikingjelly"):
            raise ValueError(f"unknown split_convention {split_convention!r}; available: spikingjelly, tonic")
        if split_convention != "tonic" and dataset != "dvsgesture":
            raise ValueError(f"split_convention={split_convention!r} applies to dvsgesture only, got dataset={dataset!r}")
        if test_split not in ("stratified", "per_class"):
            raise ValueError(f"unknown test_split {test_split!r}; available: per_class, stratified")
        self.save_hyperparameters(logger=False)  # the spikenorm tasks log them as data.* (run_config)
        self._check_common()
        self.dataset_name = dataset

    @property
    def native_sensor_size(self) -> tuple[int, int, int]:
        return _SENSOR_SIZE[self.hparams.dataset]

    @property
    def cache_enabled(self) -> bool:
        """``cache``; by default on for DVS128 Gesture and CIFAR10-DVS, off for N-MNIST (see the class docs)."""
        if self.hparams.cache is None:
            return self.hparams.dataset != "nmnist"
        return bool(self.hparams.cache)

    @property
    def num_classes(self) -> int:
        return _NUM_CLASSES[self.hparams.dataset]

    def _cache_root(self) -> str:
        return self.hparams.cache_dir or os.path.join(self.hparams.root, "spikenorm_cache")

    def _source_signature(self, name: str, dataset: Any) -> str:
        return f"{self.hparams.split_convention}-{sample_list_signature(dataset, self.hparams.root)}"

    def _open(self, train: bool | None, transform: EventsToFrames) -> Any:
        hp = self.hparams
        if hp.dataset == "dvsgesture" and hp.split_convention == "spikingjelly":
            return IBMGestureSegments(hp.root, train=bool(train), transform=transform)
        cls = {"dvsgesture": DVSGesture, "cifar10dvs": CIFAR10DVS, "nmnist": NMNIST}[hp.dataset]
        split = {} if train is None else {"train": train}
        return cls(hp.root, transform=transform, download=hp.download, **split)

    def prepare_data(self) -> None:
        """Download the files when ``download=True`` (Lightning calls this on one process per node)."""
        if self.hparams.download:
            for train in (None,) if self.hparams.dataset == "cifar10dvs" else (True, False):
                self._open(train, transform=None)

    def _event_sources(self, transform: EventsToFrames) -> dict[str, Any]:
        if self.hparams.dataset == "cifar10dvs":
            return {"all": self._open(None, transform)}
        return {"train": self._open(True, transform), "test": self._open(False, transform)}

    def _test_holdout(self, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        """CIFAR10-DVS: the fixed 9:1 split described in the class docstring."""
        targets = np.asarray(targets)
        if self.hparams.test_split == "stratified":
            held = int(np.ceil(CIFAR10DVS_TEST_FRACTION * len(targets)))
            return stratified_holdout(targets, held, CIFAR10DVS_TEST_SEED)
        kept, held = [], []
        for label in np.unique(targets):
            positions = np.flatnonzero(targets == label)  # sorted file order within the class
            n_test = int(np.ceil(CIFAR10DVS_TEST_FRACTION * len(positions)))
            kept.append(positions[: len(positions) - n_test])
            held.append(positions[len(positions) - n_test :])
        return np.concatenate(kept), np.concatenate(held)
