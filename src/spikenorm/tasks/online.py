"""Online training: per-time-step forward and backward with the temporal gradient path cut.

OSR/OTTT style (Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR 2024; Xiao et al., "Online
Training Through Time for Spiking Neural Networks", NeurIPS 2022): at step ``t`` the network runs one step in
single-step mode, the loss ``L_t / T`` is back-propagated at once, and the gradients accumulate over the ``T``
steps. The neurons
carry their state across steps detached (``v = v.detach() * decay + x``), so the graph of a step is freed
by its backward and memory does not grow with ``T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from spikenorm.neurons import stateful


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
