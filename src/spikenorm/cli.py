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
* the number of time steps is given once, as the task's ``time_steps`` (and ``eval_time_steps``): links set the
  network's ``layers.time_steps`` where its norm needs it (``bntt``, ``tebn``, ``tab``) and an event datamodule's
  ``time_bins`` (see :meth:`SpikenormCLI.add_arguments_to_parser`). A linked value given in a config or on the
  command line must agree with the task's, or the CLI stops with an error naming both. An augmentation's
  ``keep_steps`` (random temporal deletion) is not linked but checked before anything is built
  (:func:`check_kept_steps`).

On start-up it sets the host allocator up for training (:mod:`spikenorm.allocator`;
``SPIKENORM_MALLOC=default`` opts out).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from spikenorm.allocator import retain_freed_memory
from spikenorm.callbacks import FoldNormalization, PredictionWriter
from spikenorm.checkpoint_files import check_checkpoint_file
from spikenorm.config import class_path_of, import_object, instantiate
from spikenorm.loggers import CSVLogger as AppendingCSVLogger
from spikenorm.models.layers import norm_accepts
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
from spikenorm.tasks.run_config import is_unrecorded

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: the task's spikenorm networks whose layer spec gets ``time_steps`` (``model.init_args.<name>``)
NETWORKS = ("model", "teacher")
#: keys the links set; a checkpoint's stored values of these are not used as defaults (the links recompute them)
LINKED_KEYS = (
    *(f"model.init_args.{net}.init_args.layers.time_steps" for net in NETWORKS),
    "data.init_args.time_bins",
)


def _disagree(name: str, given: Any, expected: Any, source: str) -> ValueError:
    return ValueError(
        f"{name}={given!r} disagrees with {source}={expected!r}: give the number of time steps once, "
        f"as the task's time_steps / eval_time_steps (the spikenorm CLI sets {name} from it)"
    )


def layer_time_steps(time_steps: int, norm: str, membrane_norm: str | None, given: int | None) -> int | None:
    """``layers.time_steps`` of a network: the task's ``time_steps`` when the norm or the membrane norm takes
    ``time_steps`` (``bntt``, ``tebn``, ``tab``), else what the spec says (None unless given)."""
    if given is not None and given != time_steps:
        raise _disagree("layers.time_steps", given, time_steps, "the task's time_steps")
    needed = any(name is not None and norm_accepts(name, "time_steps") for name in (norm, membrane_norm))
    return time_steps if needed else given


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
        super().__init__(
            LightningModule,
            None,  # data by class path but optional: RL tasks bring their own environment loop
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Parse-time links from the task's ``time_steps`` / ``eval_time_steps`` (a link whose keys a config lacks,
        such as a static datamodule's ``time_bins``, the RL task's network or a model without ``layers``, is
        skipped). Each link also reads its target, so a disagreeing value given by the user is refused instead
        of silently replaced."""
        task = "model.init_args"
        for net in NETWORKS:
            layers = f"{task}.{net}.init_args.layers"
            parser.link_arguments(
                (f"{task}.time_steps", f"{layers}.norm", f"{layers}.membrane_norm", f"{layers}.time_steps"),
                f"{layers}.time_steps",
                compute_fn=layer_time_steps,
            )
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``spikenorm`` console script.

    Before anything is allocated it lets malloc keep freed memory for reuse
    (:func:`spikenorm.allocator.retain_freed_memory`; faster CPU training, resident memory stays at its
    peak); ``SPIKENORM_MALLOC=default`` in the environment keeps glibc's defaults.
    """
    if os.environ.get("SPIKENORM_MALLOC", "retain") != "default":
        retain_freed_memory()
    SpikenormCLI(args=args)


if __name__ == "__main__":
    main()
