"""Where a callback writes its files: the folder the user gave, else beside the checkpoints or the run's logs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch import Trainer

from spikenorm.validation import check_choice

OutputBeside = Literal["checkpoints", "logs"]


def output_folder(trainer: Trainer, dirpath: str | Path | None = None, beside: OutputBeside = "checkpoints") -> Path:
    """The folder a callback writes its files to, created if missing.

    ``dirpath`` when the user gave one; else the checkpoint folder (``beside="checkpoints"``:
    ``trainer.checkpoint_callback.dirpath``) or the run's log folder (``beside="logs"``: ``trainer.log_dir``,
    the first logger's version folder); else ``trainer.default_root_dir``.
    """
    check_choice(beside, OutputBeside, "beside")
    run_folder = getattr(trainer.checkpoint_callback, "dirpath", None) if beside == "checkpoints" else trainer.log_dir
    folder = Path(dirpath or run_folder or trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
