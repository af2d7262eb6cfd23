"""The ``spikenorm`` console script: LightningCLI over every spikenorm task and datamodule.

``spikenorm fit --config recipes/quickstart.yaml`` trains, then tests the best checkpoint (or the final
weights when no checkpoint was kept) and prints a short summary: test accuracy, firing rate and where
the logs are. ``validate``, ``test`` and ``predict`` work as in any LightningCLI. On start-up it sets the
host allocator up for training (:mod:`spikenorm.allocator`; ``SPIKENORM_MALLOC=default`` opts out).
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from spikenorm.allocator import retain_freed_memory


class SpikenormCLI(LightningCLI):
    """LightningCLI with class-path selection of task and datamodule and a post-fit test and summary."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            LightningModule,
            None,  # data by class path but optional: RL tasks bring their own environment loop
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

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
            extra = [line for cb in trainer.callbacks if (line := getattr(cb, "summary_line", lambda: None)())]
            print(summary(results[0] if results else {}, trainer.loggers, ckpt_path, checkpoint, extra))


def summary(metrics: dict[str, float], loggers: list[Any], ckpt_path: str | None, checkpoint: Any,
            callback_lines: list[str] = ()) -> str:
    """Human-readable end-of-fit report (``callback_lines``: what callbacks report through ``summary_line()``)."""
    lines = ["", "spikenorm summary"]
    for key, label in (("test/acc", "test accuracy"), ("test/firing_rate", "firing rate"),
                       ("rl/eval_return", "eval return"), ("rl/best_eval_return", "best eval"),
                       ("rl/env_steps", "env steps"),
                       ("rl/env_steps_per_s", "env steps/s")):
        if key in metrics:
            lines.append(f"  {label:<14} {float(metrics[key]):.4f}")
    if "test/acc_folded" in metrics:
        lines.append(
            f"  {'folded model':<14} accuracy {float(metrics['test/acc_folded']):.4f}, "
            f"{int(metrics['fold/test_flipped_spikes'])} flipped spikes, "
            f"max |output difference| {float(metrics['fold/test_max_abs_diff']):.2g}"
        )
    lines += [f"  {line}" for line in callback_lines]
    if ckpt_path == "best":
        lines.append(f"  {'checkpoint':<14} {checkpoint.best_model_path}")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            lines.append(f"  {'wandb run':<14} {logger.experiment.dir}")
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
