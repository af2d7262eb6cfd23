"""Run by test_bn_recalibration_callback: BNRecalibration under Lightning DDP, 2 CPU processes (gloo).

Each rank saves its final statistics and weights and the batches of its last recalibration to
``<out_dir>/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from helpers import quiet_trainer
from lightning.pytorch import Callback, Trainer
from peer_models import PeerClassifier
from test_bn_recalibration_callback import RecordingRecalibration, loaders


class SaveRankResults(Callback):
    """After BNRecalibration's last recalibration (callbacks run in order): this rank's results."""

    def __init__(self, out_dir: str, recorder: RecordingRecalibration) -> None:
        self.out_dir, self.recorder = out_dir, recorder

    def on_train_end(self, trainer: Trainer, pl_module: PeerClassifier) -> None:
        batches = self.recorder.seen[-self.recorder.num_batches :]
        torch.save(
            {"state": pl_module.model.state_dict(), "batches": batches},
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )


def main(out_dir: str) -> None:
    recorder = RecordingRecalibration(num_batches=2)
    trainer = quiet_trainer(
        max_epochs=1,
        devices=2,
        strategy="ddp",
        num_sanity_val_steps=0,
        callbacks=[recorder, SaveRankResults(out_dir, recorder)],
    )
    trainer.fit(PeerClassifier("snntorch"), *loaders())


if __name__ == "__main__":
    main(sys.argv[1])
