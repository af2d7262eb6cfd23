"""``load_from_checkpoint`` that names an empty or truncated checkpoint file, for every spikenorm task."""

from __future__ import annotations

from typing import Any

from typing_extensions import Self

from spikenorm.checkpoint_files import check_checkpoint_file


class ChecksCheckpointFiles:
    """Mixin before ``LightningModule``: Lightning's ``load_from_checkpoint``, except that an empty or truncated
    file is named as such (:func:`~spikenorm.checkpoint_files.check_checkpoint_file`) instead of an ``EOFError``
    without a message."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Self:
        check_checkpoint_file(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]
