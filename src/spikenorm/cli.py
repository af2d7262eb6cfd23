"""The ``spikenorm`` console script: LightningCLI over every spikenorm task and datamodule.

``spikenorm fit --config recipes/quickstart.yaml`` trains, then tests the best checkpoint (or the final
weights when no checkpoint was kept) and prints a short summary: test accuracy, firing rate, which weights
were tested with which precision and compile setting, the folded model's check (and the precision it ran
in) and where the files and logs are. ``validate``, ``test`` and ``predict`` work as in any LightningCLI, with
these differences:

* a checkpoint is enough: ``spikenorm test --ckpt_path X`` rebuilds the task from the checkpoint's stored
  configuration; options given on the command line or in ``--config`` win over the stored ones (e.g.
  ``--model.init_args.eval_time_steps 1`` evaluates at ``T = 1``), and a network that differs from the
  checkpoint's is refused with the differing keys (``SpikingClassifier.on_load_checkpoint``);
* ``spikenorm fit --config C --ckpt_path last`` resumes the newest run that kept a ``last.ckpt``
  (:class:`~spikenorm.callbacks.LastCheckpoint`) and was started with the same configuration on every key that
  changes results, seed included (budgets such as ``max_epochs``, loggers and callbacks may differ:
  :data:`~spikenorm.run_dirs.RESUME_FREE_KEYS`), in the same log folder and the same W&B run; when no run
  matches it stops and lists each candidate with the keys it differs in;
* the resolved configuration is written into the run's log folder (without a logger, into
  ``<default_root_dir>/configs/``) and never overwrites a file;
* ``predict`` writes its predictions into the run's folder (:class:`~spikenorm.callbacks.PredictionWriter`);
* the number of time steps is given once, as the task's ``time_steps`` (and ``eval_time_steps``): the task gives it
  to its network when it is built (:func:`spikenorm.time_steps.bind_time_steps`, as in Python), and a link sets an
  event datamodule's ``time_bins`` (see :meth:`SpikenormCLI.add_arguments_to_parser`); a ``time_bins`` given in a
  config or on the command line must agree with the task's, or the CLI stops with an error naming both. An
  augmentation's ``keep_steps`` (random temporal deletion) is not linked but checked before anything is built
  (:func:`check_kept_steps`);
* config files and checkpoints of earlier releases load: their task arguments are upgraded to today's
  (:meth:`spikenorm.tasks.SpikingTask.upgrade_arguments`, e.g. spikenorm 0.1.0's ``training_mode: online`` becomes
  ``online: {update: batch}``) as each file is read.

``spikenorm diagnose --ckpt_path X`` measures the norm health of a checkpoint's network
(:func:`spikenorm.diagnostics.diagnose`: statistics error, train/eval gap, membrane against threshold, per layer) on
``--num_batches`` batches (4) of a split (``--split val|test|train``, default ``val``) or, for
:class:`~spikenorm.tasks.SpikingTD3`, on the newest states of the checkpoint's replay buffer (a rollout of the
loaded actor when the checkpoint keeps none). It rebuilds task and datamodule from the run configuration the
checkpoint stores (:data:`~spikenorm.run_dirs.RUN_CONFIG_KEY`; options on the command line win over it) or from
``--config``, prints the per-layer tables and writes them to ``<ckpt stem>.diagnosis.md`` and
``<ckpt stem>.diagnosis.json`` beside the checkpoint, never over an existing file (``.diagnosis-1.md``, ...;
``--overwrite`` replaces them). See :func:`diagnose_checkpoint`.

On start-up it sets the host allocator up for training (:mod:`spikenorm.allocator`;
``SPIKENORM_MALLOC=default`` opts out).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from spikenorm.allocator import retain_freed_memory
from spikenorm.callbacks import FoldNormalization, PredictionWriter
from spikenorm.checkpoint_files import check_checkpoint_file
from spikenorm.config import class_path_of, import_object, instantiate
from spikenorm.diagnostics import NormDiagnosis, diagnose
from spikenorm.loggers import CSVLogger as AppendingCSVLogger
from spikenorm.run_dirs import (
    LOGGER_VERSIONS_KEY,
    RUN_CONFIG_KEY,
    free_path,
    logger_versions,
    matching_last_checkpoint,
    recorded_logger_versions,
    result_config,
    run_folders,
)
from spikenorm.run_status import RunStatusRecorder
from spikenorm.tasks.argument_upgrades import upgrade_task_configs
from spikenorm.tasks.diagnosis_inputs import SPLITS, diagnosis_inputs
from spikenorm.tasks.run_config import is_unrecorded

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``spikenorm --help``'s description, which names the one command that is not a LightningCLI subcommand
MAIN_DESCRIPTION = (
    "spikenorm: fit, validate, test and predict spikenorm tasks (LightningCLI). Also: spikenorm diagnose "
    "--ckpt_path X, the norm health of a checkpoint's network (spikenorm diagnose --help); spikenorm study "
    "STUDY.yaml, a grid of fits (spikenorm study --help); spikenorm compare RUNS..., tables of finished runs "
    "(spikenorm compare --help)."
)
#: keys the links set; a checkpoint's stored values of these are not used as defaults (the links recompute them)
LINKED_KEYS = ("data.init_args.time_bins",)
#: jsonargparse's loader for config files and values: YAML, with the task arguments of earlier releases upgraded
CONFIG_LOADER = "spikenorm_yaml"


def load_upgraded_yaml(text: str) -> Any:
    """A YAML document as jsonargparse's own loader reads it, with every task config in it upgraded to today's
    arguments (:func:`~spikenorm.tasks.argument_upgrades.upgrade_task_configs`)."""
    return upgrade_task_configs(get_loader("yaml")(text))


set_loader(CONFIG_LOADER, load_upgraded_yaml, exceptions=(yaml.YAMLError,))


def _disagree(name: str, given: Any, expected: Any, source: str) -> ValueError:
    return ValueError(
        f"{name}={given!r} disagrees with {source}={expected!r}: give the number of time steps once, "
        f"as the task's time_steps / eval_time_steps (the spikenorm CLI sets {name} from it)"
    )


def frame_count(time_steps: int, eval_time_steps: int | None, given: int, data_class: str) -> int:
    """An event datamodule's ``time_bins``: the evaluation ``T`` (``eval_time_steps``, else ``time_steps``); the
    frames of a train batch are cut to ``time_steps`` by the augmentation (:func:`check_kept_steps`)."""
    frames = eval_time_steps or time_steps
    default = inspect.signature(import_object(data_class)).parameters["time_bins"].default
    if given not in (frames, default):
        raise _disagree("data time_bins", given, frames, "the task's eval_time_steps or time_steps")
    return frames


def check_kept_steps(config: Any) -> None:
    """Refuse an event augmentation whose ``keep_steps`` (random temporal deletion) is not the task's
    ``time_steps`` although ``eval_time_steps`` differs from it, or is set although it does not.

    Not a link: jsonargparse leaves link targets nested in two class-path levels (``data`` ->
    ``augmentation``) out of the config dump from which Lightning takes the datamodule's hyperparameters.
    """
    task, data = config.get("model"), config.get("data")
    augmentation = data.get("init_args", {}).get("augmentation") if data is not None else None
    if task is None or not hasattr(augmentation, "get") or "time_steps" not in task.get("init_args", {}):
        return
    time_steps, eval_time_steps = task.init_args.time_steps, task.init_args.get("eval_time_steps")
    keep = time_steps if eval_time_steps not in (None, time_steps) else None
    given = (augmentation.get("init_args") or {}).get("keep_steps")
    if given != keep:
        raise ValueError(
            f"data augmentation keep_steps={given!r} does not fit the task's time_steps={time_steps} and "
            f"eval_time_steps={eval_time_steps!r}: training on time_steps of the eval_time_steps frames needs "
            f"keep_steps={keep!r}"
        )


class RunConfigSaver(SaveConfigCallback):
    """Write the resolved configuration where the run's files are, never over an existing file.

    With a logger: ``<log dir>/config.yaml`` (a resumed run adds ``config-1.yaml``, ...). Without one:
    ``<default_root_dir>/configs/<stage>-config.yaml`` (numbered likewise), not the working directory, where the
    user's own ``config.yaml`` may be.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective call: every process asks
        if trainer.is_global_zero:
            if trainer.loggers:
                path = free_path(Path(log_dir) / "config.yaml")
            else:
                stage_name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
                path = free_path(Path(trainer.default_root_dir) / "configs" / f"{stage_name}-config.yaml")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=False, multifile=self.multifile)
            self.saved_path = path
        self.already_saved = trainer.strategy.broadcast(True)

    def summary_line(self) -> str | None:
        """What the CLI prints at the end of a fit."""
        path = getattr(self, "saved_path", None)
        return f"{'config':<14} {path}" if path else None


