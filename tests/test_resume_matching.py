"""``--ckpt_path last`` resumes the run of the given configuration, not the newest run in the folder (issue 25,
row 2).

Before, after a seed-0 run and then a seed-1 run in one log folder, ``--seed_everything 0 --ckpt_path last``
resumed the seed-1 run, and its W&B run then recorded ``seed: 0``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import offline_wandb

from spikenorm.run_dirs import RUN_CONFIG_KEY, matching_last_checkpoint, result_config
from spikenorm.wandb_runs import read_offline_run

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
TRAIN_BATCHES = 3


def _save(path: Path, config: dict | None, mtime: int) -> Path:
    path.parent.mkdir(parents=True)
    torch.save({} if config is None else {RUN_CONFIG_KEY: config}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_result_config_leaves_out_budgets_loggers_and_callbacks():
    config = {
        "seed_everything": 0,
        "ckpt_path": "last",
        "trainer": {"max_epochs": 4, "precision": "bf16-mixed", "logger": [{"class_path": "x"}], "callbacks": []},
        "model": {"class_path": "T", "init_args": {"time_steps": 4, "total_env_steps": 10, "betas": (0.9, 0.99)}},
    }
    assert result_config(config) == {
        "seed_everything": 0,
        "trainer.precision": "bf16-mixed",
        "model.class_path": "T",
        "model.init_args.time_steps": 4,
        "model.init_args.betas": [0.9, 0.99],
    }


def test_the_newest_matching_run_is_resumed_and_a_newer_other_run_is_passed_over(tmp_path):
    seed0 = {"seed_everything": 0, "model.init_args.norm": "tdbn"}
    older = _save(tmp_path / "version_0" / "checkpoints" / "last.ckpt", seed0, 100)
    _save(tmp_path / "version_1" / "checkpoints" / "last.ckpt", {**seed0, "seed_everything": 1}, 200)
    newer = _save(tmp_path / "version_2" / "checkpoints" / "last.ckpt", seed0, 50)
    os.utime(newer, (300, 300))
    assert matching_last_checkpoint(tmp_path, "*/checkpoints/last.ckpt", seed0) == newer
    os.utime(newer, (10, 10))
    assert matching_last_checkpoint(tmp_path, "*/checkpoints/last.ckpt", seed0) == older


def test_a_folder_without_last_ckpt_is_an_error_saying_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.ckpt matches .*LastCheckpoint"):
        matching_last_checkpoint(tmp_path, "*/checkpoints/last.ckpt", {"seed_everything": 0})


def test_no_matching_run_is_refused_listing_each_candidate_and_its_differences(tmp_path):
    _save(tmp_path / "version_0" / "checkpoints" / "last.ckpt", {"seed_everything": 0, "norm": "tdbn"}, 100)
    _save(tmp_path / "version_1" / "checkpoints" / "last.ckpt", None, 200)
    with pytest.raises(ValueError) as info:
        matching_last_checkpoint(tmp_path, "*/checkpoints/last.ckpt", {"seed_everything": 0, "norm": "tebn"})
    message = str(info.value)
    assert "none of the 2 runs" in message and "norm: 'tdbn' -> 'tebn'" in message
    assert "version_1" in message and "it stores no run configuration" in message
    assert message.index("version_1") < message.index("version_0")  # newest first


def _recipe(folder: Path) -> Path:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(
        limit_train_batches=TRAIN_BATCHES, limit_val_batches=1, limit_test_batches=1, enable_progress_bar=False
    )
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wandb_seed(folder: Path, run_id: str) -> list:
    runs = sorted((folder / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    return [read_offline_run(run)["config"].get("seed") for run in runs]


def test_resume_last_picks_the_run_of_the_given_seed_and_refuses_an_unknown_seed(tmp_path, monkeypatch):
    """Through the CLI, in this process (the recipe's loggers write under ``tmp_path``)."""
    import wandb

    from spikenorm.cli import main

    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # LightningCLI warns when pytest's arguments are there too
    monkeypatch.chdir(tmp_path)
    recipe = str(_recipe(tmp_path))
    runs = tmp_path / "logs" / "quickstart"

    def fit(*args: str) -> None:
        """One ``spikenorm fit``; its W&B run ends with it, as the run of a process of its own would."""
        try:
            main(["fit", "--config", recipe, *args])
        finally:
            wandb.finish()

    with offline_wandb(tmp_path):
        fit("--seed_everything", "0", "--trainer.max_epochs", "2")
        fit("--seed_everything", "1", "--trainer.max_epochs", "1")
        seed0 = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        assert seed0[RUN_CONFIG_KEY]["seed_everything"] == 0

        fit("--seed_everything", "0", "--trainer.max_epochs", "3", "--ckpt_path", "last")
        with pytest.raises(ValueError) as refused:
            fit("--seed_everything", "2", "--ckpt_path", "last")
    assert "seed_everything: 0 -> 2" in str(refused.value) and "seed_everything: 1 -> 2" in str(refused.value)
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    steps = [
        torch.load(runs / v / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for v in runs.iterdir()
    ]
    assert sorted(steps) == [TRAIN_BATCHES, 3 * TRAIN_BATCHES]  # seed 1: 1 epoch; seed 0: resumed to 3 epochs
    assert torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == (
        3 * TRAIN_BATCHES
    )
    run_id = next(v["version"] for v in seed0["spikenorm_loggers"] if v["class_path"].endswith("WandbLogger"))
    assert _wandb_seed(tmp_path, run_id) == [0, 0]  # the resumed W&B run is the seed-0 run, still seed 0
