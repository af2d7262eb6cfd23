"""Training-flag scopes: run modules in eval mode and give every submodule its own flag back afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their submodules) in eval mode; restore each submodule's flag on exit.

    The flags are restored one by one, so a model whose parts were in mixed modes (e.g. a frozen
    encoder in eval inside a training actor) comes back exactly as it was, also after an exception.
    """
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"eval_mode expects torch.nn.Module arguments, got {type(m).__name__}")
    saved = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for sub, flag in saved:
            sub.training = flag


@contextlib.contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` without gradients for their parameters: what is computed inside still carries gradients to
    its other inputs, and a backward of it skips the parameters' weight gradients (e.g. TD3's actor loss
    ``-Q1(s, actor(s))``, which needs the critic's gradient with respect to the action, not its weights'). The
    ``requires_grad`` flags are restored one by one on exit, also after an exception."""
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(f"frozen_parameters expects torch.nn.Module arguments, got {type(m).__name__}")
    trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
