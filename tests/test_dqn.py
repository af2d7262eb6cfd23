"""SpikingDQN: the discrete-control half of the CaRe-BN code on the shared online-RL base.

The exploration schedule against the reference code's per-update decrement, BN-aware target updates (buffers
included) at the updates they are due, acting and targets in eval mode, Re-BN right before every evaluation, the
Q-network's diagnosis (greedy-action agreement), errors at construction, and resume (in-process stop: default
suite; SIGKILL through the CLI and a CartPole run that learns: slow).
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from helpers import StoppedFit, cli_rows, logged_rows, quiet_trainer, resumable_rl_fit
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.loggers import CSVLogger

pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402

from spikenorm.callbacks import LastCheckpoint, NormDiagnostics, ReplayRecalibration  # noqa: E402
from spikenorm.models import MLPQNetwork, SpikingQNetwork  # noqa: E402
from spikenorm.tasks import SpikingDQN  # noqa: E402
from spikenorm.tasks.dqn import epsilon_at  # noqa: E402

# CartPole-v1 episodes of a random policy last ~20 steps: many episodes, several evaluations, a few target copies
RUN = {
    "env_name": "CartPole-v1",
    "total_env_steps": 160,
    "warmup_steps": 40,
    "hidden": (16, 16),
    "time_steps": 2,
    "batch_size": 16,
    "buffer_size": 1000,
    "lr": 1e-3,
    "target_update_every": 25,
    "epsilon_decay_updates": 100,
    "eval_every": 50,
    "eval_episodes": 1,
}


def test_epsilon_schedule_is_the_reference_decrement_without_drift():
    eps, start, end, n = 1.0, 1.0, 0.1, 2000
    step = (start - end) / n
    for updates in range(1, 2 * n):
        eps = max(end, eps - step)  # dsqn_carebn.py: after every gradient update (float64)
        assert epsilon_at(updates, start, end, n) == pytest.approx(eps, abs=1e-12)
    assert epsilon_at(0, start, end, n) == 1.0
    assert epsilon_at(n, start, end, n) == end  # exactly, not 0.1033 as a float32 decrement of 200k steps gives
    assert epsilon_at(10**9, start, end, n) == end
    assert epsilon_at(5, 0.5, 0.5, 0) == 0.5


class _TargetWatch(Callback):
    """After every iteration, record whether the target equals the online network, parameters and buffers."""

    def __init__(self) -> None:
        self.equal_at: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        online, target = pl_module.q_network.state_dict(), pl_module.q_target.state_dict()
        if all(torch.equal(online[k], target[k]) for k in online):
            self.equal_at.append(pl_module.updates)
        assert not any(m.training for m in pl_module.q_target.modules())


def test_hard_target_copies_parameters_and_bn_buffers_every_n_updates(tmp_path):
    seed_everything(0)
    task = SpikingDQN(**RUN)
    watch = _TargetWatch()
    quiet_trainer(max_epochs=1, callbacks=[watch], default_root_dir=tmp_path).fit(task)
    assert task.updates == 121  # one update per env step from the end of warm-up (env step 40) on
    copies = [u for u in watch.equal_at if u > 0]
    assert copies == [25, 50, 75, 100]  # right after the copy (the online network moves on at the next update)
    norm = task.q_network.norm_layers()[0]
    assert norm.p_mean.abs().sum() > 0 and not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))


def test_soft_target_averages_bn_buffers_too(tmp_path):
    seed_everything(0)
    task = SpikingDQN(**{**RUN, "total_env_steps": 60, "target_update": "soft", "tau": 0.5})
    before: dict[str, torch.Tensor] = {}

    class Check(Callback):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            before.update({k: v.clone() for k, v in pl_module.q_target.state_dict().items()})
            before.update({f"online.{k}": v.clone() for k, v in pl_module.q_network.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if pl_module.env_steps <= pl_module.hparams.warmup_steps:
                return
            online, target = pl_module.q_network.state_dict(), pl_module.q_target.state_dict()
            for key in ("snn.0.1.running_mean", "snn.0.1.running_var", "snn.1.1.p_var"):
                expected = 0.5 * before[key] + 0.5 * online[key]
                torch.testing.assert_close(target[key], expected, rtol=0, atol=1e-6)

    quiet_trainer(max_epochs=1, callbacks=[Check()], default_root_dir=tmp_path).fit(task)
    assert task.updates == 21


def test_acting_and_evaluation_leave_the_running_statistics_alone(tmp_path):
    """The collector and the evaluations act in eval mode: with no update (all warm-up) nothing moves (tdBN's EMA
    would move at every training-mode forward)."""
    seed_everything(0)
    task = SpikingDQN(
        **{**RUN, "total_env_steps": 60, "warmup_steps": 50, "batch_size": 128, "layers": {"norm": "tdbn"}}
    )
    initial = {k: v.clone() for k, v in task.q_network.state_dict().items()}
    quiet_trainer(max_epochs=1, default_root_dir=tmp_path).fit(task)
    assert task.updates == 0 and len(task.eval_history) == 2  # the buffer never reached a batch
    assert all(torch.equal(v, task.q_network.state_dict()[k]) for k, v in initial.items())


def _transitions(batch: int = 8, actions: int = 2) -> TensorDict:
    """A hand-made replay sample: random states, one-hot actions, rewards; some terminated, some only truncated."""
    generator = torch.Generator().manual_seed(1)
    terminated = torch.tensor([True, False, False, True, False, False, False, False])[:batch, None]
    truncated = torch.tensor([False, True, False, False, False, True, False, False])[:batch, None]
    return TensorDict(
        {
            "observation": torch.randn(batch, 4, generator=generator),
            "action": torch.nn.functional.one_hot(torch.randint(actions, (batch,), generator=generator), actions),
            "next": {
                "observation": torch.randn(batch, 4, generator=generator),
                "reward": torch.rand(batch, 1, generator=generator),
                "terminated": terminated,
                "done": terminated | truncated,
            },
        },
        [batch],
    )


@pytest.mark.parametrize(
    "double_dqn, truncation_as_terminal", [(False, False), (True, False), (False, True)], ids=["dqn", "double", "trunc"]
)
def test_the_td_update_is_the_dqn_equation_with_eval_mode_targets(double_dqn, truncation_as_terminal):
    """``update`` against the DQN / double-DQN equations computed here on copies of the networks, and which
    forwards run in training mode: only the online network's on the current states (BN with batch statistics)."""
    seed_everything(0)
    options = {"layers": {"norm": "bn"}, "gamma": 0.9, "double_dqn": double_dqn}
    task = SpikingDQN(**{**RUN, **options, "truncation_as_terminal": truncation_as_terminal})
    with torch.no_grad():
        for p in task.q_target.parameters():  # a target unlike the online network
            p.add_(0.3 * torch.randn_like(p))
    sample = _transitions()
    online, target = copy.deepcopy(task.q_network).train(), copy.deepcopy(task.q_target).eval()
    with torch.no_grad():
        next_q = target(sample["next", "observation"])
        if double_dqn:
            chosen = copy.deepcopy(task.q_network).eval()(sample["next", "observation"]).argmax(-1, keepdim=True)
            next_value = next_q.gather(1, chosen).squeeze(1)
        else:
            next_value = next_q.max(-1).values
        end = sample["next", "done" if truncation_as_terminal else "terminated"].float().squeeze(1)
        y = sample["next", "reward"].squeeze(1) + 0.9 * (1 - end) * next_value
    q = online(sample["observation"]).gather(1, sample["action"].argmax(-1, keepdim=True)).squeeze(1)
    expected = ((q - y) ** 2).mean()

    modes: list[tuple[str, bool]] = []
    for name, network in (("online", task.q_network), ("target", task.q_target)):
        norm = network.norm_layers()[0]
        norm.register_forward_pre_hook(lambda module, args, name=name: modes.append((name, module.training)))
    optimizer = torch.optim.SGD(task.q_network.parameters(), lr=0.0)
    task.optimizers = lambda: optimizer
    task.manual_backward = lambda loss: loss.backward()
    losses = task.update(sample)
    torch.testing.assert_close(losses["q_loss"], expected.detach(), rtol=1e-6, atol=1e-7)
    expected_modes = [("target", False), *([("online", False)] if double_dqn else []), ("online", True)]
    assert modes == expected_modes
    assert (end == 1).sum() == (4 if truncation_as_terminal else 2)  # a truncation alone keeps the bootstrap


