"""What the monitoring callbacks share: which network to watch, when an epoch is due, batch sizes."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.data import extract_batch_size
from torch import nn


def monitored_network(pl_module: LightningModule) -> tuple[nn.Module, tuple[str, ...]]:
    """The network to watch and the submodules to leave out of it.

    ``pl_module.model`` when the module holds its network there (as the spikenorm tasks do); otherwise the
    LightningModule itself, without its ``teacher`` (a distillation teacher is not the model being evaluated).
    """
    model = getattr(pl_module, "model", None)
    if isinstance(model, nn.Module):
        return model, ()
    return pl_module, ("teacher",)


def validation_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether this validation loop is monitored: every ``every_n_epochs``-th epoch of a fit (never the
    sanity check), and every ``trainer.validate`` run."""
    if trainer.sanity_checking:
        return False
    if trainer.state.fn != TrainerFn.FITTING:
        return True
    return (trainer.current_epoch + 1) % every_n_epochs == 0


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (Lightning's own rule)."""
    return int(extract_batch_size(batch))


def check_every_n_epochs(every_n_epochs: int) -> int:
    """``every_n_epochs`` if it is a positive integer, else a ValueError."""
    if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
    return every_n_epochs
