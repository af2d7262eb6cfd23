"""What a study does with each run (spikenorm.studies.run_plans, spikenorm.studies.study): decisions on hand-made
run folders, waves, refusals before anything runs, and (slow) the acceptance test: a 3-norm x 3-seed digits study
killed mid-way and rerun gives the table of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from spikenorm.run_status import RunStatus, read_run_status, write_run_status
from spikenorm.studies import study as study_module
from spikenorm.studies.executors import RunOutcome, RunTask
from spikenorm.studies.run_plans import STUDY_CONFIG, Action, decide, move_aside
from spikenorm.studies.study import StudyRefused, output_lock, run_study, study_command

CONFIG = {"seed_everything": 0, "trainer": {"max_epochs": 2}, "model": {"lr": 0.1}}


def _run_folder(folder: Path, state: str | None, config=CONFIG, last: bool = False, **status) -> Path:
    """A run folder as a study leaves it: its study_run.yaml, a run.json in ``state`` (none for None), and
    optionally checkpoints/last.ckpt."""
    folder.mkdir(parents=True)
    if config is not None:
        (folder / STUDY_CONFIG).write_text(yaml.safe_dump(config))
    if state is not None:
        status = {"host": socket.gethostname(), "pid": 0, **status}
        write_run_status(folder, RunStatus(state, started="2026-01-01T00:00:00+00:00", **status))
    if last:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    return folder


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize(
    ("state", "extra", "action", "aside"),
    [
        ("finished", {}, Action.SKIP, None),
        ("crashed", {"error": "RuntimeError: boom"}, Action.RESTART, "crashed"),
        ("interrupted", {"last": True}, Action.RESUME, None),
        ("interrupted", {}, Action.RESTART, "interrupted"),
        ("running", {"last": True, "pid": "dead"}, Action.RESUME, None),
        ("running", {"pid": "dead"}, Action.RESTART, "interrupted"),
        ("running", {"last": True, "pid": "own", "host": "another-host"}, Action.RESUME, None),
    ],
)
def test_a_run_folder_decides_what_the_study_does(tmp_path, state, extra, action, aside):
    extra = dict(extra)
    if extra.get("pid") == "dead":
        extra["pid"] = _dead_pid()
    elif extra.get("pid") == "own":  # alive, but on another host: nothing tells that it still runs there
        extra["pid"] = os.getpid()
    folder = _run_folder(tmp_path / "seed_0", state, **extra)
    decision = decide(folder, CONFIG)
    assert (decision.action, decision.aside) == (action, aside)


def test_a_run_whose_process_still_runs_here_is_busy(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = _run_folder(tmp_path / "seed_0", "running", last=True, pid=sleeper.pid)
        decision = decide(folder, CONFIG)
        assert decision.action is Action.BUSY and f"pid {sleeper.pid}" in decision.reason
    finally:
        sleeper.kill()
        sleeper.wait()


def test_new_incomplete_and_changed_folders(tmp_path):
    assert decide(tmp_path / "none", CONFIG).action is Action.START
    only_config = _run_folder(tmp_path / "a", None)
    assert decide(only_config, CONFIG).action is Action.START
    stray = _run_folder(tmp_path / "b", None)
    (stray / "metrics.csv").write_text("step\n")
    assert (decide(stray, CONFIG).action, decide(stray, CONFIG).aside) == (Action.RESTART, "incomplete")
    finished = _run_folder(tmp_path / "c", "finished")
    changed = {**CONFIG, "trainer": {"max_epochs": 3}, "data": 1}
    decision = decide(finished, changed)
    assert decision.action is Action.CHANGED
    assert decision.differences == ("data: '<absent>' -> 1", "trainer.max_epochs: 2 -> 3")
    assert decide(finished, changed, ignore={"data", "trainer.max_epochs"}).action is Action.SKIP
    foreign = _run_folder(tmp_path / "d", "finished", config=None)  # a run the study did not start
    assert decide(foreign, CONFIG).action is Action.CHANGED
    crashed = _run_folder(tmp_path / "e", "crashed")
    assert decide(crashed, changed).action is Action.RESTART  # a crashed run is rerun whatever it was


def test_moving_aside_numbers_and_keeps_every_file(tmp_path):
    folder = _run_folder(tmp_path / "seed_0", "crashed")
    assert move_aside(folder, "crashed") == tmp_path / "seed_0.crashed-1"
    _run_folder(folder, "crashed")
    assert move_aside(folder, "crashed") == tmp_path / "seed_0.crashed-2"
    assert not folder.exists() and read_run_status(tmp_path / "seed_0.crashed-2").status == "crashed"


# -- run_study with a stand-in for the runs ----------------------------------------------------------------------


class FakeRunner:
    """Stands in for StudyRunner: "runs" by writing run.json; a config with ``model.crash`` crashes. Each run's
    best checkpoint has a new name each time, so a rerun gives a new one."""

    calls: list[str] = []

    def __init__(self, threads: int, cwd: str) -> None:
        pass

    def __call__(self, task: RunTask) -> RunOutcome:
        FakeRunner.calls.append(task.label)
        config = yaml.safe_load((task.folder / STUDY_CONFIG).read_text())
        state = "crashed" if config["model"].get("crash") else "finished"
        best = task.folder / "checkpoints" / f"best-{uuid.uuid4().hex}.ckpt"
        results = {"test/acc": 0.5 + task.seed / 10}
        write_run_status(task.folder, RunStatus(state, started="t", best_checkpoint=str(best), results=results))
        return RunOutcome(task, state, results=results)


@pytest.fixture
def fake_runs(monkeypatch):
    """run_study with FakeRunner, no CLI parse (tests/test_study_files.py checks it) and compare recorded."""
    FakeRunner.calls = []
    compared = []
    monkeypatch.setattr(study_module, "StudyRunner", FakeRunner)
    monkeypatch.setattr(study_module, "check_configs", lambda study, plans: None)
    import spikenorm.studies.compare as compare_module

    monkeypatch.setattr(compare_module, "compare", lambda paths, **kw: compared.append((list(paths), kw)) or "table")
    return compared


def _teacher_student(folder: Path, **overrides) -> Path:
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"trainer": {"logger": False}, "model": {"lr": 0.1}}))
    study = {
        "name": "kd",
        "base": "recipe.yaml",
        "seeds": 2,
        "overrides": overrides,
        "cells": {"student": {"model.teacher": "{best_checkpoint:teacher}"}, "teacher": {}},
        "metrics": ["test/acc"],
        "executor": {"workers": 2},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_waves_fill_best_checkpoints_and_a_rerun_skips_finished_runs(tmp_path, fake_runs):
    path = _teacher_student(tmp_path)
    result = run_study(path)
    assert FakeRunner.calls[2:] in (["student seed 0", "student seed 1"], ["student seed 1", "student seed 0"])
    assert {o.status for o in result.outcomes} == {"finished"} and len(result.outcomes) == 4
    output = tmp_path / "studies" / "kd"
    student = yaml.safe_load((output / "student" / "seed_1" / STUDY_CONFIG).read_text())
    assert student["model"]["teacher"] == read_run_status(output / "teacher" / "seed_1").best_checkpoint
    [(paths, options)] = fake_runs
    assert paths == [p.folder for p in result.plans] and options["metrics"] == ["test/acc"]
    assert options["output"] == output and result.comparison == "table"

    FakeRunner.calls = []
    again = run_study(path)
    assert FakeRunner.calls == [] and {d.action for d in again.decisions} == {Action.SKIP}

    # a crashed teacher is moved aside and rerun; its new checkpoint makes its student rerun too
    write_run_status(output / "teacher" / "seed_0", RunStatus("crashed", started="t", error="E: x"))
    third = run_study(path)
    assert FakeRunner.calls == ["teacher seed 0", "student seed 0"]
    assert (output / "teacher" / "seed_0.crashed-1").is_dir() and (output / "student" / "seed_0.changed-1").is_dir()
    assert [o.task.label for o in third.outcomes] == ["teacher seed 0", "student seed 0"]


def test_a_changed_study_is_refused_before_anything_runs_unless_replacing(tmp_path, fake_runs, capsys):
    run_study(_teacher_student(tmp_path))
    FakeRunner.calls = []
    path = _teacher_student(tmp_path, **{"model.lr": 0.2})
    with pytest.raises(StudyRefused) as refused:
        run_study(path)
    assert "teacher seed 1" in str(refused.value) and "model.lr: 0.1 -> 0.2" in str(refused.value)
    assert FakeRunner.calls == [] and not list((tmp_path / "studies" / "kd" / "teacher").glob("*.changed-*"))
    assert study_command([str(path)]) == 2 and "--replace-changed" in capsys.readouterr().err
    run_study(path, replace_changed=True)
    assert len(FakeRunner.calls) == 4 and (tmp_path / "studies" / "kd" / "teacher" / "seed_1.changed-1").is_dir()


def test_a_run_whose_dependency_crashed_is_blocked_and_the_exit_status_says_so(tmp_path, fake_runs):
    path = _teacher_student(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["cells"]["teacher"] = {"model.crash": True}
    path.write_text(yaml.safe_dump(study))
    result = run_study(path)
    assert sorted((o.task.label, o.status) for o in result.outcomes) == [
        ("student seed 0", "blocked"),
        ("student seed 1", "blocked"),
        ("teacher seed 0", "crashed"),
        ("teacher seed 1", "crashed"),
    ]
    assert "needs the best checkpoint of teacher seed 0" in result.outcomes[-2].error + result.outcomes[-1].error
    assert fake_runs == [] and study_command([str(path)]) == 1  # nothing finished: no table


def test_runs_whose_slurm_jobs_are_still_queued_are_not_started_again(tmp_path, fake_runs, monkeypatch):
    """A rerun while the job array of an earlier study process is still queued or running (its run.json, if
    any, was written on another machine) is refused; once sacct says the jobs ended, the runs are started."""
    submitit = pytest.importorskip("submitit")
    from spikenorm.studies.executors import STUDY_JOB

    path = _teacher_student(tmp_path)
    teacher = tmp_path / "studies" / "kd" / "teacher" / "seed_0"
    teacher.mkdir(parents=True)
    (teacher / STUDY_JOB).write_text(json.dumps({"job_id": "77_0", "folder": str(tmp_path / "submitit")}))
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "state", property(lambda job: "PENDING"))
    with pytest.raises(StudyRefused, match="teacher seed 0: its SLURM job 77_0 is PENDING"):
        run_study(path)
    monkeypatch.setattr(submitit.slurm.slurm.SlurmJob, "state", property(lambda job: "CANCELLED by 0"))
    run_study(path)
    assert len(FakeRunner.calls) == 4


def test_a_study_running_in_the_output_folder_holds_it(tmp_path, fake_runs):
    path = _teacher_student(tmp_path)
    with (
        output_lock(tmp_path / "studies" / "kd"),
        pytest.raises(StudyRefused, match=f"another study .pid {os.getpid()}"),
    ):
        run_study(path)
    assert FakeRunner.calls == []


# -- the acceptance test (slow) -----------------------------------------------------------------------------------

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
NORMS_STUDY = {
    "name": "norms_tiny",
    "base": str(QUICKSTART),
    "seeds": 3,
    "overrides": {
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 3,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "trainer.logger": False,  # the study adds its CSV logger (W&B offline runs would cost seconds each)
        "trainer.callbacks[1].init_args.every_n_train_steps": 1,  # last.ckpt after every step: a kill resumes
        "model.init_args.time_steps": 2,
        "model.init_args.model.init_args.cfg": [8, "A"],
        "model.init_args.lr_scheduler.init_args.T_max": 2,
    },
    "axes": {"model.init_args.model.init_args.layers.norm": ["tdbn", "tebn", "tab"]},
    "metrics": ["test/acc", "val/acc"],
    "executor": {"workers": 2},
}


def _spikenorm_study(folder: Path, *args: str) -> subprocess.Popen:
    """``python -m spikenorm.studies.study`` in ``folder``, in its own session (its process group holds the runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "spikenorm.studies.study", *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "SPIKENORM_MALLOC": "default"},
    )


