"""Every recipe runs through the spikenorm CLI (fast_dev_run); the W&B offline run holds val/acc."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import spikenorm_cli

from spikenorm.cli import main
from spikenorm.datamodules.testing import write_cifar10, write_cifar10dvs, write_ibm_gesture
from spikenorm.models import SpikingResNet19
from spikenorm.wandb_runs import read_offline_run

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# what each recipe needs beyond its YAML to run offline on a CPU in seconds
CIFAR_ON_CPU = [
    "--data.init_args.verify_checksums=false",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]
DVS_ON_CPU = [
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--data.init_args.sensor_size=16",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]
OVERRIDES = {
    "quickstart.yaml": [],
    "quickstart_mpbn.yaml": [],
    "quickstart_osr.yaml": [],
    "cifar10_resnet19_tdbn.yaml": [*CIFAR_ON_CPU, "--model.init_args.model.init_args.width=0.125"],
    "cifar10_resnet19_mpbn.yaml": [*CIFAR_ON_CPU, "--model.init_args.model.init_args.width=0.125"],
    "cifar10_vggsnn_osr.yaml": [*CIFAR_ON_CPU, "--model.init_args.model.init_args.cfg=[8, A, 16]"],
    "quickstart_bw.yaml": ["--model.init_args.distillation.init_args.epochs=1"],
    "cifar10_resnet19_bw.yaml": [
        *CIFAR_ON_CPU,
        "--model.init_args.model.init_args.width=0.125",
        "--model.init_args.distillation.init_args.teacher.init_args.width=0.125",
    ],
    "cifar10_transformer_bw.yaml": [
        *CIFAR_ON_CPU,
        "--model.init_args.model.init_args.embed_dim=16",
        "--model.init_args.model.init_args.num_heads=2",
        "--model.init_args.model.init_args.depth=1",
        "--model.init_args.distillation.init_args.teacher.init_args.width=0.125",
    ],
    **{
        f"td3_carebn_{env}.yaml": ["--trainer.accelerator=cpu", "--model.init_args.buffer_size=1000"]
        for env in ("halfcheetah", "ant", "walker2d")
    },
    # the rows of the CaRe-BN paper's main table, each on InvertedDoublePendulum-v5 and Hopper-v5
    **{
        f"td3_{row}_{env}.yaml": ["--trainer.accelerator=cpu", "--model.init_args.buffer_size=1000"]
        for row in ("ann", "popsan", "tdbn", "tebn", "tab", "carebn")
        for env in ("inverteddoublependulum", "hopper")
    },
    "quickstart_rl.yaml": [],
    "dqn_carebn_cartpole.yaml": [],
    # the CaRe-BN discrete-control rows on Pong from RAM (the atari extra)
    **{
        f"dqn_{row}_pong_ram.yaml": ["--trainer.accelerator=cpu", "--model.init_args.buffer_size=1000"]
        for row in ("carebn", "vanilla", "ann")
    },
    "quickstart_dvs.yaml": [],
    "dvsgesture_vggsnn_osr.yaml": [*DVS_ON_CPU, "--model.init_args.model.init_args.cfg=[8, A, 16]"],
    "cifar10dvs_vggsnn_osr.yaml": [*DVS_ON_CPU, "--model.init_args.model.init_args.cfg=[8, A, 16]"],
    "cifar10dvs_resnet19_mpbn.yaml": [
        *DVS_ON_CPU,
        "--model.init_args.model.init_args.width=0.125",
        "--model.init_args.model.init_args.input_size=16",
    ],
}


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    import wandb

    # wandb's long-lived service writes run records relative to the directory it started in: stop any
    # service left by an earlier test so this test's runs land in its own tmp_path
    wandb.teardown()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPIKENORM_CACHE", str(tmp_path / "cache"))  # event-digits streams stay in tmp_path
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # the CLI gets its arguments from main(args)
    return tmp_path


def test_every_recipe_is_covered():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(OVERRIDES)


def fast_dev_run(recipe: str, root: Path, *options: str) -> None:
    """``spikenorm fit`` of ``recipe`` with ``fast_dev_run``, its OVERRIDES and ``options``, on data written to
    ``root``."""
    if "pong" in recipe:
        pytest.importorskip("ale_py", reason="the Pong recipes need the atari extra: pip install 'spikenorm[atari]'")
    write_cifar10(root / "data")
    if recipe.startswith("dvsgesture"):
        train_trials = [f"user{u:02d}_led" for u in range(1, 11)]  # 120 segments: every class in validation
        write_ibm_gesture(str(root / "data"), train_trials, ["user24_natural"], np.random.default_rng(0))
    if recipe.startswith("cifar10dvs"):
        write_cifar10dvs(str(root / "data"), 20, np.random.default_rng(0))
    if recipe.startswith("cifar10") and recipe.endswith("_bw.yaml"):  # the teacher's weights, where the recipe looks
        teacher = root / "logs/cifar10_resnet19_tdbn/version_0/checkpoints/last.ckpt"
        teacher.parent.mkdir(parents=True, exist_ok=True)
        torch.save(SpikingResNet19(num_classes=10, width=0.125).state_dict(), teacher)
    main(["fit", "--config", str(RECIPES / recipe), "--trainer.fast_dev_run=true", *OVERRIDES[recipe], *options])


@pytest.mark.parametrize("recipe", sorted(OVERRIDES))
def test_recipe_fast_dev_run(recipe, offline_env):
    fast_dev_run(recipe, offline_env)


#: one recipe per kind of task runs under bf16-mixed in the default suite, every other one is marked slow:
#: classification (BPTT, tdBN), MPBN, online OSR/OTS, TD3 with CaRe-BN (manual optimization), and distillation of
#: a binary-weight student, which the transformer recipe covers too. quickstart_dvs (the same task and model as
#: quickstart on event frames) is slow: generating its event streams costs over a minute per run.
BF16_DEFAULT = {
    "quickstart.yaml",
    "quickstart_mpbn.yaml",
    "quickstart_osr.yaml",
    "quickstart_rl.yaml",
    "cifar10_transformer_bw.yaml",
}


@pytest.mark.parametrize(
    "recipe", [r if r in BF16_DEFAULT else pytest.param(r, marks=pytest.mark.slow) for r in sorted(OVERRIDES)]
)
def test_recipe_fast_dev_run_bf16_mixed(recipe, offline_env):
    """Every recipe trains, validates and folds under Lightning's bf16 autocast (``--trainer.precision``)."""
    fast_dev_run(recipe, offline_env, "--trainer.precision=bf16-mixed")


