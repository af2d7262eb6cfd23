"""What :func:`spikenorm.diagnostics.diagnose` needs from a task: its network, batches encoded as the task encodes
them, the forwards of its eval and train passes, and the kind of output.

Shared by ``spikenorm diagnose`` (:mod:`spikenorm.cli`) and the callbacks that diagnose during a fit. Every
function reads the task by what it offers (duck typing, as the task Protocols of
:mod:`spikenorm.callbacks.task_protocols`), never by its class:

* a classifier (``model``, ``encode(x)``, ``time_steps``; :class:`~spikenorm.tasks.SpikingClassifier`):
  :func:`classifier_forwards` gives the eval forward (one multi-step call, as validation runs the network) and
  the train forward (the same, or for ``training_mode="online"`` one step at a time inside
  :func:`~spikenorm.neurons.stateful`, as :func:`~spikenorm.tasks.online.online_backward` trains it);
  :func:`encoded_inputs` turns ``(x, y)`` batches into ``[T, B, ...]`` network inputs; :func:`split_batches`
  takes the first batches of a datamodule's split;
* an RL task (``policy_network``, ``replay_buffer``, ``env``, ``acting_policy``; :class:`~spikenorm.tasks.SpikingTD3`,
  :class:`~spikenorm.tasks.SpikingDQN`):
  :func:`replay_observations` (the most recent states of the replay buffer) and :func:`rollout_observations`
  (states of the env driven by the deterministic policy), for the task's ``diagnosis_output`` (``"actions"``;
  Q-values: ``"logits"``);
* :func:`diagnosis_inputs`: all of it for a task, as a :class:`DiagnosisInputs` whose :meth:`~DiagnosisInputs.kwargs`
  go straight into ``diagnose``.

Usage::

    from spikenorm.diagnostics import diagnose
    from spikenorm.tasks.diagnosis_inputs import classifier_forwards, encoded_inputs

    forward, train_forward = classifier_forwards(task)
    batches = encoded_inputs(task, [batch for batch, _ in zip(datamodule.val_dataloader(), range(4))])
    diagnosis = diagnose(task.model, batches, forward=forward, train_forward=train_forward)
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spikenorm.diagnostics import DiagnosisOutput, stepwise_forward
from spikenorm.modes import eval_mode
from spikenorm.validation import check_choice

__all__ = [
    "SPLITS",
    "DiagnosisInputs",
    "classifier_forwards",
    "diagnosis_inputs",
    "encoded_inputs",
    "multi_step_forward",
    "replay_observations",
    "rollout_observations",
    "split_batches",
]

Forward = Callable[[nn.Module, Any], Any]
#: the splits a datamodule's batches can come from, and the loader each one is read from
SPLITS = {"val": "val_dataloader", "test": "test_dataloader", "train": "train_dataloader"}
#: where an RL task's diagnosis states come from: the replay buffer if it holds any (auto), it, or a rollout
StateSource = Literal["auto", "replay", "rollout"]
#: the datamodule stage that sets each split up
_STAGES = {"val": "validate", "test": "test", "train": "fit"}


def multi_step_forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``: one multi-step call on ``[T, B, ...]`` (from zero state), as validation and BPTT run it."""
    return model(x)


def _hparam(task: Any, name: str, default: Any = None) -> Any:
    hparams = getattr(task, "hparams", None)
    return hparams.get(name, default) if isinstance(hparams, Mapping) else default


def classifier_forwards(task: Any) -> tuple[Forward, Forward]:
    """``(forward, train_forward)`` for ``diagnose(task.model, encoded batches, ...)``.

    The eval pass runs the network as validation does: one multi-step call. The train pass runs it as training
    does: the same call for BPTT (the default, and any task without a ``training_mode``), one step at a time inside
    :func:`~spikenorm.neurons.stateful` for a task whose ``training_mode`` is ``"online"`` (given
    :class:`~spikenorm.tasks.OnlineTraining`)
    (:func:`spikenorm.diagnostics.stepwise_forward`, as :func:`~spikenorm.tasks.online.online_backward` runs it,
    without the backward).
    """
    if getattr(task, "training_mode", "bptt") == "online":
        return multi_step_forward, stepwise_forward
    return multi_step_forward, multi_step_forward


