"""What a crashed run leaves in its logs (issue 25, rows 5 and 12).

Row 5: a fit killed with SIGKILL and resumed from its ``last.ckpt`` keeps, in the killed W&B run, the config and
every history row up to the checkpoint, and its ``metrics.csv`` ends up with the rows of an uninterrupted run
(no row twice). Row 12: a fit that fails at setup marks its W&B run as crashed (exit code 1, not finished) and
leaves no empty ``version_<n>`` folder.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import offline_wandb
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from spikenorm.loggers import CSVLogger, WandbLogger
from spikenorm.wandb_runs import read_offline_run

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"

# A small fit run as a user's script: 10 steps an epoch, 2 epochs, a row every step, last.ckpt every 4 steps;
# ``kill`` SIGKILLs it after optimizer step ``kill`` (before that step's checkpoint and row); ``resume`` resumes
# from last.ckpt. ``resume`` is what ``spikenorm fit --ckpt_path last`` gives the CSV logger.
SCRIPT = """
import os, signal, sys
import torch
import lightning.pytorch as pl
from spikenorm.callbacks import LastCheckpoint
from spikenorm.datamodules.base import ResumableDataLoader
from spikenorm.loggers import CSVLogger, WandbLogger


class Tiny(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.linear(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.linear(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class KillAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


mode = sys.argv[1]
pl.seed_everything(0)
generator = torch.Generator().manual_seed(0)
x, y = torch.randn(160, 4, generator=generator), torch.randint(0, 2, (160,), generator=generator)
data = torch.utils.data.TensorDataset(x, y)
loggers = [CSVLogger(save_dir="logs", name="run", version=0, resume=mode == "resume")]
if mode != "straight":
    loggers.append(WandbLogger(save_dir="logs", id="crashed0", config={"note": "from wandb.init"}))
trainer = pl.Trainer(
    accelerator="cpu", max_epochs=2, deterministic=True, logger=loggers, log_every_n_steps=1,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    callbacks=[LastCheckpoint(every_n_train_steps=4)] + ([KillAt(int(mode))] if mode.isdigit() else []),
)
trainer.fit(
    Tiny(),
    ResumableDataLoader(data, batch_size=16, shuffle=True),
    torch.utils.data.DataLoader(data, batch_size=80),
    ckpt_path="logs/run/version_0/checkpoints/last.ckpt" if mode == "resume" else None,
)
"""


def _script(folder: Path, mode: str) -> subprocess.CompletedProcess:
    """Run ``SCRIPT`` in ``folder`` as a user runs it, W&B offline and confined to ``folder``."""
    (folder / "fit.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_SILENT": "true", "HOME": str(folder)}
    return subprocess.run(
        [sys.executable, "fit.py", mode], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_checkpoint_waits_until_the_wandb_log_on_disk_holds_what_was_logged(tmp_path):
    """What the run's transaction log holds right after a checkpoint is what a SIGKILL then would leave."""
    with offline_wandb(tmp_path):
        logger = WandbLogger(save_dir=tmp_path / "logs", config={"lr": 0.1})
        log = logger.experiment.settings.sync_file
        for step in range(3):
            logger.log_metrics({"train/loss": float(step)}, step)
        logger.after_save_checkpoint(ModelCheckpoint(dirpath=tmp_path))  # Lightning calls it after each save
        at_checkpoint = read_offline_run(log)
        logger.log_metrics({"train/loss": 3.0}, 3)  # a row Lightning logs after the save, in the same step
        logger.save()  # which Lightning follows with save(): the first one after a checkpoint waits too
        after_it = read_offline_run(log)
        logger.experiment.finish()
    assert at_checkpoint["config"]["lr"] == 0.1
    assert [row["train/loss"] for row in at_checkpoint["history"]] == [0.0, 1.0, 2.0]
    assert [row["trainer/global_step"] for row in after_it["history"]] == [0, 1, 2, 3]


def _csv_rows(version: Path) -> list[dict[str, str]]:
    with (version / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _logged_rows(rows: list[dict[str, str]]) -> list[tuple[int, str, float]]:
    """(step, key, value) of every metric a CSV has, in file order."""
    return [
        (int(row["step"]), key, float(value))
        for row in rows
        for key, value in sorted(row.items())
        if key not in ("step", "epoch") and value != ""
    ]


@pytest.mark.slow  # three Lightning fits in fresh processes (start-up of torch, Lightning and the W&B service)
def test_sigkill_then_resume_keeps_wandb_history_and_logs_no_csv_row_twice(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight.mkdir()
    crashed.mkdir()
    assert _script(straight, "straight").returncode == 0

    killed = _script(crashed, "7")  # killed mid-epoch 0 after step 7; last.ckpt is step 4's
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (killed_run,) = (crashed / "logs" / "wandb").glob("offline-run-*")
    version = crashed / "logs" / "run" / "version_0"
    assert [int(row["step"]) for row in _csv_rows(version)] == [0, 1, 2, 3, 4, 5]  # 4 and 5: after the checkpoint
    resumed = _script(crashed, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # the CSV: the uninterrupted run's rows, each once (the killed process's rows after step 4 are gone)
    expected = _logged_rows(_csv_rows(straight / "logs" / "run" / "version_0"))
    got = _logged_rows(_csv_rows(version))
    assert len({(step, key) for step, key, _ in got}) == len(got), "a (step, key) row is in metrics.csv twice"
    assert got == expected

    # the killed W&B run holds its config and every row up to the checkpoint (step 3's row is logged right
    # after the step-4 checkpoint, in the same training step, and is not logged again by the resumed run)
    run = read_offline_run(killed_run)
    assert run["exit_code"] is None and not run["finished"]  # killed: no exit record
    assert run["config"]["lr"] == 0.1 and run["config"]["note"] == "from wandb.init"
    killed_rows = [(row["trainer/global_step"], "train/loss", row["train/loss"]) for row in run["history"]]
    assert killed_rows[:4] == [row for row in expected if row[0] <= 3]

    (resumed_run,) = set((crashed / "logs" / "wandb").glob("offline-run-*")) - {killed_run}
    after = read_offline_run(resumed_run)
    assert after["finished"] and resumed_run.name.endswith("crashed0")  # the same W&B run, continued
    resumed_rows = [
        (row["trainer/global_step"], key, row[key])
        for row in after["history"]
        for key in ("train/loss", "val/loss")
        if key in row
    ]
    assert killed_rows[:4] + resumed_rows == expected


def _two_processes(folder: Path, first: list, second: list, resume: bool) -> list[tuple[int, list[str]]]:
    """(step, metric keys) of each row of metrics.csv after one process logged the rows ``first`` and a second one,
    writing into the same version folder with ``resume``, logged ``second``."""
    for rows, resuming in ((first, False), (second, resume)):
        logger = CSVLogger(folder, name="run", version=0, resume=resuming)
        for step, metrics in rows:
            logger.log_metrics(metrics, step)
            logger.save()  # Lightning's trainer saves after every log_metrics call
    rows = _csv_rows(folder / "run" / "version_0")
    return [(int(row["step"]), sorted(k for k, v in row.items() if v and k != "step")) for row in rows]


def test_resumed_csv_drops_the_rows_it_logs_again(tmp_path):
    # checkpoint at the end of an epoch (step 20): the epoch row at step 20 was logged after it and is kept; the
    # killed process's rows from step 20 on are logged again by the resumed run
    crashed = [(19, {"train/loss": 1.0}), (19, {"val/acc": 0.5}), (20, {"train/acc_epoch": 0.4})]
    crashed += [(20, {"train/loss": 0.9}), (21, {"train/loss": 0.8})]
    resumed = [(20, {"train/loss": 0.9}), (21, {"train/loss": 0.8}), (22, {"train/loss": 0.7})]
    assert _two_processes(tmp_path / "a", crashed, resumed, resume=True) == [
        (19, ["train/loss"]),
        (19, ["val/acc"]),
        (20, ["train/acc_epoch"]),
        (20, ["train/loss"]),
        (21, ["train/loss"]),
        (22, ["train/loss"]),
    ]
    # the resumed run's rows at its first step come one save at a time: each drops its own older copy only
    crashed = [(5, {"train/loss": 1.0}), (6, {"train/loss": 0.9}), (6, {"val/acc": 0.5}), (7, {"train/loss": 0.8})]
    resumed = [(6, {"train/loss": 0.9}), (6, {"val/acc": 0.5}), (7, {"train/loss": 0.8})]
    assert [step for step, _ in _two_processes(tmp_path / "b", crashed, resumed, resume=True)] == [5, 6, 6, 7]


def test_csv_without_resume_appends_and_drops_nothing(tmp_path):
    rows = [(0, {"train/loss": 1.0}), (1, {"train/loss": 0.9})]
    assert [step for step, _ in _two_processes(tmp_path, rows, rows, resume=False)] == [0, 1, 0, 1]


class FailAtSetup(Callback):
    """A callback whose ``setup`` raises: a fit that crashes after the loggers started and before training."""

    def setup(self, trainer, pl_module, stage) -> None:
        raise ValueError("this callback fails at setup")


def test_fit_failing_at_setup_is_a_crashed_run_and_leaves_no_empty_version_folder(tmp_path, monkeypatch):
    """Through the CLI, in this process: the W&B run's exit record says 1, and no ``version_<n>`` is left."""
    from spikenorm.cli import main

    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # LightningCLI warns when pytest's arguments are there too
    recipe = yaml.safe_load(QUICKSTART.read_text())
    for logger in recipe["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path / "logs")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with offline_wandb(tmp_path), pytest.raises(ValueError, match="fails at setup"):
        main(["fit", "--config", str(tmp_path / "recipe.yaml"), f"--trainer.callbacks+={__name__}.FailAtSetup"])

    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["finished"] is False and run["exit_code"] == 1
    assert not list((tmp_path / "logs" / "quickstart").glob("version_*"))  # nothing was written: no folder