class RecordLoggerVersions(Callback):
    """Store each logger's class and version and the run's configuration (its
    :func:`~spikenorm.run_dirs.result_config`) in every checkpoint, for ``--ckpt_path last``."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        self.run_config = run_config

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[LOGGER_VERSIONS_KEY] = logger_versions(trainer.loggers)
        checkpoint[RUN_CONFIG_KEY] = self.run_config


def _subcommand_and_checkpoint(argv: list[str]) -> tuple[str | None, str | None]:
    """The subcommand and the ``--ckpt_path`` value of a command line."""
    subcommand = next((a for a in argv if a in SUBCOMMANDS), None)
    ckpt = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            ckpt = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt = arg.split("=", 1)[1]
    return subcommand, ckpt


def checkpoint_configs(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The ``model`` (task) and ``data`` configs a checkpoint stores, as far as it stores their class paths.

    Raises:
        ValueError: the file is empty or truncated (:func:`~spikenorm.checkpoint_files.check_checkpoint_file`).
    """
    check_checkpoint_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    configs = {}
    for key, entry in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hparams = dict(checkpoint.get(entry) or {})
        class_path = hparams.pop("_class_path", None)
        if class_path is not None:
            init_args = {k: v for k, v in hparams.items() if not k.startswith("_") and not is_unrecorded(v)}
            configs[key] = {"class_path": class_path, "init_args": init_args}
    configs = upgrade_task_configs(configs)
    for key in LINKED_KEYS:
        _drop(configs, key.split("."))
    return configs


