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

from spikenorm.callbacks.batches import model_inputs
from spikenorm.callbacks.evaluation_batches import EvaluationBatchCallback, EvaluationStage
from spikenorm.callbacks.output_folders import output_folder
from spikenorm.callbacks.schedules import check_every_n_epochs, validation_due
from spikenorm.callbacks.task_network import task_network
from spikenorm.callbacks.task_protocols import NetworkTask
from spikenorm.fold import FoldedModel, check_equivalence, fold_model, save_folded
from spikenorm.validation import check_choice

CheckDtype = Literal["float32", "float64"]
FoldWeights = Literal["best", "last"]
#: what a network that cannot be folded does to the run: stop it at setup, or a warning and no folding
Unfoldable = Literal["error", "warn"]
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
    rounding, and an exact fold then flips no spike; ``float32`` measures the deployed precision. Both models
    of the check run in that dtype, so under ``bf16-mixed`` its accuracy is the float64 model's, not the
    bf16 accuracy the task logs. At fit end the folded model of ``weights`` (by default the best checkpoint's:
    the weights ``spikenorm fit`` tests, so the files and the summary's numbers come from one set of weights;
    the final weights when no checkpoint was kept) is written next to the checkpoints as ``<filename>.pt``
    (:func:`spikenorm.fold.save_folded`'s format, which loads without running code from the file: load it
    with :func:`spikenorm.fold.load_folded`) and, when ``export`` is set and it succeeds, ``<filename>.pt2``
    (``torch.export``, dynamic batch size; load with ``torch.export.load``, which falls back to unpickling
    when a file is not plain weights, so load ``.pt2`` files only from sources you trust).

    At setup the network is folded (and, when it is saved at fit end, written to memory in that format) once,
    so a model that cannot be folded or saved fails before the first step, with the reason; with
    ``unfoldable="warn"`` it warns instead and the callback does nothing for that run (no check, no file), and
    the run's summary says "not foldable: <reason>". The recipes use ``"warn"``, so that comparing norms that
    do not fold (``bntt``, ``tebn``, ``tab``) is one flag.

    The LightningModule must be a :class:`~spikenorm.callbacks.task_protocols.NetworkTask` (its network as
    ``model``) and may encode batches with ``encode(x)`` (a
    :class:`~spikenorm.callbacks.task_protocols.ClassificationTaskLike` such as
    :class:`~spikenorm.tasks.SpikingClassifier`); batches are ``(x, y)``.

    Args:
        every_n_epochs: check every n-th validation epoch of a fit.
        check_dtype: the precision of the check.
        save_on_fit_end: write the folded model at fit end.
        export: also write the ``torch.export`` program.
        filename: file name without suffix.
        dirpath: output folder; by default the checkpoint folder, else the trainer's ``default_root_dir``.
        weights: ``"best"``: fold the best checkpoint of the trainer's ``ModelCheckpoint`` at fit end (the final
            weights when it kept none); ``"last"``: fold the final weights.
        unfoldable: ``"error"``: a network that cannot be folded (or saved) stops the run at setup; ``"warn"``:
            a warning, then nothing.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        check_dtype: CheckDtype = "float64",
        save_on_fit_end: bool = True,
        export: bool = True,
        filename: str = "folded_model",
        dirpath: str | None = None,
        weights: FoldWeights = "best",
        unfoldable: Unfoldable = "error",
    ) -> None:
        super().__init__()
        check_choice(check_dtype, CheckDtype, "check_dtype")
        check_choice(weights, FoldWeights, "weights")
        check_choice(unfoldable, Unfoldable, "unfoldable")
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.check_dtype = check_dtype
        self.save_on_fit_end = save_on_fit_end
        self.export = export
        self.filename = filename
        self.dirpath = dirpath
        self.weights = weights
        self.unfoldable = unfoldable
        self._pair: tuple[nn.Module, FoldedModel] | None = None
        self._example: Tensor | None = None
        self.saved_paths: list[Path] = []
        #: where the weights of the saved files came from (a checkpoint path, or "the final weights")
        self.folded_from: str | None = None
        #: why the network cannot be folded, when ``unfoldable="warn"`` let the run go on without folding
        self.not_foldable: str | None = None

    # -- checking ---------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = task_network(pl_module, "FoldNormalization")
        self.not_foldable = None
        try:
            folded = fold_model(network)
            if stage == "fit" and self.save_on_fit_end:
                save_folded(folded, io.BytesIO())
        except (TypeError, ValueError) as err:
            message = f"FoldNormalization cannot fold and save {type(network).__name__}: {err}"
            if self.unfoldable == "error":
                raise type(err)(message) from err
            self.not_foldable = str(err)
            rank_zero_warn(f"{message}. unfoldable='warn': this run is not folded.")

    def _start(self, pl_module: NetworkTask) -> None:
        if self.not_foldable is not None:
            self._pair = None
            return
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
        if self.not_foldable is not None:
            return
        folded = fold_model(self._weights_to_fold(trainer, pl_module))
        directory = output_folder(trainer, self.dirpath)
        self.saved_paths = [save_folded(folded, directory / f"{self.filename}.pt")]
        if self.export and self._example is not None:
            self._export(folded, directory / f"{self.filename}.pt2")
        rank_zero_info(f"FoldNormalization: {self.summary_line()}")

    def _weights_to_fold(self, trainer: Trainer, pl_module: LightningModule) -> nn.Module:
        """The network with the weights to fold: the best checkpoint's (``weights="best"`` and the trainer's
        ``ModelCheckpoint`` kept one), else the final weights; :attr:`folded_from` says which."""
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.weights == "best" else ""
        if not best:
            self.folded_from = "the final weights"
            return pl_module.model
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        network = copy.deepcopy(pl_module.model)
        network.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        self.folded_from = str(best)
        return network

    def summary_line(self) -> str | None:
        """What the CLI prints at the end of a run: the folded files and whose weights they hold, or why the
        network was not folded."""
        if self.not_foldable is not None:
            return f"{'folded model':<14} not foldable: {self.not_foldable}"
        if not self.saved_paths:
            return None
        return f"{'folded files':<14} {', '.join(map(str, self.saved_paths))} (weights: {self.folded_from})"

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
        return {"saved_paths": [str(p) for p in self.saved_paths], "folded_from": self.folded_from}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what a resumed fit wrote before; files this instance wrote since are kept (Lightning restores
        callbacks from the checkpoint a test loads, e.g. the best one after the fit that wrote the files)."""
        if self.saved_paths:
            return
        self.saved_paths = [Path(p) for p in state_dict.get("saved_paths", [])]
        self.folded_from = state_dict.get("folded_from")
