"""ReplayRecalibration: CaRe-BN's Re-BN, exact BN statistics from the replay buffer every N env steps."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer

from spikenorm.recalibrate import recalibrate_bn


class ReplayRecalibration(Callback):
    """Every ``every_n_env_steps`` environment steps, re-calibrate the actor's BN statistics from replay.

    Draws ``num_batches`` batches of ``batch_size`` states (uniform, with replacement) from the task's
    replay buffer and calls :func:`spikenorm.recalibrate.recalibrate_bn` on its actor, which overwrites the
    running statistics of every norm layer with the exact statistics pooled over all batches and time
    steps (CaRe-BN: 100 x 256 every 5000 steps, about 2% of the forward passes). Logs per layer
    ``bn/stat_error/<layer>`` (mean W2 distance between the running estimate before re-calibration and the
    exact pooled statistics) and ``bn/recalibration_seconds``. The step counter is saved in checkpoints.

    The LightningModule must expose ``actor``, ``replay_buffer`` (a TorchRL replay buffer of TensorDicts
    with an ``observation`` entry) and ``env_steps`` (as :class:`~spikenorm.tasks.SpikingTD3` does).
    """

    def __init__(
        self,
        every_n_env_steps: int = 5000,
        num_batches: int = 100,
        batch_size: int = 256,
        mode: Literal["exact", "single_pass"] = "exact",
    ) -> None:
        super().__init__()
        for name, value in (("every_n_env_steps", every_n_env_steps), ("num_batches", num_batches),
                            ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.every_n_env_steps = every_n_env_steps
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.mode = mode
        self.last_env_steps = 0
        self.recalibrations = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for attribute in ("actor", "replay_buffer", "env_steps"):
            if not hasattr(pl_module, attribute):
                raise ValueError(f"ReplayRecalibration needs the LightningModule to have `{attribute}`")
        steps = pl_module.env_steps
        if steps - self.last_env_steps < self.every_n_env_steps or len(pl_module.replay_buffer) == 0:
            return
        self.last_env_steps = steps
        buffer = pl_module.replay_buffer
        device = next(pl_module.actor.parameters()).device
        batches = [buffer.sample(self.batch_size)["observation"].float().to(device) for _ in range(self.num_batches)]
        report = recalibrate_bn(pl_module.actor, batches, mode=self.mode)
        self.recalibrations += 1
        for name, layer in report.layers.items():
            pl_module.log(f"bn/stat_error/{name}", layer.stat_error, on_step=True)
        pl_module.log("bn/recalibration_seconds", report.seconds, on_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {"last_env_steps": self.last_env_steps, "recalibrations": self.recalibrations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_env_steps = state_dict.get("last_env_steps", 0)
        self.recalibrations = state_dict.get("recalibrations", 0)