def test_exploration_follows_the_schedule_and_logs_it(tmp_path):
    seed_everything(0)
    task = SpikingDQN(**RUN)
    seen: list[tuple[int, float]] = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append((pl_module.updates, float(pl_module._exploration.eps)))

    quiet_trainer(max_epochs=1, callbacks=[Spy()], logger=CSVLogger(tmp_path, name="csv", version=0)).fit(task)
    # the eps of a collection is that of the updates made before it: one update behind the count after the step
    for (updates_before, _), (_, eps) in zip(seen, seen[1:]):
        assert eps == pytest.approx(epsilon_at(updates_before, 1.0, 0.1, 100), abs=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    logged = [float(r["train/epsilon"]) for r in rows if r.get("train/epsilon")]
    assert logged[-1] == pytest.approx(0.1) and logged[0] > 0.1


def test_rebn_runs_right_before_every_evaluation(tmp_path):
    seed_everything(0)
    task = SpikingDQN(**RUN)
    recalibration = ReplayRecalibration(when="before_evaluation", num_batches=3, batch_size=16, mode="single_pass")
    states: list[tuple[int, bool]] = []

    class AtEvaluation(Callback):  # right after Re-BN, before the evaluation: the statistics are the new ones
        def before_policy_evaluation(self, trainer, pl_module) -> None:
            states.append((pl_module.env_steps, recalibration.last_env_steps == pl_module.env_steps))

    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[recalibration, AtEvaluation()],
        logger=CSVLogger(tmp_path, name="csv", version=0),
        log_every_n_steps=20,
    )
    trainer.fit(task)
    assert [s for s, _ in task.eval_history] == [50, 100, 150, 160]
    assert states == [(50, True), (100, True), (150, True), (160, True)]
    assert recalibration.recalibrations == 4
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r.get("recalibration/stat_error/snn.0.1")]
    assert steps == [50, 100, 150, 160]


