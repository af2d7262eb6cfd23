"""EnergyMonitor: synaptic operations, MACs and energy per sample of the model (and of its folded form)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from spikenorm.callbacks.batches import batch_inputs, batch_samples, model_inputs
from spikenorm.callbacks.evaluation_batches import EvaluationBatchCallback, EvaluationStage
from spikenorm.callbacks.schedules import check_every_n_epochs, validation_due
from spikenorm.callbacks.task_network import held_network, monitored_network
from spikenorm.callbacks.task_protocols import TimeStepsTask
from spikenorm.energy import EnergyCosts, EnergyReport, OpCounter
from spikenorm.fold import fold_model
from spikenorm.interop import check_neuron_types, neuron_library
from spikenorm.module_names import excluded
from spikenorm.monitoring import recognised_neurons
from spikenorm.neurons import SpikingNeuron
from spikenorm.norm import TimeMajorNorm


class EnergyMonitor(EvaluationBatchCallback):
    """Count SOPs and MACs (:class:`spikenorm.energy.OpCounter`) during validation and log energy per sample.

    ``E = E_MAC * MACs + E_AC * SOPs`` per sample (see :mod:`spikenorm.energy` for what counts as which, and
    what is not counted). The live model is ``pl_module.model`` (or the LightningModule itself without its
    ``teacher``). The folded model is ``pl_module.model`` (a :class:`~spikenorm.callbacks.task_protocols.NetworkTask`)
    folded once per monitored epoch (:func:`spikenorm.fold.fold_model`, which works on a copy) and run on the
    same validation batches (encoded with ``pl_module.encode(x)`` when the module is an
    :class:`~spikenorm.callbacks.task_protocols.EncodingTask`, batches ``(x, ...)``). Whether it can be folded is
    checked at setup: ``folded=None`` (default) counts it when it folds and otherwise warns once, at setup, with
    the reason (no ``model``, no spikenorm layer to fold, or what :func:`~spikenorm.fold.fold_model` raised);
    ``folded=True`` requires it and raises that reason at setup; ``folded=False`` never folds. Counts are summed
    over processes (DDP).

    Logged per sample (the folded model's with the suffix ``_folded``: ``energy/uj_folded``, ...):

    * ``energy/sops``, ``energy/macs``, ``energy/uj`` (µJ);
    * ``energy/ann_uj``: the same synaptic layers as an ANN (one dense step), when ``T`` is known
      (``time_steps``, else an integer ``pl_module.time_steps``, as a
      :class:`~spikenorm.callbacks.task_protocols.TimeStepsTask` offers);
    * ``energy/uj/<layer>``, ``energy/sops/<layer>``, ``energy/macs/<layer>`` with ``per_layer``.

    Args:
        e_ac_pj: energy of one accumulate (SOP) in pJ (45 nm: 0.9).
        e_mac_pj: energy of one multiply-accumulate in pJ (45 nm: 4.6).
        folded: also count the folded inference model: None when it can be folded, True always (else an
            error at setup), False never.
        every_n_epochs: monitor every n-th validation epoch of a fit (every ``trainer.validate`` is monitored).
        per_layer: log per-layer numbers too.
        time_steps: ``T`` of a validation forward, for the ANN reference; None reads ``pl_module.time_steps``.
        neuron_types: neuron classes of your own that the model uses, e.g. ``[MyLIF]`` (YAML: import paths).
            They only tell the setup check that the model spikes (synaptic operations are counted from the
            0/1 inputs of every layer, whatever produced them); the counts do not change.

    Raises:
        ValueError: a negative (or NaN/infinite) energy, ``every_n_epochs < 1``, ``time_steps < 1``; at setup
            (before any step of fit, validate, test or predict), a model without a spiking neuron it recognises
            (see ``neuron_types``), without Linear, Conv or norm layers, or, with ``folded=True``, one that
            cannot be folded.
        TypeError: ``neuron_types`` lists something that is not an ``nn.Module`` class.
    """

    def __init__(
        self,
        e_ac_pj: float = 0.9,
        e_mac_pj: float = 4.6,
        folded: bool | None = None,
        every_n_epochs: int = 1,
        per_layer: bool = False,
        time_steps: int | None = None,
        neuron_types: Sequence[type[nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        self.costs = EnergyCosts(e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
        self.folded = folded
        self.neuron_types = check_neuron_types(neuron_types)
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.per_layer = per_layer
        if time_steps is not None and time_steps < 1:
            raise ValueError(f"time_steps must be >= 1 or None, got {time_steps}")
        self.time_steps = time_steps
        self._live: OpCounter | None = None
        self._folded: tuple[nn.Module, OpCounter] | None = None
        self._fold_off = folded is False  # set at setup when the model cannot be folded (folded=None)
        self._fold_warned = False

    # -- counting -----------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Fail (or, for the optional folded model, warn) here rather than after an epoch of training."""
        network, exclude = monitored_network(pl_module)
        recognised_neurons(network, exclude, self.neuron_types)
        OpCounter(network, exclude)
        if self.folded is False:
            return
        _, reason = _fold_monitored_model(pl_module)
        if reason is None:
            self._fold_off = False
        elif self.folded:
            raise ValueError(
                f"EnergyMonitor(folded=True): {reason}. Pass folded=None to count the folded model only when "
                "it can be folded, or folded=False"
            )
        else:
            self._fold_off = True
            self._warn_unfoldable(reason)

    def _warn_unfoldable(self, reason: str) -> None:
        if not self._fold_warned:
            rank_zero_warn(f"EnergyMonitor: no *_folded energy numbers: {reason}")
            self._fold_warned = True

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()
        if not validation_due(trainer, self.every_n_epochs):
            return
        if not self._fold_off:  # before the live counter's hooks exist, so that the folded copy has none
            folded, reason = _fold_monitored_model(pl_module)
            if folded is None:
                self._warn_unfoldable(reason)
            else:
                self._folded = folded, OpCounter(folded)
        network, exclude = monitored_network(pl_module)
        self._live = OpCounter(network, exclude).start()

    def on_evaluation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, stage: EvaluationStage
    ) -> None:
        if stage != "val" or self._live is None:
            return
        samples = batch_samples(batch)
        self._live.add_samples(samples)
        if self._folded is not None:
            folded, counter = self._folded
            with torch.no_grad(), counter:
                folded(model_inputs(pl_module, batch_inputs(batch)))
            counter.add_samples(samples)

    # -- reporting ----------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        live, folded = self._release()
        if live is None:
            return
        steps = self.time_steps
        if steps is None and isinstance(pl_module, TimeStepsTask) and isinstance(pl_module.time_steps, int):
            steps = pl_module.time_steps
        for suffix, counter in (("", live), ("_folded", folded)):
            if counter is None:
                continue
            counter.all_reduce()
            if counter.samples == 0:
                rank_zero_warn(
                    f"EnergyMonitor: no validation samples were counted for the {'folded' if suffix else 'live'} model"
                )
                continue
            for key, value in self._metrics(counter.report(self.costs, steps), suffix).items():
                # identical on every rank after all_reduce, so their mean over ranks (sync_dist) is the value itself
                pl_module.log(key, value, sync_dist=True)

    def _metrics(self, report: EnergyReport, suffix: str) -> dict[str, float]:
        """``energy/<metric><suffix>`` per sample, and with ``per_layer`` ``energy/<metric><suffix>/<layer>``."""
        totals = {"sops": report.sops, "macs": report.macs, "uj": report.energy_uj}
        if report.ann_energy_pj is not None:
            totals["ann_uj"] = report.ann_energy_pj * 1e-6
        metrics = {f"energy/{name}{suffix}": value for name, value in totals.items()}
        if self.per_layer:
            for layer, energy_pj in report.layer_energy_pj().items():
                metrics[f"energy/uj{suffix}/{layer}"] = energy_pj * 1e-6
                metrics[f"energy/sops{suffix}/{layer}"] = report.layers[layer].sops
                metrics[f"energy/macs{suffix}/{layer}"] = report.layers[layer].macs
        return metrics

    def _release(self) -> tuple[OpCounter | None, OpCounter | None]:
        """Detach the counters (if any) and hand them over: ``(live, folded)``."""
        live, folded = self._live, self._folded[1] if self._folded is not None else None
        self._live, self._folded = None, None
        for counter in (live, folded):
            if counter is not None:
                counter.stop()
        return live, folded

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()


