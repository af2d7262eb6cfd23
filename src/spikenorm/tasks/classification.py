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
from spikenorm.tasks.online import online_backward
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
        training_mode: ``bptt`` (one multi-step forward and backward) or ``online`` (methods.md 2.1: one
            step at a time, ``loss_t / T`` back-propagated at once with the temporal path detached, memory
            flat in ``T``; :func:`spikenorm.tasks.online.online_backward`). Online uses manual
            optimization; the loss is per step (``ce``: cross-entropy of each step's logits).
        online_update: ``batch`` (gradients accumulate over the T steps, one optimizer step per batch, OTTT_A)
            or ``step`` (an optimizer step after every time step, OTTT_O).

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
        training_mode: Literal["bptt", "online"] = "bptt",
        online_update: Literal["batch", "step"] = "batch",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if loss not in ("ce", "tet"):
            raise ValueError(f"unknown loss {loss!r}; available: ce, tet")
        if encoding not in ("repeat", "frames"):
            raise ValueError(f"unknown encoding {encoding!r}; available: frames, repeat")
        if training_mode not in ("bptt", "online"):
            raise ValueError(f"unknown training_mode {training_mode!r}; available: bptt, online")
        if online_update not in ("batch", "step"):
            raise ValueError(f"unknown online_update {online_update!r}; available: batch, step")
        self.automatic_optimization = training_mode == "bptt"
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
        if self.hparams.training_mode == "online":
            loss, logits = self._online_step(x, y)
        else:
            logits = self(x)
            loss = self.loss(logits, y)
        self.train_acc(logits.mean(0), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _online_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        optimizer = self.optimizers()
        inputs = self.encode(x)
        steps = inputs.shape[0]
        per_step = self.hparams.online_update == "step"

        def after_step(t: int) -> None:
            if per_step:
                optimizer.step()
                optimizer.zero_grad()

        optimizer.zero_grad()
        loss, logits = online_backward(
            self.model, inputs, lambda out: self.loss(out, y) / steps, self.manual_backward, after_step
        )
        if not per_step:
            optimizer.step()
        return loss, logits

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.lr_scheduler_factory is not None:
            self.lr_schedulers().step()  # manual optimization: Lightning leaves schedulers to us

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
