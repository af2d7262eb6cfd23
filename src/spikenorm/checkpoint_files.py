"""Say what is wrong with a checkpoint file that cannot be a checkpoint: empty, or cut short.

A process killed while saving leaves a file of 0 bytes or a zip archive without its end. ``torch.load`` then
fails with an ``EOFError`` without a message, "cannot mmap an empty file", or "PytorchStreamReader failed
reading zip archive"; none names the file or the cause. :func:`check_checkpoint_file` names both.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["check_checkpoint_file"]


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(
        f"checkpoint {path} {what}: a process killed while saving it leaves such a file. Use another checkpoint "
        "(e.g. the previous last.ckpt or a best checkpoint) or delete this one."
    )


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Raise a ``ValueError`` naming ``path`` if it is an empty or truncated checkpoint file.

    A checkpoint ``torch.save`` writes is a zip archive, whose directory is at its end: a file without that
    directory was cut short. A file that is not a zip archive at all (``torch.save`` with the legacy format) is
    read once to tell a legacy checkpoint from a damaged one. Anything that is not a local file (a remote URL
    Lightning can read) is left to the loader.

    Raises:
        ValueError: the file is empty (0 bytes), or truncated / not a checkpoint, with its size.
    """
    path = Path(path)
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, "is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise _damaged(path, f"is truncated or not a checkpoint ({size} bytes; {type(error).__name__}: {error})") from (
            error
        )
