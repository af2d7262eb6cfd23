"""Shared loader plumbing of the spikenorm DataModules: three splits, a seeded, resumable shuffle for training."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The 63-bit generator seed of ``(seed, epoch)``: a hash, so ``(s, e + 1)`` and ``(s + 1, e)`` differ."""
    digest = hashlib.sha256(f"spikenorm/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpochShuffleSampler(DistributedSampler):
    """Shuffles with an order that is a function of ``(seed, epoch)`` only, and can start mid-epoch.

    Each epoch draws ``randperm(len(dataset))`` from a generator seeded by :func:`epoch_seed`; the global
    RNG never matters. With ``num_replicas > 1`` the permutation is padded to a multiple of
    ``num_replicas`` (repeating its head) and rank ``r`` takes every ``num_replicas``-th index from ``r``,
    as :class:`~torch.utils.data.DistributedSampler` does. Lightning calls :meth:`set_epoch` at every epoch
    start; being a ``DistributedSampler`` subclass, Lightning leaves this sampler in place under DDP
    instead of injecting its own.

    :meth:`start_at` makes the *next* iteration drop the first ``n`` indices of this rank's share (without
    touching the dataset) and continue the same permutation; later iterations start at 0 again.
    ``len()`` is always the full share (``num_samples``), so the loader's length stays one full epoch.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        self._start = 0

    def start_at(self, n: int) -> None:
        """Skip the first ``n`` indices of this rank's share in the next iteration only."""
        if n < 0:
            raise ValueError(f"EpochShuffleSampler.start_at expects n >= 0, got {n}")
        self._start = int(n)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        n = len(self.dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        indices = torch.randperm(n, generator=generator).tolist()
        padding = self.total_size - n
        if padding > 0:
            indices += (indices * math.ceil(padding / n))[:padding]
        return iter(indices[self.rank : self.total_size : self.num_replicas][start:])


class ResumableDataLoader(DataLoader):
    """A train ``DataLoader`` that Lightning can checkpoint mid-epoch and resume to the same batches.

    It shuffles with an :class:`EpochShuffleSampler` (order = f(``seed``, epoch), sharded over
    ``num_replicas``) unless a ``sampler`` is passed, and counts the batches it has yielded in the current
    epoch. Because it implements ``state_dict`` / ``load_state_dict``, Lightning's fit loop treats it as
    resumable: it stores ``state_dict()`` in the checkpoint (``loops.fit_loop.state_dict.combined_loader``)
    and, on resume, calls ``load_state_dict`` on the freshly requested loader before iterating it. The
    next iteration then skips the batches already consumed *at the sampler* (no data is loaded for them,
    so it works with ``num_workers > 0``) and continues the same permutation; later epochs follow the
    epoch-dependent order as usual.

    The epoch comes from the sampler, which Lightning advances with ``set_epoch``; outside Lightning, a
    completed pass advances it by one (so every pass draws a new order).

    Other keyword arguments go to :class:`~torch.utils.data.DataLoader`, so Lightning can re-instantiate
    the loader with another sampler (e.g. ``overfit_batches`` swaps in a ``SequentialSampler``); with a
    sampler that cannot start mid-epoch, resuming skips the consumed batches by loading and dropping them.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        **kwargs: Any,
    ) -> None:
        if sampler is None and kwargs.get("batch_sampler") is None:
            if shuffle is False:
                raise ValueError("ResumableDataLoader shuffles; pass a sampler for another order, got shuffle=False")
            sampler = EpochShuffleSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
            shuffle = None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)
        self.seed = seed
        self._position = 0  # batches of the current epoch already yielded (or skipped on resume)
        self._resume_pending = False

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _samples_per_step(self) -> int:
        return (self.batch_size or 1) * int(getattr(self.sampler, "num_replicas", 1))

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch stands: ``epoch``, ``batches`` yielded, and what they mean."""
        return {
            "epoch": self.epoch,
            "batches": self._position,
            "batch_size": self.batch_size,
            "num_replicas": int(getattr(self.sampler, "num_replicas", 1)),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue epoch ``state["epoch"]`` after ``state["batches"]`` batches."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        saved = (
            state.get("batch_size", self.batch_size),
            state.get("num_replicas", 1),
            state.get("seed", self.seed),
        )
        now = (
            self.batch_size,
            int(getattr(self.sampler, "num_replicas", 1)),
            self.seed,
        )
        if saved != now:
            warnings.warn(
                "ResumableDataLoader: the checkpoint was taken with (batch_size, num_replicas, seed) = "
                f"{saved}, this loader has {now}; the data order after resuming is not the uninterrupted one",
                stacklevel=2,
            )
            if saved[:2] != now[:2] and saved[0] and saved[1]:
                # keep the number of samples consumed this epoch as close as possible
                batches = (batches * int(saved[0]) * int(saved[1])) // self._samples_per_step()
        if batches >= len(self):  # the checkpoint closed its epoch: start the next one
            epoch, batches = epoch + 1, 0
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        self._position = batches
        self._resume_pending = True

    def __iter__(self) -> Iterator[Any]:
        # A generator: the sampler is read at the first next(), after Lightning's set_epoch of this epoch.
        skip = self._position if self._resume_pending else 0
        self._resume_pending = False
        self._position = skip
        fetch_and_drop = 0
        if skip:
            if isinstance(self.sampler, EpochShuffleSampler) and self.batch_size is not None:
                self.sampler.start_at(skip * self.batch_size)
            else:
                fetch_and_drop = skip
        iterator = super().__iter__()
        for _ in range(fetch_and_drop):
            next(iterator, None)
        for batch in iterator:
            self._position += 1
            yield batch
        # a completed pass: the next one draws the next epoch's order (Lightning sets the same epoch itself)
        self._position = 0
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch + 1)


class TransformedSubset(Dataset):
    """The items of ``dataset`` at ``indices``, with ``transform`` applied to each input (not the target)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable) -> None:
        self.dataset = dataset
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, target = self.dataset[self.indices[i]]
        return self.transform(image), target


def check_fraction(owner: str, name: str, value: float) -> None:
    """Raise a ValueError naming ``owner`` unless the split fraction ``name`` lies in the open interval (0, 1)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{owner} expects {name} in the open interval (0, 1), got {value}")


def check_loader_options(owner: str, batch_size: int, num_workers: int) -> None:
    """Raise a ValueError naming ``owner`` unless ``batch_size >= 1`` and ``num_workers >= 0``."""
    if batch_size < 1:
        raise ValueError(f"{owner} expects batch_size >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"{owner} expects num_workers >= 0, got {num_workers}")


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``train_dataset``, ``val_dataset`` and ``test_dataset``.

    ``predict`` runs over the test split. The train loader is a :class:`ResumableDataLoader`: its order
    is a function of ``hparams.split_seed`` and the epoch only (same seed, same orders, whatever the global
    RNG state; each epoch a different order), and a checkpoint taken mid-epoch resumes to the same
    batches. Under a distributed strategy it shards itself with ``trainer.distributed_sampler_kwargs``
    (Lightning sees a ``DistributedSampler`` and keeps it, also with ``use_distributed_sampler=False``).
    Val, test and predict loaders are plain, unshuffled ``DataLoader``s. Subclasses must save
    ``batch_size``, ``num_workers`` and ``split_seed`` in their hyperparameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _loader(self, dataset: Dataset | None, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before requesting the {split} dataloader")
        workers = self.hparams.num_workers
        common = {
            "batch_size": self.hparams.batch_size,
            "num_workers": workers,
            "persistent_workers": workers > 0,
        }
        if split != "train":
            return DataLoader(dataset, shuffle=False, **common)
        trainer = self.trainer
        shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        return ResumableDataLoader(
            dataset,
            seed=self.hparams.split_seed,
            num_replicas=int(shard.get("num_replicas", 1)),
            rank=int(shard.get("rank", 0)),
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        """Predictions run over the test split (``spikenorm predict``)."""
        return self._loader(self.test_dataset, "predict")


def stratified_holdout(labels: Sequence[int], held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..n-1`` into ``(kept, held)`` with ``held_out`` positions held out, stratified.

    scikit-learn's ``train_test_split(arange(n), test_size=held_out, stratify=labels, random_state=seed)``:
    every class keeps its share on both sides, and the same ``(labels, held_out, seed)`` give the same
    split on every machine. Raises a ``ValueError`` when a side would miss a class.
    """
    labels = np.asarray(labels)
    n, num_classes = len(labels), len(np.unique(labels))
    if min(held_out, n - held_out) < num_classes:
        raise ValueError(
            f"a stratified split of {n} samples of {num_classes} classes needs at least one sample per class "
            f"on each side, got {n - held_out} kept / {held_out} held out"
        )
    kept, held = train_test_split(np.arange(n), test_size=held_out, stratify=labels, random_state=seed)
    return kept, held
