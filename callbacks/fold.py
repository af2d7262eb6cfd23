"""FoldNormalization: evaluate the folded inference model alongside the trained one, export it at fit end."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from spikenorm.fold import FoldedModel, check_equivalence, fold_model, save_folded

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class FoldNormalization(Callback):
    """Fold every norm layer (:func:`spikenorm.fold.fold_model`) and check the folded model as you train.

    At every ``every_n_epochs``-th validation (and at every test) the current model is folded once, and each
    batch runs through both models (:func:`spikenorm.fold.check_equivalence`). Logged:

    * ``val/acc_folded`` (``test/acc_folded``): accuracy of the folded model;
    * ``fold/flipped_spikes`` (``fold/test_flipped_spikes``): spikes that differ, summed over the epoch;
    * ``fold/max_abs_diff`` (``fold/test_max_abs_diff``): largest output difference.

    The check runs in ``check_dtype``: ``float64`` (default) tests the fold itself, free of float32
    rounding, and an exact fold then flips no spike; ``float32`` measures the deployed precision. At fit
    end the folded model of the final weights is written next to the checkpoints as ``<filename>.pt``
    (:func:`spikenorm.fold.save_folded`'s format, which loads without running code from the file: load it
    with :func:`spikenorm.fold.load_folded`) and, when ``export`` is set and it succeeds, ``<filename>.pt2``
    (``torch.export``, dynamic batch size; load with ``torch.export.load``, which falls back to unpickling
    when a file is not plain weights, so load ``.pt2`` files only from sources you trust).

    At setup the network is folded (and, when it is saved at fit end, written to memory in that format) once,
    so a model that cannot be folded or saved fails before the first step, with the reason.

    The LightningModule must hold its network as ``model`` and may encode batches with ``encode(x)``
    (as :class:`~spikenorm.tasks.SpikingClassifier` does); batches are ``(x, y)``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        check_dtype: Literal["float32", "float64"] = "float64",
        save_on_fit_end: bool = True,
        export: bool = True,
        filename: str = "folded_model",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if check_dtype not in _DTYPES:
            raise ValueError(f"check_dtype must be one of {sorted(_DTYPES)}, got {check_dtype!r}")
        self.every_n_epochs = every_n_epochs
        self.check_dtype = check_dtype
        self.save_on_fit_end = save_on_fit_end
        self.export = export
        self.filename = filename
        self._pair: tuple[nn.Module, FoldedModel] | None = None
        self._example: Tensor | None = None
        self.saved_paths: list[Path] = []

    # -- checking ---------------------------------------------------------------------------------------
    @staticmethod
    def _network(pl_module: LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"FoldNormalization needs the LightningModule to hold its network as `model`; "
                f"{type(pl_module).__name__} has none"
            )
        return model

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = self._network(pl_module)
        try:
            folded = fold_model(network)
            if stage == "fit" and self.save_on_fit_end:
                save_folded(folded, io.BytesIO())
        except (TypeError, ValueError) as err:
            raise type(err)(f"FoldNormalization cannot fold and save {type(network).__name__}: {err}") from err

    def _start(self, pl_module: LightningModule) -> None:
        reference = copy.deepcopy(self._network(pl_module)).to(_DTYPES[self.check_dtype]).eval()
        self._pair = (reference, fold_model(reference))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        self._pair = None
        if due and not trainer.sanity_checking:
            self._start(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def _check_batch(self, pl_module: LightningModule, batch: Any, stage: str) -> None:
        if self._pair is None:
            return
        x, y = batch[0], batch[1]
        encode = getattr(pl_module, "encode", None)
        inputs = encode(x) if callable(encode) else x
        if self._example is None:
            self._example = inputs[:, :1].detach().clone()
        reference, folded = self._pair
        report = check_equivalence(reference, folded, inputs.to(_DTYPES[self.check_dtype]))
        accuracy = (report.folded_output.mean(0).argmax(-1) == y).double().mean()
        prefix = "fold/" if stage == "val" else "fold/test_"
        size = len(y)
        pl_module.log(f"{stage}/acc_folded", accuracy.float(), batch_size=size, sync_dist=True)
        pl_module.log(f"{prefix}flipped_spikes", float(report.flipped_spikes), reduce_fx="sum", batch_size=size,
                      sync_dist=True)
        pl_module.log(f"{prefix}max_abs_diff", report.max_abs_diff, reduce_fx="max", batch_size=size, sync_dist=True)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check_batch(pl_module, batch, "val")

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check_batch(pl_module, batch, "test")

    # -- export -------------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.save_on_fit_end or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        folded = fold_model(self._network(pl_module))
        checkpoint = trainer.checkpoint_callback
        directory = Path(getattr(checkpoint, "dirpath", None) or trainer.default_root_dir)
        self.saved_paths = [save_folded(folded, directory / f"{self.filename}.pt")]
        if self.export and self._example is not None:
            self._export(folded, directory / f"{self.filename}.pt2")
        rank_zero_info(f"FoldNormalization: folded inference model written to {', '.join(map(str, self.saved_paths))}")

    def _export(self, folded: FoldedModel, path: Path) -> None:
        example = self._example.to(next(folded.parameters()).dtype)
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(folded, (example.expand(-1, 2, *example.shape[2:]).contiguous(),),
                                          dynamic_shapes={"x": {1: batch}}, strict=False)
            torch.export.save(program, path)
        except Exception as err:  # export support varies by model and torch version: keep the .pt file
            rank_zero_warn(f"FoldNormalization: torch.export of the folded model failed ({err}); kept {self.saved_paths[0]}")
            return
        self.saved_paths.append(path)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_paths": [str(p) for p in self.saved_paths]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_paths = [Path(p) for p in state_dict.get("saved_paths", [])]
