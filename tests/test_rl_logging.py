"""SpikingTD3 and ReplayRecalibration log each evaluation and each re-calibration once, at its env step.

Issue 16 row 10: 5 evaluations used to become 12 ``rl/eval_return`` rows, each at the next logging step
(Lightning re-emitted the cached value at every ``log_every_n_steps`` flush, at the batch index). Here a
short run with ``frames_per_batch=2`` (so env steps and batch indices differ) and a logging interval that
falls between the events is logged to CSV and to an offline W&B run, and both are read back.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from helpers import SHORT_TD3_RUN, offline_wandb, quiet_trainer
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement, TensorDictReplayBuffer

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.loggers import WandbLogger
from spikenorm.models import LayerSpec
from spikenorm.tasks import SpikingTD3
from spikenorm.wandb_runs import read_offline_run

SMALL = {**SHORT_TD3_RUN, "hidden": (16, 16), "time_steps": 2, "eval_every": 60, "frames_per_batch": 2}
EVAL_STEPS = [60, 120, 180, 240]
RECALIBRATION_STEPS = [100, 200]
LOG_EVERY = 25  # Lightning flushes every 25 iterations = every 50 env steps: never at an eval or recalibration


def _csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str, step_key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that holds ``key`` (CSV cells are strings, empty when absent)."""
    return [(int(float(r[step_key])), float(r[key])) for r in rows if r.get(key) not in (None, "")]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short fit with a CSV and an offline W&B logger: the task, the trainer and both logs read back."""
    tmp_path = tmp_path_factory.mktemp("rl_logging")
    seed_everything(0)
    task = SpikingTD3(**SMALL)
    recalibration = ReplayRecalibration(every_n_env_steps=100, num_batches=2, batch_size=16)
    csv_logger = CSVLogger(tmp_path / "csv", name="run")
    with offline_wandb(tmp_path):
        wandb_logger = WandbLogger(save_dir=tmp_path / "wandb")
        trainer = quiet_trainer(
            max_epochs=1,
            default_root_dir=tmp_path,
            callbacks=[recalibration],
            logger=[csv_logger, wandb_logger],
            log_every_n_steps=LOG_EVERY,
        )
        try:
            trainer.fit(task)
        finally:
            wandb_logger.experiment.finish()
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    return {
        "task": task,
        "trainer": trainer,
        "csv": _csv_rows(csv_logger),
        "wandb": read_offline_run(run_dir)["history"],
    }


def test_each_evaluation_is_logged_once_at_its_env_step(logged_run):
    task = logged_run["task"]
    assert [step for step, _ in task.eval_history] == EVAL_STEPS
    best = [max(r for _, r in task.eval_history[: i + 1]) for i in range(len(EVAL_STEPS))]
    for rows, step_key in ((logged_run["csv"], "step"), (logged_run["wandb"], "trainer/global_step")):
        assert _series(rows, "rl/eval_return", step_key) == task.eval_history
        assert _series(rows, "rl/best_eval_return", step_key) == list(zip(EVAL_STEPS, best))


def test_each_recalibration_is_logged_once_at_its_env_step(logged_run):
    layers = [k for k in logged_run["csv"][0] if k.startswith("recalibration/stat_error/")]
    assert layers  # the CaRe-BN actor has norm layers
    for rows, step_key in ((logged_run["csv"], "step"), (logged_run["wandb"], "trainer/global_step")):
        for key in [*layers, "recalibration/seconds"]:
            assert [step for step, _ in _series(rows, key, step_key)] == RECALIBRATION_STEPS, key


def test_training_returns_are_logged_once_per_iteration_that_ended_episodes(logged_run):
    csv_returns = _series(logged_run["csv"], "rl/train_return", "step")
    steps = [step for step, _ in csv_returns]
    assert steps and steps == sorted(set(steps))  # one row per iteration at most, never repeated
    assert all(step % SMALL["frames_per_batch"] == 0 for step in steps)  # env steps, not batch indices
    assert _series(logged_run["wandb"], "rl/train_return", "trainer/global_step") == csv_returns


def test_every_row_is_at_an_env_step_and_wandb_steps_never_go_back(logged_run):
    """Periodic metrics keep Lightning's cadence (and add the last iteration) on the events' x-axis."""
    flushes = [50, 100, 150, 200, 240]
    for rows, step_key in ((logged_run["csv"], "step"), (logged_run["wandb"], "trainer/global_step")):
        assert _series(rows, "rl/env_steps", step_key) == [(s, float(s)) for s in flushes]
        assert [s for s, _ in _series(rows, "train/critic_loss", step_key)] == [s for s in flushes if s > 80]
    steps = [row["trainer/global_step"] for row in logged_run["wandb"] if "trainer/global_step" in row]
    assert steps == sorted(steps)


def test_summary_metrics_stay_in_callback_metrics(logged_run):
    metrics = logged_run["trainer"].callback_metrics
    task = logged_run["task"]
    assert float(metrics["rl/eval_return"]) == pytest.approx(task.eval_history[-1][1])
    assert float(metrics["rl/best_eval_return"]) == pytest.approx(max(r for _, r in task.eval_history))
    assert float(metrics["rl/env_steps"]) == SMALL["total_env_steps"]
    assert float(metrics["rl/env_steps_per_s"]) > 0


# -- ReplayRecalibration checks its configuration before the first step ---------------------------------------


def _fails_at_setup(tmp_path: Path, task, callback, match: str) -> None:
    steps: list[int] = []
    task.on_train_batch_start = lambda batch, batch_idx: steps.append(batch_idx)
    with pytest.raises(ValueError, match=match):
        quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[callback]).fit(task)
    assert steps == []  # raised before the first training step


def test_recalibration_refuses_an_actor_without_bn(tmp_path):
    task = SpikingTD3(**{**SMALL, "actor_layers": LayerSpec(norm="none", neuron="clif", surrogate="rectangle")})
    _fails_at_setup(tmp_path, task, ReplayRecalibration(every_n_env_steps=100), "no BN layer")


def test_recalibration_refuses_a_task_without_replay_buffer(tmp_path):
    task = SpikingTD3(**SMALL)
    del task.replay_buffer
    _fails_at_setup(tmp_path, task, ReplayRecalibration(every_n_env_steps=100), "replay_buffer")


def test_recalibration_refuses_a_schedule_that_never_runs(tmp_path):
    task = SpikingTD3(**SMALL)
    _fails_at_setup(tmp_path, task, ReplayRecalibration(every_n_env_steps=1000), "never")


@pytest.mark.parametrize(
    ("task_options", "every", "reason"),
    [
        ({"actor": "ann", "actor_layers": None}, 100, "no BN layer"),
        ({}, 1000, "would never run"),
    ],
    ids=["ann_actor", "short_run"],
)
def test_recalibration_with_unusable_warn_warns_once_and_stays_off(tmp_path, task_options, every, reason):
    task = SpikingTD3(**{**SMALL, "total_env_steps": 120, **task_options})
    callback = ReplayRecalibration(every_n_env_steps=every, num_batches=2, batch_size=16, unusable="warn")
    with pytest.warns(UserWarning, match=reason) as caught:
        quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[callback]).fit(task)
    assert len([w for w in caught if "ReplayRecalibration" in str(w.message)]) == 1
    assert task.env_steps == 120 and callback.recalibrations == 0 and callback.last_env_steps == 0
    assert callback.summary_line().startswith("not re-calibrated: ") and reason in callback.summary_line()


def test_recalibration_that_works_has_no_summary_line_and_unusable_is_checked():
    assert ReplayRecalibration().summary_line() is None
    assert ReplayRecalibration().unusable == "error"  # the safe default: old configs keep failing early
    with pytest.raises(ValueError, match="unusable"):
        ReplayRecalibration(unusable="ignore")


def test_recalibration_draws_every_state_it_asks_for_whatever_the_buffer_sampler():
    """A buffer sampling without replacement returns only the states it holds; the callback asks for 48 of 10."""
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(10), sampler=SamplerWithoutReplacement())
    buffer.extend(TensorDict({"observation": torch.randn(10, 3)}, [10]))
    batches = ReplayRecalibration(num_batches=3, batch_size=16).draw(buffer, torch.device("cpu"))
    assert [tuple(b.shape) for b in batches] == [(16, 3)] * 3


def test_recalibration_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        ReplayRecalibration(mode="fast")
    with pytest.raises(ValueError, match="num_batches"):
        ReplayRecalibration(num_batches=0)
