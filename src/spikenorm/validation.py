"""Input checks shared by neurons, norm layers, models and tasks.

Every check raises a ``ValueError`` (or ``TypeError``) whose message says what layout was expected and
what was given, so bad input fails loudly at the layer that received it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_time_major(x: Tensor, where: str, *, min_ndim: int = 2, channels: int | None = None) -> None:
    """Check that ``x`` is a floating tensor laid out ``[T, B, ...]`` (time first).

    Args:
        x: the tensor to check.
        where: name of the receiving layer, used in the message.
        min_ndim: minimum rank (2 for ``[T, B]``; 3 when a channel axis is required).
        channels: when given, the size that axis 2 (the channel axis of ``[T, B, C, ...]``) must have.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{where} expects a torch.Tensor laid out [T, B, ...], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where} expects a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        layout = "[T, B, C, ...]" if min_ndim >= 3 else "[T, B, ...]"
        raise ValueError(
            f"{where} expects input laid out {layout} (time first, rank >= {min_ndim}), got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[2] != channels:
        raise ValueError(
            f"{where} expects input laid out [T, B, C, ...] with C={channels}, got shape {tuple(x.shape)} "
            f"(C={x.shape[2]}); is the time axis missing or misplaced?"
        )


def check_finite(x: Tensor, where: str) -> None:
    """Raise a ValueError if ``x`` holds NaN or Inf values."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{where} received non-finite values: {int(torch.isnan(x).sum())} NaN and "
            f"{int(torch.isinf(x).sum())} Inf entries in a tensor of shape {tuple(x.shape)}"
        )