def test_quickstart_wandb_offline_run_holds_val_acc(offline_env, capsys):
    main(
        [
            "fit",
            "--config",
            str(RECIPES / "quickstart.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
        ]
    )
    import wandb

    wandb.finish()
    wandb.teardown()  # waits for the service to write the run's last records
    runs = list((offline_env / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    val_rows = [row for row in run["history"] if "val/acc" in row]
    assert val_rows and 0.0 <= val_rows[-1]["val/acc"] <= 1.0
    assert any("val/firing_rate" in row for row in run["history"])
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "firing rate" in printed and str(runs[0].name) in printed


#: the event-frame quickstart generates its event streams in every process (about half a minute under DDP, a minute
#: for its full run): those two runs are slow; its fast_dev_run above keeps the DVS path in the default suite. The
#: online quickstart under DDP is slow too: tests/test_bn_baselines.py and tests/test_distributed_stats.py pool its
#: statistics over two processes in the default suite. So is the quickstart's (20 s): the default suite keeps a
#: Lightning DDP fit in tests/test_bn_recalibration_callback.py and the statistics pooling in
#: tests/test_distributed_stats.py
SLOW_DVS = SLOW_DDP = pytest.mark.slow


@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param("quickstart", marks=SLOW_DDP),
        pytest.param("quickstart_osr", marks=SLOW_DDP),
        pytest.param("quickstart_dvs", marks=SLOW_DVS),
    ],
)
def test_quickstart_ddp_two_cpu_processes(tmp_path, recipe):
    done = spikenorm_cli(
        tmp_path,
        "fit",
        "--config",
        str(RECIPES / f"{recipe}.yaml"),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        SPIKENORM_CACHE=str(tmp_path / "cache"),
    )
    assert "world_size: 2" in done.stderr + done.stdout or "GLOBAL_RANK: 1" in done.stderr + done.stdout
    assert "test accuracy" in done.stdout
    metrics = next((tmp_path / "logs" / recipe).glob("version_*/metrics.csv")).read_text()
    assert "val/acc" in metrics and "train/loss" in metrics


@pytest.mark.parametrize(
    ("recipe", "bar"), [("quickstart", 0.93), pytest.param("quickstart_dvs", 0.90, marks=SLOW_DVS)]
)
def test_quickstart_reaches_its_accuracy(offline_env, capsys, recipe, bar):
    """The full CPU runs (99.4% and 94.2% measured with seed 0) clear a bar below the documented accuracy."""
    import wandb

    main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--trainer.enable_progress_bar=false"])
    wandb.finish()  # close the run in this process before the next test starts another one
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy")[1].split()[0])
    assert accuracy >= bar, printed
    assert "folded model   accuracy" in printed and " 0 flipped spikes" in printed, printed
