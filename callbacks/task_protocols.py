"""What a task offers callbacks, as typed Protocols, and the setup check that names what a task lacks.

:class:`NetworkTask` (the network as ``model``), :class:`EncodingTask` (``encode(x)``), :class:`TimeStepsTask`
(``time_steps``), :class:`ClassificationTaskLike` (all three; what :class:`~spikenorm.tasks.SpikingClassifier`
offers) and :class:`ReplayTaskLike` (``policy_network``, ``replay_buffer``, ``env_steps``; what the online RL
tasks :class:`~spikenorm.tasks.SpikingTD3` and :class:`~spikenorm.tasks.SpikingDQN` offer); :func:`require_task`
checks one at setup and names what is missing.
"""

from __future__ import annotations

import typing
from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import LightningModule
from torch import Tensor, nn


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
    calls it when the task offers it, and feeds ``x`` unchanged otherwise
    (:func:`~spikenorm.callbacks.batches.model_inputs`)."""

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
    """What the online RL tasks (:class:`~spikenorm.tasks.off_policy.OffPolicyTask`: ``SpikingTD3``, ``SpikingDQN``)
    offer callbacks: the ``policy_network`` that acts (TD3's actor, DQN's Q-network), the ``replay_buffer`` and the
    ``env_steps`` taken so far (the x-axis of its logs). An optional integer ``total_env_steps`` lets
    :class:`~spikenorm.callbacks.ReplayRecalibration` check its schedule at setup; an optional
    ``diagnosis_output`` (``"actions"``, the default, or ``"logits"`` for Q-values) tells
    :class:`~spikenorm.callbacks.NormDiagnostics` how to compare the network's outputs."""

    policy_network: nn.Module
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
            f"spikenorm.callbacks.task_protocols); {name} has no {', '.join(f'`{member}`' for member in missing)}"
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
