"""ReplayRecalibration: CaRe-BN's Re-BN, exact BN statistics from the replay buffer every N env steps."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from spikenorm.callbacks.task_protocols import ReplayBufferLike, ReplayTaskLike, require_task
from spikenorm.recalibrate import RecalibrationMode, recalibrate_bn, statistics_layers
from spikenorm.rl import log_event
from spikenorm.validation import check_choice

Unusable = Literal["error", "warn"]
#: when Re-BN runs: on its own schedule (every ``every_n_env_steps``, after the iteration's evaluation; the
#: continuous-control setting) or right before every evaluation of the task (the discrete-control code's order)
RecalibrationTiming = Literal["every_n_env_steps", "before_evaluation"]


class ReplayRecalibration(Callback):
    """Every ``every_n_env_steps`` environment steps, or before every evaluation, re-calibrate the BN statistics of
    the task's policy network (TD3's actor, DQN's Q-network) from replay.

    Draws ``num_batches`` batches of ``batch_size`` states (uniform, with replacement, whatever sampler the
    buffer itself uses) from the task's replay buffer and calls :func:`spikenorm.recalibrate.recalibrate_bn`
    on the policy network, which overwrites the running statistics of every norm layer with the exact statistics
    pooled over all batches and time steps (the CaRe-BN paper's setting: 100 batches of 256 states every 5000 env
    steps; the discrete-control code: 100 batches of 128 right before every evaluation, ``mode="single_pass"``,
    ``when="before_evaluation"``). Logs, once per re-calibration and against the env step at which it ran (the x-axis of
    :class:`~spikenorm.tasks.SpikingTD3`'s logs), per layer ``recalibration/stat_error/<layer>`` (mean W2
    distance between the running estimate before re-calibration and the exact pooled statistics) and
    ``recalibration/seconds``. The step counter is saved in checkpoints.

    The LightningModule must be a :class:`~spikenorm.callbacks.task_protocols.ReplayTaskLike`. Before the first
    training step the callback checks that it is (``TypeError`` otherwise, e.g. for an actor that is not a
    module), that the policy network has BN layers with running statistics, and that the schedule runs at least once
    within the task's ``total_env_steps``. When one of the last two fails, ``unusable`` decides: ``"error"``
    (the default) raises ``ValueError``; ``"warn"`` warns once, the callback does nothing for the rest of the
    fit, and :meth:`summary_line` says why (so a recipe can switch to ``actor: ann`` or a short run with one
    flag).

    ``when="every_n_env_steps"`` (default) runs after each training iteration once ``every_n_env_steps`` have
    passed since the last run, i.e. after an evaluation due at the same env step. ``when="before_evaluation"``
    runs right before every evaluation the task makes (its ``eval_every`` schedule and the final one), so each
    evaluation sees freshly re-calibrated statistics, as in the CaRe-BN discrete-control code
    (``dsqn_carebn.py``); ``every_n_env_steps`` is then not used.
    """

    def __init__(
        self,
        every_n_env_steps: int = 5000,
        num_batches: int = 100,
        batch_size: int = 256,
        mode: RecalibrationMode = "exact",
        unusable: Unusable = "error",
        when: RecalibrationTiming = "every_n_env_steps",
    ) -> None:
        super().__init__()
        for name, value in (
            ("every_n_env_steps", every_n_env_steps),
            ("num_batches", num_batches),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        check_choice(mode, RecalibrationMode, "recalibration mode")
        check_choice(unusable, Unusable, "unusable")
        check_choice(when, RecalibrationTiming, "when")
        self.when = when
        self.every_n_env_steps = every_n_env_steps
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.mode = mode
        self.unusable = unusable
        self.unusable_reason: str | None = None  # with unusable="warn": why this fit is not re-calibrated
        self.last_env_steps = 0
        self.recalibrations = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.unusable_reason = None
        try:
            self.check(pl_module)
        except ValueError as err:
            if self.unusable == "error":
                raise
            self.unusable_reason = str(err).removeprefix("ReplayRecalibration: ")
            rank_zero_warn(f"ReplayRecalibration: not re-calibrating this run: {self.unusable_reason}")

    def check(self, pl_module: LightningModule) -> None:
        """Raise ``ValueError`` if this callback cannot work on ``pl_module`` (``TypeError`` if it is not a
        replay task; see the class doc)."""
        name = type(pl_module).__name__
        require_task(pl_module, ReplayTaskLike, "ReplayRecalibration")
        network = pl_module.policy_network
        if not statistics_layers(network):
            raise ValueError(
                f"ReplayRecalibration: the policy network of {name} ({type(network).__name__}) has no BN layer with "
                "running statistics to re-calibrate (the ANN networks, actor='ann' / q_network='ann', have none); "
                "give it one (e.g. SpikingTD3(actor_layers=LayerSpec(norm='carebn')), or 'bn', 'tdbn', 'tebn', 'tab'; "
                "SpikingDQN(layers=...)) or remove the callback"
            )
        total = getattr(pl_module, "total_env_steps", None)
        if self.when == "every_n_env_steps" and total is not None and self.every_n_env_steps > total:
            raise ValueError(
                f"ReplayRecalibration(every_n_env_steps={self.every_n_env_steps}) would never run: {name} trains "
                f"for total_env_steps={total}; set every_n_env_steps to at most {total}"
            )

    def summary_line(self) -> str | None:
        """For the CLI's end-of-fit summary: ``"not re-calibrated: <reason>"`` when ``unusable="warn"`` turned
        this callback off, else None."""
        return None if self.unusable_reason is None else f"not re-calibrated: {self.unusable_reason}"

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.when == "every_n_env_steps" and pl_module.env_steps - self.last_env_steps >= self.every_n_env_steps:
            self.recalibrate(trainer, pl_module)

    def before_policy_evaluation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Called by the task right before each evaluation: re-calibrate when ``when="before_evaluation"``."""
        if self.when == "before_evaluation":
            self.recalibrate(trainer, pl_module)

    def recalibrate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Re-calibrate the policy network now (nothing when turned off or the buffer is empty) and log it."""
        steps = pl_module.env_steps
        if self.unusable_reason is not None or len(pl_module.replay_buffer) == 0:
            return
        self.last_env_steps = steps
        network = pl_module.policy_network
        device = next(network.parameters()).device
        report = recalibrate_bn(network, self.draw(pl_module.replay_buffer, device), mode=self.mode)
        self.recalibrations += 1
        metrics = {f"recalibration/stat_error/{name}": layer.stat_error for name, layer in report.layers.items()}
        log_event(trainer, {**metrics, "recalibration/seconds": report.seconds}, steps)

    def draw(self, buffer: ReplayBufferLike, device: torch.device) -> list[Tensor]:
        """``num_batches`` batches of ``batch_size`` observations, drawn uniformly with replacement.

        Indexes the buffer directly rather than calling ``buffer.sample``, whose sampler may be prioritized
        or return fewer states than asked (sampling without replacement from a smaller buffer)."""
        indices = torch.randint(len(buffer), (self.num_batches * self.batch_size,))
        states = buffer[indices]["observation"].float().to(device)
        return list(states.reshape(self.num_batches, self.batch_size, *states.shape[1:]).unbind(0))

    def state_dict(self) -> dict[str, Any]:
        return {"last_env_steps": self.last_env_steps, "recalibrations": self.recalibrations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_env_steps = state_dict.get("last_env_steps", 0)
        self.recalibrations = state_dict.get("recalibrations", 0)
