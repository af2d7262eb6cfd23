"""Refuse an empty split when a stage is set up, instead of a run that exits 0 with a result from nothing.

Lightning meets a training loader with no batches with an info line ("No training batches") and goes on to
``on_fit_end``; an empty validation or test loader is skipped the same way. A spikenorm run would then test,
fold and log as if it had trained. :func:`check_splits_not_empty` runs in a task's ``setup`` (after the
datamodule's ``setup``, before anything is trained or evaluated) and raises a ``ValueError`` naming the split.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from lightning.pytorch.utilities.model_helpers import is_overridden

#: per stage: (split, the loop that owns its loader source, the trainer's ``limit_*_batches``, the step hook)
_STAGE_SPLITS = {
    "fit": (
        ("train", "fit_loop", "limit_train_batches", "training_step"),
        ("validation", "fit_loop.epoch_loop.val_loop", "limit_val_batches", "validation_step"),
    ),
    "validate": (("validation", "validate_loop", "limit_val_batches", "validation_step"),),
    "test": (("test", "test_loop", "limit_test_batches", "test_step"),),
    "predict": (("predict", "predict_loop", "limit_predict_batches", "predict_step"),),
}


def _loop(trainer: Any, path: str) -> Any:
    for part in path.split("."):
        trainer = getattr(trainer, part)
    return trainer


def empty_loaders(loaders: Any) -> list[int]:
    """Positions of the loaders in ``loaders`` (one loader or a collection, as a ``*_dataloader`` hook returns)
    whose length is 0; loaders without a length are never counted as empty."""
    flat = CombinedLoader(loaders, "sequential").flattened
    return [i for i, loader in enumerate(flat) if sized_len(loader) == 0]


def check_splits_not_empty(trainer: Any, module: Any, stage: str) -> None:
    """Raise if a split the ``stage`` runs has no batches.

    A split is checked when the stage runs it: its step hook is overridden, its source is defined (a
    datamodule's or the module's ``*_dataloader`` hook, or loaders passed to the trainer) and its
    ``limit_*_batches`` is not 0 (0 is the user's way to switch a split off). The loaders are requested once
    from the source (building them iterates nothing).

    Raises:
        ValueError: naming the split and where its loader came from.
    """
    for split, loop_path, limit, hook in _STAGE_SPLITS.get(str(getattr(stage, "value", stage)), ()):
        source = _loop(trainer, loop_path)._data_source
        if source.instance is None or getattr(trainer, limit) == 0 or not is_overridden(hook, module):
            continue
        if not source.is_defined():
            continue
        empty = empty_loaders(source.dataloader())
        if empty:
            origin = type(source.instance).__name__ if source.is_module() else "the loaders given to the trainer"
            raise ValueError(
                f"the {split} split is empty: {origin}'s {source.name} gives a loader with no batches "
                f"(loader {empty[0]}). Check the dataset's path and split sizes (a batch_size larger than the "
                f"split with drop_last=True also gives none), or set trainer.{limit}=0 to run without it."
            )