@contextlib.contextmanager
def _task_mode(task: nn.Module, training: bool) -> Iterator[None]:
    """The task in training or eval mode (``time_steps`` follows it), every submodule's flag restored on exit."""
    saved = [(module, module.training) for module in task.modules()]
    try:
        task.train(training)
        yield
    finally:
        for module, flag in saved:
            module.training = flag


def _device(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def encoded_inputs(task: Any, batches: Iterable[Any], train: bool = False) -> list[Tensor]:
    """The network inputs of ``batches``: ``task.encode(x)`` of each batch's ``x`` (of ``(x, y, ...)``, or the batch
    itself), on the network's device.

    Args:
        task: offers ``encode(x)`` (and usually ``time_steps``) and the network as ``model``.
        batches: the batches, as a loader yields them.
        train: encode at the training ``T`` (``time_steps``; train split batches, e.g. event frames cut by random
            temporal deletion) instead of the evaluation ``T`` (``eval_time_steps`` when the task has one).
    """
    device = _device(task.model)
    inputs = []
    mode = _task_mode(task, train) if isinstance(task, nn.Module) else contextlib.nullcontext()
    with mode:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            inputs.append(task.encode(x.to(device)))
    return inputs


def split_batches(datamodule: Any, split: str, num_batches: int) -> list[Any]:
    """The first ``num_batches`` batches (fewer when the split has fewer) of a datamodule's ``split`` (``val``,
    ``test`` or ``train``), after its ``prepare_data`` and ``setup`` for the stage that uses the split.

    Raises:
        ValueError: an unknown split, ``num_batches < 1``, or a split without batches.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    datamodule.prepare_data()
    datamodule.setup(_STAGES[split])
    loader = getattr(datamodule, SPLITS[split])()
    batches = list(itertools.islice(iter(loader), num_batches))
    if not batches:
        raise ValueError(f"the {split} split of {type(datamodule).__name__} has no batches: nothing to diagnose")
    return batches


def _chunks(states: Tensor, num_batches: int, batch_size: int) -> list[Tensor]:
    """``states`` cut into at most ``num_batches`` batches of ``batch_size`` (one smaller batch of all of them when
    there are fewer than ``batch_size``)."""
    full = min(num_batches, states.shape[0] // batch_size)
    if full == 0:
        return [states]
    return list(states[: full * batch_size].reshape(full, batch_size, *states.shape[1:]).unbind(0))


def replay_observations(task: Any, num_batches: int, batch_size: int | None = None) -> list[Tensor]:
    """The most recent ``num_batches * batch_size`` observations of ``task.replay_buffer``, oldest first, as
    ``num_batches`` batches of ``batch_size`` (default: the task's training ``batch_size``) on the actor's device;
    fewer batches when the buffer holds fewer states, none when it is empty.

    Recent states are those of the current policy, which is what the actor's running statistics should track
    (CaRe-BN, Xu et al., ICLR 2026).
    """
    buffer = task.replay_buffer
    filled = len(buffer)
    if filled == 0:
        return []
    batch_size = int(batch_size or _hparam(task, "batch_size", 256))
    from spikenorm.rl.replay import newest_indices  # the rl extra: imported only for an actor task

    indices = newest_indices(buffer, num_batches * batch_size)
    states = buffer[indices]["observation"].float().to(_device(task.policy_network))
    return _chunks(states, num_batches, batch_size)


@torch.no_grad()
def rollout_observations(task: Any, num_batches: int, batch_size: int | None = None) -> list[Tensor]:
    """``num_batches`` batches of ``batch_size`` (default: the task's training ``batch_size``) observations of
    ``task.env`` driven by the deterministic actor in eval mode (no exploration noise; a new episode starts where
    one ends), in the order they were visited, on the actor's device. The rollout starts a new episode of the
    env, whose RNG continues from where it is (a freshly built task's env: from its seed)."""
    batch_size = int(batch_size or _hparam(task, "batch_size", 256))
    network = task.policy_network
    with eval_mode(network):
        rollout = task.env.rollout(
            num_batches * batch_size, policy=task.acting_policy(), break_when_any_done=False, auto_reset=True
        )
    states = rollout["observation"].float().reshape(-1, rollout["observation"].shape[-1]).to(_device(network))
    return _chunks(states, num_batches, batch_size)


@dataclass
class DiagnosisInputs:
    """The arguments of :func:`~spikenorm.diagnostics.diagnose` for a task: the network, its input batches, the
    forwards of the eval and train passes, the output kind; ``source`` says where the batches came from
    (``"val"``, ``"test"``, ``"train"``, ``"replay"``, ``"rollout"``) and ``note`` anything worth telling
    (fewer batches than asked)."""

    model: nn.Module
    batches: list[Any]
    forward: Forward | None
    train_forward: Forward | None
    output: DiagnosisOutput
    source: str
    batch_size: int
    note: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``diagnose(**inputs.kwargs())``."""
        return {
            "model": self.model,
            "batches": self.batches,
            "forward": self.forward,
            "train_forward": self.train_forward,
            "output": self.output,
        }


def _fewer(taken: int, asked: int, where: str) -> str | None:
    return None if taken >= asked else f"{where} gave {taken} of the {asked} batches asked for"


def diagnosis_inputs(
    task: Any,
    datamodule: Any = None,
    split: str | None = None,
    num_batches: int = 4,
    states: StateSource = "auto",
) -> DiagnosisInputs:
    """Everything ``diagnose`` needs for ``task``.

    A classifier (a task with ``model`` and ``encode``): the first ``num_batches`` batches of ``datamodule``'s
    ``split`` (default ``val``), encoded by the task (:func:`encoded_inputs`; the training ``T`` for the train
    split), with :func:`classifier_forwards`; ``output="logits"``.

    An RL task (with ``policy_network`` and ``replay_buffer``, such as :class:`~spikenorm.tasks.SpikingTD3`):
    observations from the replay buffer (:func:`replay_observations`), or when it is empty (a weights-only checkpoint)
    or ``states="rollout"``, from the env (:func:`rollout_observations`); the task's ``diagnosis_output``. The
    network's training forward is its plain forward in training mode (CaRe-BN's update scope only changes buffers, which
    ``diagnose`` undoes).

    Raises:
        ValueError: a task that is neither; a classifier without a datamodule; a split for an actor task;
            ``states="replay"`` with an empty replay buffer; ``num_batches < 1``.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if isinstance(getattr(task, "policy_network", None), nn.Module) and hasattr(task, "replay_buffer"):
        if split is not None:
            raise ValueError(
                f"{type(task).__name__} has no data splits (split={split!r}): its states come from the replay "
                "buffer, or from the env driven by the actor"
            )
        check_choice(states, StateSource, "states")
        batch_size = int(_hparam(task, "batch_size", 256))
        batches = [] if states == "rollout" else replay_observations(task, num_batches, batch_size)
        source = "replay"
        if not batches:
            if states == "replay":
                raise ValueError(
                    f"{type(task).__name__}'s replay buffer is empty (a weights-only checkpoint keeps none): use the "
                    "states of a rollout instead"
                )
            batches, source = rollout_observations(task, num_batches, batch_size), "rollout"
        note = _fewer(len(batches), num_batches, f"the {source} ({sum(len(b) for b in batches)} states)")
        output = getattr(task, "diagnosis_output", "actions")
        return DiagnosisInputs(task.policy_network, batches, None, None, output, source, batch_size, note)
    if not (isinstance(getattr(task, "model", None), nn.Module) and callable(getattr(task, "encode", None))):
        raise ValueError(
            f"{type(task).__name__} offers neither a network `model` with `encode(x)` (a classifier) nor a "
            "`policy_network` with a `replay_buffer` (an RL task): nothing to diagnose"
        )
    if datamodule is None:
        raise ValueError(f"{type(task).__name__} is diagnosed on a datamodule's batches: give one")
    split = split or "val"
    raw = split_batches(datamodule, split, num_batches)
    batches = encoded_inputs(task, raw, train=split == "train")
    forward, train_forward = classifier_forwards(task)
    first = raw[0][0] if isinstance(raw[0], (tuple, list)) else raw[0]
    note = _fewer(len(batches), num_batches, f"the {split} split")
    return DiagnosisInputs(task.model, batches, forward, train_forward, "logits", split, int(first.shape[0]), note)