def test_the_q_network_is_diagnosed_by_greedy_action_agreement(tmp_path):
    seed_everything(0)
    task = SpikingDQN(**{**RUN, "total_env_steps": 100})
    diagnostics = NormDiagnostics(every_n_env_steps=50, num_batches=2, batch_size=16, histograms=False, plots=False)
    quiet_trainer(max_epochs=1, callbacks=[diagnostics], default_root_dir=tmp_path).fit(task)
    scalars = diagnostics.last.scalars()
    assert 0.0 <= scalars["diagnostics/output_top1_agreement"] <= 1.0
    assert "diagnostics/action_gap" not in scalars
    assert diagnostics.calls == 2


@pytest.mark.parametrize(
    "options",
    [
        {"q_network": "ann", "layers": None, "double_dqn": True, "loss": "huber"},
        {"layers": {"norm": "tdbn"}, "target_update": "soft"},
        {"layers": {"norm": "none"}, "truncation_as_terminal": True},
    ],
    ids=["ann-double-huber", "tdbn-soft", "vanilla-truncation"],
)
def test_the_variants_train_and_their_checkpoints_rebuild_them(tmp_path, options):
    seed_everything(0)
    task = SpikingDQN(**{**RUN, "total_env_steps": 80, **options})
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(task)
    assert task.updates == 41 and torch.isfinite(torch.tensor(task.eval_history[-1][1]))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    restored = SpikingDQN.load_from_checkpoint(path)
    kind = MLPQNetwork if options.get("q_network") == "ann" else SpikingQNetwork
    assert isinstance(restored.q_network, kind)
    obs = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(restored.q_network.eval()(obs), task.q_network.eval()(obs), rtol=0, atol=0)


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="bounded continuous|discrete"):
        SpikingDQN(**{**RUN, "env_name": "Pendulum-v1"})
    with pytest.raises(ValueError, match="q_network='ann'"):
        SpikingDQN(**{**RUN, "q_network": "ann", "layers": {"norm": "tdbn"}})
    with pytest.raises(ValueError, match="epsilon_end"):
        SpikingDQN(**{**RUN, "epsilon_end": 1.5})
    with pytest.raises(ValueError, match="loss"):
        SpikingDQN(**{**RUN, "loss": "l1"})
    with pytest.raises(ValueError, match="epsilon_end must lie in"):
        SpikingDQN(**{**RUN, "epsilon_start": 0.1, "epsilon_end": 0.5})
    with pytest.raises(ValueError, match="gamma"):
        SpikingDQN(**{**RUN, "gamma": 1.5})
    with pytest.raises(ValueError, match="updates_per_step"):
        SpikingDQN(**{**RUN, "updates_per_step": 0})
    with pytest.raises(ValueError, match="warmup_steps"):
        SpikingDQN(**{**RUN, "warmup_steps": 160})