def _states(output: Path) -> dict[Path, RunStatus]:
    return {p.parent: read_run_status(p.parent) for p in output.glob("*/seed_*/run.json")}


@pytest.mark.slow
def test_a_study_killed_mid_way_and_rerun_gives_the_table_of_an_uninterrupted_one(tmp_path):
    """3 norms x 3 seeds on digits, 2 local workers: SIGKILL the study's process group once two runs finished and
    one is mid-run with a last.ckpt; the rerun does not touch the finished runs, resumes the killed one from its
    last.ckpt (run.json counts the resume) and ends with the table the same study gives uninterrupted."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(NORMS_STUDY))
    output = tmp_path / "studies" / "norms_tiny"
    study = _spikenorm_study(tmp_path, "study.yaml")
    killed: Path | None = None
    try:
        while study.poll() is None:
            states = _states(output)
            finished = [f for f, s in states.items() if s and s.status == "finished"]
            mid_run = [
                f for f, s in states.items() if s and s.status == "running" and (f / "checkpoints/last.ckpt").is_file()
            ]
            if len(finished) >= 2 and mid_run:
                os.killpg(study.pid, signal.SIGKILL)
                killed = mid_run[0]
                break
            time.sleep(0.05)
    finally:
        study.wait()
        printed = study.stdout.read()
    assert killed is not None, f"the study ended before a run was caught mid-run:\n{printed[-3000:]}"
    before = _states(output)
    finished = {f: (f / "run.json").stat().st_mtime_ns for f, s in before.items() if s.status == "finished"}
    assert len(finished) >= 2 and before[killed].status == "running"

    rerun = _spikenorm_study(tmp_path, "study.yaml")
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out[-4000:]
    after = _states(output)
    assert len(after) == 9 and {s.status for s in after.values()} == {"finished"}
    assert {f: (f / "run.json").stat().st_mtime_ns for f in finished} == finished  # not repeated
    assert after[killed].resumes == 1 and "(resume)" in out
    # only runs caught before their first last.ckpt (or before their run.json) were moved aside and rerun
    assert all(Path(str(p).rsplit(".", 1)[0]) not in finished for p in output.glob("*/seed_*.*"))

    (tmp_path / "straight").mkdir()
    straight = _spikenorm_study(tmp_path / "straight", str(tmp_path / "study.yaml"))
    out_straight, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out_straight[-4000:]
    table = (output / "compare.csv").read_text()
    assert (
        "norm=tab" in table and table == (tmp_path / "straight" / "studies" / "norms_tiny" / "compare.csv").read_text()
    )
