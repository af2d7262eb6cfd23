"""SpikingTD3 end to end on MuJoCo: logging to offline W&B, eval-mode targets, checkpoint/resume."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import SHORT_TD3_RUN, quiet_trainer, spikenorm_cli
from lightning.pytorch import seed_everything

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.models import POPSAN_LAYERS, LayerSpec
from spikenorm.tasks import SpikingTD3
from spikenorm.wandb_runs import read_offline_run

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMALL = {**SHORT_TD3_RUN, "hidden": (32, 32), "eval_every": 120}


def _trainer(tmp_path, callbacks=()):
    """The whole run is one epoch; every step is logged."""
    return quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=list(callbacks), log_every_n_steps=1)


def test_td3_runs_end_to_end_with_eval_mode_targets_and_recalibration(tmp_path):
    seed_everything(0)
    task = SpikingTD3(**SMALL)
    target_modes: list[bool] = []
    task.actor_target.register_forward_hook(lambda m, i, o: target_modes.append(m.training))
    recalibration = ReplayRecalibration(every_n_env_steps=100, num_batches=4, batch_size=32)
    _trainer(tmp_path, [recalibration]).fit(task)
    assert task.env_steps == 240 and task.updates == 240 - 80 + 1
    assert target_modes and not any(target_modes)  # the target actor always ran in eval mode
    assert recalibration.recalibrations == 2
    assert [steps for steps, _ in task.eval_history] == [120, 240]


def test_quickstart_rl_cli_run_logs_to_offline_wandb(tmp_path):
    """The real command in a fresh process (a fresh wandb service writing under tmp_path)."""
    overrides = [f"--model.init_args.{k}={v}" for k, v in SMALL.items() if k != "hidden"]
    done = spikenorm_cli(
        tmp_path,
        "fit",
        "--config",
        str(RECIPES / "quickstart_rl.yaml"),
        *overrides,
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks.init_args.every_n_env_steps=100",
        "--trainer.callbacks.init_args.num_batches=4",
    )
    assert "eval return" in done.stdout
    run = read_offline_run(next((tmp_path / "logs" / "wandb").glob("offline-run-*")))
    keys = set().union(*run["history"])
    assert {
        "rl/eval_return",
        "rl/best_eval_return",
        "rl/env_steps_per_s",
        "train/critic_loss",
        "train/actor_loss",
    } <= keys
    assert any(k.startswith("recalibration/stat_error/") for k in keys)


def test_checkpoint_resume_restores_networks_optimizers_carebn_and_callback(tmp_path):
    seed_everything(1)
    task = SpikingTD3(**SMALL)
    callback = ReplayRecalibration(every_n_env_steps=100, num_batches=2, batch_size=16)
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(task)
    path = tmp_path / "td3.ckpt"
    trainer.save_checkpoint(path)
    carebn = [m for m in task.actor.modules() if type(m).__name__ == "CaReBN"]
    assert carebn and int(carebn[0].num_batches_tracked) > 0

    restored = SpikingTD3(**SMALL)
    restored_callback = ReplayRecalibration(every_n_env_steps=100, num_batches=2, batch_size=16)
    resumed = _trainer(tmp_path, [restored_callback])
    resumed.fit(restored, ckpt_path=path)  # the run is complete: this only restores
    for (name, a), b in zip(task.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    for opt_a, opt_b in zip(trainer.optimizers, resumed.optimizers):
        for state_a, state_b in zip(opt_a.state.values(), opt_b.state.values()):
            assert all(torch.equal(state_a[k], state_b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert (restored.env_steps, restored.updates) == (task.env_steps, task.updates)
    assert restored.eval_history == task.eval_history
    assert restored_callback.state_dict() == callback.state_dict() and callback.recalibrations == 2


def test_ddpg_and_hard_target_updates_run(tmp_path):
    seed_everything(2)
    task = SpikingTD3(
        **{
            **SMALL,
            "algorithm": "ddpg",
            "target_update": "hard",
            "hard_update_every": 20,
            "actor_layers": LayerSpec(norm="bn", neuron="clif", surrogate="rectangle"),
        }
    )
    _trainer(tmp_path).fit(task)
    assert task.updates == 240 - 80 + 1
    for a, b in zip(task.actor.parameters(), task.actor_target.parameters()):
        assert a.shape == b.shape


def test_compile_option_compiles_the_actor_and_trains(tmp_path):
    """``compile`` compiles the actor in place (state dict keys unchanged) at configure_model; the target actor,
    a copy made before, stays uncompiled. aot_eager: dynamo and AOTAutograd, without inductor's C++ build."""
    seed_everything(0)
    task = SpikingTD3(**SMALL, compile={"backend": "aot_eager"})
    keys = set(task.state_dict())
    _trainer(tmp_path).fit(task)
    assert task.updates == 240 - 80 + 1 and len(task.eval_history) == 2
    assert task.actor._compiled_call_impl is not None and task.actor_target._compiled_call_impl is None
    assert set(task.state_dict()) == keys
    assert all(torch.isfinite(loss) for loss in task._losses.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="takes no argument"):
        SpikingTD3(compile={"fullgraf": True})
    with pytest.raises(ValueError, match="unknown algorithm"):
        SpikingTD3(algorithm="sac")
    with pytest.raises(ValueError, match="multiple of frames_per_batch"):
        SpikingTD3(warmup_steps=101, frames_per_batch=10, total_env_steps=1000)
    with pytest.raises(ValueError, match="must be below total_env_steps"):
        SpikingTD3(warmup_steps=100, total_env_steps=100)


def test_actor_norm_kwargs_reach_the_carebn_layers():
    from spikenorm.norm import CaReBN

    task = SpikingTD3(
        **SMALL,
        actor_layers=LayerSpec(
            norm="carebn", norm_kwargs={"prior": "debiased", "noise": "prior"}, neuron="clif", surrogate="rectangle"
        ),
    )
    layers = [m for m in task.actor.modules() if isinstance(m, CaReBN)]
    assert layers and all((m.prior, m.noise) == ("debiased", "prior") for m in layers)
    # a mapping of some fields keeps the others of the default actor (CLIF, rectangle), as the CLI does
    partial = SpikingTD3(**SMALL, actor_layers={"norm_kwargs": {"prior": "debiased"}})
    assert partial.hparams.actor_layers == {**asdict(POPSAN_LAYERS), "norm_kwargs": {"prior": "debiased"}}
