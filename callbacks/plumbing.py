"""What every spikenorm callback needs from a task and a trainer, written once.

A callback is thin: the work it schedules lives in a core function (``recalibrate_bn``, ``fold_model``,
``write_nir``, ...). What is left is plumbing, and it is here:

* what a task offers callbacks, as typed Protocols: :class:`NetworkTask` (the network as ``model``),
  :class:`EncodingTask` (``encode(x)``), :class:`TimeStepsTask` (``time_steps``), :class:`ClassificationTaskLike`
  (all three; what :class:`~spikenorm.tasks.SpikingClassifier` offers) and :class:`ReplayTaskLike` (``actor``,
  ``replay_buffer``, ``env_steps``; what :class:`~spikenorm.tasks.SpikingTD3` offers);
  :func:`require_task` checks one at setup and names what is missing;
* the network of a task: :func:`task_network` (``model``, required), :func:`task_module` (any attribute),
  :func:`monitored_network` (``model``, else the whole LightningModule without its ``teacher``);
* the model inputs of a batch: :func:`batch_inputs` (``x`` of ``(x, y, ...)``), :func:`model_inputs`
  (``encode(x)`` when the task offers it), :func:`batch_samples`;
* where files go: :func:`output_folder`;
* when work is due: :func:`check_every_n_epochs`, :func:`epoch_due`, :func:`validation_due`;
* one hook for every evaluation batch: :class:`EvaluationBatchCallback`.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor, nn

# -- what a task offers callbacks ---------------------------------------------------------------------------


@runtime_checkable
class NetworkTask(Protocol):
    """A LightningModule that holds the network it trains as ``model`` (a ``torch.nn.Module``).

    Needed by the callbacks that fold or export the network (:class:`~spikenorm.callbacks.FoldNormalization`,
    :class:`~spikenorm.callbacks.NIRExport`, :class:`~spikenorm.callbacks.PackedBinaryExport`, and
    :class:`~spikenorm.callbacks.EnergyMonitor` for its folded numbers); the others use ``model`` when it
    is there.
    """

    model: nn.Module


@runtime_checkable
class EncodingTask(Protocol):
    """A LightningModule that turns the inputs ``x`` of a batch into the network's inputs with ``encode(x)``
    (e.g. ``[B, ...]`` images into ``[T, B, ...]``). Every callback that runs the network itself on a batch
    calls it when the task offers it, and feeds ``x`` unchanged otherwise (:func:`model_inputs`)."""

    def encode(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class TimeStepsTask(Protocol):
    """A LightningModule that offers ``time_steps``, the number of steps ``T`` of the current mode;
    :class:`~spikenorm.callbacks.EnergyMonitor` reads it for its ANN reference when it is an integer."""

    @property
    def time_steps(self) -> int: ...


@runtime_checkable
class ClassificationTaskLike(NetworkTask, EncodingTask, TimeStepsTask, Protocol):
    """What :class:`~spikenorm.tasks.SpikingClassifier` offers callbacks: ``model``, ``encode(x)`` and
    ``time_steps``. Batches are ``(x, y)``."""


@runtime_checkable
class ReplayBufferLike(Protocol):
    """A replay buffer of TensorDicts with an ``observation`` entry, indexable by a tensor of indices (a TorchRL
    ``TensorDictReplayBuffer``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Tensor) -> Any: ...


@runtime_checkable
class ReplayTaskLike(Protocol):
    """What :class:`~spikenorm.tasks.SpikingTD3` offers callbacks: the ``actor`` network, the ``replay_buffer``
    and the ``env_steps`` taken so far (the x-axis of its logs). An optional integer ``total_env_steps`` lets
    :class:`~spikenorm.callbacks.ReplayRecalibration` check its schedule at setup."""

    actor: nn.Module
    replay_buffer: ReplayBufferLike
    env_steps: int


def protocol_members(protocol: type) -> dict[str, Any]:
    """The members a task Protocol declares, each with the type its value must have (``None``: any value,
    e.g. a method or a property)."""
    members: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol, typing.Generic):
            continue
        members.update({name: None for name in vars(cls) if not name.startswith("_")})
    members.update(typing.get_type_hints(protocol))
    return members


