"""Online training: per-time-step forward and backward with the temporal gradient path cut.

OSR/OTTT style (Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR 2024; Xiao et al., "Online
Training Through Time for Spiking Neural Networks", NeurIPS 2022): at step ``t`` the network runs one step in
single-step mode, the loss ``L_t / T`` is back-propagated at once, and the gradients accumulate over the ``T``
steps. The neurons
carry their state across steps detached (``v = v.detach() * decay + x``), so the graph of a step is freed
by its backward and memory does not grow with ``T``. :class:`OnlineTraining` is the part that makes a
:class:`~spikenorm.tasks.SpikingClassifier` train this way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from spikenorm.neurons import stateful
from spikenorm.validation import check_choice

#: when the optimizer steps: once per batch (OTTT_A) or after every time step (OTTT_O)
OnlineUpdate = Literal["batch", "step"]


@dataclass(frozen=True)
class OnlineTraining:
    """Train one time step at a time (:func:`online_backward`): memory flat in ``T``.

    Given to a :class:`~spikenorm.tasks.SpikingClassifier` (``online=OnlineTraining()``; CLI: ``online: {update:
    batch}`` under the task's ``init_args``), it replaces BPTT: the task switches to manual optimization and its loss
    is per step (``ce``: the cross-entropy of each step's logits), ``loss_t / T`` back-propagated at once.

    Attributes:
        update: ``batch`` (gradients accumulate over the ``T`` steps, one optimizer step per batch, OTTT_A) or
            ``step`` (an optimizer step after every time step, OTTT_O).
    """

    update: OnlineUpdate = "batch"

    def __post_init__(self) -> None:
        check_choice(self.update, OnlineUpdate, "OnlineTraining update")

    def train_batch(
        self,
        model: nn.Module,
        inputs: Tensor,
        step_loss: Callable[[Tensor], Tensor],
        backward: Callable[[Tensor], None],
        optimizer: torch.optim.Optimizer,
    ) -> tuple[Tensor, Tensor]:
        """One batch: zero the gradients, run and back-propagate every step, step the optimizer as ``update`` says.
        Returns ``(total loss, logits [T, B, classes])``, both detached."""
        per_step = self.update == "step"

        def step_optimizer(t: int) -> None:
            optimizer.step()
            optimizer.zero_grad()

        optimizer.zero_grad()
        loss, logits = online_backward(model, inputs, step_loss, backward, step_optimizer if per_step else None)
        if not per_step:
            optimizer.step()
        return loss, logits


def online_backward(
    model: nn.Module,
    inputs: Tensor,
    step_loss: Callable[[Tensor], Tensor],
    backward: Callable[[Tensor], None] = Tensor.backward,
    after_step: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model`` online over ``inputs`` (``[T, B, ...]``), back-propagating every step's loss.

    Args:
        model: maps ``[1, B, ...]`` to per-step logits ``[1, B, classes]``.
        inputs: the encoded batch, time first.
        step_loss: loss of one step's logits ``[1, B, classes]`` (already divided by ``T`` if wanted).
        backward: how to back-propagate (``LightningModule.manual_backward`` under Lightning).
        after_step: called with ``t`` after each step's backward (e.g. an optimizer step every time step).

    Returns:
        ``(total loss, logits [T, B, classes])``, both detached.
    """
    losses, logits = [], []
    with stateful(model, detach_membrane=True):
        for t in range(inputs.shape[0]):
            out = model(inputs[t : t + 1])
            loss = step_loss(out)
            backward(loss)
            if after_step is not None:
                after_step(t)
            losses.append(loss.detach())
            logits.append(out.detach())
    return torch.stack(losses).sum(), torch.cat(logits)
