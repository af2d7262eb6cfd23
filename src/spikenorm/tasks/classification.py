"""Supervised classification of spiking models as a LightningModule."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from spikenorm.monitoring import FiringRateRecorder
from spikenorm.tasks.encoding import Encoding, encode
from spikenorm.tasks.losses import mean_logit_ce, tet_loss
from spikenorm.validation import check_finite


class SpikingClassifier(LightningModule):
    """Train and evaluate a spiking classifier on static images or event frames.

    The batch ``(x, y)`` is encoded at the boundary into ``[T, B, ...]`` (see
    :func:`spikenorm.tasks.encoding.encode`), the model returns per-step logits ``[T, B, classes]``, and the
    prediction is the argmax of the time-averaged logits.

    Args:
        model: any module mapping ``[T, B, ...]`` to ``[T, B, classes]`` (a spikenorm model, or your own).
        num_classes: number of classes; read from ``model.num_classes`` when omitted.
        time_steps: ``T``.
        encoding: ``repeat`` (static input, direct encoding) or ``frames`` (``[B, T, ...]`` event frames).
        loss: ``ce`` (cross-entropy of the mean logits) or ``tet`` (per-step CE + MSE, methods.md 2.1).
        tet_mse_weight: the MSE weight ``eps`` of the ``tet`` loss.
        optimizer: optimizer factory (LightningCLI: ``class_path``/``init_args``); Adam(lr=1e-3) if omitted.
        lr_scheduler: LR scheduler factory, stepped every epoch; none if omitted.
        check_finite: raise a ValueError on NaN/Inf input (off by default: costs one pass over the batch).

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/firing_rate`` (mean over spiking
    layers) and the same under ``test/``.

    The model is not stored in the hyperparameters; to restore a checkpoint pass it again:
    ``SpikingClassifier.load_from_checkpoint(path, model=SpikingVGG(...))``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        time_steps: int = 4,
        encoding: Encoding = "repeat",
        loss: Literal["ce", "tet"] = "ce",
        tet_mse_weight: float = 0.05,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if loss not in ("ce", "tet"):
            raise ValueError(f"unknown loss {loss!r}; available: ce, tet")
        if encoding not in ("repeat", "frames"):
            raise ValueError(f"unknown encoding {encoding!r}; available: frames, repeat")
        if num_classes is None:
            num_classes = getattr(model, "num_classes", None)
            if num_classes is None:
                raise ValueError("num_classes was not given and the model has no num_classes attribute")
        self.model = model
        self.num_classes = int(num_classes)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    # -- forward ------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``[B, ...]`` or ``[B, T, ...]`` batch -> ``[T, B, ...]``, checked."""
        if self.hparams.check_finite:
            check_finite(x, type(self).__name__)
        return encode(x, self.hparams.time_steps, self.hparams.encoding)

    def forward(self, x: Tensor) -> Tensor:
        """Per-step logits ``[T, B, classes]`` of an un-encoded batch."""
        logits = self.model(self.encode(x))
        expected = (self.hparams.time_steps, x.shape[0], self.num_classes)
        if logits.shape != expected:
            raise ValueError(
                f"model must return per-step logits [T, B, classes] = {list(expected)}, got {list(logits.shape)}"
            )
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.hparams.loss == "tet":
            return tet_loss(logits, target, self.hparams.tet_mse_weight)
        return mean_logit_ce(logits, target)

    # -- steps ----------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.train_acc(logits.mean(0), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        with FiringRateRecorder(self.model) as recorder:
            logits = self(x)
        metric(logits.mean(0), y)
        self.log(f"{stage}/loss", self.loss(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        self.log(f"{stage}/firing_rate", recorder.mean_rate(), sync_dist=True, batch_size=x.shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities of the time-averaged logits."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).mean(0).softmax(-1)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = (
            self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-3)
        )
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