def _fold_monitored_model(pl_module: LightningModule) -> tuple[nn.Module | None, str | None]:
    """``(fold_model(pl_module.model), None)``, or ``(None, why it cannot be folded)``.

    The reasons, in the order they are checked: the monitored network has no spikenorm neuron or norm layer
    (fold_model folds spikenorm layers only; the neurons found are named), the LightningModule keeps its
    network elsewhere than ``model`` (the folded copy is run where ``pl_module.model`` would be), or the
    text of the error :func:`~spikenorm.fold.fold_model` raised.
    """
    network, exclude = monitored_network(pl_module)
    modules = [(name, m) for name, m in network.named_modules() if not excluded(name, exclude)]
    if not any(isinstance(m, (SpikingNeuron, TimeMajorNorm)) for _, m in modules):
        neurons = [f"{name} ({neuron_library(m)} {type(m).__name__})" for name, m in modules if neuron_library(m)]
        found = f"; its neurons are {', '.join(neurons[:3])}{', ...' if len(neurons) > 3 else ''}" if neurons else ""
        return None, (
            f"{type(network).__name__} holds no spikenorm network to fold (no spikenorm neuron or norm layer{found}); "
            "spikenorm.fold.fold_model folds spikenorm layers only"
        )
    model = held_network(pl_module)
    if model is None:
        return None, (
            f"{type(pl_module).__name__} has no `model` attribute; EnergyMonitor folds and runs pl_module.model"
        )
    try:
        return fold_model(model), None
    except (ValueError, TypeError) as err:
        return None, f"spikenorm.fold.fold_model({type(model).__name__}) raised {type(err).__name__}: {err}"
