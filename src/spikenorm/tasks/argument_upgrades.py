"""Task arguments of earlier releases -> today's, so that their configs and checkpoints keep loading.

spikenorm 0.1.0 configured online training and knowledge distillation with flat flags of
:class:`~spikenorm.tasks.SpikingClassifier`; they are now parts given to the task
(:class:`~spikenorm.tasks.OnlineTraining`, :class:`~spikenorm.tasks.Distillation`). Used by
:meth:`~spikenorm.tasks.base.SpikingTask.load_from_checkpoint` (stored hyperparameters) and by the CLI (config files
and the configurations checkpoints store).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spikenorm.config import import_object
from spikenorm.tasks.base import SpikingTask

#: 0.1.0's distillation flags -> the :class:`~spikenorm.tasks.Distillation` arguments they became
DISTILLATION_FLAGS = {
    "teacher": "teacher",
    "teacher_checkpoint": "checkpoint",
    "teacher_input": "inputs",
    "teacher_epochs": "epochs",
    "teacher_lr": "lr",
    "kd_weight": "weight",
    "kd_temperature": "temperature",
    "kd_per_step": "per_step",
}
#: 0.1.0's online-training flags
ONLINE_FLAGS = ("training_mode", "online_update")
DISTILLATION_CLASS_PATH = "spikenorm.tasks.Distillation"


def upgrade_classifier_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``SpikingClassifier`` arguments with 0.1.0's flags turned into parts:

    * ``training_mode: online`` (+ ``online_update: U``) -> ``online: {update: U}``; ``training_mode: bptt`` -> none;
    * ``teacher: X`` (+ ``teacher_checkpoint``, ``teacher_input``, ``teacher_epochs``, ``teacher_lr``, ``kd_weight``,
      ``kd_temperature``, ``kd_per_step``) -> ``distillation: {class_path: spikenorm.tasks.Distillation,
      init_args: {teacher: X, checkpoint, inputs, epochs, lr, weight, temperature, per_step}}``; without a teacher
      the flags are dropped (they did nothing).

    Arguments of today's spelling pass unchanged; giving a flag together with the part it became is refused.
    """
    upgraded = dict(arguments)
    mode = upgraded.pop("training_mode", None)
    update = upgraded.pop("online_update", None)
    if mode == "online":
        _refuse_both(upgraded, "online", "training_mode")
        upgraded["online"] = {"update": update or "batch"}
    elif mode not in (None, "bptt"):
        raise ValueError(f"unknown training_mode {mode!r} (spikenorm 0.1.0); available: bptt, online")
    flags = {new: upgraded.pop(old) for old, new in DISTILLATION_FLAGS.items() if old in upgraded}
    if flags.get("teacher") is not None:
        _refuse_both(upgraded, "distillation", "teacher")
        upgraded["distillation"] = {"class_path": DISTILLATION_CLASS_PATH, "init_args": flags}
    return upgraded


def _refuse_both(arguments: Mapping[str, Any], part: str, flag: str) -> None:
    if arguments.get(part) is not None:
        raise ValueError(
            f"the task is given both {part}= and spikenorm 0.1.0's {flag}= flag, which became {part}=: give {part} only"
        )


def upgrade_task_configs(value: Any) -> Any:
    """``value`` (a parsed config file, or any part of one) with the ``init_args`` of every spikenorm task config in it
    upgraded by its class's :meth:`~spikenorm.tasks.base.SpikingTask.upgrade_arguments`; anything else unchanged."""
    if isinstance(value, list):
        return [upgrade_task_configs(item) for item in value]
    if not isinstance(value, dict):
        return value
    upgraded = {key: upgrade_task_configs(item) for key, item in value.items()}
    task = _task_class(upgraded.get("class_path"))
    if task is not None and isinstance(upgraded.get("init_args"), Mapping):
        upgraded["init_args"] = task.upgrade_arguments(upgraded["init_args"])
    return upgraded


def _task_class(class_path: Any) -> type | None:
    """The spikenorm task class a class path names, or None (not a string, not importable, not a task)."""
    if not isinstance(class_path, str) or not class_path.startswith("spikenorm."):
        return None
    try:
        cls = import_object(class_path)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, SpikingTask) else None
