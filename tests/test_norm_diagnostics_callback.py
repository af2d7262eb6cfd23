"""NormDiagnostics in short Lightning runs: read-only fits, the schedule, logged values against ``diagnose``, PNGs,
W&B histograms, online RL (replay draws) and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SHORT_TD3_RUN, offline_wandb, quiet_trainer, short_trainer
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger
from tensordict import TensorDict
from torch import nn

from spikenorm.callbacks import NormDiagnostics
from spikenorm.datamodules import DigitsDataModule
from spikenorm.diagnostics import NormDiagnosis, diagnose, stepwise_forward
from spikenorm.loggers import WandbLogger
from spikenorm.membrane import RANGE
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import SpikingNeuron
from spikenorm.norm.base import NoNorm, TimeMajorNorm
from spikenorm.tasks import OnlineTraining, SpikingClassifier
from spikenorm.wandb_runs import read_offline_run

CFG = [8, "A", 16, "A"]  # two conv layers on the 8x8 digits: a fit of a few batches takes about a second
BATCH = 32
OSR_OTS = LayerSpec(norm="osr", neuron_kwargs={"ots": True})


def _task(layers: LayerSpec = LayerSpec(), **options: Any) -> SpikingClassifier:
    """A seeded SpikingVGG classifier on digits (dropout, so a fit depends on the torch RNG)."""
    seed_everything(0)
    model = SpikingVGG(CFG, in_channels=1, num_classes=10, dropout=0.2, layers=layers)
    return SpikingClassifier(model, **{"time_steps": 2, **options})


def _csv_rows(log_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a CSVLogger's metrics.csv, without empty cells."""
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _diagnostic_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [row for row in rows if any(key.startswith("diagnostics/") for key in row)]


def _diagnostics(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith("diagnostics/")}


def _assert_logged(row: dict[str, float], expected: dict[str, float]) -> None:
    """The diagnostics of a CSV row are exactly ``expected``'s keys, with its values (logged as float32)."""
    got = _diagnostics(row)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def _first_val_inputs(task: SpikingClassifier, data: DigitsDataModule, k: int) -> list[torch.Tensor]:
    """The first ``k`` validation batches, encoded by the task in eval mode (as validation encodes them)."""
    task.eval()
    loader = iter(data.val_dataloader())
    return [task.encode(next(loader)[0]) for _ in range(k)]


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    expected, got = a.state_dict(), b.state_dict()
    assert expected.keys() == got.keys()
    assert not [key for key in expected if not torch.equal(expected[key], got[key])]


# -- 1. read-only ----------------------------------------------------------------------------------------------


def _supervised_fit(layers: LayerSpec, mode: str, callbacks: list) -> SpikingClassifier:
    """Two epochs of two batches, each followed by a validation of one batch, after a sanity check of one."""
    task = _task(layers, online=OnlineTraining() if mode == "online" else None)
    short_trainer(2, 1, callbacks, max_epochs=2, num_sanity_val_steps=1).fit(task, DigitsDataModule(batch_size=BATCH))
    return task


@pytest.mark.parametrize(("layers", "mode"), [(LayerSpec(), "bptt"), (OSR_OTS, "online")], ids=["bptt", "online"])
def test_a_fit_with_diagnostics_gives_bit_identical_weights(layers: LayerSpec, mode: str) -> None:
    reference = _supervised_fit(layers, mode, [])
    callback = NormDiagnostics(num_batches=1, plots=False)
    diagnosed = _supervised_fit(layers, mode, [callback])
    assert callback.calls == 2  # after epoch 1 (before epoch 2 trains) and after epoch 2
    _assert_same_weights(reference, diagnosed)


