"""Write what ``trainer.predict`` returns into the run's folder (``spikenorm predict`` adds it by itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from spikenorm.run_dirs import free_path


class PredictionWriter(BasePredictionWriter):
    """Save every prediction of a ``predict`` run to ``<output_dir>/predictions[-rank<r>].pt``.

    The task's ``predict_step`` returns a dict of tensors per batch (for
    :class:`~spikenorm.tasks.SpikingClassifier`: ``logits [B, T, classes]``, ``probabilities [B, classes]``,
    ``class [B]``); the file holds the same keys with the batches concatenated, plus ``batch_indices`` (the
    dataset indices the sampler gave this process, when it reports them). It is a plain dict of tensors: read
    it with ``torch.load(path, weights_only=True)``. An existing file is never overwritten: the next free name
    ``predictions-1.pt``, ``predictions-2.pt``, ... is used.

    Args:
        output_dir: the folder; by default the run's log folder (``trainer.log_dir``: the first logger's
            version folder, or ``default_root_dir`` without a logger).
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        if not all(isinstance(batch, dict) for batch in batches):
            raise TypeError(f"PredictionWriter expects predict_step to return a dict of tensors per batch, got "
                            f"{type(batches[0]).__name__}")
        merged = {key: torch.cat([batch[key].detach().cpu() for batch in batches]) for key in batches[0]}
        indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
        if indices and all(index is not None for index in indices):
            merged["batch_indices"] = torch.tensor([i for batch in indices for i in batch])
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.written = free_path(folder / f"predictions{suffix}.pt")
        torch.save(merged, self.written)

    def summary_line(self) -> str | None:
        """What the CLI prints at the end of ``predict``."""
        return f"{'predictions':<14} {self.written}" if self.written else None

