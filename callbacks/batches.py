"""The network inputs of a batch, as a callback that runs the network itself needs them, and its sample count."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.data import extract_batch_size

from spikenorm.callbacks.task_protocols import EncodingTask


def batch_inputs(batch: Any) -> Any:
    """The inputs ``x`` of a batch: its first item for ``(x, y, ...)`` tuples and lists, else the batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def model_inputs(pl_module: LightningModule, x: Any) -> Any:
    """What the network takes for the batch inputs ``x``: ``pl_module.encode(x)`` when the task offers it
    (an :class:`~spikenorm.callbacks.task_protocols.EncodingTask`), else ``x``."""
    return pl_module.encode(x) if isinstance(pl_module, EncodingTask) else x


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (Lightning's own rule)."""
    return int(extract_batch_size(batch))