def test_an_online_task_is_diagnosed_with_its_stepwise_train_pass() -> None:
    # with TDBN the train pass differs between one multi-step call and one step at a time (per-step batch
    # statistics); with OSR it would not (OSR's training forward is its eval transform)
    task, data = _task(LayerSpec(), online=OnlineTraining()), DigitsDataModule(batch_size=BATCH)
    callback = NormDiagnostics(num_batches=2, plots=False)
    quiet_trainer(callbacks=[callback], limit_val_batches=2).validate(task, data, verbose=False)
    assert callback.calls == 1
    inputs = _first_val_inputs(task, data, 2)
    stepwise = diagnose(task.model, inputs, train_forward=stepwise_forward).scalars()
    multi_step = diagnose(task.model, inputs).scalars()
    assert callback.last.scalars() == pytest.approx(stepwise, rel=1e-9, abs=1e-12)
    assert callback.last.scalars()["diagnostics/train_eval_gap"] != pytest.approx(
        multi_step["diagnostics/train_eval_gap"], rel=1e-4
    )


# -- 2./3. schedule and logged values --------------------------------------------------------------------------


class ScheduledFit:
    """Four epochs with NormDiagnostics(every_n_validations=2, num_batches=2), three validation batches each, a
    sanity check of two batches, logged to CSV; ``eval_time_steps`` differs from ``time_steps``."""

    def __init__(self, folder: Path) -> None:
        self.task = _task(time_steps=2, eval_time_steps=3)
        self.data = DigitsDataModule(batch_size=BATCH)
        self.callback = NormDiagnostics(every_n_validations=2, num_batches=2, plots=False)
        self.trainer = short_trainer(
            1,
            3,
            [self.callback],
            max_epochs=4,
            num_sanity_val_steps=2,
            logger=CSVLogger(folder, name="csv", version=0),
            default_root_dir=folder,
        )
        self.trainer.fit(self.task, self.data)
        self.rows = _csv_rows(self.trainer.log_dir)
        self.last_of_fit = self.callback.last
        self.counts = (self.callback.validations, self.callback.calls)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> ScheduledFit:
    return ScheduledFit(tmp_path_factory.mktemp("scheduled"))


def test_schedule_every_n_validations(scheduled: ScheduledFit) -> None:
    rows = scheduled.rows
    assert scheduled.counts == (4, 2)  # (validations, calls): the sanity check is not counted
    assert [row["epoch"] for row in _diagnostic_rows(rows)] == [1.0, 3.0]  # validations 2 and 4
    assert scheduled.last_of_fit.batches == 2  # num_batches of the 3 validation batches

    # every norm layer and every neuron of the network has its key
    model = scheduled.task.model
    norms = [n for n, m in model.named_modules() if isinstance(m, TimeMajorNorm) and not isinstance(m, NoNorm)]
    neurons = [n for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]
    assert norms == ["features.0.1", "features.2.1"] and neurons == ["features.0.2", "features.2.2"]
    last = _diagnostic_rows(rows)[-1]
    assert {f"diagnostics/stat_w2/{n}" for n in norms} | {f"diagnostics/near_threshold/{n}" for n in neurons} <= set(
        last
    )
    _assert_logged(last, scheduled.last_of_fit.scalars())


def test_validate_always_diagnoses(scheduled: ScheduledFit) -> None:
    callback = scheduled.callback
    calls, validations = callback.calls, callback.validations
    scheduled.trainer.validate(scheduled.task, scheduled.data, verbose=False)
    assert callback.calls == calls + 1  # not due by the fit's schedule (validations stays 4), diagnosed anyway
    assert callback.validations == validations
    assert callback.last is not scheduled.last_of_fit and callback.last.batches == 2

    fresh = NormDiagnostics(every_n_validations=5, num_batches=1, plots=False)
    trainer = quiet_trainer(callbacks=[fresh], limit_val_batches=2)
    trainer.validate(scheduled.task, scheduled.data, verbose=False)
    trainer.validate(scheduled.task, scheduled.data, verbose=False)
    assert (fresh.calls, fresh.validations) == (2, 0)
    assert fresh.last.batches == 1
    assert trainer.callback_metrics["diagnostics/stat_w2"].item() == pytest.approx(
        fresh.last.scalars()["diagnostics/stat_w2"], rel=1e-6
    )


