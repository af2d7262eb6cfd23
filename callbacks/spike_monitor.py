"""SpikeMonitor: firing rates, dead and saturated neurons of any spiking model during validation (and, per time step,
in test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from spikenorm.callbacks.schedules import check_every_n_epochs, validation_due
from spikenorm.callbacks.task_network import monitored_network
from spikenorm.interop import check_neuron_types
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.plots import firing_rate_heatmap


class SpikeMonitor(Callback):
    """Record every spiking neuron (spikenorm, snnTorch, SpikingJelly, or ``neuron_types``) of the model in validation.

    Recorded with :class:`spikenorm.monitoring.FiringRateRecorder` on ``pl_module.model`` (or, when the module
    has no ``model``, on the LightningModule itself without its ``teacher``). Every validation batch starts a
    new sequence, so single-step networks called once per time step from the module's own loop get step
    indices ``0..T-1`` like multi-step ones. At the end of the epoch the totals are summed over processes
    (DDP) and logged:

    * ``spikes/rate/<layer>``: spikes per neuron per step over the epoch; ``spikes/mean_rate``: their mean;
    * ``spikes/dead/<layer>``: fraction of neurons that never fired over the epoch;
    * ``spikes/saturated/<layer>``: fraction that fired at every step of every sample;
    * ``spikes/step_rate/<layer>/t<t>`` (``log_step_scalars``): the rate at step ``t``;
    * ``heatmap_key`` (``heatmap``, rank zero): the layers x steps heatmap
      (:func:`spikenorm.plots.firing_rate_heatmap`), to every W&B logger (``log_image``) and every logger whose
      ``experiment`` has ``add_figure`` (TensorBoard).

    With ``test_step_rates``, every test epoch is recorded too and logged as the shape of firing over time (Fig. 2b
    of Lin et al., "Online Spiking Renormalization and Threshold Stabilization", the OSR paper): with ``r_l(t)``
    layer ``l``'s step rate over the test epoch and ``L`` spiking layers,

    * ``test/spikes/step_rate/t<t>``: ``r(t) = (1/L) sum_l r_l(t)``, the step rate averaged over the layers;
    * ``test/spikes/first_step_ratio`` (``T > 1``): ``r(0) / ((1/(T-1)) sum_{t>0} r(t))``, below 1 when the first
      step fires less than the later ones.

    Args:
        every_n_epochs: record every n-th validation epoch of a fit (every ``trainer.validate`` is recorded).
        log_step_scalars: log the per-step rates as scalars.
        heatmap: log the heatmap figure.
        heatmap_key: the key (W&B) or tag (TensorBoard) of the heatmap.
        neuron_types: neuron classes of your own to record too, e.g. ``[MyLIF]`` (YAML: import paths,
            ``[mypackage.neurons.MyLIF]``); one call per time step unless the neuron has ``step_mode = "m"``.
        test_step_rates: also record every test epoch and log its per-step rates (see above).

    Raises:
        ValueError: ``every_n_epochs < 1``; at setup (before any step of fit, validate, test or predict), a
            model without a spiking neuron it recognises.
        TypeError: ``neuron_types`` lists something that is not an ``nn.Module`` class.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        log_step_scalars: bool = True,
        heatmap: bool = True,
        heatmap_key: str = "spikes/heatmap",
        neuron_types: Sequence[type[nn.Module]] | None = None,
        test_step_rates: bool = False,
    ) -> None:
        super().__init__()
        self.neuron_types = check_neuron_types(neuron_types)
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.log_step_scalars = log_step_scalars
        self.heatmap = heatmap
        self.heatmap_key = heatmap_key
        self.test_step_rates = test_step_rates
        self._recorder: FiringRateRecorder | None = None

    def _new_recorder(self, pl_module: LightningModule) -> FiringRateRecorder:
        network, exclude = monitored_network(pl_module)
        return FiringRateRecorder(network, sequence_on_forward=False, exclude=exclude, neuron_types=self.neuron_types)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._new_recorder(pl_module)  # fail at setup, not after an epoch of training, if there are no neurons

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        if validation_due(trainer, self.every_n_epochs):
            self._recorder = self._new_recorder(pl_module).start()

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._recorder is not None:
            self._recorder.new_sequence()

    def _recorded(self, stage: str) -> FiringRateRecorder | None:
        """The epoch's recorder, its counts summed over processes; None (with a warning where neurons were expected
        but none ran) when there is nothing to log."""
        recorder = self._release()
        if recorder is None:
            return None
        recorder.all_reduce()
        if not recorder.layer_rates():
            _warn_none_ran(recorder, stage)
            return None
        return recorder

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        recorder = self._recorded("validation")
        if recorder is None:
            return
        rates = recorder.layer_rates()
        metrics = {"spikes/mean_rate": recorder.mean_rate()}
        for prefix, values in (
            ("rate", rates),
            ("dead", recorder.dead_fractions()),
            ("saturated", recorder.saturated_fractions()),
        ):
            metrics.update({f"spikes/{prefix}/{layer}": value for layer, value in values.items()})
        step_rates = recorder.step_rates()
        if self.log_step_scalars:
            for layer, per_step in step_rates.items():
                metrics.update({f"spikes/step_rate/{layer}/t{t}": float(r) for t, r in enumerate(per_step)})
        for key, value in metrics.items():
            # identical on every rank after all_reduce, so their mean over ranks (sync_dist) is the value itself
            pl_module.log(key, value, sync_dist=True)
        if self.heatmap and trainer.is_global_zero:
            self._log_heatmap(trainer, step_rates)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        if self.test_step_rates:
            self._recorder = self._new_recorder(pl_module).start()

    on_test_batch_start = on_validation_batch_start  # a new sequence per batch, as in validation

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        recorder = self._recorded("test")
        if recorder is None:
            return
        step_rates = recorder.step_rates()
        mean = torch.stack(list(step_rates.values())).mean(0)  # [T]: the step rate averaged over the layers
        metrics = {f"test/spikes/step_rate/t{t}": float(r) for t, r in enumerate(mean)}
        if len(mean) > 1:
            metrics["test/spikes/first_step_ratio"] = float(mean[0] / mean[1:].mean())
        for key, value in metrics.items():
            pl_module.log(key, value, sync_dist=True)

    def _log_heatmap(self, trainer: Trainer, step_rates: dict[str, Tensor]) -> None:
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        writers = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")]
        if not wandb and not writers:
            return
        figure = firing_rate_heatmap(step_rates, title=f"firing rates, epoch {trainer.current_epoch}")
        for logger in wandb:
            logger.log_image(key=self.heatmap_key, images=[figure], step=trainer.global_step)
        for writer in writers:
            writer.add_figure(self.heatmap_key, figure, global_step=trainer.global_step, close=False)

    def _release(self) -> FiringRateRecorder | None:
        """Detach the current recorder (if any) from the model and hand it over."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.stop()
        return recorder

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()


def _warn_none_ran(recorder: FiringRateRecorder, loop: str) -> None:
    rank_zero_warn(
        f"SpikeMonitor recorded no spikes: none of the neurons of {type(recorder.model).__name__} ran during {loop}"
    )
