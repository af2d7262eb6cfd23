"""PackedBinaryExport: write the binary-weight network in its packed 1-bit form at fit end and check it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from spikenorm.binary import binary_layers
from spikenorm.binary_packing import ModelSize, load_packed, model_size, save_packed
from spikenorm.callbacks.batches import batch_inputs, model_inputs
from spikenorm.callbacks.output_folders import output_folder
from spikenorm.callbacks.task_network import task_network
from spikenorm.modes import eval_mode

#: samples of the first training batch kept to check the reloaded model on
CHECK_SAMPLES = 8


class PackedBinaryExport(Callback):
    """At fit end, save ``pl_module.model`` packed (:func:`spikenorm.binary_packing.save_packed`: 1 bit per
    binary weight plus the per-channel ``alpha``) as ``<filename>.pt`` next to the checkpoints, reload it into a
    copy of the network (:func:`spikenorm.binary_packing.load_packed`) and check that the copy gives the same
    outputs on the inputs of the first training batch (kept when training starts, so no datamodule is needed). Reports
    (and keeps in ``size`` / ``max_abs_diff``) the storage against float32 and the largest output difference
    (0 when the round trip is exact).

    The LightningModule must be a :class:`~spikenorm.callbacks.task_protocols.NetworkTask` (its network as ``model``,
    with binary layers, e.g. ``binary_weights: true``) and may encode batches with ``encode(x)``, as
    :class:`~spikenorm.tasks.SpikingClassifier` does.

    Args:
        filename: file name without the ``.pt`` suffix.
        dirpath: output folder; by default the checkpoint folder, else the trainer's ``default_root_dir``.
    """

    def __init__(self, filename: str = "binary_packed", dirpath: str | None = None) -> None:
        super().__init__()
        self.filename = filename
        self.dirpath = dirpath
        self.path: Path | None = None
        self.size: ModelSize | None = None
        self.max_abs_diff: float | None = None
        self._inputs: Tensor | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = task_network(pl_module, "PackedBinaryExport")
        if not binary_layers(network):
            raise ValueError(
                "PackedBinaryExport needs a LightningModule whose `model` has binary-weight layers "
                "(build it with binary_weights=True or spikenorm.binary.binarize_model)"
            )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._inputs is None:
            inputs = batch_inputs(batch)
            if not isinstance(inputs, Tensor):
                raise TypeError(
                    f"PackedBinaryExport checks the reloaded model on the first training batch's inputs: "
                    f"expected a tensor or (inputs, targets), got {type(inputs).__name__}"
                )
            self._inputs = inputs[:CHECK_SAMPLES].detach().cpu().clone()  # a few samples, off the accelerator

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        network = pl_module.model
        self.path = save_packed(network, output_folder(trainer, self.dirpath) / f"{self.filename}.pt")
        self.size = model_size(network)
        restored = load_packed(copy.deepcopy(network), self.path)
        if self._inputs is None:
            raise ValueError("PackedBinaryExport saw no training batch to check the reloaded model on")
        inputs = model_inputs(pl_module, self._inputs.to(pl_module.device))
        restored.eval()
        with eval_mode(network), torch.no_grad():
            self.max_abs_diff = float((network(inputs) - restored(inputs)).abs().max())
        rank_zero_info(f"PackedBinaryExport: {self.summary_line()}")

    def summary_line(self) -> str | None:
        """One line for the CLI's end-of-fit summary (None before the export ran)."""
        if self.size is None:
            return None
        return (
            f"{'packed model':<14} {self.path}: {self.size.binary_weights} 1-bit weights, "
            f"{self.size.packed_bytes} B packed vs {self.size.full_precision_bytes} B float32 "
            f"(ratio {self.size.ratio:.3f}); reloaded model max |output difference| {self.max_abs_diff:.3g}"
        )