def test_logged_values_equal_diagnose_on_the_first_validation_batches(scheduled: ScheduledFit) -> None:
    # the fit ended with the diagnosed validation: its model is the one diagnosed; validation runs at eval T (3)
    inputs = _first_val_inputs(scheduled.task, scheduled.data, 2)
    assert inputs[0].shape[:2] == (3, BATCH)
    direct = diagnose(scheduled.task.model, inputs)
    assert direct.batches == 2
    _assert_logged(_diagnostic_rows(scheduled.rows)[-1], direct.scalars())


# -- 4. PNGs ---------------------------------------------------------------------------------------------------


def test_one_png_per_call_never_overwritten(tmp_path: Path) -> None:
    pngs = tmp_path / "csv" / "version_0" / "diagnostics"

    def fit(epochs: int) -> NormDiagnostics:
        callback = NormDiagnostics(num_batches=1, histograms=False)
        logger = CSVLogger(tmp_path, name="csv", version=0)  # the same log folder both times
        short_trainer(1, 1, [callback], max_epochs=epochs, num_sanity_val_steps=0, logger=logger).fit(
            _task(), DigitsDataModule(batch_size=BATCH)
        )
        return callback

    first = fit(2)
    files = sorted(pngs.glob("*.png"))
    assert first.calls == 2
    assert [path.name for path in files] == ["epoch000-step1.png", "epoch001-step2.png"]  # one batch per epoch
    written = {path: path.read_bytes() for path in files}
    assert all(data.startswith(b"\x89PNG") for data in written.values())

    second = fit(1)  # its figure has the name of the first fit's first one
    assert second.calls == 1
    assert sorted(path.name for path in pngs.glob("*.png")) == [
        "epoch000-step1-1.png",
        "epoch000-step1.png",
        "epoch001-step2.png",
    ]
    assert {path: path.read_bytes() for path in files} == written  # the first fit's figures are untouched


# -- 5. W&B ----------------------------------------------------------------------------------------------------


class WandbFit:
    """One epoch (one batch, one validation batch) with NormDiagnostics and an offline WandbLogger, read back.
    An exception of the fit is kept in ``error`` and raised by :meth:`history` (in the test that reads the run)."""

    def __init__(self, folder: Path) -> None:
        self.callback = NormDiagnostics(num_batches=1, plots=False)
        self.error: Exception | None = None
        with offline_wandb(folder):
            logger = WandbLogger(save_dir=folder / "logs")
            trainer = short_trainer(1, 1, [self.callback], num_sanity_val_steps=0, logger=logger)
            try:
                trainer.fit(_task(), DigitsDataModule(batch_size=BATCH))
            except Exception as error:  # noqa: BLE001 (re-raised by history(); Lightning has closed the run)
                self.error = error
            else:
                logger.experiment.finish()
        (self.run_dir,) = (folder / "logs" / "wandb").glob("offline-run-*")

    def history(self) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return read_offline_run(self.run_dir)["history"]

    def scalars_row(self) -> dict[str, Any]:
        (row,) = [row for row in self.history() if "diagnostics/stat_w2" in row]
        return row

    def histogram_rows(self) -> dict[str, dict[str, Any]]:
        """The row holding ``diagnostics/membrane/<layer>``, per layer."""
        rows = {}
        for layer in self.callback.last.histograms:
            (rows[layer],) = [row for row in self.history() if f"diagnostics/membrane/{layer}" in row]
        return rows


@pytest.fixture(scope="module")
def wandb_fit(tmp_path_factory: pytest.TempPathFactory) -> WandbFit:
    return WandbFit(tmp_path_factory.mktemp("wandb"))


def test_wandb_run_holds_scalars_and_membrane_histograms(wandb_fit: WandbFit) -> None:
    scalars = wandb_fit.scalars_row()
    for key, value in wandb_fit.callback.last.scalars().items():
        assert scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    histograms = wandb_fit.callback.last.histograms
    assert set(histograms) == {"features.0.2", "features.2.2"}
    for layer, row in wandb_fit.histogram_rows().items():
        histogram = row[f"diagnostics/membrane/{layer}"]
        assert histogram["_type"] == "histogram"
        assert len(histogram["bins"]) == len(histogram["values"]) + 1
        assert histogram["bins"][0] == pytest.approx(-RANGE) and histogram["bins"][-1] == pytest.approx(RANGE)
        assert sum(histogram["values"]) == int(histograms[layer].sum())  # every recorded membrane value, none lost


