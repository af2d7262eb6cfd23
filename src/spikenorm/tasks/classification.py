"""Supervised classification of spiking models as a LightningModule."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from spikenorm.config import class_path_of, is_config, without_defaults
from spikenorm.models import accept_time_steps
from spikenorm.monitoring import FiringRateRecorder, recognised_neurons
from spikenorm.tasks.checkpoint_loading import ChecksCheckpointFiles
from spikenorm.tasks.compilation import CompileOption, compile_network, compile_options
from spikenorm.tasks.distillation import distillation_loss, fit_teacher, load_teacher_weights
from spikenorm.tasks.empty_splits import check_splits_not_empty
from spikenorm.tasks.encoding import Encoding, encode
from spikenorm.tasks.losses import mean_logit_ce, tet_loss
from spikenorm.tasks.online import online_backward
from spikenorm.tasks.run_config import build_object, is_unrecorded, network_differences, object_config, run_config
from spikenorm.validation import check_finite

#: checkpoint entry with the configs of the networks (see ``on_save_checkpoint``)
NETWORK_KEY = "spikenorm_network"
NETWORK_ARGUMENTS = ("model", "teacher")
FACTORY_ARGUMENTS = ("optimizer", "lr_scheduler")


class SpikingClassifier(ChecksCheckpointFiles, LightningModule):
    """Train and evaluate a spiking classifier on static images or event frames.

    The batch ``(x, y)`` is encoded at the boundary into ``[T, B, ...]`` (see
    :func:`spikenorm.tasks.encoding.encode`), the model returns per-step logits ``[T, B, classes]``, and the
    prediction is the argmax of the time-averaged logits.

    Args:
        model: any module mapping ``[T, B, ...]`` to ``[T, B, classes]`` (a spikenorm model, or your own), or
            the config that builds it (``{"class_path": ..., "init_args": ...}``).
        num_classes: number of classes; read from ``model.num_classes`` when omitted.
        time_steps: ``T`` in training.
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
        check_finite: stop at the first batch whose input or training loss holds NaN/Inf, with a ValueError
            naming the stage, batch index, epoch, tensor and counts (on by default; one pass over the input
            and one scalar check per batch, cost measured in ``benchmarks/finite_check.py``).
        training_mode: ``bptt`` (one multi-step forward and backward) or ``online`` (as in OTTT, Xiao et al.,
            "Online Training Through Time for Spiking Neural Networks", NeurIPS 2022, and OSR, Zhu et al., ICLR
            2024: one step at a time, ``loss_t / T`` back-propagated at once with the temporal path detached,
            memory flat in ``T``; :func:`spikenorm.tasks.online.online_backward`). Online uses manual
            optimization; the loss is per step (``ce``: cross-entropy of each step's logits).
        online_update: ``batch`` (gradients accumulate over the T steps, one optimizer step per batch, OTTT_A)
            or ``step`` (an optimizer step after every time step, OTTT_O).
        teacher: a frozen teacher for knowledge distillation (any module: an ANN on the raw batch or an SNN
            on the encoded one, see ``teacher_input``); always in eval mode, never optimized. ``None``: no KD.
        teacher_checkpoint: weights for ``teacher``: a Lightning checkpoint of a SpikingClassifier (its
            ``model.*`` entries, e.g. from a full-precision recipe's run) or a plain state_dict file.
        teacher_input: ``encoded`` (the teacher gets ``[T, B, ...]`` like the student and returns ``[T, B, C]``)
            or ``raw`` (the un-encoded batch, returns ``[B, C]``).
        teacher_epochs: train the teacher on the fly at fit start for this many epochs over the datamodule's
            training data (Adam, ``teacher_lr``, cross-entropy) when no ``teacher_checkpoint`` is given; its
            trained state is saved in checkpoints, so a resumed run does not train it again.
        kd_weight: ``alpha`` of ``loss = (1 - alpha) task_loss + alpha KD`` (1: distillation only, ReActNet).
        kd_temperature: softening temperature ``tau`` of :func:`~spikenorm.tasks.distillation.distillation_loss`.
        kd_per_step: distil every time step's logits (each step a self-ensemble member) instead of the
            time-averaged ones.
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
    ``record_firing_rates``) and the same under ``test/``; with a teacher also ``train/kd_loss`` and
    ``val/teacher_acc``.

    Callbacks see it as a :class:`~spikenorm.callbacks.plumbing.ClassificationTaskLike`: the network as
    ``model``, ``encode(x)`` and ``time_steps``.

    Checkpoints rebuild their network by themselves: the hyperparameters hold each constructor object's
    config (:mod:`spikenorm.tasks.run_config`), so ``SpikingClassifier.load_from_checkpoint(path)`` needs no
    model. Passing a model whose config differs (``load_from_checkpoint(path, model=...)``, or a CLI config
    with another network) is refused with the differing keys listed. Task arguments given at load time win
    over the stored ones, so ``eval_time_steps`` (or ``time_steps``) can be changed to evaluate at another
    ``T``. A network built by your own class is rebuilt only if it records its arguments
    (:class:`spikenorm.config.RecordsInit`); otherwise pass it again.

    Every run logs its complete configuration as flat keys (``task.*``, ``model.*``, ``optimizer.*``,
    ``lr_scheduler.*``, ``teacher.*``, ``data.*``, ``trainer.*``, ``seed``, ``versions.*``; see
    :func:`~spikenorm.tasks.run_config.run_config`) to every logger, in ``setup``.
    """

    #: constructor arguments that are objects: stored as configs, logged under their own prefix
    OBJECT_ARGUMENTS = ("model", "teacher", "optimizer", "lr_scheduler")

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        time_steps: int = 4,
        eval_time_steps: int | None = None,
        encoding: Encoding = "repeat",
        loss: Literal["ce", "tet"] = "ce",
        tet_mse_weight: float = 0.05,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        check_finite: bool = True,
        training_mode: Literal["bptt", "online"] = "bptt",
        online_update: Literal["batch", "step"] = "batch",
        teacher: nn.Module | None = None,
        teacher_checkpoint: str | None = None,
        teacher_input: Literal["encoded", "raw"] = "encoded",
        teacher_epochs: int = 0,
        teacher_lr: float = 1e-3,
        kd_weight: float = 0.5,
        kd_temperature: float = 4.0,
        kd_per_step: bool = False,
        record_firing_rates: bool | None = None,
        compile: CompileOption = False,
    ) -> None:
        super().__init__()
        self._compile_options = compile_options(compile, f"{type(self).__name__}(compile=...)")
        self.save_hyperparameters(ignore=list(self.OBJECT_ARGUMENTS), logger=False)
        given = {name: value for name, value in (("model", model), ("teacher", teacher)) if is_config(value)}
        model, teacher = build_object(model, "model"), build_object(teacher, "teacher")
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
        self._store_object_configs(given, model=model, teacher=teacher, optimizer=optimizer, lr_scheduler=lr_scheduler)
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if eval_time_steps is not None and eval_time_steps < 1:
            raise ValueError(f"eval_time_steps must be >= 1 or None, got {eval_time_steps}")
        if loss not in ("ce", "tet"):
            raise ValueError(f"unknown loss {loss!r}; available: ce, tet")
        if encoding not in ("repeat", "frames"):
            raise ValueError(f"unknown encoding {encoding!r}; available: frames, repeat")
        if training_mode not in ("bptt", "online"):
            raise ValueError(f"unknown training_mode {training_mode!r}; available: bptt, online")
        if online_update not in ("batch", "step"):
            raise ValueError(f"unknown online_update {online_update!r}; available: batch, step")
        self._check_distillation(teacher, teacher_checkpoint, teacher_input, teacher_epochs, kd_weight, training_mode)
        self.automatic_optimization = training_mode == "bptt"
        self._network_compiled = False
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
        self.teacher = teacher
        if teacher is not None:
            self.teacher_acc = MulticlassAccuracy(self.num_classes, average="micro")
            self.register_buffer("teacher_trained", torch.tensor(teacher_epochs == 0 or teacher_checkpoint is not None))
            if teacher_checkpoint is not None:
                load_teacher_weights(teacher, teacher_checkpoint)
            teacher.requires_grad_(False).eval()
        if eval_time_steps is not None:  # networks built for time_steps also run at eval_time_steps
            accept_time_steps(self, eval_time_steps)

    def _store_object_configs(self, given: dict[str, Any], **objects: Any) -> None:
        """Put each constructor object's config into the hyperparameters (see :func:`object_config`); ``given``:
        configs the objects were built from, used for objects that do not record their own. Factories
        (optimizer, scheduler) keep only their non-default arguments, so a checkpoint loads under another torch."""
        given = {**(_given_hyperparameters.get() or {}), **given}  # LightningCLI's parsed config, if it built us
        self._hparams.setdefault("_class_path", class_path_of(type(self)))  # the CLI rebuilds the task from it
        for name, obj in objects.items():
            config = self._unrecorded.get(name) or object_config(obj, given.get(name))
            if name in FACTORY_ARGUMENTS and is_config(config):
                config = without_defaults(config)
            self._hparams[name] = config
            self._hparams_initial[name] = config

    @staticmethod
    def _check_distillation(
        teacher: nn.Module | None,
        checkpoint: str | None,
        teacher_input: str,
        epochs: int,
        kd_weight: float,
        training_mode: str,
    ) -> None:
        if teacher is None:
            if checkpoint is not None or epochs:
                raise ValueError("teacher_checkpoint / teacher_epochs need a teacher module")
            return
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if teacher_input not in ("encoded", "raw"):
            raise ValueError(f"unknown teacher_input {teacher_input!r}; available: encoded, raw")
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if epochs < 0:
            raise ValueError(f"teacher_epochs must be >= 0, got {epochs}")
        if training_mode != "bptt":
            raise ValueError("knowledge distillation is implemented for training_mode='bptt' only")

    def train(self, mode: bool = True) -> SpikingClassifier:
        """Lightning's ``train()`` on the task; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def configure_model(self) -> None:
        """With ``compile``: compile the network in place, once (Lightning calls this before every fit, validate,
        test and predict)."""
        if self._compile_options is not None and not self._network_compiled:
            compile_network(self.model, self._compile_options)
            self._network_compiled = True

    # -- run configuration and checkpoints ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse an empty split the stage runs (:func:`~spikenorm.tasks.empty_splits.check_splits_not_empty`); log
        the run's complete configuration (flat keys) to every logger; check that firing rates can be recorded
        (``record_firing_rates``: a network without neurons spikenorm recognises is refused when it is True, gets
        one warning and no ``*/firing_rate`` when it is None)."""
        check_splits_not_empty(self.trainer, self, stage)
        config = run_config(type(self), self.hparams, self.OBJECT_ARGUMENTS, self.trainer)
        for logger in self.trainer.loggers:
            logger.log_hyperparams(config)
        if self.hparams.record_firing_rates is False:
            return
        try:
            recognised_neurons(self.model)
            self._record_firing = True
        except ValueError as error:
            if self.hparams.record_firing_rates:
                raise ValueError(
                    f"{type(self).__name__}(record_firing_rates=True): {error}; pass "
                    "record_firing_rates=None to skip the rate for such a model, or False"
                ) from error
            rank_zero_warn(f"{error}. {type(self).__name__} logs no firing rate for it.")
            self._record_firing = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the network's config apart from the hyperparameters, which ``load_from_checkpoint`` overwrites
        with the objects passed to it."""
        checkpoint[NETWORK_KEY] = {name: self.hparams[name] for name in NETWORK_ARGUMENTS}
        if "hyper_parameters" in checkpoint:  # the teacher's weights are in the state dict: no file needed to load
            checkpoint["hyper_parameters"]["teacher_checkpoint"] = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose network (or teacher) config differs from this task's."""
        lines = network_differences(checkpoint.get(NETWORK_KEY, {}), self.hparams, NETWORK_ARGUMENTS)
        if lines:
            raise ValueError(
                "the checkpoint was trained with a different network than the one it is loaded into "
                "(checkpoint -> current):\n  "
                + "\n  ".join(lines)
                + "\nLoad it without a model (or without the CLI's model settings) to rebuild the network it "
                "was trained with."
            )

    # -- forward ------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``[B, ...]`` or ``[B, T, ...]`` batch -> ``[T, B, ...]``."""
        return encode(x, self.time_steps, self.hparams.encoding)

    def check_batch(self, x: Tensor, stage: str, batch_idx: int) -> None:
        """With ``check_finite``: raise if the batch's input holds NaN/Inf, naming stage, batch and epoch."""
        if self.hparams.check_finite:
            check_finite(x, f"{stage} batch {batch_idx} (epoch {self.current_epoch}): the input tensor")

    def check_loss(self, loss: Tensor, batch_idx: int) -> None:
        """With ``check_finite``: raise if the training loss is NaN/Inf (before the optimizer step)."""
        if self.hparams.check_finite:
            check_finite(
                loss.detach(),
                f"train batch {batch_idx} (epoch {self.current_epoch}): the loss, "
                "from a finite input, (exploding activations or learning rate?)",
            )

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
        """The teacher's logits for an un-encoded batch (``[B, C]`` or ``[T, B, C]``), fed as ``teacher_input`` says."""
        return self.teacher(self.encode(x) if self.hparams.teacher_input == "encoded" else x)

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
        if self.hparams.training_mode == "online":
            loss, logits = self._online_step(x, y, batch_idx)
        else:
            logits = self(x)
            loss = self.loss(logits, y)
            if self.teacher is not None:
                kd = distillation_loss(
                    logits, self.teacher_logits(x), self.hparams.kd_temperature, self.hparams.kd_per_step
                )
                loss = (1 - self.hparams.kd_weight) * loss + self.hparams.kd_weight * kd
                self.log("train/kd_loss", kd)
            self.check_loss(loss, batch_idx)
        self.train_acc(logits.mean(0), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _online_step(self, x: Tensor, y: Tensor, batch_idx: int) -> tuple[Tensor, Tensor]:
        optimizer = self.optimizers()
        inputs = self.encode(x)
        steps = inputs.shape[0]
        per_step = self.hparams.online_update == "step"

        def after_step(t: int) -> None:
            if per_step:
                optimizer.step()
                optimizer.zero_grad()

        def step_loss(out: Tensor) -> Tensor:
            loss_t = self.loss(out, y) / steps
            self.check_loss(loss_t, batch_idx)  # before its backward and (online_update="step") optimizer step
            return loss_t

        optimizer.zero_grad()
        loss, logits = online_backward(self.model, inputs, step_loss, self.manual_backward, after_step)
        if not per_step:
            optimizer.step()
        return loss, logits

    def on_fit_start(self) -> None:
        if self.teacher is None or bool(self.teacher_trained):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "teacher_epochs trains the teacher on the datamodule's training data: fit with a datamodule"
            )

        def batches() -> Any:
            for x, y in datamodule.train_dataloader():
                yield x.to(self.device), y.to(self.device)

        self.teacher.requires_grad_(True)
        fit_teacher(self.teacher, batches, self.teacher_forward, self.hparams.teacher_epochs, self.hparams.teacher_lr)
        self.teacher.requires_grad_(False).eval()
        self.teacher_trained.fill_(True)

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and self.lr_scheduler_factory is not None:
            self.lr_schedulers().step()  # manual optimization: Lightning leaves schedulers to us

    def _evaluate(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        self.check_batch(x, stage, batch_idx)
        recorder = FiringRateRecorder(self.model) if self._record_firing else None
        with recorder or contextlib.nullcontext():
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
