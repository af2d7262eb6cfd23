"""Where the newest states of a replay buffer are."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def newest_indices(buffer: Any, count: int) -> Tensor:
    """Storage indices of the ``count`` newest entries of ``buffer`` (at most all it holds), oldest first.

    A TorchRL buffer writes round robin: its writer's ``_cursor`` is the next write position, so the newest entry
    sits just before it, also after the storage has wrapped around. A buffer without such a writer is read as if
    its entries were written in storage order.
    """
    filled = len(buffer)
    count = min(count, filled)
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    writer = getattr(buffer, "writer", None)
    cursor = writer.state_dict().get("_cursor", filled) if writer is not None else filled
    cursor = int(cursor) % filled
    return (torch.arange(cursor - count, cursor) % filled).long()