def test_wandb_histograms_sit_at_the_step_of_their_scalars(wandb_fit: WandbFit) -> None:
    # one diagnosis: its histograms and its scalars at the same x-axis value (trainer/global_step)
    step = wandb_fit.scalars_row()["trainer/global_step"]
    assert {layer: row["trainer/global_step"] for layer, row in wandb_fit.histogram_rows().items()} == {
        layer: step for layer in wandb_fit.callback.last.histograms
    }


# -- 6. online RL ----------------------------------------------------------------------------------------------

# Pendulum episodes are 200 steps: one episode; updates start at env step 150 (few updates: a short test) and
# train CaRe-BN's running statistics; the diagnoses at 150 and 200 come before and after them.
RL_RUN = {
    **SHORT_TD3_RUN,
    "env_name": "Pendulum-v1",
    "hidden": (16, 16),
    "time_steps": 2,
    "total_env_steps": 200,
    "warmup_steps": 150,
    "batch_size": 16,
    "eval_every": 200,  # one evaluation, of the final policy
}


def _rl_fit(folder: Path, callbacks: list) -> tuple[Any, Any]:
    pytest.importorskip("torchrl")
    from spikenorm.tasks import SpikingTD3

    seed_everything(0)
    task = SpikingTD3(**RL_RUN)
    trainer = quiet_trainer(
        max_epochs=1, callbacks=callbacks, logger=CSVLogger(folder, name="csv", version=0), log_every_n_steps=20
    )
    trainer.fit(task)
    return task, trainer


class DiagnosedRLFit:
    """``RL_RUN`` with NormDiagnostics every 50 env steps (2 batches of 16 of the 100 newest states), CSV logs."""

    def __init__(self, folder: Path) -> None:
        self.callback = NormDiagnostics(every_n_env_steps=50, num_batches=2, batch_size=16, recent=100, plots=False)
        self.task, trainer = _rl_fit(folder, [self.callback])
        self.rows = _csv_rows(trainer.log_dir)


@pytest.fixture(scope="module")
def diagnosed_rl(tmp_path_factory: pytest.TempPathFactory) -> DiagnosedRLFit:
    return DiagnosedRLFit(tmp_path_factory.mktemp("rl"))


def test_rl_diagnoses_every_n_env_steps(diagnosed_rl: DiagnosedRLFit) -> None:
    callback, rows = diagnosed_rl.callback, diagnosed_rl.rows
    assert (diagnosed_rl.task.env_steps, callback.calls, callback.last_env_steps) == (200, 4, 200)
    diagnosed = [row for row in rows if "diagnostics/action_gap" in row]
    assert [int(row["step"]) for row in diagnosed] == [50, 100, 150, 200]  # the step column is the env step
    _assert_logged(diagnosed[-1], callback.last.scalars())
    assert callback.last.output.output == "actions" and callback.last.batches == 2
    assert len(callback.last.layers) == 3  # CaRe-BN after both hidden layers and on the output population
    assert all(f"diagnostics/stat_w2/{name}" in diagnosed[-1] for name in callback.last.layers)


@pytest.mark.slow  # a second TD3 fit (about 6 s of CPU: Pendulum rollouts and the final evaluation episode)
def test_rl_diagnostics_leave_the_run_bit_identical(diagnosed_rl: DiagnosedRLFit, tmp_path: Path) -> None:
    reference, _ = _rl_fit(tmp_path, [])
    assert reference.updates == diagnosed_rl.task.updates > 0
    assert diagnosed_rl.task.eval_history == reference.eval_history
    _assert_same_weights(reference, diagnosed_rl.task)


