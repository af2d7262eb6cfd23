"""Supervised classification of spiking models as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from spikenorm.config import is_config
from spikenorm.tasks.argument_upgrades import upgrade_classifier_arguments
from spikenorm.tasks.base import SpikingTask
from spikenorm.tasks.compilation import CompileOption
from spikenorm.tasks.data_time_steps import check_data_time_steps
from spikenorm.tasks.distillation import Distillation, fit_teacher, load_teacher_weights
from spikenorm.tasks.empty_splits import check_splits_not_empty
from spikenorm.tasks.encoding import Encoding, encode
from spikenorm.tasks.losses import Loss, mean_logit_ce, tet_loss
from spikenorm.tasks.online import OnlineTraining
from spikenorm.tasks.run_config import build_object, is_unrecorded
from spikenorm.time_steps import check_time_steps_value
from spikenorm.validation import check_choice


class SpikingClassifier(SpikingTask):
    """Train and evaluate a spiking classifier on static images or event frames.

    The batch ``(x, y)`` is encoded at the boundary into ``[T, B, ...]`` (see
    :func:`spikenorm.tasks.encoding.encode`), the model returns per-step logits ``[T, B, classes]``, and the
    prediction is the argmax of the time-averaged logits.

    Args:
        model: any module mapping ``[T, B, ...]`` to ``[T, B, classes]`` (a spikenorm model, or your own), or
            the config that builds it (``{"class_path": ..., "init_args": ...}``).
        num_classes: number of classes; read from ``model.num_classes`` when omitted.
        time_steps: ``T`` in training: the run's one ``T``. The task gives it to the network when it is built
            (:func:`~spikenorm.time_steps.bind_time_steps`: norms with per-step parameters receive it, a network built
            for another ``T`` is refused), and a datamodule whose frames have another ``T`` is refused at setup.
        eval_time_steps: ``T`` in validation, test and prediction when it differs from training's, e.g.
            DVS128 Gesture trained on 14 of 20 frames by random temporal deletion and tested on all 20 (the
            setting of Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR 2024); ``None``: the
            same as ``time_steps``.
        encoding: ``repeat`` (static input, direct encoding) or ``frames`` (``[B, T, ...]`` event frames).
        loss: ``ce`` (cross-entropy of the mean logits) or ``tet`` (per-step CE + MSE,
            :func:`~spikenorm.tasks.losses.tet_loss`).
        tet_mse_weight: the MSE weight ``eps`` of the ``tet`` loss.
        optimizer: optimizer factory (LightningCLI: ``class_path``/``init_args``); Adam(lr=1e-3) if omitted.
        lr_scheduler: LR scheduler factory, stepped every epoch; none if omitted.
        online: train one step at a time (:class:`~spikenorm.tasks.OnlineTraining`: OTTT, Xiao et al., "Online
            Training Through Time for Spiking Neural Networks", NeurIPS 2022, and OSR, Zhu et al., ICLR 2024;
            memory flat in ``T``; manual optimization, per-step loss). ``None``: BPTT (one multi-step forward and
            backward).
        distillation: knowledge distillation from a frozen teacher (:class:`~spikenorm.tasks.Distillation`, BPTT
            only). ``None``: no KD.
        check_finite: stop at the first batch whose input or training loss holds NaN/Inf, with a ValueError
            naming the stage, batch index, epoch, tensor and counts (on by default; one pass over the input
            and one scalar check per batch).
        record_firing_rates: log ``val/firing_rate`` and ``test/firing_rate``, the mean firing rate of the
            model's spiking neurons (:meth:`spikenorm.monitoring.FiringRateRecorder.mean_rate`, each batch's rate
            weighted by its size). ``None`` (default): when the model has neurons spikenorm recognises, else
            one warning at setup and no rate; ``True``: required, a model without them is refused at setup
            (before any step) with a ValueError; ``False``: never (no recorder hooks during evaluation). Per-layer
            rates, dead and saturated neurons are :class:`~spikenorm.callbacks.SpikeMonitor`'s job.
        compile: ``torch.compile`` the network (not the teacher) in place when the trainer configures the model
            (:func:`~spikenorm.tasks.compilation.compile_network`; state dict keys unchanged, so checkpoints load
            with or without it). ``True``: with ``dynamic=False`` (one static graph per input shape); a dict:
            ``torch.compile`` arguments (``mode``, ``dynamic``, ``fullgraph``, ``backend``, ``options``) over
            that default, checked here. CLI: ``--model.init_args.compile=true``. See ``docs/guides/compile.md``.

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/firing_rate`` (see
    ``record_firing_rates``) and the same under ``test/``; with distillation also ``train/kd_loss`` and
    ``val/teacher_acc``.

    Configs and checkpoints of spikenorm 0.1.0, which spelled ``online`` and ``distillation`` as flat flags
    (``training_mode``, ``online_update``, ``teacher``, ``teacher_checkpoint``, ``teacher_input``, ``teacher_epochs``,
    ``teacher_lr``, ``kd_weight``, ``kd_temperature``, ``kd_per_step``), load as the parts
    (:meth:`upgrade_arguments`).

    Callbacks see it as a :class:`~spikenorm.callbacks.task_protocols.ClassificationTaskLike`: the network as
    ``model``, ``encode(x)`` and ``time_steps``.

    Checkpoints rebuild their network by themselves: the hyperparameters hold each constructor object's
    config (:mod:`spikenorm.tasks.run_config`), so ``SpikingClassifier.load_from_checkpoint(path)`` needs no
    model. Passing a model whose config differs (``load_from_checkpoint(path, model=...)``, or a CLI config
    with another network) is refused with the differing keys listed. Task arguments given at load time win
    over the stored ones, so ``eval_time_steps`` (or ``time_steps``) can be changed to evaluate at another
    ``T``. A network built by your own class is rebuilt only if it records its arguments
    (:class:`spikenorm.config.RecordsInit`); otherwise pass it again.

    Every run logs its complete configuration as flat keys (``task.*``, ``model.*``, ``optimizer.*``,
    ``lr_scheduler.*``, ``distillation.*``, ``data.*``, ``trainer.*``, ``seed``, ``versions.*``; see
    :func:`~spikenorm.tasks.run_config.run_config`) to every logger, in ``setup``.
    """

    OBJECT_ARGUMENTS = ("model", "distillation", "optimizer", "lr_scheduler")
    NETWORK_ARGUMENTS = ("model", "teacher")
    FACTORY_ARGUMENTS = ("optimizer", "lr_scheduler")

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        time_steps: int = 4,
        eval_time_steps: int | None = None,
        encoding: Encoding = "repeat",
        loss: Loss = "ce",
        tet_mse_weight: float = 0.05,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        online: OnlineTraining | None = None,
        distillation: Distillation | None = None,
        check_finite: bool = True,
        record_firing_rates: bool | None = None,
        compile: CompileOption = False,
    ) -> None:
        super().__init__(compile)
        check_time_steps_value(time_steps)
        if eval_time_steps is not None:
            check_time_steps_value(eval_time_steps, "eval_time_steps")
        check_choice(loss, Loss, "loss")
        check_choice(encoding, Encoding, "encoding")
        if isinstance(online, Mapping):  # stored in checkpoints as the dict of its fields
            online = OnlineTraining(**online)
        if online is not None and not isinstance(online, OnlineTraining):
            raise TypeError(f"online must be an OnlineTraining or None, got {type(online).__name__}")
        self.save_hyperparameters(ignore=list(self.OBJECT_ARGUMENTS), logger=False)
        given = {name: value for name, value in (("model", model), ("distillation", distillation)) if is_config(value)}
        model, distillation = build_object(model, "model"), build_object(distillation, "distillation")
        if distillation is not None and not isinstance(distillation, Distillation):
            raise TypeError(f"distillation must be a Distillation or None, got {type(distillation).__name__}")
        if distillation is not None and online is not None:
            raise ValueError(
                "knowledge distillation is implemented for BPTT training only: give online or distillation"
            )
        # factories a checkpoint could not record are needed only to train: refused in configure_optimizers
        self._unrecorded = {
            name: value
            for name, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler))
            if is_unrecorded(value)
        }
        optimizer = None if "optimizer" in self._unrecorded else build_object(optimizer, "optimizer", partial=True)
        lr_scheduler = (
            None if "lr_scheduler" in self._unrecorded else build_object(lr_scheduler, "lr_scheduler", partial=True)
        )
        self.give_time_steps(model, time_steps, eval_time_steps)
        if distillation is not None:
            self.give_time_steps(distillation.teacher, time_steps, eval_time_steps)
        self.record_hyperparameters(
            given,
            model=model,
            distillation=distillation,
            optimizer=self._unrecorded.get("optimizer", optimizer),
            lr_scheduler=self._unrecorded.get("lr_scheduler", lr_scheduler),
            online=None if online is None else asdict(online),
        )
        self.online = online
        self.distillation = distillation
        self.automatic_optimization = online is None
        self._record_firing = record_firing_rates is not False  # setup() decides for None (see the docstring)
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
        self.teacher = None if distillation is None else distillation.teacher
        if distillation is not None:
            self.teacher_acc = MulticlassAccuracy(self.num_classes, average="micro")
            self.register_buffer("teacher_trained", torch.tensor(not distillation.needs_training))
            if distillation.checkpoint is not None:
                load_teacher_weights(distillation.teacher, distillation.checkpoint)
            distillation.teacher.requires_grad_(False).eval()

    @classmethod
    def upgrade_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """spikenorm 0.1.0's flat flags (``training_mode``, ``teacher``, ``kd_weight``, ...) -> the ``online`` and
        ``distillation`` parts (:func:`~spikenorm.tasks.argument_upgrades.upgrade_classifier_arguments`)."""
        return upgrade_classifier_arguments(arguments)

    @property
    def training_mode(self) -> Literal["bptt", "online"]:
        """``online`` when the task trains one step at a time (it was given ``online``), else ``bptt``."""
        return "bptt" if self.online is None else "online"

    def compiled_networks(self) -> list[nn.Module]:
        """The network (not the teacher)."""
        return [self.model]

    def network_configs(self) -> dict[str, Any]:
        """The configs of the network and of the distillation teacher (None without distillation)."""
        distillation = self.hparams.get("distillation")
        teacher = distillation.get("init_args", {}).get("teacher") if is_config(distillation) else None
        return {"model": self.hparams.get("model"), "teacher": teacher}

    def train(self, mode: bool = True) -> SpikingClassifier:
        """Lightning's ``train()`` on the task; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # -- run configuration and checkpoints ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse an empty split the stage runs (:func:`~spikenorm.tasks.empty_splits.check_splits_not_empty`) and
        a datamodule whose ``T`` is not the task's (:func:`~spikenorm.tasks.data_time_steps.check_data_time_steps`);
        log the run's complete configuration (flat keys) to every logger; decide whether firing rates are recorded
        (``record_firing_rates``)."""
        check_splits_not_empty(self.trainer, self, stage)
        check_data_time_steps(
            self.trainer, self.hparams.time_steps, self.hparams.eval_time_steps, self.hparams.encoding
        )
        self.log_run_config()
        self.decide_firing_rates(self.model, self.hparams.record_firing_rates)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The networks' configs apart (:meth:`SpikingTask.on_save_checkpoint`); the teacher's weights are in the state
        dict, so the stored hyperparameters need no teacher checkpoint file to load."""
        super().on_save_checkpoint(checkpoint)
        distillation = checkpoint.get("hyper_parameters", {}).get("distillation")
        if is_config(distillation) and distillation.get("init_args", {}).get("checkpoint") is not None:
            init_args = {**distillation["init_args"], "checkpoint": None}  # a copy: the task's own record stays
            checkpoint["hyper_parameters"]["distillation"] = {**distillation, "init_args": init_args}

    # -- forward ------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``[B, ...]`` or ``[B, T, ...]`` batch -> ``[T, B, ...]``."""
        return encode(x, self.time_steps, self.hparams.encoding)

    def check_batch(self, x: Tensor, stage: str, batch_idx: int) -> None:
        """With ``check_finite``: raise if the batch's input holds NaN/Inf, naming stage, batch and epoch."""
        if self.hparams.check_finite:
            self.check_input_finite(x, f"{stage} batch {batch_idx} (epoch {self.current_epoch})")

    def check_loss(self, loss: Tensor, batch_idx: int) -> None:
        """With ``check_finite``: raise if the training loss is NaN/Inf (before the optimizer step)."""
        if self.hparams.check_finite:
            self.check_loss_finite(loss, f"train batch {batch_idx} (epoch {self.current_epoch})")

    @property
    def time_steps(self) -> int:
        """``T`` of the current mode: ``time_steps`` in training, ``eval_time_steps`` (if set) otherwise."""
        if self.training or self.hparams.eval_time_steps is None:
            return self.hparams.time_steps
        return self.hparams.eval_time_steps

    def forward(self, x: Tensor) -> Tensor:
        """Per-step logits ``[T, B, classes]`` of an un-encoded batch."""
        logits = self.model(self.encode(x))
        expected = (self.time_steps, x.shape[0], self.num_classes)
        if logits.shape != expected:
            raise ValueError(
                f"model must return per-step logits [T, B, classes] = {list(expected)}, got {list(logits.shape)}"
            )
        return logits

    def teacher_forward(self, x: Tensor) -> Tensor:
        """The teacher's logits for an un-encoded batch (``[B, C]`` or ``[T, B, C]``), fed as the distillation's
        ``inputs`` says."""
        return self.teacher(self.encode(x) if self.distillation.inputs == "encoded" else x)

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The frozen teacher's logits, without gradient."""
        with torch.no_grad():
            return self.teacher_forward(x)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.hparams.loss == "tet":
            return tet_loss(logits, target, self.hparams.tet_mse_weight)
        return mean_logit_ce(logits, target)

    # -- steps ----------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.check_batch(x, "train", batch_idx)
        if self.online is not None:
            loss, logits = self._online_step(x, y, batch_idx)
        else:
            logits = self(x)
            loss = self.loss(logits, y)
            if self.distillation is not None:
                loss, kd = self.distillation.mixed_loss(loss, logits, self.teacher_logits(x))
                self.log("train/kd_loss", kd)
            self.check_loss(loss, batch_idx)
        self.train_acc(logits.mean(0), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _online_step(self, x: Tensor, y: Tensor, batch_idx: int) -> tuple[Tensor, Tensor]:
        inputs = self.encode(x)
        steps = inputs.shape[0]

        def step_loss(out: Tensor) -> Tensor:
            loss_t = self.loss(out, y) / steps
            self.check_loss(loss_t, batch_idx)  # before its backward and (update="step") optimizer step
            return loss_t

        return self.online.train_batch(self.model, inputs, step_loss, self.manual_backward, self.optimizers())

    def on_fit_start(self) -> None:
        if self.teacher is None or bool(self.teacher_trained):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "Distillation(epochs=...) trains the teacher on the datamodule's training data: fit with a datamodule"
            )

        def batches() -> Any:
            for x, y in datamodule.train_dataloader():
                yield x.to(self.device), y.to(self.device)

        self.teacher.requires_grad_(True)
        fit_teacher(self.teacher, batches, self.teacher_forward, self.distillation.epochs, self.distillation.lr)
        self.teacher.requires_grad_(False).eval()
        self.teacher_trained.fill_(True)

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.lr_scheduler_factory is not None:
            self.lr_schedulers().step()  # manual optimization: Lightning leaves schedulers to us

    def _evaluate(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        self.check_batch(x, stage, batch_idx)
        with self.firing_rate_recorder(self.model) as recorder:
            logits = self(x)
        metric(logits.mean(0), y)
        if self.teacher is not None and stage == "val":
            teacher = self.teacher_logits(x)
            self.teacher_acc(teacher.mean(0) if teacher.ndim == 3 else teacher, y)
            self.log("val/teacher_acc", self.teacher_acc)
        self.log(f"{stage}/loss", self.loss(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        if recorder is not None:
            self.log(f"{stage}/firing_rate", recorder.mean_rate(), sync_dist=True, batch_size=x.shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Per-step logits ``[B, T, classes]``, class probabilities of the time-averaged logits ``[B, classes]``
        and the predicted class ``[B]`` (``spikenorm predict`` writes them with
        :class:`~spikenorm.callbacks.PredictionWriter`)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.check_batch(x, "predict", batch_idx)
        logits = self(x)
        probabilities = logits.mean(0).softmax(-1)
        return {"logits": logits.transpose(0, 1), "probabilities": probabilities, "class": probabilities.argmax(-1)}

    def configure_optimizers(self) -> Any:
        for name, marker in self._unrecorded.items():
            build_object(marker, name)  # raises: the checkpoint could not record this factory
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-3)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
