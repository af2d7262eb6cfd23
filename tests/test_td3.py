"""SpikingTD3 end to end on MuJoCo: logging to offline W&B, eval-mode targets, checkpoint/resume."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import SHORT_TD3_RUN, offline_wandb, quiet_trainer, spikenorm_cli
from lightning.pytorch import seed_everything

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.models import POPSAN_LAYERS, LayerSpec, MLPActor, PopSANActor
from spikenorm.norm.base import NORMS
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


# a fresh process and W&B service (~17 s): slow. The default suite runs the RL recipe through the CLI in-process
# (test_quickstart_rl_with_the_ann_actor_is_one_flag) and reads offline W&B runs back in tests/test_recipes.py
@pytest.mark.slow
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


def test_quickstart_rl_with_the_ann_actor_is_one_flag(tmp_path, monkeypatch, capsys):
    """The recipe's ReplayRecalibration (``unusable: warn``) steps aside for an actor without statistics and the summary
    says why; the summary's eval return is the final policy's; checkpoints are named by env steps, last.ckpt kept.
    Through the CLI, in this process."""
    import sys

    import wandb

    from spikenorm.cli import main

    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # LightningCLI warns when pytest's arguments are there too
    monkeypatch.chdir(tmp_path)
    overrides = [f"--model.init_args.{k}={v}" for k, v in {**SMALL, "eval_every": 100}.items() if k != "hidden"]
    with offline_wandb(tmp_path):
        try:
            main(["fit", "--config", str(RECIPES / "quickstart_rl.yaml"), *overrides, "--model.init_args.actor=ann"])
        finally:
            wandb.finish()
    stdout = capsys.readouterr().out
    assert "not re-calibrated: the policy network of SpikingTD3 (MLPActor) has no BN layer" in stdout
    run = tmp_path / "logs" / "quickstart_rl" / "version_0"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["env_steps=240.ckpt", "last.ckpt"]
    with open(run / "metrics.csv", newline="") as f:
        evaluations = [(int(r["step"]), float(r["rl/eval_return"])) for r in csv.DictReader(f) if r["rl/eval_return"]]
    assert [step for step, _ in evaluations] == [100, 200, 240]  # the final policy, evaluated once
    (line,) = [line for line in stdout.splitlines() if line.strip().startswith("eval return")]
    assert float(line.split()[-1]) == pytest.approx(evaluations[-1][1], abs=1e-4)


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


def test_fused_optimizer_option_and_the_implementation_a_checkpoint_records():
    from spikenorm.tasks import SpikingDQN

    fused = SpikingTD3(actor="ann", actor_layers=None, hidden=(8,))
    default = SpikingTD3(actor="ann", actor_layers=None, hidden=(8,), fused_optimizer=False)
    assert [o.param_groups[0]["fused"] for o in fused.configure_optimizers()] == [True, True]
    assert [o.param_groups[0]["fused"] for o in default.configure_optimizers()] == [None, None]
    assert SpikingDQN(fused_optimizer=False).configure_optimizers().param_groups[0]["fused"] is None
    # resuming restores the optimizer state, which records the implementation: a checkpoint written with torch's
    # default Adam (as before the option existed) continues with it, bit for bit
    critic_opt = fused.configure_optimizers()[1]
    critic_opt.load_state_dict(default.configure_optimizers()[1].state_dict())
    assert critic_opt.param_groups[0]["fused"] is None
    with pytest.raises(TypeError, match="fused_optimizer"):
        SpikingTD3(fused_optimizer="yes")


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


def test_ann_actor_trains_and_its_checkpoint_rebuilds_it(tmp_path):
    """``actor="ann"``: TD3's ReLU MLP (the CaRe-BN paper's ANN row) trains, and a checkpoint loaded without
    unpickling code rebuilds the MLP with the same weights."""
    seed_everything(3)
    task = SpikingTD3(**SMALL, actor="ann")
    assert isinstance(task.actor, MLPActor) and isinstance(task.actor_target, MLPActor)
    assert [m.out_features for m in task.actor.net if isinstance(m, torch.nn.Linear)] == [32, 32, 1]
    assert (task.hparams.actor, task.hparams.actor_layers) == ("ann", None)
    initial = [p.detach().clone() for p in task.actor.parameters()]
    trainer = _trainer(tmp_path)
    trainer.fit(task)
    assert task.updates == 240 - 80 + 1 and [steps for steps, _ in task.eval_history] == [120, 240]
    assert set(task._losses) == {"critic_loss", "actor_loss"}
    assert all(torch.isfinite(loss) for loss in task._losses.values())
    assert all(torch.isfinite(torch.tensor(r)) and r > 0 for _, r in task.eval_history)
    assert all(not torch.equal(a, b) for a, b in zip(initial, task.actor.parameters()))
    path = tmp_path / "ann.ckpt"
    trainer.save_checkpoint(path)
    restored = SpikingTD3.load_from_checkpoint(path, weights_only=True)
    assert isinstance(restored.actor, MLPActor) and restored.hparams.actor == "ann"
    for (name, a), b in zip(task.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    obs = torch.randn(4, 4)
    assert torch.equal(restored.actor(obs), task.actor(obs))


def test_ann_actor_refuses_what_only_a_spiking_actor_has():
    with pytest.raises(ValueError, match="unknown actor 'snn'; available: spiking, ann"):
        SpikingTD3(**SMALL, actor="snn")
    with pytest.raises(ValueError, match="no spiking layers: leave actor_layers unset"):
        SpikingTD3(**SMALL, actor="ann", actor_layers=LayerSpec(norm="none", neuron="clif"))
    with pytest.raises(ValueError, match="no spiking layers: leave actor_layers unset"):
        SpikingTD3(**SMALL, actor="ann", actor_layers={"norm": "tdbn"})
    with pytest.raises(ValueError, match="actor_layers=None is for actor='ann'"):
        SpikingTD3(**SMALL, actor_layers=None)
    # Re-BN has nothing to re-calibrate in an MLP: refused at setup, as for the BN-free pop-SAN
    for task in (SpikingTD3(**SMALL, actor="ann"), SpikingTD3(**SMALL, actor_layers={"norm": "none"})):
        with pytest.raises(
            ValueError, match=r"has no BN layer with running statistics .*actor='ann' / q_network='ann', have none"
        ):
            ReplayRecalibration(every_n_env_steps=100).check(task)


def _actor_norms_train(tmp_path, norm: str) -> None:
    """A PopSAN actor with ``norm`` after every linear layer (the output population's included) trains with TD3;
    an actor with running statistics also takes Re-BN."""
    seed_everything(4)
    task = SpikingTD3(**SMALL, actor_layers=LayerSpec(norm=norm, neuron="clif", surrogate="rectangle"))
    assert isinstance(task.actor, PopSANActor) and task.hparams.actor_layers["norm"] == norm
    norms = task.actor.norm_layers()
    assert len(norms) == len(SMALL["hidden"]) + 1 and all(type(m) is NORMS.get(norm) for m in norms)
    callbacks = [] if norm == "none" else [ReplayRecalibration(every_n_env_steps=100, num_batches=2, batch_size=16)]
    _trainer(tmp_path, callbacks).fit(task)
    assert task.updates == 240 - 80 + 1 and len(task.eval_history) == 2
    assert all(torch.isfinite(loss) for loss in task._losses.values())
    assert all(torch.isfinite(p).all() for p in task.actor.parameters())
    assert all(torch.isfinite(b).all() for b in task.actor.buffers() if b.is_floating_point())
    if callbacks:
        assert callbacks[0].recalibrations == 2


@pytest.mark.parametrize("norm", ["none", "tdbn"])
def test_baseline_actor_rows_train(tmp_path, norm):
    """The BN-free pop-SAN and the tdBN rows of the CaRe-BN table (CaRe-BN itself is trained above)."""
    _actor_norms_train(tmp_path, norm)


@pytest.mark.parametrize("norm", ["tebn", "tab"])
def test_temporal_norm_actor_rows_train(tmp_path, norm):
    """The TEBN and TAB rows: their norms take ``time_steps``, which the actor passes as ``layers.time_steps``."""
    _actor_norms_train(tmp_path, norm)
