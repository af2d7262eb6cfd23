"""Shared loader plumbing of the spikenorm DataModules: three splits, a seeded shuffle for training."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``train_dataset``, ``val_dataset`` and ``test_dataset``.

    ``predict`` runs over the test split. The train loader shuffles with a generator seeded by ``hparams.split_seed`` (same seed, same order,
    whatever the global RNG state); val and test keep their order. Subclasses must save ``batch_size``,
    ``num_workers`` and ``split_seed`` in their hyperparameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _loader(self, dataset: Dataset | None, split: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before requesting the {split} dataloader")
        train = split == "train"
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=train,
            generator=torch.Generator().manual_seed(self.hparams.split_seed) if train else None,
            num_workers=workers,
            persistent_workers=workers > 0,
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
