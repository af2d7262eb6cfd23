"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision's own readers."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchvision import datasets, transforms
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity

from spikenorm.datamodules.base import SplitDataModule, TransformedSubset, check_loader_options
from spikenorm.datamodules.errors import reading

VisionDatasetName = Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]


class _PresenceCheck:
    """Mixin for torchvision's CIFAR classes: the integrity check only tests that the files exist.

    torchvision compares the md5 of every batch file (and of the meta file) with the official archive's;
    this replaces exactly that comparison, so that small stand-in files in the same format load.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(folder, name)) for name, _ in self.train_list + self.test_list)


class _CIFAR10NoChecksum(_PresenceCheck, datasets.CIFAR10):
    meta = {**datasets.CIFAR10.meta, "md5": None}


class _CIFAR100NoChecksum(_PresenceCheck, datasets.CIFAR100):
    meta = {**datasets.CIFAR100.meta, "md5": None}


@dataclass(frozen=True)
class VisionDatasetSpec:
    """One dataset of :class:`TorchvisionDataModule`: a row of :data:`VISION_DATASETS`."""

    checked: type[datasets.VisionDataset]
    unchecked: type[datasets.VisionDataset]
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Channel means and standard deviations of each official train set (pixels scaled to [0, 1]).
VISION_DATASETS: dict[str, VisionDatasetSpec] = {
    "mnist": VisionDatasetSpec(datasets.MNIST, datasets.MNIST, 10, 1, 28, (0.1307,), (0.3081,)),
    "fashion_mnist": VisionDatasetSpec(datasets.FashionMNIST, datasets.FashionMNIST, 10, 1, 28, (0.2860,), (0.3530,)),
    "cifar10": VisionDatasetSpec(
        datasets.CIFAR10, _CIFAR10NoChecksum, 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": VisionDatasetSpec(
        datasets.CIFAR100, _CIFAR100NoChecksum, 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


def _expected_files(cls: type[datasets.VisionDataset], root: str) -> tuple[str, list[str], str]:
    """Folder, file names and origin of the raw files ``cls`` reads from ``root``."""
    if issubclass(cls, datasets.CIFAR10):
        folder = os.path.join(root, cls.base_folder)
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        origin = f"unpacking the official archive {cls.filename} ({cls.url}) in {root} creates them"
    else:
        folder = os.path.join(root, cls.__name__, "raw")
        names = [os.path.splitext(name)[0] for name, _ in cls.resources]
        origin = (
            f"they are the official {', '.join(name for name, _ in cls.resources)} from {cls.mirrors[0]}, gunzipped"
        )
    return folder, names, origin


def _raw_reader(cls: type[datasets.VisionDataset], name: str) -> tuple[str, Callable[[str], Any]]:
    """The format of raw file ``name`` of ``cls`` and a function that reads it as torchvision does."""
    if issubclass(cls, datasets.CIFAR10):
        key = cls.meta["key"] if name == cls.meta["filename"] else "data"

        def unpickle(path: str) -> Any:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")[key]

        return f"a CIFAR python pickle of a dict with key {key!r}", unpickle
    if "images" in name:
        return "an idx3-ubyte file of uint8 images [N, 28, 28] (big-endian header)", read_image_file
    return "an idx1-ubyte file of uint8 labels [N] (big-endian header)", read_label_file


class TorchvisionDataModule(SplitDataModule):
    """MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 as ``(x, y)`` batches, read by torchvision.

    ``x`` is float32 ``[B, C, H, W]`` (1x28x28 for the MNISTs, 3x32x32 for CIFAR), ``y`` int64 class ids.

    Files: ``prepare_data`` downloads only when ``download=True``. ``setup`` reads the files torchvision
    expects under ``root`` (``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``,
    ``<root>/cifar-10-batches-py/``, ``<root>/cifar-100-python/``) and raises a ``FileNotFoundError``
    naming every expected file when any is missing. ``verify_checksums=False`` skips only torchvision's
    md5 comparison of the CIFAR files against the official ones (the MNIST readers never compare
    checksums of the raw files). When torchvision rejects the files, the error names the culprit: the
    CIFAR files whose md5 differs from the official one, else the file that cannot be read as its
    format (a :class:`~spikenorm.datamodules.errors.CorruptDataError`, e.g. a truncated pickle or idx file).

    Split: the official train set is split at random into train and validation, with
    ``round(val_fraction * n)`` images (at least one) for validation, by a permutation seeded with
    ``split_seed``; the official test set is the test split. Validation never uses the test set.

    Transforms: every split is converted by ``ToTensor`` (pixels to [0, 1]) and ``Normalize`` with the
    dataset's published per-channel train-set mean and std. With ``augment`` the CIFAR train split first
    gets ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip``; the MNISTs are never augmented, and
    validation and test are never augmented (the validation images, although taken from the train
    files, go through the evaluation transform).

    The train loader shuffles with a generator seeded by ``split_seed``; val and test keep a fixed order.
    """

    def __init__(
        self,
        dataset: VisionDatasetName,
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        augment: bool = True,
        verify_checksums: bool = True,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in VISION_DATASETS:
            raise ValueError(f"TorchvisionDataModule expects dataset in {sorted(VISION_DATASETS)}, got {dataset!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                "TorchvisionDataModule expects val_fraction in the open interval (0, 1) (validation is a "
                f"held-out part of the official train set, never the test set), got {val_fraction}"
            )
        check_loader_options("TorchvisionDataModule", batch_size, num_workers)
        self.save_hyperparameters(logger=False)  # the spikenorm tasks log them as data.* (run_config)
        self.train_indices: list[int] | None = None
        self.val_indices: list[int] | None = None

    @property
    def _spec(self) -> VisionDatasetSpec:
        return VISION_DATASETS[self.hparams.dataset]

    @property
    def _dataset_class(self) -> type[datasets.VisionDataset]:
        return self._spec.checked if self.hparams.verify_checksums else self._spec.unchecked

    @property
    def num_classes(self) -> int:
        return self._spec.num_classes

    @property
    def in_channels(self) -> int:
        return self._spec.in_channels

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        return self._spec.image_size

    @property
    def eval_transform(self) -> transforms.Compose:
        """ToTensor + Normalize: applied to validation and test images (and to train without augment)."""
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(self._spec.mean, self._spec.std)])

    @property
    def train_transform(self) -> transforms.Compose:
        """The evaluation transform, preceded by random crop and flip for CIFAR when ``augment``."""
        if not (self.hparams.augment and self._spec.in_channels == 3):
            return self.eval_transform
        size = self._spec.image_size
        return transforms.Compose(
            [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(), *self.eval_transform.transforms]
        )

    def _missing_files_error(self) -> FileNotFoundError | None:
        """An error naming every file torchvision expects under ``root``, or None when none is missing."""
        folder, names, origin = _expected_files(self._dataset_class, self.hparams.root)
        missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
        if not missing:
            return None
        absent = "none of them is there" if len(missing) == len(names) else f"missing: {', '.join(missing)}"
        return FileNotFoundError(
            f"{self.hparams.dataset} files not found: expected {folder}/{{{', '.join(names)}}} ({absent}); "
            f"{origin}. Put them there, or pass download=True (needs network access)."
        )

    def _checksum_mismatches(self) -> list[str]:
        """The CIFAR files whose md5 differs from the official one (none unless ``verify_checksums``)."""
        cls = self._dataset_class
        if not (self.hparams.verify_checksums and issubclass(cls, datasets.CIFAR10)):
            return []
        folder = os.path.abspath(os.path.join(self.hparams.root, cls.base_folder))
        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        paths = [(os.path.join(folder, name), md5) for name, md5 in files]
        return [path for path, md5 in paths if not check_integrity(path, md5)]

    def _check_raw_files(self) -> None:
        """Read every raw file as torchvision does; the first that fails raises a ``CorruptDataError``."""
        cls = self._dataset_class
        folder, names, origin = _expected_files(cls, self.hparams.root)
        for name in names:
            expected, read = _raw_reader(cls, name)
            path = os.path.join(folder, name)
            with reading(path, expected, f"Replace it with an intact copy: {origin}."):
                read(path)

    def _rejected_error(self, err: Exception, mismatches: list[str]) -> RuntimeError:
        """torchvision's ``err``, with the files whose md5 differs from the official one (``mismatches``)."""
        folder, _, _ = _expected_files(self._dataset_class, self.hparams.root)
        hint = (
            " With verify_checksums=True every CIFAR file must match the official md5 checksum; these do not: "
            f"{', '.join(mismatches)}. Delete them and download again (download=True), or pass "
            "verify_checksums=False to load files that differ from the official ones."
            if mismatches
            else ""
        )
        return RuntimeError(
            f"{self.hparams.dataset} files under {folder} are present but torchvision rejected them ({err}).{hint}"
        )

    def prepare_data(self) -> None:
        """Download the dataset into ``root`` when ``download=True`` (Lightning calls this on one rank)."""
        if not self.hparams.download:
            return
        try:
            # One archive (CIFAR) or one set of four files (MNISTs) holds both splits.
            self._dataset_class(self.hparams.root, train=False, download=True)
        except (OSError, RuntimeError) as err:
            missing = self._missing_files_error()
            if missing is None:
                raise self._rejected_error(err, self._checksum_mismatches()) from err
            reason = " ".join(str(err).split())  # torchvision's mirror-by-mirror report, on one line
            raise FileNotFoundError(
                f"downloading {self.hparams.dataset} failed ({type(err).__name__}: {reason}). {missing}"
            ) from err

    def _load(self, train: bool) -> datasets.VisionDataset:
        missing = self._missing_files_error()
        if missing is not None:
            raise missing
        try:
            return self._dataset_class(self.hparams.root, train=train)
        except Exception as err:  # torchvision raises RuntimeError, UnpicklingError, AssertionError, ...
            mismatches = self._checksum_mismatches()
            if not mismatches:
                self._check_raw_files()
            raise self._rejected_error(err, mismatches) from err

    def setup(self, stage: str | None = None) -> None:
        """Read the splits the stage needs: train and val for fit and validate, test for test."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            full_train = self._load(train=True)
            n = len(full_train)
            n_val = max(1, round(self.hparams.val_fraction * n))
            if n_val >= n:
                raise ValueError(
                    f"TorchvisionDataModule: val_fraction={self.hparams.val_fraction} of {n} train images "
                    f"leaves no train images (validation would take {n_val})"
                )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed)).tolist()
            self.val_indices, self.train_indices = order[:n_val], order[n_val:]
            self.train_dataset = TransformedSubset(full_train, self.train_indices, self.train_transform)
            self.val_dataset = TransformedSubset(full_train, self.val_indices, self.eval_transform)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            test = self._load(train=False)
            self.test_dataset = TransformedSubset(test, range(len(test)), self.eval_transform)
