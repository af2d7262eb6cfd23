"""NormDiagnostics: statistics error, train/eval gap and membrane vs threshold of a model as it trains."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn

from spikenorm.callbacks.batches import batch_inputs, model_inputs
from spikenorm.callbacks.evaluation_batches import EvaluationBatchCallback, EvaluationStage
from spikenorm.callbacks.output_folders import output_folder
from spikenorm.callbacks.task_network import monitored_network
from spikenorm.callbacks.task_protocols import ReplayBufferLike, ReplayTaskLike, require_task
from spikenorm.diagnostics import AREA, NormDiagnosis, diagnose, stepwise_forward
from spikenorm.membrane import BIN_WIDTH, RANGE
from spikenorm.plots import diagnosis_figure
from spikenorm.run_dirs import free_path
from spikenorm.validation import check_choice

HISTOGRAM_BINS = round(2 * RANGE / BIN_WIDTH)
#: bins of the W&B membrane histograms (W&B accepts at most 512): the recorded bins merged in fours
WANDB_BINS = HISTOGRAM_BINS // 4
#: when a supervised task is diagnosed: at validations (of a fit, and ``trainer.validate``) and/or at tests
Stage = Literal["validate", "test"]
#: what the passes run: the task's network on the encoded inputs, or the task's own forward on the batch inputs
DiagnosisForward = Literal["network", "task"]


class NormDiagnostics(EvaluationBatchCallback):
    """Run :func:`spikenorm.diagnostics.diagnose` on the model as it trains and log what it measures.

    * Supervised tasks (a ``SpikingClassifier``, or any LightningModule with ``(x, y)`` batches): at every
      ``every_n_validations``-th validation of a fit and at every ``trainer.validate``, on the first
      ``num_batches`` validation batches of each process (encoded as the task encodes them), after the loop. A task
      trained online (an :class:`~spikenorm.tasks.OnlineTraining` part) gets the train pass it trains with: one step
      at a time (:func:`~spikenorm.diagnostics.stepwise_forward`). Logged with ``self.log`` at the trainer's global
      step. With ``"test"`` in ``stages``, also at every ``trainer.test`` (the CLI's post-fit test included), on the
      first ``num_batches`` test batches, logged as ``test/diagnostics/...``. With ``forward="task"`` both passes run
      the LightningModule's own forward on the batch inputs (a task of your own whose ``forward`` wraps its network
      ``self.model``, e.g. resets SpikingJelly state and repeats the image over time), while the layers measured are
      those of ``self.model``.
    * Online RL (a :class:`~spikenorm.callbacks.task_protocols.ReplayTaskLike` such as ``SpikingTD3``): every
      ``every_n_env_steps`` environment steps, on the policy network (TD3's actor, DQN's Q-network), with
      ``num_batches`` batches of ``batch_size`` states
      drawn uniformly from the ``recent`` newest replay-buffer states (the current policy's distribution, as
      CaRe-BN argues), ``output="actions"`` (a Q-network: ``"logits"``, whose top-1 agreement is the greedy-action
      agreement of the train and eval passes); logged at the env step (``spikenorm.rl.log_event``). The draw uses its
      own generator (seeded with the env step), so the training RNG is untouched. Place it before
      ``ReplayRecalibration`` in the callback list to measure the statistics before a re-calibration due at the
      same step.

    Logs the keys of :meth:`~spikenorm.diagnostics.NormDiagnosis.scalars` (area ``diagnostics``;
    docs/reference/log-keys.md), with ``per_step`` also the per-step ones; with ``histograms``, each spiking layer's
    ``(u - theta) / theta`` histogram to every W&B logger (``diagnostics/membrane/<layer>``, :data:`WANDB_BINS` bins
    of width 0.04 on ``[-10, 10]``, at the step of the scalars); with ``records``, the diagnosis as JSON
    (:meth:`~spikenorm.diagnostics.NormDiagnosis.to_dict` plus ``histograms``: per spiking layer the
    ``(u - theta) / theta`` counts summed over steps, :data:`HISTOGRAM_BINS` bins of width 0.01 on ``[-10, 10]``) in
    ``<run folder>/diagnostics/`` (or ``dirpath``), named as the PNGs; with ``plots``, a PNG
    per call (:func:`spikenorm.plots.diagnosis_figure`) in ``<run folder>/diagnostics/`` (the run's log folder, or
    ``dirpath``), named by epoch and step (or env step; ``test-step<n>`` at a test), never overwriting a file. Rank
    zero writes files.

    Read-only: a fit with this callback gives bit-identical weights to one without (``diagnose`` restores state,
    modes and RNG).

    Args:
        every_n_validations: diagnose every n-th validation of a fit (supervised).
        num_batches: batches per diagnosis (supervised: the first validation batches; RL: replay batches).
        every_n_env_steps: RL: diagnose every n environment steps.
        batch_size: RL: states per replay batch.
        recent: RL: draw from this many newest replay states.
        per_step: log the per-step scalars too.
        histograms: log membrane histograms to W&B.
        plots: write a PNG per call.
        records: write the diagnosis as JSON per call.
        stages: supervised: diagnose at validations (``"validate"``) and/or tests (``"test"``).
        forward: supervised: ``"network"`` (the task's network on the encoded inputs) or ``"task"`` (the task's own
            forward on the batch inputs).
        dirpath: the folder for the PNGs (default: the run's log folder).
        near: half width of the near-threshold band, relative to the threshold.

    Raises:
        ValueError: a count below 1, ``near`` outside ``(0, 10)``, an unknown stage or forward; at setup of an RL
            task, an actor that is not a module.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_batches: int = 4,
        every_n_env_steps: int = 5000,
        batch_size: int = 256,
        recent: int = 10000,
        per_step: bool = False,
        histograms: bool = True,
        plots: bool = True,
        dirpath: str | Path | None = None,
        near: float = 0.1,
        records: bool = False,
        stages: Sequence[Stage] = ("validate",),
        forward: DiagnosisForward = "network",
    ) -> None:
        super().__init__()
        for name, value in (
            ("every_n_validations", every_n_validations),
            ("num_batches", num_batches),
            ("every_n_env_steps", every_n_env_steps),
            ("batch_size", batch_size),
            ("recent", recent),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NormDiagnostics: {name} must be an integer >= 1, got {value!r}")
        if not 0 < near < RANGE:
            raise ValueError(f"NormDiagnostics: near must be in (0, {RANGE}), got {near}")
        for stage in stages:
            check_choice(stage, Stage, "NormDiagnostics stages entry")
        check_choice(forward, DiagnosisForward, "NormDiagnostics forward")
        self.every_n_validations = every_n_validations
        self.num_batches = num_batches
        self.every_n_env_steps = every_n_env_steps
        self.batch_size = batch_size
        self.recent = recent
        self.per_step = per_step
        self.histograms = histograms
        self.plots = plots
        self.dirpath = dirpath
        self.near = near
        self.records = records
        self.stages = tuple(stages)
        self.forward = forward
        self.validations = 0  # validations of fits seen (the schedule's counter, checkpointed)
        self.last_env_steps = 0
        self.calls = 0
        self.last: NormDiagnosis | None = None  # the latest diagnosis
        self._inputs: list[Any] | None = None  # validation inputs collected for a due diagnosis

    @property
    def state_key(self) -> str:
        """Keyed by the schedule, so that several instances (e.g. one before and one after ``ReplayRecalibration``
        at different rates) keep their own state in a checkpoint."""
        return self._generate_state_key(
            every_n_validations=self.every_n_validations, every_n_env_steps=self.every_n_env_steps
        )

    # -- supervised ------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._inputs = None
        if trainer.sanity_checking or isinstance(pl_module, ReplayTaskLike) or "validate" not in self.stages:
            return
        fitting = trainer.state.fn == "fit"
        if fitting:
            self.validations += 1
        if not fitting or self.validations % self.every_n_validations == 0:
            self._inputs = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._diagnose_collected(trainer, pl_module, "", f"epoch{trainer.current_epoch:03d}-step{trainer.global_step}")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._inputs = [] if "test" in self.stages and not isinstance(pl_module, ReplayTaskLike) else None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._diagnose_collected(trainer, pl_module, "test/", f"test-step{trainer.global_step}")

    def on_evaluation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, stage: EvaluationStage
    ) -> None:
        """Keep the batch's inputs (encoded, unless the task's own forward runs) while a diagnosis is due."""
        if self._inputs is not None and len(self._inputs) < self.num_batches:
            x = batch_inputs(batch)
            self._inputs.append((x if self.forward == "task" else model_inputs(pl_module, x)).detach())

    def _diagnose_collected(self, trainer: Trainer, pl_module: LightningModule, prefix: str, name: str) -> None:
        inputs, self._inputs = self._inputs, None
        if not inputs:
            return
        network, exclude = monitored_network(pl_module)
        online = getattr(pl_module, "training_mode", "bptt") == "online"
        diagnosis = diagnose(
            network,
            inputs,
            forward=(lambda model, x: pl_module(x)) if self.forward == "task" else None,
            train_forward=(lambda model, x: stepwise_forward(model, x)) if online else None,
            exclude=exclude,
            near=self.near,
        )
        for key, value in diagnosis.scalars(self.per_step).items():
            # identical on every rank (diagnose reduces over processes)
            pl_module.log(f"{prefix}{key}", value, sync_dist=True)
        self._publish(trainer, diagnosis, name)

    # -- online RL --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if isinstance(pl_module, ReplayTaskLike):
            require_task(pl_module, ReplayTaskLike, "NormDiagnostics")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(pl_module, ReplayTaskLike):
            return
        steps = pl_module.env_steps
        if steps - self.last_env_steps < self.every_n_env_steps or len(pl_module.replay_buffer) == 0:
            return
        self.last_env_steps = steps
        network: nn.Module = pl_module.policy_network
        device = next(network.parameters()).device
        batches = self.draw(pl_module.replay_buffer, steps, device)
        output = getattr(pl_module, "diagnosis_output", "actions")
        diagnosis = diagnose(network, batches, output=output, near=self.near)
        from spikenorm.rl import log_event  # the rl extra; only an RL task gets here

        log_event(trainer, diagnosis.scalars(self.per_step), steps)
        self._publish(trainer, diagnosis, f"env{steps}")

    def draw(self, buffer: ReplayBufferLike, seed: int, device: torch.device) -> list[Tensor]:
        """``num_batches`` batches of ``batch_size`` observations drawn uniformly, with replacement, from the
        ``recent`` newest states of ``buffer`` (:func:`spikenorm.rl.replay.newest_indices`), with a generator seeded
        with ``seed``."""
        from spikenorm.rl.replay import newest_indices  # the rl extra; only an RL task gets here

        window = newest_indices(buffer, self.recent)
        generator = torch.Generator().manual_seed(seed)
        offsets = torch.randint(len(window), (self.num_batches * self.batch_size,), generator=generator)
        states = buffer[window[offsets]]["observation"].float().to(device)
        return list(states.reshape(self.num_batches, self.batch_size, *states.shape[1:]).unbind(0))

    # -- output ---------------------------------------------------------------------------------------
    def _publish(self, trainer: Trainer, diagnosis: NormDiagnosis, name: str) -> None:
        self.last = diagnosis
        self.calls += 1
        if not trainer.is_global_zero:
            return
        if self.histograms and diagnosis.histograms:
            self._log_histograms(trainer, diagnosis)
        if not (self.plots or self.records) or not (diagnosis.neurons or diagnosis.layers):
            return
        folder = output_folder(trainer, self.dirpath, beside="logs") / ("" if self.dirpath else AREA)
        folder.mkdir(parents=True, exist_ok=True)
        if self.plots:
            path = free_path(folder / f"{name}.png")  # a resumed run never overwrites a figure
            diagnosis_figure(diagnosis, title=f"norm diagnostics, {name}").savefig(path, dpi=90)
        if self.records:
            record = diagnosis.to_dict()
            record["histograms"] = {layer: counts.sum(0).tolist() for layer, counts in diagnosis.histograms.items()}
            free_path(folder / f"{name}.json").write_text(json.dumps(record, allow_nan=True), encoding="utf-8")

    def _log_histograms(self, trainer: Trainer, diagnosis: NormDiagnosis) -> None:
        """Each spiking layer's histogram over all steps, its bins merged in fours (W&B takes at most 512), at the
        x value of the scalars: the env step (RL), or the step Lightning logs ``self.log`` values at."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        merged = HISTOGRAM_BINS // WANDB_BINS
        edges = torch.linspace(-RANGE, RANGE, WANDB_BINS + 1).numpy()
        rl_step = getattr(trainer.lightning_module, "env_steps", None)
        step = rl_step if rl_step is not None else trainer.fit_loop.epoch_loop._batches_that_stepped
        values = {
            f"{AREA}/membrane/{layer}": wandb.Histogram(
                np_histogram=(counts.sum(0).reshape(WANDB_BINS, merged).sum(1).numpy(), edges)
            )
            for layer, counts in diagnosis.histograms.items()
        }
        for logger in loggers:
            logger.log_metrics(values, step=int(step))

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "last_env_steps": self.last_env_steps, "calls": self.calls}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = state_dict.get("validations", 0)
        self.last_env_steps = state_dict.get("last_env_steps", 0)
        self.calls = state_dict.get("calls", 0)