def _replay_buffer(capacity: int, writes: int) -> Any:
    """A TorchRL buffer whose ``i``-th written state has observation ``[i, -i]`` (written one at a time)."""
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity))
    for i in range(writes):
        buffer.add(TensorDict({"observation": torch.tensor([float(i), -float(i)])}, []))
    return buffer


@pytest.mark.parametrize(
    ("capacity", "writes", "recent", "newest"),
    [
        (100, 30, 8, range(22, 30)),  # not full
        (10, 25, 4, range(21, 25)),  # wrapped around: the cursor is mid-storage
        (10, 20, 3, range(17, 20)),  # wrapped twice: the cursor is back at index 0
        (100, 5, 50, range(5)),  # recent beyond the filled part: every state
    ],
    ids=["filling", "wrapped", "cursor-at-zero", "few-states"],
)
def test_draw_takes_only_the_recent_newest_states(capacity: int, writes: int, recent: int, newest: range) -> None:
    pytest.importorskip("torchrl")
    buffer = _replay_buffer(capacity, writes)
    callback = NormDiagnostics(num_batches=3, batch_size=64, recent=recent)
    rng = torch.get_rng_state()
    batches = callback.draw(buffer, seed=7, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # its own generator: the training RNG is untouched
    assert [tuple(b.shape) for b in batches] == [(64, 2)] * 3
    drawn = torch.cat(batches)
    assert torch.equal(drawn[:, 1], -drawn[:, 0])  # whole states
    assert set(drawn[:, 0].long().tolist()) == set(newest)  # 192 draws hit every one of the few newest
    again = callback.draw(buffer, seed=7, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


# -- 7. resume -------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_keeps_the_schedule() -> None:
    callback = NormDiagnostics(every_n_validations=3, every_n_env_steps=50)
    callback.validations, callback.last_env_steps, callback.calls = 5, 150, 2
    restored = NormDiagnostics(every_n_validations=3, every_n_env_steps=50)
    restored.load_state_dict(callback.state_dict())
    assert (restored.validations, restored.last_env_steps, restored.calls) == (5, 150, 2)


def test_a_resumed_fit_continues_the_validation_count(tmp_path: Path) -> None:
    # every 3rd validation: a fit of 2 epochs diagnoses nothing; resumed to 4 epochs, validation 3 is due (a
    # callback that restarted its count would diagnose nothing, one that ignored the count at validations 3 and 4)
    first = NormDiagnostics(every_n_validations=3, num_batches=1, plots=False)
    short_trainer(1, 1, [first], max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path).fit(
        _task(), DigitsDataModule(batch_size=BATCH)
    )
    assert (first.validations, first.calls) == (2, 0)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    resumed = NormDiagnostics(every_n_validations=3, num_batches=1, plots=False)
    trainer = short_trainer(1, 1, [resumed], max_epochs=4, default_root_dir=tmp_path / "resumed")
    trainer.fit(_task(), DigitsDataModule(batch_size=BATCH), ckpt_path=checkpoint)
    assert (resumed.validations, resumed.calls) == (4, 1)
    assert trainer.current_epoch == 4


def test_two_instances_on_different_schedules_keep_their_own_state(tmp_path: Path) -> None:
    # e.g. one before and one after ReplayRecalibration: Lightning refuses two stateful callbacks with one state key
    every, second = (NormDiagnostics(every_n_validations=n, num_batches=1, plots=False) for n in (1, 2))
    assert every.state_key != second.state_key
    short_trainer(1, 1, [every, second], max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path).fit(
        _task(), DigitsDataModule(batch_size=BATCH)
    )
    assert (every.calls, second.calls) == (2, 1)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    states = torch.load(checkpoint, weights_only=True)["callbacks"]
    assert states[every.state_key]["calls"] == 2 and states[second.state_key]["calls"] == 1


class _FakeReplayTask:
    """What NormDiagnostics reads of an RL task (ReplayTaskLike): a policy network with BN, a replay buffer,
    env_steps."""

    def __init__(self, env_steps: int) -> None:
        torch.manual_seed(0)
        self.policy_network = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh())
        self.replay_buffer = _replay_buffer(64, 40)
        self.env_steps = env_steps


def test_a_restored_env_step_schedule_diagnoses_on_time() -> None:
    pytest.importorskip("torchrl")
    trainer = quiet_trainer()
    saved = NormDiagnostics(every_n_env_steps=50, num_batches=1, batch_size=8, plots=False)
    saved.last_env_steps = 100
    restored = NormDiagnostics(every_n_env_steps=50, num_batches=1, batch_size=8, plots=False)
    restored.load_state_dict(saved.state_dict())
    fresh = NormDiagnostics(every_n_env_steps=50, num_batches=1, batch_size=8, plots=False)
    for steps in (130, 149, 150):
        task = _FakeReplayTask(steps)
        for callback in (restored, fresh):
            callback.on_train_batch_end(trainer, task, None, None, 0)
    assert (restored.calls, restored.last_env_steps) == (1, 150)  # at 150 only: 50 env steps after 100
    assert (fresh.calls, fresh.last_env_steps) == (1, 130)  # a fresh schedule fires at once
    assert isinstance(restored.last, NormDiagnosis) and restored.last.output.output == "actions"


# -- 8. errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"every_n_validations": 0},
        {"num_batches": 0},
        {"every_n_env_steps": -5},
        {"batch_size": 0},
        {"recent": 0},
        {"num_batches": 1.5},
        {"every_n_validations": True},
        {"near": 0.0},
        {"near": -0.1},
        {"near": RANGE},
        {"near": 20.0},
    ],
)
def test_bad_options_are_refused_at_construction(options: dict[str, Any]) -> None:
    (name,) = options
    with pytest.raises(ValueError, match=name):
        NormDiagnostics(**options)


