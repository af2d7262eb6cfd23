"""A callback base that handles validation and test batches alike, through one hook."""

from __future__ import annotations

from typing import Any, Callable, Literal

from lightning.pytorch import Callback, LightningModule, Trainer

EvaluationStage = Literal["val", "test"]


def _evaluation_batch_end(stage: EvaluationStage) -> Callable[..., None]:
    """Lightning's ``on_<stage>_batch_end`` hook, handing the batch to ``on_evaluation_batch_end``."""

    def hook(
        self: EvaluationBatchCallback,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.on_evaluation_batch_end(trainer, pl_module, batch, stage)

    return hook


class EvaluationBatchCallback(Callback):
    """A callback that handles validation and test batches alike: Lightning's ``on_validation_batch_end`` and
    ``on_test_batch_end`` both call :meth:`on_evaluation_batch_end` with the stage (``"val"`` or ``"test"``)."""

    def on_evaluation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, stage: EvaluationStage
    ) -> None:
        """Called after every validation and test batch; does nothing unless overridden."""

    on_validation_batch_end = _evaluation_batch_end("val")
    on_test_batch_end = _evaluation_batch_end("test")
