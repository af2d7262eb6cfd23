"""BNRecalibration: exact, SNN-aware BN statistics for any LightningModule (spikenorm, snnTorch, SpikingJelly)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from spikenorm.callbacks.batches import batch_inputs
from spikenorm.callbacks.schedules import check_every_n_epochs, epoch_due, validation_due
from spikenorm.callbacks.task_network import held_network, task_module
from spikenorm.callbacks.task_protocols import TimeStepsTask
from spikenorm.modes import eval_mode
from spikenorm.recalibrate import (
    RecalibrationMode,
    RecalibrationReport,
    check_resettable,
    recalibrate_bn,
    statistics_layers,
)
from spikenorm.validation import check_choice

BatchForward = Callable[[LightningModule, Any], Any]


def forward_inputs(pl_module: LightningModule, batch: Any) -> Any:
    """The default forward: ``pl_module(x)`` for ``(x, y, ...)`` batches, ``pl_module(batch)`` otherwise."""
    return pl_module(batch_inputs(batch))


class BNRecalibration(Callback):
    """Re-compute the running statistics of every BN layer from training batches before it is evaluated.

    Running statistics estimated by an EMA during training lag behind the weights and, in SNNs, are
    often wrong for more reasons: membranes leak across batches, BN layers reused at every time step get
    ``T`` EMA updates per batch, and MPBN normalises inside the neuron. This callback replaces them with
    the exact statistics of :func:`spikenorm.recalibrate.recalibrate_bn`: pooled over batch and time in
    float64 over ``num_batches`` training batches, neuron state reset before every batch (spikenorm,
    snnTorch ``reset_mem``, SpikingJelly ``reset``), every spikenorm norm layer and torch ``_BatchNorm`` /
    ``SyncBatchNorm`` covered, all-reduced across DDP processes (each process draws its own batches, so the
    statistics are those of the union), train/eval flags restored.

    When: before validation (``on_validation_epoch_start``, not during the sanity check) every
    ``every_n_epochs`` epochs, or at the end of those training epochs when ``before_validation=False``
    (for runs without validation), and once more at the end of training when ``at_train_end``, so the
    final model, tests and exports use statistics of the final weights.

    Data: a fresh loader over the trainer's training dataset with the training loader's batch size and
    collate function, shuffled with ``seed + epoch`` (a ``DistributedSampler`` under DDP), so the training
    iterator is never disturbed; pass ``dataloader`` to use your own instead.

    Checks before the first training step: at setup, that the network exists and has BN layers with running
    statistics; when training starts, that the loader gives ``num_batches`` batches on every process and that
    no module keeps state the resets miss (:func:`~spikenorm.recalibrate.check_resettable`: two forwards of
    one batch; pass ``reset_fn`` for your own neurons).

    Cost, in passes over the ``num_batches`` batches: ``mode="single_pass"`` one; ``mode="exact"`` one per BN
    layer (each stopping at its layer), and up to 10 more per MPBN membrane norm, whose statistics are found by
    fixed-point passes (:mod:`spikenorm.recalibrate`). Choose ``num_batches`` and ``every_n_epochs`` with that
    in mind; the measured costs are on the recalibration benchmark page (``docs/benchmarks/recalibration.md``).

    Logged per recalibration, at the trainer's global step: ``recalibration/seconds`` and, per layer,
    ``recalibration/mean_shift/<layer>`` (mean |change| of the running mean), ``recalibration/var_shift/<layer>``
    and ``recalibration/stat_error/<layer>`` (mean W2 distance between the old and new per-feature Gaussians).

    Args:
        num_batches: training batches pooled per recalibration (>= 1).
        every_n_epochs: recalibrate in every ``every_n_epochs``-th epoch.
        before_validation: schedule on validation (True) or at train epoch end (False).
        at_train_end: recalibrate once more when training ends.
        mode: ``"exact"`` (layer by layer, each layer's statistics from inputs normalised by the layers before it)
            or ``"single_pass"`` (every layer in one pass); see
            :mod:`spikenorm.recalibrate`.
        forward: ``forward(pl_module, batch)`` running the network on a batch; defaults to
            ``pl_module(batch[0])`` (``pl_module(batch)`` for non-sequence batches).
        module: attribute of the LightningModule holding the network whose BN layers are recalibrated;
            default ``"model"`` when it exists, else the whole LightningModule.
        dataloader: batches to draw from instead of the trainer's training dataset.
        seed: seed of the batch draw.
        log_layers: log the per-layer shifts (the totals are always logged).
        reset_fn: ``reset_fn(network)`` clears the state of neurons spikenorm does not know (your own module
            keeping ``self.v``), called before every batch after the built-in resets
            (:func:`~spikenorm.recalibrate.recalibrate_bn`, which refuses such state when it is not cleared).
    """

    def __init__(
        self,
        num_batches: int = 20,
        every_n_epochs: int = 1,
        before_validation: bool = True,
        at_train_end: bool = True,
        mode: RecalibrationMode = "exact",
        forward: BatchForward | None = None,
        module: str | None = None,
        dataloader: DataLoader | None = None,
        seed: int = 0,
        log_layers: bool = True,
        reset_fn: Callable[[nn.Module], None] | None = None,
    ) -> None:
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        check_choice(mode, RecalibrationMode, "recalibration mode")
        self.num_batches = num_batches
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.before_validation = before_validation
        self.at_train_end = at_train_end
        self.mode = mode
        self.forward = forward or forward_inputs
        self.module = module
        self.dataloader = dataloader
        self.seed = seed
        self.log_layers = log_layers
        self.reset_fn = reset_fn
        self.last_report: RecalibrationReport | None = None
        self.recalibrations = 0

    # -- checks before training ---------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = self.network(pl_module)
        if not statistics_layers(network):
            raise ValueError(
                f"BNRecalibration: {type(network).__name__} has no BN layer with running statistics to recalibrate "
                "(looked for spikenorm norm layers and torch _BatchNorm layers with track_running_stats=True); "
                "remove the callback, or point `module=` at the network that has them"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = self.recalibration_loader(trainer)
        self._check_length(loader)
        if loader in _flatten_loaders(trainer.train_dataloader):
            return  # the training loader itself (a stream): drawing a batch now would consume or restart it
        batch = pl_module.transfer_batch_to_device(next(iter(loader)), pl_module.device, 0)
        check_resettable(
            self.network(pl_module), batch, forward=lambda _, b: self.forward(pl_module, b), reset_fn=self.reset_fn
        )

    def _check_length(self, loader: DataLoader) -> None:
        available = _length(loader)
        if available is not None and available < self.num_batches:
            raise ValueError(
                f"BNRecalibration(num_batches={self.num_batches}): the training data gives only {available} "
                "batch(es) on this process" + ("; it is empty" if available == 0 else "; lower num_batches")
            )

    # -- scheduling -------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if self.before_validation and fitting and validation_due(trainer, self.every_n_epochs):
            self.recalibrate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.before_validation and epoch_due(trainer, self.every_n_epochs):
            self.recalibrate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_train_end:
            self.recalibrate(trainer, pl_module)

    # -- work -------------------------------------------------------------------------------------------
    def network(self, pl_module: LightningModule) -> nn.Module:
        """The module whose BN layers are recalibrated: ``module``, else ``model``, else the LightningModule."""
        if self.module is not None:
            return task_module(pl_module, self.module, f"BNRecalibration(module={self.module!r})")
        network = held_network(pl_module)
        return pl_module if network is None else network

    def recalibration_loader(self, trainer: Trainer) -> DataLoader:
        """The loader the batches are drawn from (see the class doc)."""
        if self.dataloader is not None:
            return self.dataloader
        loaders = _flatten_loaders(trainer.train_dataloader)
        if not loaders:
            raise ValueError("BNRecalibration found no training DataLoader; pass `dataloader=` explicitly")
        loader = loaders[0]
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            return loader  # no index sampler to replace: use it as it is
        seed = self.seed + trainer.current_epoch
        if trainer.world_size > 1:
            sampler = DistributedSampler(
                loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True, seed=seed
            )
        else:
            sampler = RandomSampler(loader.dataset, generator=torch.Generator().manual_seed(seed))
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn, num_workers=0
        )

    def recalibrate(self, trainer: Trainer, pl_module: LightningModule) -> RecalibrationReport:
        """Recalibrate now; returns the report (also kept as ``last_report``)."""
        loader = self.recalibration_loader(trainer)
        self._check_length(loader)
        batches = (pl_module.transfer_batch_to_device(batch, pl_module.device, 0) for batch in loader)
        with eval_mode(pl_module):
            report = recalibrate_bn(
                self.network(pl_module),
                batches,
                forward=lambda _, batch: self.forward(pl_module, batch),
                mode=self.mode,
                num_batches=self.num_batches,
                reset_fn=self.reset_fn,
                time_steps=pl_module.time_steps if isinstance(pl_module, TimeStepsTask) else None,
            )
        self.last_report = report
        self.recalibrations += 1
        self._log(trainer, report)
        rank_zero_info(
            f"BNRecalibration: {len(report.layers)} BN layers from {report.batches} batches in {report.seconds:.2f} s"
        )
        return report

    def _log(self, trainer: Trainer, report: RecalibrationReport) -> None:
        metrics = {"recalibration/seconds": report.seconds}
        if self.log_layers:
            for name, layer in report.layers.items():
                metrics.update(
                    {
                        f"recalibration/mean_shift/{name}": layer.mean_shift,
                        f"recalibration/var_shift/{name}": layer.var_shift,
                        f"recalibration/stat_error/{name}": layer.stat_error,
                    }
                )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"recalibrations": self.recalibrations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recalibrations = state_dict.get("recalibrations", 0)


def _flatten_loaders(source: Any) -> list[DataLoader]:
    """The DataLoaders inside whatever ``trainer.train_dataloader`` holds (a loader, a CombinedLoader,
    or a sequence or mapping of loaders)."""
    if isinstance(source, DataLoader):
        return [source]
    if hasattr(source, "flattened"):
        return [d for d in source.flattened if isinstance(d, DataLoader)]
    if isinstance(source, dict):
        source = list(source.values())
    if isinstance(source, (list, tuple)):
        return [d for item in source for d in _flatten_loaders(item)]
    return []


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an IterableDataset without a length
        return None
