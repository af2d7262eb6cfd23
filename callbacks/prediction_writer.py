"""Write what ``trainer.predict`` returns into the run's folder (``spikenorm predict`` adds it by itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from spikenorm.callbacks.output_folders import output_folder
from spikenorm.run_dirs import free_path


class PredictionWriter(BasePredictionWriter):
    """Save every prediction of a ``predict`` run to ``<dirpath>/predictions[-rank<r>].pt`` (with several
    predict dataloaders, one ``predictions-dataloader<i>[-rank<r>].pt`` each).

    The task's ``predict_step`` returns a dict of tensors per batch (for
    :class:`~spikenorm.tasks.SpikingClassifier`: ``logits [B, T, classes]``, ``probabilities [B, classes]``,
    ``class [B]``); the file holds the same keys with the batches concatenated, plus ``batch_indices`` (the
    dataset indices the sampler gave this process, when it reports them). It is a plain dict of tensors: read
    it with ``torch.load(path, weights_only=True)``. An existing file is never overwritten: the next free name
    ``predictions-1.pt``, ``predictions-2.pt``, ... is used.

    Args:
        dirpath: the folder; by default the run's log folder (``trainer.log_dir``: the first logger's
            version folder, or ``default_root_dir`` without a logger).
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.dirpath = dirpath
        self.written: list[Path] = []

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        several = bool(predictions) and isinstance(predictions[0], list)  # one list per predict dataloader
        per_loader = predictions if several else [predictions]
        per_loader_indices = batch_indices or [None] * len(per_loader)  # Lightning lists these per dataloader
        if not any(per_loader):
            rank_zero_warn("PredictionWriter received no predictions: nothing was written")
            return
        folder = output_folder(trainer, self.dirpath, beside="logs")
        rank = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        for loader, (batches, indices) in enumerate(zip(per_loader, per_loader_indices)):
            name = f"predictions{f'-dataloader{loader}' if several else ''}{rank}.pt"
            path = free_path(folder / name)
            torch.save(_merged(batches, indices), path)
            self.written.append(path)

    def summary_line(self) -> str | None:
        """What the CLI prints at the end of ``predict``."""
        return f"{'predictions':<14} {', '.join(map(str, self.written))}" if self.written else None


def _merged(batches: list[Any], indices: list[Any] | None) -> dict[str, torch.Tensor]:
    """One dataloader's per-batch dicts concatenated along the batch, plus the sampler's indices if known."""
    if not all(isinstance(batch, dict) for batch in batches):
        raise TypeError(
            f"PredictionWriter expects predict_step to return a dict of tensors per batch, got "
            f"{type(batches[0]).__name__}"
        )
    merged = {key: torch.cat([batch[key].detach().cpu() for batch in batches]) for key in batches[0]}
    if indices and all(index is not None for index in indices):
        merged["batch_indices"] = torch.tensor([i for batch in indices for i in batch])
    return merged
