"""The Lightning boilerplate the attach-to-your-own-model examples share: a digits classifier around a
network kept as ``self.model``, and a short fit with spikenorm's callbacks and an offline W&B logger."""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

from spikenorm.callbacks import BNRecalibration, EnergyMonitor, SpikeMonitor
from spikenorm.datamodules import DigitsDataModule
from spikenorm.loggers import WandbLogger


class DigitsTask(L.LightningModule):
    """Cross-entropy on ``forward(x)`` (class scores ``[B, 10]``); subclasses set ``self.model`` and ``forward``."""

    def __init__(self, time_steps: int = 4, lr: float = 2e-3) -> None:
        super().__init__()
        self.time_steps = time_steps  # EnergyMonitor reads T here for the ANN comparison
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit_with_callbacks(task: DigitsTask, run_name: str, argv: list[str] | None = None) -> dict[str, float]:
    """Fit on the bundled digits with BNRecalibration, SpikeMonitor and EnergyMonitor; print and return
    the final metrics."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args(argv)
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        logger=WandbLogger(project="spikenorm-examples", name=run_name),  # offline without an API key
        callbacks=[BNRecalibration(num_batches=10), SpikeMonitor(), EnergyMonitor(folded=False)],
    )
    trainer.fit(task, DigitsDataModule())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(
        f"val/acc {metrics['val/acc']:.3f}  firing rate {metrics['spikes/mean_rate']:.3f}  "
        f"energy {metrics['energy/uj']:.4f} uJ/sample (ANN {metrics['energy/ann_uj']:.4f})"
    )
    return metrics
