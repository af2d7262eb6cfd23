"""Input checks shared by neurons, norm layers, models and tasks.

Every check raises a ``ValueError`` (or ``TypeError``) whose message says what layout was expected and
what was given, so bad input fails loudly at the layer that received it.
"""

from __future__ import annotations

import typing
from typing import Any

import torch
from torch import Tensor


def check_time_major(
    x: Tensor,
    where: str,
    *,
    min_ndim: int = 2,
    channels: int | None = None,
    time_steps: int | tuple[int, ...] | None = None,
) -> None:
    """Check that ``x`` is a floating tensor laid out ``[T, B, ...]`` (time first).

    Args:
        x: the tensor to check.
        where: name of the receiving layer, used in the message.
        min_ndim: minimum rank (2 for ``[T, B]``; 3 when a channel axis is required).
        channels: when given, the size that axis 2 (the channel axis of ``[T, B, C, ...]``) must have.
        time_steps: when given, the size (or sizes) that axis 0 may have (:func:`check_time_steps`).
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
    if time_steps is not None:
        check_time_steps(x, where, time_steps)


def check_time_steps(x: Tensor, where: str, time_steps: int | tuple[int, ...]) -> None:
    """Raise a ValueError unless the leading axis of ``x`` is ``T = time_steps`` (one of them, for a tuple: a
    model that also runs at its task's evaluation ``T``); a shape comparison only.

    The message points at batch-major input ``[B, T, ...]`` when axis 1 is ``T``.
    """
    allowed = (time_steps,) if isinstance(time_steps, int) else tuple(time_steps)
    if x.shape[0] not in allowed:
        raise _time_steps_error(x, where, allowed)


def check_not_batch_major(x: Tensor, where: str, time_steps: int) -> None:
    """Raise a ValueError when ``x`` looks batch-major: axis 1 is ``T = time_steps`` and axis 0 is not.

    The cheap check for input whose leading axis need not be ``T`` (e.g. a batch that a model encodes itself):
    it catches ``[B, T, ...]`` and lets every ``[T, B, ...]`` through, but cannot tell ``[B, T, ...]`` from
    time-major input whose batch size happens to be ``T``.
    """
    if x.ndim >= 2 and x.shape[1] == time_steps and x.shape[0] != time_steps:
        raise _time_steps_error(x, where, (time_steps,))


def _time_steps_error(x: Tensor, where: str, allowed: tuple[int, ...]) -> ValueError:
    hint = ""
    if x.ndim >= 2 and x.shape[1] in allowed:
        hint = f", which looks batch-major [B, T, ...] (B={x.shape[0]}): transpose it with x.transpose(0, 1)"
    steps = " or ".join(map(str, allowed))
    return ValueError(f"{where} expects input laid out [T, B, ...] with T={steps}, got shape {tuple(x.shape)}{hint}")


def check_finite(x: Tensor, where: str) -> None:
    """Raise a ValueError if ``x`` holds NaN or Inf values."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{where} received non-finite values: {int(torch.isnan(x).sum())} NaN and "
            f"{int(torch.isinf(x).sum())} Inf entries in a tensor of shape {tuple(x.shape)}"
        )


def choices(vocabulary: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` type allows (nested Literals and ``Literal | None`` flattened), in order."""
    origin = typing.get_origin(vocabulary)
    if origin is typing.Literal:
        members: list[Any] = []
        for value in typing.get_args(vocabulary):
            members.extend(choices(value) if typing.get_origin(value) is not None else (value,))
        return tuple(members)
    if origin is not None:  # a Union such as Literal[...] | None
        return tuple(
            v for arg in typing.get_args(vocabulary) for v in (choices(arg) if arg is not type(None) else (None,))
        )
    raise TypeError(f"choices() reads a typing.Literal, got {vocabulary!r}")


def check_choice(value: Any, vocabulary: Any, name: str) -> Any:
    """Return ``value`` if the ``Literal`` type ``vocabulary`` allows it, else raise a ValueError naming ``name``,
    the value given and every allowed value: the one check behind every option with a fixed vocabulary, so the
    ``Literal`` in a signature is the only list of its values."""
    allowed = choices(vocabulary)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; available: {', '.join(map(str, allowed))}")
    return value