def require_task(pl_module: LightningModule, protocol: type, owner: str) -> None:
    """Raise unless ``pl_module`` offers every member of ``protocol``; for use in a callback's ``setup``.

    Raises:
        ValueError: a member is missing (or ``None``); the message names ``owner`` (the callback), the
            Protocol, its members and the missing ones.
        TypeError: a member has the wrong type (e.g. a ``model`` that is not a ``torch.nn.Module``).
    """
    members = protocol_members(protocol)
    name = type(pl_module).__name__
    missing = [member for member in members if getattr(pl_module, member, None) is None]
    if missing:
        offered = ", ".join(f"`{member}`" for member in members)
        raise ValueError(
            f"{owner} needs a LightningModule that offers {protocol.__name__} ({offered}; see "
            f"spikenorm.callbacks.plumbing); {name} has no {', '.join(f'`{member}`' for member in missing)}"
        )
    for member, expected in members.items():
        value = getattr(pl_module, member)
        if isinstance(expected, type) and not isinstance(value, expected):
            raise TypeError(
                f"{owner}: {name}.{member} must be a {_type_name(expected)} ({protocol.__name__}), got "
                f"{type(value).__name__}"
            )


def _type_name(cls: type) -> str:
    return "torch.nn.Module" if cls is nn.Module else cls.__qualname__


# -- the network of a task ----------------------------------------------------------------------------------


def task_network(pl_module: LightningModule, owner: str) -> nn.Module:
    """``pl_module.model``, checked with :func:`require_task` against :class:`NetworkTask` for ``owner``."""
    require_task(pl_module, NetworkTask, owner)
    return pl_module.model


def task_module(pl_module: LightningModule, attribute: str, owner: str) -> nn.Module:
    """``pl_module.<attribute>``, which must be a ``torch.nn.Module`` (ValueError naming ``owner`` otherwise)."""
    module = getattr(pl_module, attribute, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{owner}: {type(pl_module).__name__} has no module `{attribute}`")
    return module


def held_network(pl_module: LightningModule) -> nn.Module | None:
    """``pl_module.model`` when the task holds its network there (a :class:`NetworkTask`), else ``None``."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else None


def monitored_network(pl_module: LightningModule) -> tuple[nn.Module, tuple[str, ...]]:
    """The network to watch and the submodules to leave out of it.

    ``pl_module.model`` when the module holds its network there (as the spikenorm tasks do); otherwise the
    LightningModule itself, without its ``teacher`` (a distillation teacher is not the model being evaluated).
    """
    model = held_network(pl_module)
    return (model, ()) if model is not None else (pl_module, ("teacher",))


# -- the model inputs of a batch ----------------------------------------------------------------------------


def batch_inputs(batch: Any) -> Any:
    """The inputs ``x`` of a batch: its first item for ``(x, y, ...)`` tuples and lists, else the batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def model_inputs(pl_module: LightningModule, x: Any) -> Any:
    """What the network takes for the batch inputs ``x``: ``pl_module.encode(x)`` when the task offers it
    (an :class:`EncodingTask`), else ``x``."""
    return pl_module.encode(x) if isinstance(pl_module, EncodingTask) else x


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (Lightning's own rule)."""
    return int(extract_batch_size(batch))


# -- where files go -----------------------------------------------------------------------------------------


def output_folder(
    trainer: Trainer, dirpath: str | Path | None = None, beside: Literal["checkpoints", "logs"] = "checkpoints"
) -> Path:
    """The folder a callback writes its files to, created if missing.

    ``dirpath`` when the user gave one; else the checkpoint folder (``beside="checkpoints"``:
    ``trainer.checkpoint_callback.dirpath``) or the run's log folder (``beside="logs"``: ``trainer.log_dir``,
    the first logger's version folder); else ``trainer.default_root_dir``.
    """
    if beside not in ("checkpoints", "logs"):
        raise ValueError(f"beside must be 'checkpoints' or 'logs', got {beside!r}")
    run_folder = getattr(trainer.checkpoint_callback, "dirpath", None) if beside == "checkpoints" else trainer.log_dir
    folder = Path(dirpath or run_folder or trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- when work is due ---------------------------------------------------------------------------------------


def check_every_n_epochs(every_n_epochs: int) -> int:
    """``every_n_epochs`` if it is a positive integer, else a ValueError."""
    if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
    return every_n_epochs


def epoch_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether the current epoch is an ``every_n_epochs``-th one (epochs ``n - 1, 2n - 1, ...``, counted from 0)."""
    return (trainer.current_epoch + 1) % every_n_epochs == 0


def validation_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether this validation loop is monitored: every ``every_n_epochs``-th epoch of a fit (never the
    sanity check), and every ``trainer.validate`` run."""
    if trainer.sanity_checking:
        return False
    if trainer.state.fn != TrainerFn.FITTING:
        return True
    return epoch_due(trainer, every_n_epochs)


# -- one hook for every evaluation batch --------------------------------------------------------------------

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
