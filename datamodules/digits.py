"""Embedded 8x8 handwritten digits (scikit-learn's copy of the UCI set): no download, CPU-friendly."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from spikenorm.datamodules.base import SplitDataModule, check_fraction, check_loader_options, stratified_holdout


class DigitsDataModule(SplitDataModule):
    """scikit-learn's bundled digits (1797 grey images, 8x8, 10 classes) as ``(x, y)`` batches.

    ``x`` is float32 ``[B, 1, H, W]`` with ``H = W = 8 * upsample``; ``y`` is int64 in ``[0, 10)``.

    Split: fixed and stratified by class, seeded with ``split_seed``. First
    ``ceil(test_fraction * 1797)`` images are drawn as the test split, then ``ceil(val_fraction * 1797)``
    of the rest as the validation split; the remainder is the train split. With the defaults
    (0.1, 0.2) that is 1257 train / 180 val / 360 test. Each split must hold at least one image per class.

    Preprocessing, done once in ``setup``: pixel values (0..16) are divided by 16 into [0, 1]; with
    ``upsample > 1`` the images are resized by bilinear interpolation (``align_corners=False``); with
    ``normalize`` every split is standardised as ``(x - mean) / std`` where ``mean`` and ``std`` are the
    scalar mean and population standard deviation over all pixels of the train split only (after
    upsampling), stored as ``self.mean`` / ``self.std``. Without ``normalize`` they are 0 and 1.

    The train loader shuffles with a generator seeded by ``split_seed`` (same seed, same order; each
    epoch draws a new order from it); val and test loaders keep a fixed order.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        upsample: int = 1,
        normalize: bool = True,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_fraction("DigitsDataModule", "val_fraction", val_fraction)
        check_fraction("DigitsDataModule", "test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                "DigitsDataModule expects val_fraction + test_fraction < 1 so that a train split remains, "
                f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
            )
        if upsample < 1:
            raise ValueError(f"DigitsDataModule expects an integer upsample factor >= 1, got {upsample}")
        check_loader_options("DigitsDataModule", batch_size, num_workers)
        self.save_hyperparameters(logger=False)  # the spikenorm tasks log them as data.* (run_config)
        self.mean: float | None = None
        self.std: float | None = None
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
        self.test_indices: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        """Side length of the (square) images after upsampling."""
        return 8 * self.hparams.upsample

    def setup(self, stage: str | None = None) -> None:
        """Load, split and preprocess all three splits (once; later calls are no-ops)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        digits = load_digits()
        labels = digits.target
        n, n_classes = len(labels), self.num_classes
        n_test = math.ceil(hp.test_fraction * n)
        n_val = math.ceil(hp.val_fraction * n)
        n_train = n - n_test - n_val
        if min(n_train, n_val, n_test) < n_classes:
            raise ValueError(
                f"DigitsDataModule needs at least {n_classes} images (one per class) in every split, got "
                f"train/val/test = {n_train}/{n_val}/{n_test} from val_fraction={hp.val_fraction}, "
                f"test_fraction={hp.test_fraction}"
            )
        rest_idx, test_idx = stratified_holdout(labels, n_test, hp.split_seed)
        train_pos, val_pos = stratified_holdout(labels[rest_idx], n_val, hp.split_seed)
        train_idx, val_idx = rest_idx[train_pos], rest_idx[val_pos]

        x = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16.0
        if hp.upsample > 1:
            x = F.interpolate(x, scale_factor=hp.upsample, mode="bilinear", align_corners=False)
        train_idx_t = torch.from_numpy(train_idx)
        if hp.normalize:
            train_x = x[train_idx_t]
            self.mean = float(train_x.mean())
            self.std = float(train_x.std(correction=0))
        else:
            self.mean, self.std = 0.0, 1.0
        x = (x - self.mean) / self.std
        y = torch.from_numpy(labels).to(torch.int64)

        self.train_indices, self.val_indices, self.test_indices = train_idx, val_idx, test_idx
        self.train_dataset = TensorDataset(x[train_idx_t], y[train_idx_t])
        self.val_dataset = TensorDataset(x[torch.from_numpy(val_idx)], y[torch.from_numpy(val_idx)])
        self.test_dataset = TensorDataset(x[torch.from_numpy(test_idx)], y[torch.from_numpy(test_idx)])
