"""Which network of a task a callback works on: the task's ``model``, another of its modules, or what to watch."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch import nn

from spikenorm.callbacks.task_protocols import NetworkTask, require_task


def task_network(pl_module: LightningModule, owner: str) -> nn.Module:
    """``pl_module.model``, checked with :func:`~spikenorm.callbacks.task_protocols.require_task` against
    :class:`~spikenorm.callbacks.task_protocols.NetworkTask` for ``owner``."""
    require_task(pl_module, NetworkTask, owner)
    return pl_module.model


def task_module(pl_module: LightningModule, attribute: str, owner: str) -> nn.Module:
    """``pl_module.<attribute>``, which must be a ``torch.nn.Module`` (ValueError naming ``owner`` otherwise)."""
    module = getattr(pl_module, attribute, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{owner}: {type(pl_module).__name__} has no module `{attribute}`")
    return module


def held_network(pl_module: LightningModule) -> nn.Module | None:
    """``pl_module.model`` when the task holds its network there (a
    :class:`~spikenorm.callbacks.task_protocols.NetworkTask`), else ``None``."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else None


def monitored_network(pl_module: LightningModule) -> tuple[nn.Module, tuple[str, ...]]:
    """The network to watch and the submodules to leave out of it.

    ``pl_module.model`` when the module holds its network there (as the spikenorm tasks do); otherwise the
    LightningModule itself, without its ``teacher`` (a distillation teacher is not the model being evaluated).
    """
    model = held_network(pl_module)
    return (model, ()) if model is not None else (pl_module, ("teacher",))
