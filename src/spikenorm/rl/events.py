"""Log a one-off measurement (an evaluation, a re-calibration) once, at the env step it was made.

``LightningModule.log(..., on_step=True)`` is the wrong tool for such events: Lightning keeps the value in
its result collection and writes it again at every ``log_every_n_steps`` flush until it is overwritten,
each time at the flush's step. :func:`log_event` writes one row straight to every logger instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = ["log_event"]


def log_event(trainer: Trainer, metrics: Mapping[str, float], env_step: int) -> None:
    """Write ``metrics`` as one row to each of ``trainer.loggers`` at step ``env_step`` (rank zero only).

    In CSV the row's ``step`` is ``env_step``; in W&B (Lightning's ``WandbLogger``) its
    ``trainer/global_step``, the x-axis of every chart. Values are not added to ``trainer.callback_metrics``:
    log them there with ``self.log(..., logger=False)`` when the progress bar, a checkpoint monitor or the
    CLI summary needs them.
    """
    if not trainer.is_global_zero:
        return
    row = {key: float(value) for key, value in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(row, step=int(env_step))
        logger.save()