def _drop(config: Any, path: list[str]) -> None:
    """Remove the nested entry ``path`` of a dict, if there."""
    for part in path[:-1]:
        config = config.get(part) if isinstance(config, dict) else None
    if isinstance(config, dict):
        config.pop(path[-1], None)


def _logger_entries(logger_config: Any) -> list[Any]:
    """The logger entries of a parsed config (``false``: none); Lightning's default logger is refused."""
    if logger_config is False:
        return []
    if logger_config is None or logger_config is True:
        raise ValueError(
            "--ckpt_path last needs the loggers spelled out (trainer.logger: a list of class_path entries, as in "
            "the recipes, or false), not Lightning's default logger, so that the resumed run can be put in the "
            "same log folder"
        )
    return list(logger_config) if isinstance(logger_config, list) else [logger_config]


class SpikenormCLI(LightningCLI):
    """LightningCLI with class-path selection of task and datamodule, self-contained checkpoints, resume by
    ``--ckpt_path last``, and a post-fit test and summary (see the module docstring)."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("parser_kwargs", {"description": MAIN_DESCRIPTION, "parser_mode": CONFIG_LOADER})
        super().__init__(
            LightningModule,
            None,  # data by class path but optional: RL tasks bring their own environment loop
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """A parse-time link from the task's ``time_steps`` / ``eval_time_steps`` to an event datamodule's
        ``time_bins`` (skipped for a datamodule without it). The link also reads its target, so a disagreeing value
        given by the user is refused instead of silently replaced."""
        task = "model.init_args"
        parser.link_arguments(
            (f"{task}.time_steps", f"{task}.eval_time_steps", "data.init_args.time_bins", "data.class_path"),
            "data.init_args.time_bins",
            compute_fn=frame_count,
        )

    def before_instantiate_classes(self) -> None:
        check_kept_steps(self.config[self.subcommand] if self.subcommand else self.config)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse with the task and data stored in ``--ckpt_path``'s checkpoint as defaults."""
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, list):
            subcommand, ckpt = _subcommand_and_checkpoint(argv)
            if subcommand and ckpt and Path(ckpt).is_file():
                stored = checkpoint_configs(ckpt)
                if stored:
                    self._parser(subcommand).set_defaults(stored)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Replaces Lightning's, which lets the checkpoint's hyperparameters override the user's options: here
        they are defaults (see :meth:`parse_arguments`). ``fit --ckpt_path last`` finds the run to resume."""
        if self.config.get("subcommand") == "fit" and self.config.fit.get("ckpt_path") == "last":
            self._resume_latest_run(self.config.fit)

    @staticmethod
    def _resume_latest_run(config: Any) -> None:
        """Point ``ckpt_path`` at the newest ``last.ckpt`` of a run started with this configuration
        (:func:`~spikenorm.run_dirs.matching_last_checkpoint`) and its loggers at that run."""
        loggers = _logger_entries(config.trainer.logger)
        root = config.trainer.default_root_dir or os.getcwd()
        explicit = [
            entry.init_args.dirpath
            for entry in (config.trainer.callbacks or [])
            if entry.class_path.endswith("LastCheckpoint") and entry.init_args.get("dirpath")
        ]
        if explicit:
            folder, pattern = Path(explicit[0]), "last.ckpt"
        else:
            first = instantiate(loggers[0].as_dict()) if loggers else None
            folder, pattern = run_folders(first, root)
        checkpoint = matching_last_checkpoint(folder, pattern, result_config(config.as_dict()))
        recorded = recorded_logger_versions(checkpoint)
        for i, entry in enumerate(loggers):
            declared = class_path_of(import_object(entry.class_path))
            if declared == class_path_of(CSVLogger):  # Lightning's deletes metrics.csv in an existing folder
                entry.class_path = class_path_of(AppendingCSVLogger)
            if entry.class_path == class_path_of(AppendingCSVLogger):  # drop the rows logged after the checkpoint
                entry.init_args.resume = True
            same_logger = i < len(recorded) and recorded[i]["class_path"] in (declared, entry.class_path)
            if same_logger:
                entry.init_args.version = recorded[i]["version"]
            elif i == 0 and not explicit:
                entry.init_args.version = checkpoint.parent.parent.name  # the run folder is the first logger's version
        config.ckpt_path = str(checkpoint)
        rank_zero_info(f"spikenorm: resuming {checkpoint}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, plus the callbacks the CLI's own features need."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            trainer.callbacks.append(RecordLoggerVersions(result_config(self.config[self.subcommand].as_dict())))
            trainer.callbacks.append(RunStatusRecorder())
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(PredictionWriter())
        return trainer

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted or trainer.fast_dev_run:
            return
        checkpoint = trainer.checkpoint_callback
        ckpt_path = "best" if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path else None
        if self.datamodule is None:  # nothing to test on (RL): summarise what was logged during fit
            results = [{k: float(v) for k, v in trainer.callback_metrics.items()}]
        else:
            results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        _record_finished(trainer, results[0] if results else {})
        if trainer.is_global_zero:
            weights = checkpoint.best_model_path if ckpt_path == "best" else "the final weights"
            print(
                summary(
                    results[0] if results else {},
                    trainer.loggers,
                    _callback_lines(trainer),
                    run_settings(trainer, self.model, weights if self.datamodule is not None else None),
                    _fold_check_dtype(trainer),
                )
            )

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            print(summary({}, self.trainer.loggers, _callback_lines(self.trainer)))


def _record_finished(trainer: Trainer, results: Mapping[str, Any]) -> None:
    """Mark the run ``finished`` in its ``run.json`` (:class:`~spikenorm.run_status.RunStatusRecorder`)."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunStatusRecorder):
            callback.finish(trainer, results)


