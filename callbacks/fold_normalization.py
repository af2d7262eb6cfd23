"""FoldNormalization: evaluate the folded inference model alongside the trained one, export it at fit end."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from spikenorm.callbacks.plumbing import (
    EvaluationBatchCallback,
    EvaluationStage,
    NetworkTask,
    check_every_n_epochs,
    model_inputs,
    output_folder,
    task_network,
    validation_due,
)
from spikenorm.fold import FoldedModel, check_equivalence, fold_model, save_folded

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class FoldNormalization(EvaluationBatchCallback):
    """Fold every norm layer (:func:`spikenorm.fold.fold_model`) and check the folded model as you train.

    At every ``every_n_epochs``-th validation of a fit, every ``trainer.validate`` and every test, the current
    model is folded once, and each batch runs through both models (:func:`spikenorm.fold.check_equivalence`).
    Logged, under ``val/`` in validation and ``test/`` in test:

    * ``val/acc_folded``: accuracy of the folded model;
    * ``val/flipped_spikes_folded``: spikes of the folded model that differ from the trained one's, summed over
      the epoch;
    * ``val/max_abs_diff_folded``: largest difference between the two models' outputs.

    The check runs in ``check_dtype``: ``float64`` (default) tests the fold itself, free of float32
    rounding, and an exact fold then flips no spike; ``float32`` measures the deployed precision. At fit
    end the folded model of the final weights is written next to the checkpoints as ``<filename>.pt``
    (:func:`spikenorm.fold.save_folded`'s format, which loads without running code from the file: load it
    with :func:`spikenorm.fold.load_folded`) and, when ``export`` is set and it succeeds, ``<filename>.pt2``
    (``torch.export``, dynamic batch size; load with ``torch.export.load``, which falls back to unpickling
    when a file is not plain weights, so load ``.pt2`` files only from sources you trust).

    At setup the network is folded (and, when it is saved at fit end, written to memory in that format) once,
    so a model that cannot be folded or saved fails before the first step, with the reason.

    The LightningModule must be a :class:`~spikenorm.callbacks.plumbing.NetworkTask` (its network as
    ``model``) and may encode batches with ``encode(x)`` (a
    :class:`~spikenorm.callbacks.plumbing.ClassificationTaskLike` such as
    :class:`~spikenorm.tasks.SpikingClassifier`); batches are ``(x, y)``.

    Args:
        every_n_epochs: check every n-th validation epoch of a fit.
        check_dtype: the precision of the check.
        save_on_fit_end: write the folded model at fit end.
        export: also write the ``torch.export`` program.
        filename: file name without suffix.
        dirpath: output folder; by default the checkpoint folder, else the trainer's ``default_root_dir``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        check_dtype: Literal["float32", "float64"] = "float64",
        save_on_fit_end: bool = True,
        export: bool = True,
        filename: str = "folded_model",
        dirpath: str | None = None,
    ) -> None:
        super().__init__()
        if check_dtype not in _DTYPES:
            raise ValueError(f"check_dtype must be one of {sorted(_DTYPES)}, got {check_dtype!r}")
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.check_dtype = check_dtype
        self.save_on_fit_end = save_on_fit_end
        self.export = export
        self.filename = filename
        self.dirpath = dirpath
        self._pair: tuple[nn.Module, FoldedModel] | None = None
        self._example: Tensor | None = None
        self.saved_paths: list[Path] = []

    # -- checking ---------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = task_network(pl_module, "FoldNormalization")
        try:
            folded = fold_model(network)
            if stage == "fit" and self.save_on_fit_end:
                save_folded(folded, io.BytesIO())
        except (TypeError, ValueError) as err:
            raise type(err)(f"FoldNormalization cannot fold and save {type(network).__name__}: {err}") from err

    def _start(self, pl_module: NetworkTask) -> None:
        reference = copy.deepcopy(pl_module.model).to(_DTYPES[self.check_dtype]).eval()
        self._pair = (reference, fold_model(reference))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pair = None
        if validation_due(trainer, self.every_n_epochs):
            self._start(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_evaluation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, stage: EvaluationStage
    ) -> None:
        if self._pair is None:
            return
        x, y = batch[0], batch[1]
        inputs = model_inputs(pl_module, x)
        if self._example is None:
            self._example = inputs[:, :1].detach().clone()
        reference, folded = self._pair
        report = check_equivalence(reference, folded, inputs.to(_DTYPES[self.check_dtype]))
        accuracy = (report.folded_output.mean(0).argmax(-1) == y).double().mean()
        size = len(y)
        pl_module.log(f"{stage}/acc_folded", accuracy.float(), batch_size=size, sync_dist=True)
        pl_module.log(
            f"{stage}/flipped_spikes_folded",
            float(report.flipped_spikes),
            reduce_fx="sum",
            batch_size=size,
            sync_dist=True,
        )
        pl_module.log(
            f"{stage}/max_abs_diff_folded", report.max_abs_diff, reduce_fx="max", batch_size=size, sync_dist=True
        )

    # -- export -------------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.save_on_fit_end or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        folded = fold_model(pl_module.model)
        directory = output_folder(trainer, self.dirpath)
        self.saved_paths = [save_folded(folded, directory / f"{self.filename}.pt")]
        if self.export and self._example is not None:
            self._export(folded, directory / f"{self.filename}.pt2")
        rank_zero_info(f"FoldNormalization: folded inference model written to {', '.join(map(str, self.saved_paths))}")

    def _export(self, folded: FoldedModel, path: Path) -> None:
        example = self._example.to(next(folded.parameters()).dtype)
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(
                folded,
                (example.expand(-1, 2, *example.shape[2:]).contiguous(),),
                dynamic_shapes={"x": {1: batch}},
                strict=False,
            )
            torch.export.save(program, path)
        except Exception as err:  # export support varies by model and torch version: keep the .pt file
            rank_zero_warn(
                f"FoldNormalization: torch.export of the folded model failed ({err}); kept {self.saved_paths[0]}"
            )
            return
        self.saved_paths.append(path)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_paths": [str(p) for p in self.saved_paths]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_paths = [Path(p) for p in state_dict.get("saved_paths", [])]
