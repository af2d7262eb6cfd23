"""Encoding of a batch into the time-major layout ``[T, B, ...]`` at the task boundary."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from spikenorm.validation import check_choice

Encoding = Literal["repeat", "frames"]


def encode(x: Tensor, time_steps: int, encoding: Encoding) -> Tensor:
    """Turn a batch into ``[T, B, ...]``.

    * ``repeat`` (direct encoding): a static batch ``[B, ...]`` is repeated ``T`` times.
    * ``frames``: event frames arrive ``[B, T, ...]`` (tonic's layout) and are transposed once; their
      ``T`` must equal ``time_steps``.
    """
    check_choice(encoding, Encoding, "encoding")
    if encoding == "repeat":
        if x.ndim < 2:
            raise ValueError(f"repeat encoding expects a batch [B, ...] with rank >= 2, got shape {tuple(x.shape)}")
        return x.unsqueeze(0).expand(time_steps, *x.shape)
    if x.ndim < 3:
        raise ValueError(f"frames encoding expects [B, T, ...] frames, got shape {tuple(x.shape)}")
    if x.shape[1] != time_steps:
        raise ValueError(
            f"frames encoding expects [B, T, ...] with T={time_steps} (the task's time_steps), "
            f"got shape {tuple(x.shape)} with T={x.shape[1]}"
        )
    return x.transpose(0, 1)
