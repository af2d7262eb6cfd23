"""The small base every spikenorm task stands on: what each one does the same way.

* hyperparameters: constructor objects (network, factories, parts) stored as their configs
  (:mod:`spikenorm.tasks.run_config`), so a checkpoint rebuilds the task by itself;
* the run's complete configuration logged as flat keys in ``setup``;
* the checkpoint's network configs kept apart, and a checkpoint of another network refused on loading;
* ``torch.compile`` of the task's networks (``compile`` option), once, in ``configure_model``;
* ``T``: the task owns it and gives it to its networks when it is built (:func:`~spikenorm.time_steps.bind_time_steps`);
* finite checks of inputs and losses, and the mean firing rate of evaluation batches;
* checkpoints and configs of earlier releases: :meth:`SpikingTask.upgrade_arguments` turns their task arguments
  into today's before the task is built, and ``load_from_checkpoint`` names an empty or truncated file.

A task subclasses :class:`SpikingTask`, names its object arguments (``OBJECT_ARGUMENTS``) and networks
(``NETWORK_ARGUMENTS``, ``compiled_networks``), and adds its steps; optional behaviour such as online training or
knowledge distillation is a part it is given (:class:`~spikenorm.tasks.OnlineTraining`,
:class:`~spikenorm.tasks.Distillation`), not a flag.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import Self

from spikenorm.checkpoint_files import check_checkpoint_file
from spikenorm.config import class_path_of, is_config, without_defaults
from spikenorm.monitoring import FiringRateRecorder, recognised_neurons
from spikenorm.tasks.compilation import CompileOption, compile_network, compile_options
from spikenorm.tasks.run_config import is_unrecorded, network_differences, object_config, run_config
from spikenorm.time_steps import bind_time_steps
from spikenorm.validation import check_finite

#: checkpoint entry with the configs of the task's networks (see :meth:`SpikingTask.on_save_checkpoint`)
NETWORK_KEY = "spikenorm_network"


class SpikingTask(LightningModule):
    """Base of the spikenorm tasks (see the module docstring).

    Args:
        compile: ``torch.compile`` the networks :meth:`compiled_networks` names, in place, when the trainer configures
            the model (:func:`~spikenorm.tasks.compilation.compile_network`; state dict keys unchanged). ``True``:
            ``dynamic=False``; a dict: ``torch.compile`` arguments over that default, checked here.
    """

    #: constructor arguments that are objects: stored as configs, logged under their own prefix
    OBJECT_ARGUMENTS: ClassVar[tuple[str, ...]] = ()
    #: object arguments whose config also describes a network: kept apart in checkpoints and compared on loading
    NETWORK_ARGUMENTS: ClassVar[tuple[str, ...]] = ()
    #: object arguments that are factories (optimizer, scheduler): stored with their non-default arguments only, so
    #: a checkpoint loads under another torch
    FACTORY_ARGUMENTS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, compile: CompileOption = False) -> None:
        super().__init__()
        self._compile_options = compile_options(compile, f"{type(self).__name__}(compile=...)")
        self._networks_compiled = False
        self._record_firing = True

    # -- arguments of earlier releases -------------------------------------------------------------------
    @classmethod
    def upgrade_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Task arguments as an earlier release stored or configured them -> today's (none changed here)."""
        return dict(arguments)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Self:
        """Lightning's ``load_from_checkpoint``, except that an empty or truncated file is named as such
        (:func:`~spikenorm.checkpoint_files.check_checkpoint_file`) and the stored hyperparameters of an earlier
        release are upgraded (:meth:`upgrade_arguments`) before the task is built from them."""
        check_checkpoint_file(checkpoint_path)
        if isinstance(checkpoint_path, (str, bytes)) or hasattr(checkpoint_path, "__fspath__"):
            checkpoint_path = _upgraded_checkpoint(cls, checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # -- hyperparameters ---------------------------------------------------------------------------------
    def record_hyperparameters(self, given: Mapping[str, Any] | None = None, **objects: Any) -> None:
        """Store each constructor object's config in the hyperparameters (:func:`object_config`; values of arguments
        that are not ``OBJECT_ARGUMENTS``, and ``unrecorded`` markers, as they are). ``given``: configs the objects
        were built from, used for objects that do not record their own. This is the one place a task writes
        Lightning's hyperparameter records."""
        given = {**(_given_hyperparameters.get() or {}), **(given or {})}  # LightningCLI's parsed config, if any
        self._hparams.setdefault("_class_path", class_path_of(type(self)))  # the CLI rebuilds the task from it
        for name, obj in objects.items():
            recorded = name in self.OBJECT_ARGUMENTS and not is_unrecorded(obj)
            config = object_config(obj, given.get(name)) if recorded else obj
            if name in self.FACTORY_ARGUMENTS and is_config(config):
                config = without_defaults(config)
            self._hparams[name] = config
            self._hparams_initial[name] = config

    def network_configs(self) -> dict[str, Any]:
        """The configs of the task's networks, by name (``NETWORK_ARGUMENTS``)."""
        return {name: self.hparams.get(name) for name in self.NETWORK_ARGUMENTS}

    def log_run_config(self) -> None:
        """Log the run's complete configuration (flat keys, :func:`~spikenorm.tasks.run_config.run_config`) to every
        logger."""
        config = run_config(type(self), self.hparams, self.OBJECT_ARGUMENTS, self.trainer)
        for logger in self.trainer.loggers:
            logger.log_hyperparams(config)

    # -- checkpoints --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the networks' configs apart from the hyperparameters, which ``load_from_checkpoint`` overwrites with
        the objects passed to it."""
        if self.NETWORK_ARGUMENTS:
            checkpoint[NETWORK_KEY] = self.network_configs()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose network configs differ from this task's."""
        lines = network_differences(checkpoint.get(NETWORK_KEY, {}), self.network_configs(), self.NETWORK_ARGUMENTS)
        if lines:
            raise ValueError(
                "the checkpoint was trained with a different network than the one it is loaded into "
                "(checkpoint -> current):\n  "
                + "\n  ".join(lines)
                + "\nLoad it without a model (or without the CLI's model settings) to rebuild the network it "
                "was trained with."
            )

    # -- compilation and T --------------------------------------------------------------------------------
    def compiled_networks(self) -> list[nn.Module]:
        """The networks the ``compile`` option compiles (none here)."""
        return []

    def configure_model(self) -> None:
        """With ``compile``: compile :meth:`compiled_networks` in place, once (Lightning calls this before every fit,
        validate, test and predict)."""
        if self._compile_options is not None and not self._networks_compiled:
            for network in self.compiled_networks():
                compile_network(network, self._compile_options)
            self._networks_compiled = True

    @staticmethod
    def give_time_steps(network: nn.Module, time_steps: int, eval_time_steps: int | None = None) -> None:
        """Give the task's ``T`` to ``network`` (:func:`~spikenorm.time_steps.bind_time_steps`), refusing a network
        built for another ``T`` with an error that says where ``T`` is set."""
        try:
            bind_time_steps(network, time_steps, eval_time_steps)
        except ValueError as error:
            raise ValueError(
                f"{error}. T has one home: the task's time_steps ({time_steps}); build the network without "
                "layers.time_steps (it receives T from the task) or with the same T"
            ) from None

    # -- checks and firing rates --------------------------------------------------------------------------
    def check_input_finite(self, x: Tensor, where: str) -> None:
        """Raise if ``x`` holds NaN/Inf, naming ``where`` (e.g. ``"train batch 3 (epoch 0)"``)."""
        check_finite(x, f"{where}: the input tensor")

    def check_loss_finite(self, loss: Tensor, where: str) -> None:
        """Raise if the training loss is NaN/Inf (before its backward), naming ``where``."""
        check_finite(
            loss.detach(), f"{where}: the loss, from a finite input, (exploding activations or learning rate?)"
        )

    def decide_firing_rates(self, network: nn.Module, requested: bool | None) -> None:
        """Whether evaluation logs ``*/firing_rate``: ``False``: never; ``True``: required, a network without neurons
        spikenorm recognises is refused (ValueError); ``None``: when it has such neurons, else one warning."""
        if requested is False:
            self._record_firing = False
            return
        try:
            recognised_neurons(network)
            self._record_firing = True
        except ValueError as error:
            if requested:
                raise ValueError(
                    f"{type(self).__name__}(record_firing_rates=True): {error}; pass "
                    "record_firing_rates=None to skip the rate for such a model, or False"
                ) from error
            rank_zero_warn(f"{error}. {type(self).__name__} logs no firing rate for it.")
            self._record_firing = False

    @contextlib.contextmanager
    def firing_rate_recorder(self, network: nn.Module) -> Iterator[FiringRateRecorder | None]:
        """A :class:`~spikenorm.monitoring.FiringRateRecorder` on ``network`` while the block runs, or None when
        firing rates are not recorded (:meth:`decide_firing_rates`)."""
        if not self._record_firing:
            yield None
            return
        with FiringRateRecorder(network) as recorder:
            yield recorder


def _upgraded_checkpoint(cls: type[SpikingTask], path: Any) -> Any:
    """``path``, or an in-memory copy of the checkpoint with its hyperparameters upgraded when an earlier release
    wrote them (:meth:`SpikingTask.upgrade_arguments`). The file is memory-mapped, so a checkpoint that needs no
    upgrade (every one written by this release) costs no second read of its tensors. A checkpoint that needs
    unpickling, or is not in the zip format, is left to Lightning."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not loadable as plain data: Lightning's loader decides (and names the problem)
        return path
    stored = checkpoint.get(LightningModule.CHECKPOINT_HYPER_PARAMS_KEY)
    if not isinstance(stored, Mapping):
        return path
    upgraded = cls.upgrade_arguments(stored)
    if upgraded == dict(stored):
        return path
    checkpoint[LightningModule.CHECKPOINT_HYPER_PARAMS_KEY] = upgraded
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer
