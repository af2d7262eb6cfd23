"""Keep ``last.ckpt`` up to date so that a crashed run resumes with ``spikenorm fit --ckpt_path last``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class LastCheckpoint(ModelCheckpoint):
    """Write ``<checkpoint dir>/last.ckpt`` at the end of every epoch and, optionally, every N training steps.

    Lightning's ``ModelCheckpoint`` allows only one trigger per callback, and one that monitors a validation
    metric would rank mid-epoch saves by a stale score; this callback keeps no ranking at all (``save_top_k=0``)
    and only refreshes ``last.ckpt``, so it sits beside a ``ModelCheckpoint(monitor=...)`` that keeps the best
    weights. A checkpoint holds the data loader's position, so a mid-epoch save resumes at the next batch, and
    the resumed run ends with the same weights as an uninterrupted one (``tests/test_cli_workflow.py``).

    For online RL (a task that counts ``env_steps``, such as :class:`~spikenorm.tasks.SpikingTD3`) the interval
    is counted in environment steps, like every RL budget and schedule: ``every_n_env_steps``. Lightning's
    training steps count optimizer steps there (TD3: three per two updates, none in warm-up) and skip values.

    Args:
        every_n_train_steps: also save after every N-th optimizer step (0: at epoch ends only). Each save writes
            the whole checkpoint: choose N so that a save costs little next to N steps.
        dirpath: where to write; by default the run's ``<log dir>/checkpoints`` (Lightning's rule), which is
            where ``--ckpt_path last`` looks.
        every_n_env_steps: also save when the task's ``env_steps`` passes a multiple of N (0: never); the task
            must count ``env_steps`` (checked at setup).
    """

    def __init__(
        self, every_n_train_steps: int = 0, dirpath: str | Path | None = None, every_n_env_steps: int = 0
    ) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 (0: epoch ends only), got {every_n_train_steps}")
        if every_n_env_steps < 0:
            raise ValueError(f"every_n_env_steps must be >= 0 (0: never), got {every_n_env_steps}")
        # always last.ckpt (no last-v1.ckpt beside an older one): --ckpt_path last reads that name
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_epochs=1, enable_version_counter=False)
        self.every_n_train_steps_last = every_n_train_steps
        self.every_n_env_steps = every_n_env_steps
        self._env_step_interval = 0  # the number of whole intervals of env steps when last checked

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.every_n_env_steps and not isinstance(getattr(pl_module, "env_steps", None), int):
            raise ValueError(
                f"LastCheckpoint(every_n_env_steps={self.every_n_env_steps}): {type(pl_module).__name__} counts no "
                "env_steps (an online RL task such as SpikingTD3 does); use every_n_train_steps"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.every_n_env_steps:
            self._env_step_interval = pl_module.env_steps // self.every_n_env_steps

    @property
    def state_key(self) -> str:
        """One key whatever the step interval, so a run resumed with another interval restores this state."""
        return type(self).__qualname__

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save after every epoch (the epoch's validation has run by now), even when a step save came at this
        very step: that one was taken before validation, and resuming from it would validate again."""
        if not (trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing: ``ModelCheckpoint`` would save here only after a ranked save, which this callback never makes."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.every_n_train_steps_last
        due = bool(every) and trainer.global_step % every == 0
        if self.every_n_env_steps:
            interval = pl_module.env_steps // self.every_n_env_steps
            due, self._env_step_interval = due or interval > self._env_step_interval, interval
        if due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
