"""What a task stores to rebuild itself and logs to make its runs comparable.

A task's constructor takes objects (the network, a teacher, optimizer and scheduler factories). In its
hyperparameters (the checkpoint's ``hyper_parameters``) each object is replaced by its config
(:func:`spikenorm.config.describe`), so ``load_from_checkpoint(path)`` rebuilds the network with no code or
config from the user; :func:`build_object` turns a stored config back into the object. An object whose
construction was not recorded is stored as ``{"unrecorded": <reason>, "type": <class path>}``: the
checkpoint then needs the object passed again, and says so.

:func:`run_config` gathers the flat, filterable keys a run logs (``task.*``, ``model.*``, ``teacher.*``,
``optimizer.*``, ``lr_scheduler.*``, ``data.*``, ``trainer.*``, ``seed``, ``versions.*``).
:func:`network_differences` compares the network a checkpoint was trained with against the one it is loaded
into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from spikenorm.config import (
    UnrecordableError,
    class_path_of,
    describe,
    differences,
    flatten,
    import_object,
    instantiate,
    is_config,
    with_defaults,
)

#: Trainer settings that change a run's results, logged as ``trainer.<name>``.
TRAINER_KEYS = (
    "max_epochs",
    "max_steps",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "num_devices",
    "num_nodes",
    "strategy",
    "accelerator",
)


def object_config(obj: Any, given: Any = None) -> dict[str, Any] | None:
    """The config stored for a constructor object: its recorded config, else LightningCLI's (``given``), else
    an ``unrecorded`` marker with the reason; ``None`` for ``None``."""
    if obj is None:
        return None
    try:
        return describe(obj)
    except UnrecordableError as error:
        if is_config(given):  # the class path spelled as describe() spells it, so configs compare equal
            return {**given, "class_path": class_path_of(import_object(given["class_path"]))}
        return {"unrecorded": str(error), "type": class_path_of(type(obj))}


def is_unrecorded(value: Any) -> bool:
    """Whether ``value`` is the marker :func:`object_config` stores for an object it could not record."""
    return isinstance(value, Mapping) and "unrecorded" in value


def build_object(value: Any, name: str, partial: bool = False) -> Any:
    """``value`` itself, or the object its stored config describes (a factory when ``partial``).

    Raises:
        ValueError: ``value`` is an ``unrecorded`` marker: the checkpoint cannot rebuild the object.
    """
    if is_config(value):
        return instantiate(value, partial=partial)
    if is_unrecorded(value):
        raise ValueError(
            f"this checkpoint cannot rebuild its {name} ({value.get('type')}): {value['unrecorded']}. Pass it "
            f"again, e.g. SpikingClassifier.load_from_checkpoint(path, {name}=...)"
        )
    return value


def network_differences(saved: Mapping[str, Any], current: Mapping[str, Any], names: tuple[str, ...]) -> list[str]:
    """Flat ``key: old -> new`` lines where the stored configs of ``names`` differ between two hparams.

    Objects that were not recorded on either side cannot be compared and are skipped; checkpoints written
    before configs were stored (no ``name`` key) likewise.
    """
    lines: list[str] = []
    for name in names:
        if name not in saved or name not in current:
            continue
        old, new = saved[name], current[name]
        if (old is None) != (new is None):
            lines.append(
                f"{name}: {'absent' if old is None else old.get('class_path')} -> "
                f"{'absent' if new is None else new.get('class_path')}"
            )
        elif is_config(old) and is_config(new):
            lines += differences(old, new, name)
    return lines


def _versions() -> dict[str, str]:
    """Installed versions, as the packages report them (torch's includes its CUDA build, e.g. ``+cu130``)."""
    import lightning
    import torch

    import spikenorm

    return {
        "versions.spikenorm": spikenorm.__version__,
        "versions.torch": str(torch.__version__),
        "versions.lightning": lightning.__version__,
    }


def _trainer_settings(trainer: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key in TRAINER_KEYS:
        if key == "strategy":
            value = type(trainer.strategy).__name__
        elif key == "accelerator":
            value = type(trainer.accelerator).__name__
        elif key == "gradient_clip_val":
            value = trainer.gradient_clip_val
        else:
            value = getattr(trainer, key, None)
        settings[f"trainer.{'devices' if key == 'num_devices' else key}"] = value
    return settings


def run_config(
    task_type: type, hparams: Mapping[str, Any], object_names: tuple[str, ...], trainer: Any = None
) -> dict[str, Any]:
    """The flat configuration a run logs.

    Args:
        task_type: the task's class (``task.class_path``).
        hparams: the task's hyperparameters, objects already replaced by their configs.
        object_names: which hparams are objects (logged under their own prefix, e.g. ``model.norm``); the
            other task arguments are logged as ``task.<name>``.
        trainer: the Lightning trainer, for ``trainer.*``, the datamodule's ``data.*`` and the seed.
    """
    flat: dict[str, Any] = {"task.class_path": class_path_of(task_type)}
    for key, value in hparams.items():
        if key.startswith("_"):
            continue
        if key in object_names:
            flat.update(flatten(with_defaults(value), key) if value is not None else {f"{key}.class_path": None})
        else:
            flat.update(flatten(value, f"task.{key}"))
    if trainer is not None:
        flat.update(_trainer_settings(trainer))
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            flat["data.class_path"] = class_path_of(type(datamodule))
            data_args = {k: v for k, v in datamodule.hparams_initial.items() if not k.startswith("_")}
            flat.update(flatten(data_args, "data") if data_args else {})
    seed = os.environ.get("PL_GLOBAL_SEED")
    flat["seed"] = int(seed) if seed is not None else None
    flat.update(_versions())
    return flat