def _callback_lines(trainer: Trainer) -> list[str]:
    """What callbacks report through ``summary_line()``."""
    return [line for cb in trainer.callbacks if (line := getattr(cb, "summary_line", lambda: None)())]


def _fold_check_dtype(trainer: Trainer) -> str | None:
    """The precision of the fold check (:class:`~spikenorm.callbacks.FoldNormalization`), if one ran."""
    return next((cb.check_dtype for cb in trainer.callbacks if isinstance(cb, FoldNormalization)), None)


def run_settings(trainer: Trainer, task: LightningModule, tested: str | None) -> str:
    """The summary's line on how its numbers were computed: the weights tested (a checkpoint path, or "the final
    weights"; None when nothing was tested, as in RL), the trainer's precision and whether the task compiled its
    network."""
    compiled = task.hparams.get("compile") if hasattr(task, "hparams") else None
    settings = f"precision {trainer.precision}, {'compiled' if compiled else 'not compiled'}"
    return f"{'tested':<14} {tested} ({settings})" if tested else f"{'settings':<14} {settings}"


def summary(
    metrics: dict[str, float],
    loggers: list[Any],
    callback_lines: list[str] = (),
    settings: str | None = None,
    fold_check_dtype: str | None = None,
) -> str:
    """Human-readable end-of-fit report.

    Args:
        metrics: the test results (RL: the metrics logged during fit).
        loggers: the trainer's loggers, whose files are listed.
        callback_lines: what callbacks report through ``summary_line()``.
        settings: :func:`run_settings`: which weights the numbers come from, precision and compile.
        fold_check_dtype: the precision the folded model was checked in, next to its numbers.
    """
    lines = ["", "spikenorm summary"]
    for key, label in (
        ("test/acc", "test accuracy"),
        ("test/firing_rate", "firing rate"),
        ("rl/eval_return", "eval return"),
        ("rl/best_eval_return", "best eval"),
        ("rl/env_steps", "env steps"),
        ("rl/env_steps_per_s", "env steps/s"),
    ):
        if key in metrics:
            lines.append(f"  {label:<14} {float(metrics[key]):.4f}")
    if settings:
        lines.append(f"  {settings}")
    if "test/acc_folded" in metrics:
        checked = f" (the same weights, both models run in {fold_check_dtype})" if fold_check_dtype else ""
        lines.append(
            f"  {'folded model':<14} accuracy {float(metrics['test/acc_folded']):.4f}, "
            f"{int(metrics['test/flipped_spikes_folded'])} flipped spikes, "
            f"max |output difference| {float(metrics['test/max_abs_diff_folded']):.2g}{checked}"
        )
    lines += [f"  {line}" for line in callback_lines]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run_dir = Path(logger.experiment.dir).parent  # the folder `wandb sync` takes (files/ is inside it)
            lines.append(f"  {'wandb run':<14} {run_dir}")
            if logger._offline:
                lines.append(f"  {'upload with':<14} wandb sync {run_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"  {'csv metrics':<14} {logger.log_dir}/metrics.csv")
        elif getattr(logger, "log_dir", None):
            lines.append(f"  {type(logger).__name__:<14} {logger.log_dir}")
    return "\n".join(lines)


# -- spikenorm diagnose ------------------------------------------------------------------------------------

DIAGNOSE = "diagnose"
#: the keys of a stored run configuration that rebuild task and data (the trainer is not built for a diagnosis)
_REBUILD_KEYS = ("model", "data", "seed_everything")


class DiagnoseCLI(SpikenormCLI):
    """The CLI's parser (links and checks included) for ``spikenorm diagnose``: builds the task and the datamodule
    of a config, with ``stored`` (a checkpoint's run configuration) as defaults, and no trainer, logger or
    callback (nothing is written, nothing needs a device)."""

    def __init__(self, args: list[str], stored: dict[str, Any] | None = None) -> None:
        self.stored = stored
        super().__init__(args=args, run=False, save_config_callback=None)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if self.stored:
            parser.set_defaults(self.stored)
        LightningCLI.parse_arguments(self, parser, args)

    def instantiate_classes(self) -> None:
        config = self.config.clone()
        for key in ("logger", "callbacks", "plugins", "profiler"):
            config.trainer[key] = None
        self.config_init = self.parser.instantiate_classes(config)
        self.model = self.config_init.get("model")
        self.datamodule = self.config_init.get("data")
        self.trainer = None


def stored_run_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The task (``model``), ``data`` and ``seed_everything`` entries of the run configuration a checkpoint stores
    (:data:`~spikenorm.run_dirs.RUN_CONFIG_KEY`, flat keys), nested again as a config; the keys the CLI's links
    compute (:data:`LINKED_KEYS`) are left out, and so is a distillation ``checkpoint`` (the teacher's weights are in
    the checkpoint, as ``spikenorm test`` reads it); an earlier release's task arguments are upgraded. None when the
    checkpoint stores no run configuration."""
    flat = checkpoint.get(RUN_CONFIG_KEY)
    if flat is None:
        return None
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key.split(".", 1)[0] not in _REBUILD_KEYS or key in LINKED_KEYS:
            continue
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    nested = upgrade_task_configs(nested)
    distillation = ((nested.get("model") or {}).get("init_args") or {}).get("distillation")
    distillation_args = distillation.get("init_args") if isinstance(distillation, dict) else None
    if distillation_args and distillation_args.get("checkpoint") is not None:  # the teacher's weights are stored
        distillation_args["checkpoint"] = None
    return nested


def diagnosis_paths(checkpoint_path: str | os.PathLike[str], overwrite: bool = False) -> tuple[Path, Path]:
    """``<stem>.diagnosis.md`` and ``<stem>.diagnosis.json`` beside the checkpoint; unless ``overwrite``, the first
    pair ``<stem>.diagnosis-<n>.md/.json`` of which neither file exists (as :func:`~spikenorm.run_dirs.free_path`
    numbers a config), so the two files of one diagnosis keep one name."""
    path = Path(checkpoint_path)
    n = 0
    while True:
        name = f"{path.stem}.diagnosis{f'-{n}' if n else ''}"
        pair = (path.with_name(f"{name}.md"), path.with_name(f"{name}.json"))
        if overwrite or not any(p.exists() for p in pair):
            return pair
        n += 1


def _diagnosis_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class CheckpointDiagnosis:
    """What :func:`diagnose_checkpoint` measured (``diagnosis``), on what (``source``: checkpoint, task, data,
    device, as written into the JSON file), and where it wrote it (``markdown_path``, ``json_path``)."""

    diagnosis: NormDiagnosis
    source: dict[str, Any]
    markdown_path: Path
    json_path: Path

    def markdown(self) -> str:
        """The Markdown file: a heading, what was diagnosed, and :meth:`NormDiagnosis.markdown`'s tables."""
        s = self.source
        lines = [
            f"# Norm diagnosis: {Path(s['checkpoint']).name}",
            "",
            f"- checkpoint: `{s['checkpoint']}`",
            f"- task: `{s['task']}`" + (f" (training_mode {s['training_mode']})" if s.get("training_mode") else ""),
            f"- data: {s['data']}",
            f"- device: {s['device']}",
        ]
        if s.get("note"):
            lines.append(f"- note: {s['note']}")
        return "\n".join(lines) + "\n\n" + self.diagnosis.markdown()

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "diagnosis": self.diagnosis.to_dict()}, indent=2, allow_nan=True)