def _fit(folder: Path, ckpt_path: Path | None = None, crash_at: int | None = None, **options) -> SpikingDQN:
    seed_everything(0)
    task = SpikingDQN(**{**RUN, **options})
    callbacks: list[Callback] = [
        ReplayRecalibration(when="before_evaluation", num_batches=2, batch_size=16, mode="single_pass"),
        LastCheckpoint(every_n_env_steps=45, dirpath=folder / "checkpoints"),
    ]
    resumable_rl_fit(task, folder, callbacks, ckpt_path, stop_at=crash_at)
    return task


def test_a_stopped_fit_resumes_to_the_uninterrupted_result(tmp_path):
    full = _fit(tmp_path / "full")
    with pytest.raises(StoppedFit):
        _fit(tmp_path / "crashed", crash_at=120)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["spikenorm_rl"]
    assert saved["env_steps"] == 90
    before = [row for row in logged_rows(tmp_path / "crashed") if row[0] <= saved["env_steps"]]
    resumed = _fit(tmp_path / "crashed", ckpt_path=last)
    assert (resumed.env_steps, resumed.updates) == (full.env_steps, full.updates) == (160, 121)
    assert resumed.eval_history == full.eval_history
    assert before + logged_rows(tmp_path / "crashed", version=1) == logged_rows(tmp_path / "full")
    expected, got = full.state_dict(), resumed.state_dict()
    assert not [key for key in expected if not torch.equal(expected[key], got[key])]


# episodes cut at 70 steps (gymnasium's TimeLimit): short evaluations, and the stop at 120 falls mid-episode
PONG_RAM = {
    "env_name": "ALE/Pong-v5",
    "env_kwargs": {"obs_type": "ram", "max_episode_steps": 70},
    "truncation_as_terminal": True,
}


