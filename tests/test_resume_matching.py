"""``--ckpt_path last`` resumes the run of the given configuration, not the newest run in the folder (issue 25,
row 2).

Before, after a seed-0 run and then a seed-1 run in one log folder, ``--seed_everything 0 --ckpt_path last``
resumed the seed-1 run, and its W&B run then recorded ``seed: 0``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers import spikenorm_cli

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


def test_no_matching_run_is_refused_listing_each_candidate_and_its_differences(tmp_path):
    _save(tmp_path / "version_0" / "checkpoints" / "last.ckpt", {"seed_everything": 0, "norm": "tdbn"}, 100)
    _save(tmp_path / "version_1" / "checkpoints" / "last.ckpt", None, 200)
    with pytest.raises(ValueError) as info:
        matching_last_checkpoint(tmp_path, "*/checkpoints/last.ckpt", {"seed_everything": 0, "norm": "tebn"})
    message = str(info.value)
    assert "none of the 2 runs" in message and "norm: 'tdbn' -> 'tebn'" in message
    assert "version_1" in message and "it stores no run configuration" in message
    assert message.index("version_1") < message.index("version_0")  # newest first


def _recipe(folder: Path) -> None:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(
        limit_train_batches=TRAIN_BATCHES, limit_val_batches=1, limit_test_batches=1, enable_progress_bar=False
    )
    (folder / "recipe.yaml").write_text(yaml.safe_dump(config))


def _fit(folder: Path, *args: str, check: bool = True):
    return spikenorm_cli(folder, "fit", "--config", "recipe.yaml", *args, check=check, PYTHONHASHSEED="0")


def _wandb_seed(folder: Path, run_id: str) -> list:
    runs = sorted((folder / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    return [read_offline_run(run)["config"].get("seed") for run in runs]


def test_resume_last_picks_the_run_of_the_given_seed_and_refuses_an_unknown_seed(tmp_path):
    _recipe(tmp_path)
    _fit(tmp_path, "--seed_everything", "0", "--trainer.max_epochs", "2")
    _fit(tmp_path, "--seed_everything", "1", "--trainer.max_epochs", "1")
    runs = tmp_path / "logs" / "quickstart"
    seed0 = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert seed0[RUN_CONFIG_KEY]["seed_everything"] == 0

    resumed = _fit(tmp_path, "--seed_everything", "0", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert f"resuming {Path('logs/quickstart/version_0/checkpoints/last.ckpt')}" in resumed.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    assert torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == (
        3 * TRAIN_BATCHES
    )
    assert torch.load(runs / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == (
        TRAIN_BATCHES
    )
    run_id = next(v["version"] for v in seed0["spikenorm_loggers"] if v["class_path"].endswith("WandbLogger"))
    assert _wandb_seed(tmp_path, run_id) == [0, 0]  # the resumed W&B run is the seed-0 run, still seed 0

    refused = _fit(tmp_path, "--seed_everything", "2", "--ckpt_path", "last", check=False)
    assert refused.returncode != 0
    assert "seed_everything: 0 -> 2" in refused.stderr and "seed_everything: 1 -> 2" in refused.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
