"""RL budgets are env steps, resume included (issue 25 rows 1 and 6).

A SpikingTD3 fit stopped mid-episode at a fixed env step (an exception from a callback: nothing of the stopped fit
is used again but its ``last.ckpt`` on disk; the resumed fit builds a new task, trainer and callbacks, and seeds
as a new process would) must end exactly as the uninterrupted fit: the same env steps, updates, logged rows and
weights.
Every fit ends with an evaluation of its final policy, logged once; ``Trainer(max_steps=...)`` is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SHORT_TD3_RUN, StoppedFit, cli_rows, logged_rows, quiet_trainer, resumable_rl_fit
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger

from spikenorm.callbacks import LastCheckpoint, ReplayRecalibration
from spikenorm.tasks import SpikingTD3

# Pendulum episodes are 200 steps: the whole run is one episode. Updates start at env step 50;
# LastCheckpoint(every_n_env_steps=65) saves at env steps 65 and 130 (and at the end).
RUN = {
    "env_name": "Pendulum-v1",
    "total_env_steps": 200,
    "warmup_steps": 50,
    "batch_size": 16,
    "buffer_size": 1000,
    "hidden": (16, 16),
    "time_steps": 2,
    "eval_every": 100,
    "eval_episodes": 1,
}
CRASH_AT = 160


def _fit(folder: Path, ckpt_path: Path | None = None, crash_at: int | None = None):
    """The run of ``RUN`` with Re-BN every 75 env steps, saving last.ckpt under ``folder`` and logging to CSV there
    (a resumed fit in a folder of its own: Lightning's CSVLogger would rewrite the crashed fit's file)."""
    seed_everything(0)
    task = SpikingTD3(**RUN)
    callbacks = [
        ReplayRecalibration(every_n_env_steps=75, num_batches=2, batch_size=16),
        LastCheckpoint(every_n_env_steps=65, dirpath=folder / "checkpoints"),
    ]
    return task, resumable_rl_fit(task, folder, callbacks, ckpt_path, stop_at=crash_at)


def test_a_fit_stopped_mid_episode_resumes_to_the_uninterrupted_result(tmp_path):
    full, full_trainer = _fit(tmp_path / "full")

    with pytest.raises(StoppedFit):
        _fit(tmp_path / "crashed", crash_at=CRASH_AT)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["spikenorm_rl"]  # plain data: no code is unpickled
    assert saved["env_steps"] == 130
    observations = saved["replay"]["rows"]["observation"]
    assert observations.untyped_storage().nbytes() == observations.nbytes == 130 * 3 * 4  # the filled rows only
    before = [row for row in logged_rows(tmp_path / "crashed") if row[0] <= saved["env_steps"]]  # later rows are redone

    resumed, resumed_trainer = _fit(tmp_path / "crashed", ckpt_path=last)

    assert (resumed.env_steps, resumed.updates) == (full.env_steps, full.updates) == (200, 151)
    assert resumed.eval_history == full.eval_history
    assert resumed_trainer.global_step == full_trainer.global_step
    assert resumed_trainer.callbacks[0].recalibrations == full_trainer.callbacks[0].recalibrations == 2
    full_rows = logged_rows(tmp_path / "full")
    assert max(step for step, _ in full_rows) == 200  # no row past the budget
    assert [step for step, row in full_rows if "rl/eval_return" in row] == [100, 200]  # the last one once, not twice
    assert before + logged_rows(tmp_path / "crashed", version=1) == full_rows
    assert saved["env"]["episode"]["actions"].shape[0] == 130  # it resumed mid-episode
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    assert not [key for key in expected if not torch.equal(expected[key], got[key])]


def test_every_fit_ends_with_an_evaluation_of_the_final_policy(tmp_path):
    seed_everything(0)
    task = SpikingTD3(
        **{**SHORT_TD3_RUN, "hidden": (16, 16), "time_steps": 2, "total_env_steps": 150, "eval_every": 100}
    )
    trainer = quiet_trainer(max_epochs=3, logger=CSVLogger(tmp_path, name="csv", version=0), log_every_n_steps=20)
    trainer.fit(task)
    assert [steps for steps, _ in task.eval_history] == [100, 150]  # the periodic one and the final one
    assert trainer.current_epoch == 1  # the budget ends the fit, not max_epochs
    evaluations = [(step, row) for step, row in logged_rows(tmp_path) if "rl/eval_return" in row]
    assert [(step, row["rl/eval_return"]) for step, row in evaluations] == task.eval_history
    assert evaluations[-1][1]["rl/best_eval_return"] == max(r for _, r in task.eval_history)
    assert trainer.callback_metrics["rl/eval_return"].item() == task.eval_history[-1][1]  # the CLI summary's value
    assert trainer.callback_metrics["rl/env_steps"].item() == 150


def test_max_steps_is_refused_for_the_env_step_budget(tmp_path):
    task = SpikingTD3(**RUN)
    with pytest.raises(ValueError, match="total_env_steps"):
        quiet_trainer(max_steps=300, default_root_dir=tmp_path).fit(task)
    assert task.env_steps == 0


@pytest.mark.slow  # three CLI processes, ~45 s; the in-process stop above covers the same resume by default
def test_cli_sigkill_then_resume_last_equals_the_uninterrupted_run(tmp_path):
    """quickstart_rl through the CLI, killed with SIGKILL mid-episode and resumed with ``--ckpt_path last``: the
    same env steps, eval rows, logged rows (each once) and final weights as an uninterrupted run."""
    import yaml
    from helpers import cli_killed_and_resumed

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "quickstart_rl.yaml").read_text())
    recipe["model"]["init_args"].update({**RUN, "hidden": [16, 16]})
    recipe["trainer"]["enable_progress_bar"] = False
    for callback in recipe["trainer"]["callbacks"]:
        if callback["class_path"].endswith("LastCheckpoint"):
            callback["init_args"] = {"every_n_env_steps": 65}
        if callback["class_path"].endswith("ReplayRecalibration"):
            callback["init_args"].update(every_n_env_steps=75, num_batches=2, batch_size=16)
    straight, crashed = cli_killed_and_resumed(tmp_path, recipe, CRASH_AT)

    runs = [folder / "logs" / "quickstart_rl" / "version_0" for folder in (straight, crashed)]
    assert cli_rows(runs[1]) == cli_rows(runs[0])  # every row once, none past the budget
    evaluations = [int(row["step"]) for row in cli_rows(runs[0]) if row["rl/eval_return"]]
    assert evaluations == [100, 200]
    reference, final = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in runs)
    assert final["spikenorm_rl"]["env_steps"] == reference["spikenorm_rl"]["env_steps"] == 200
    assert not [k for k, v in reference["state_dict"].items() if not torch.equal(final["state_dict"][k], v)]