def test_pong_ram_trains_on_uint8_states_and_resumes_exactly_with_sticky_actions(tmp_path):
    """The Atari RAM setting (ale-py, offline): uint8 states in the replay buffer, six Q-values, and an exact resume
    mid-episode (ALE's sticky actions draw from its own RNG, which the checkpoint keeps)."""
    pytest.importorskip("ale_py", reason="the atari extra is not installed: pip install 'spikenorm[atari]'")
    full = _fit(tmp_path / "full", **PONG_RAM)
    assert full.replay_buffer[:4]["observation"].dtype == torch.uint8
    assert full.replay_buffer[:160]["next", "truncated"].sum() == 2  # episodes end at 70 and 140
    assert full.q_network.num_actions == 6 and full.q_network.obs_dim == 128
    with pytest.raises(StoppedFit):
        _fit(tmp_path / "crashed", crash_at=120, **PONG_RAM)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    resumed = _fit(tmp_path / "crashed", ckpt_path=last, **PONG_RAM)
    assert resumed.eval_history == full.eval_history
    expected, got = full.state_dict(), resumed.state_dict()
    assert not [key for key in expected if not torch.equal(expected[key], got[key])]


@pytest.mark.slow  # three CLI processes, ~40 s; the in-process stop above covers the same resume by default
def test_cli_sigkill_then_resume_last_equals_the_uninterrupted_run(tmp_path):
    """dqn_carebn_cartpole through the CLI on a short budget, SIGKILLed mid-episode and resumed with
    ``--ckpt_path last``: the same logged rows (each once), evaluations and final weights as an uninterrupted run."""
    import yaml
    from helpers import cli_killed_and_resumed

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "dqn_carebn_cartpole.yaml").read_text())
    recipe["model"]["init_args"].update({**RUN, "hidden": [16, 16]})
    recipe["trainer"]["enable_progress_bar"] = False
    recipe["trainer"]["log_every_n_steps"] = 20
    for callback in recipe["trainer"]["callbacks"]:
        if callback["class_path"].endswith("LastCheckpoint"):
            callback["init_args"] = {"every_n_env_steps": 45}
        if callback["class_path"].endswith("ReplayRecalibration"):
            callback["init_args"].update(num_batches=2, batch_size=16)
    straight, crashed = cli_killed_and_resumed(tmp_path, recipe, 120)

    runs = [folder / "logs" / "dqn_carebn_cartpole" / "version_0" for folder in (straight, crashed)]
    assert cli_rows(runs[1]) == cli_rows(runs[0])  # every row once, none past the budget
    rows = cli_rows(runs[0])
    assert [int(r["step"]) for r in rows if r["rl/eval_return"]] == [50, 100, 150, 160]
    assert [int(r["step"]) for r in rows if r.get("recalibration/stat_error/snn.0.1")] == [50, 100, 150, 160]
    reference, final = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in runs)
    assert final["spikenorm_rl"]["env_steps"] == reference["spikenorm_rl"]["env_steps"] == 160
    assert final["spikenorm_rl"]["updates"] == 121
    assert not [k for k, v in reference["state_dict"].items() if not torch.equal(final["state_dict"][k], v)]


@pytest.mark.slow  # ~2 min on 2 cores (8000 env steps of the spiking Q-network)
def test_the_cartpole_recipe_learns(tmp_path):
    """recipes/dqn_carebn_cartpole.yaml (spiking DSQN, CaRe-BN + Re-BN), seed 0, its first 8000 env steps: the best
    evaluation return (5 greedy episodes) reaches 150, where a random policy gets about 22 (this machine, 2026-12-06:
    12.0, 84.8, 259.6, 228.6 at env steps 2000 to 8000; other CPUs round differently)."""
    import yaml
    from helpers import spikenorm_cli

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "dqn_carebn_cartpole.yaml").read_text())
    recipe["model"]["init_args"]["total_env_steps"] = 8000
    recipe["trainer"]["enable_progress_bar"] = False
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    spikenorm_cli(tmp_path, "fit", "--config", "recipe.yaml", OMP_NUM_THREADS="1")
    rows = cli_rows(tmp_path / "logs" / "dqn_carebn_cartpole" / "version_0")
    returns = [float(r["rl/eval_return"]) for r in rows if r["rl/eval_return"]]
    assert len(returns) == 4 and returns[0] < 50
    assert max(returns) >= 150, returns