def diagnose_checkpoint(
    ckpt_path: str | os.PathLike[str],
    cli_args: Sequence[str] = (),
    num_batches: int = 4,
    split: str | None = None,
    states: str = "auto",
    device: str = "auto",
    overwrite: bool = False,
) -> CheckpointDiagnosis:
    """``spikenorm diagnose``: rebuild a checkpoint's task and datamodule, load its weights, diagnose its network
    (:func:`spikenorm.diagnostics.diagnose`) and write ``<stem>.diagnosis.md`` / ``.json`` beside it.

    Args:
        ckpt_path: a checkpoint written by ``spikenorm fit`` (or any Lightning checkpoint of a spikenorm task, with
            ``--config``).
        cli_args: the CLI's own options: ``--config cfg.yaml`` (then the checkpoint's stored run configuration is
            not used), ``--model.init_args...``, ``--data.init_args...`` (e.g. ``--data.init_args.batch_size 16``),
            which win over the stored configuration.
        num_batches: batches to diagnose on (fewer when the split or the replay buffer holds fewer).
        split: ``val`` (default), ``test`` or ``train`` for a classifier; not for an RL task.
        states: an RL task's states: ``auto`` (the replay buffer, else a rollout), ``replay`` or ``rollout``
            (:func:`~spikenorm.tasks.diagnosis_inputs.diagnosis_inputs`).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        overwrite: replace existing diagnosis files instead of numbering new ones (:func:`diagnosis_paths`).

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: an empty or truncated checkpoint; one that stores no run configuration while no ``--config``
            is given; a network that differs from the checkpoint's; an unknown split.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"spikenorm diagnose: no checkpoint at {path}")
    check_checkpoint_file(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    cli_args = list(cli_args)
    given_config = any(a in ("-c", "--config") or a.startswith("--config=") for a in cli_args)
    stored = None if given_config else stored_run_config(checkpoint)
    if stored is None and not given_config:
        raise ValueError(
            f"spikenorm diagnose: {path} stores no run configuration (the '{RUN_CONFIG_KEY}' entry `spikenorm fit` "
            "writes into every checkpoint), so its task and data cannot be rebuilt from it: pass the config it was "
            f"trained with, e.g. spikenorm diagnose --ckpt_path {path} --config recipes/<recipe>.yaml"
        )
    with warnings.catch_warnings():  # Lightning warns that sys.argv holds arguments too: the diagnose options
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = DiagnoseCLI(cli_args, stored)
    task, datamodule = cli.model, cli.datamodule
    task.on_load_checkpoint(checkpoint)  # as Lightning restores: a different network is refused; RL: the replay
    task.load_state_dict(checkpoint["state_dict"], strict=getattr(task, "strict_loading", True))
    task.eval()
    inputs = diagnosis_inputs(task, datamodule, split, num_batches, states)  # on the CPU (an RL rollout's env is)
    target = _diagnosis_device(device)
    task.to(target)
    inputs.batches = [batch.to(target) for batch in inputs.batches]
    diagnosis = diagnose(**inputs.kwargs())
    samples = sum(len(batch) if inputs.output == "actions" else batch.shape[1] for batch in inputs.batches)
    if inputs.source in SPLITS:
        data = f"the {inputs.source} split of {type(datamodule).__name__}"
    else:
        data = "the replay buffer's newest states" if inputs.source == "replay" else "a rollout of the loaded actor"
    source = {
        "checkpoint": str(path.resolve()),
        "task": class_path_of(type(task)),
        "training_mode": getattr(task, "training_mode", None),
        "data": f"{data}: {len(inputs.batches)} batch(es), {samples} samples",
        "split": inputs.source,
        "batches": len(inputs.batches),
        "samples": samples,
        "device": str(target),
        "note": inputs.note,
    }
    markdown_path, json_path = diagnosis_paths(path, overwrite)
    result = CheckpointDiagnosis(diagnosis, source, markdown_path, json_path)
    markdown_path.write_text(result.markdown(), encoding="utf-8")
    json_path.write_text(result.to_json() + "\n", encoding="utf-8")
    return result


def diagnose_parser() -> argparse.ArgumentParser:
    """The options of ``spikenorm diagnose`` (the CLI's config options, ``--config``, ``--model.*``, ``--data.*``,
    pass through to the task and data parser)."""
    parser = argparse.ArgumentParser(
        prog=f"spikenorm {DIAGNOSE}",
        allow_abbrev=False,
        description=(
            "Norm health of a checkpoint's network (spikenorm.diagnostics.diagnose): per-layer statistics error, "
            "train/eval gap and membrane against threshold, printed and written to <ckpt stem>.diagnosis.md and "
            ".json beside the checkpoint. The task and data are rebuilt from the run configuration the checkpoint "
            "stores, or from --config; --model.init_args.* and --data.init_args.* options win over either."
        ),
        epilog=(
            "Also accepted, as by spikenorm test: -c/--config CONFIG (the config the checkpoint was trained with; "
            "then the stored one is not used), --model.init_args.* and --data.init_args.* (e.g. "
            "--data.init_args.batch_size 16), --seed_everything."
        ),
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint (e.g. logs/<run>/checkpoints/last.ckpt)")
    parser.add_argument("--num_batches", type=int, default=4, help="batches to diagnose on (default 4)")
    parser.add_argument("--split", choices=tuple(SPLITS), default=None, help="a classifier's data split (default val)")
    parser.add_argument(
        "--states",
        choices=("auto", "replay", "rollout"),
        default="auto",
        help="an RL task's states: the replay buffer's newest (auto: when the checkpoint keeps one), or a rollout",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing diagnosis files")
    return parser


def diagnose_command(argv: Sequence[str]) -> CheckpointDiagnosis:
    """Run ``spikenorm diagnose <argv>``: print the tables and where they were written."""
    options, rest = diagnose_parser().parse_known_args(list(argv))
    result = diagnose_checkpoint(
        options.ckpt_path,
        rest,
        num_batches=options.num_batches,
        split=options.split,
        states=options.states,
        device=options.device,
        overwrite=options.overwrite,
    )
    print(result.markdown())
    print(f"written        {result.markdown_path}\n               {result.json_path}")
    return result


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``spikenorm`` console script.

    Before anything is allocated it lets malloc keep freed memory for reuse
    (:func:`spikenorm.allocator.retain_freed_memory`; faster CPU training, resident memory stays at its
    peak); ``SPIKENORM_MALLOC=default`` in the environment keeps glibc's defaults.

    ``spikenorm diagnose ...`` is not a LightningCLI subcommand (it runs no trainer): :func:`diagnose_command`.
    The console script is :func:`spikenorm.commands.main`, which also dispatches ``study`` and ``compare``.
    """
    if os.environ.get("SPIKENORM_MALLOC", "retain") != "default":
        retain_freed_memory()
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == DIAGNOSE:
        diagnose_command(argv[1:])
        return
    SpikenormCLI(args=args)


if __name__ == "__main__":
    main()
