"""The data side of "one home for T": a datamodule's frames must have the task's ``T``, checked at setup."""

from __future__ import annotations

from typing import Any


def data_frame_counts(datamodule: Any) -> tuple[int | None, int | None]:
    """``(training frames, evaluation frames)`` per sample a datamodule delivers, as far as it says: evaluation
    frames are its ``time_bins`` hyperparameter, training frames its ``train_time_steps`` (fewer under random
    temporal deletion) or else the same. ``(None, None)`` for data without a time axis of its own."""
    hparams = getattr(datamodule, "hparams", None) or {}
    frames = hparams.get("time_bins")
    return getattr(datamodule, "train_time_steps", frames), frames


def check_data_time_steps(trainer: Any, time_steps: int, eval_time_steps: int | None, encoding: str) -> None:
    """Refuse, before any batch, a datamodule of event frames (``encoding="frames"``) whose frame count is not the
    task's ``T``: training batches must have ``time_steps`` frames, evaluation batches ``eval_time_steps`` (else
    ``time_steps``). The spikenorm CLI links ``time_bins`` to the task's ``T``; in Python the datamodule is built
    separately, so this is where a mismatch shows."""
    datamodule = getattr(trainer, "datamodule", None)
    if encoding != "frames" or datamodule is None:
        return
    train_frames, eval_frames = data_frame_counts(datamodule)
    wanted = {"training": (train_frames, time_steps), "evaluation": (eval_frames, eval_time_steps or time_steps)}
    frames_wanted = eval_time_steps or time_steps
    deletion = f" and an augmentation keeping {time_steps} steps" if frames_wanted != time_steps else ""
    for split, (frames, steps) in wanted.items():
        if frames is not None and frames != steps:
            source = "time_steps" if split == "training" or eval_time_steps is None else "eval_time_steps"
            raise ValueError(
                f"{type(datamodule).__name__} delivers {frames} frames per {split} sample, but the task's {source} "
                f"is {steps}: T has one home, the task; build the datamodule with time_bins={frames_wanted}{deletion}"
            )