# -- at tests, as JSON records, through the task's own forward ------------------------------------------------------


def _first_test_inputs(task: SpikingClassifier, data: DigitsDataModule, k: int) -> list[torch.Tensor]:
    task.eval()
    loader = iter(data.test_dataloader())
    return [next(loader)[0] for _ in range(k)]


def test_at_a_test_it_logs_test_keys_and_writes_a_json_record_equal_to_diagnose(tmp_path: Path) -> None:
    """stages=("test",): nothing at validations; at trainer.test the keys `test/diagnostics/...` hold diagnose's
    numbers on the first test batches, and records=True writes them (plus per-layer histograms summed over steps)
    as JSON; forward="task" diagnoses through the task's own forward on the raw batch inputs, the same numbers."""
    data = DigitsDataModule(batch_size=BATCH)
    results = {}
    for forward in ("network", "task"):
        task = _task()
        callback = NormDiagnostics(
            num_batches=2, stages=["test"], records=True, plots=False, forward=forward, dirpath=tmp_path / forward
        )
        trainer = short_trainer(2, 1, [callback], logger=CSVLogger(tmp_path, name=forward), limit_test_batches=3)
        trainer.fit(task, data)
        assert not _diagnostic_rows(_csv_rows(trainer.log_dir))  # not at validations
        logged = trainer.test(task, data, verbose=False)[0]
        results[forward] = {k: v for k, v in logged.items() if k.startswith("test/diagnostics/")}
        expected = diagnose(task.model, [task.encode(x) for x in _first_test_inputs(task, data, 2)])
        assert results[forward] == pytest.approx({f"test/{k}": v for k, v in expected.scalars().items()}, rel=1e-6)
        (record,) = (tmp_path / forward).glob("test-step*.json")
        stored = json.loads(record.read_text())
        assert stored["histograms"].keys() == expected.histograms.keys()
        for layer, counts in expected.histograms.items():
            assert stored["histograms"][layer] == counts.sum(0).tolist()
    assert results["network"] == results["task"]


def test_unknown_stages_and_forwards_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown NormDiagnostics stages entry 'fit'"):
        NormDiagnostics(stages=["fit"])
    with pytest.raises(ValueError, match="unknown NormDiagnostics forward 'model'"):
        NormDiagnostics(forward="model")
