"""When a callback's work is due: every n-th epoch of a fit, every monitored validation loop."""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn


def check_every_n_epochs(every_n_epochs: int) -> int:
    """``every_n_epochs`` if it is a positive integer, else a ValueError."""
    if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
    return every_n_epochs


def epoch_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether the current epoch is an ``every_n_epochs``-th one (epochs ``n - 1, 2n - 1, ...``, counted from 0)."""
    return (trainer.current_epoch + 1) % every_n_epochs == 0


def validation_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether this validation loop is monitored: every ``every_n_epochs``-th epoch of a fit (never the
    sanity check), and every ``trainer.validate`` run."""
    if trainer.sanity_checking:
        return False
    if trainer.state.fn != TrainerFn.FITTING:
        return True
    return epoch_due(trainer, every_n_epochs)
