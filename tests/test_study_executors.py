"""Where study runs run (spikenorm.studies.executors): the run process and its outcome, joblib's local workers,
submitit's debug executor, the SLURM job array script submitit would submit, the requeue of a timed-out run, and
(slow) a digits study through submitit's local executor."""

from __future__ import annotations

import json
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from spikenorm.run_status import read_run_status
from spikenorm.studies.executors import (
    STUDY_JOB,
    RunOutcome,
    RunTask,
    StudyRunner,
    run_local,
    slurm_parameters,
    submit,
    submitit_executor,
    wait,
)
from spikenorm.studies.run_plans import STUDY_CONFIG, STUDY_LOG
from spikenorm.studies.study_files import ExecutorOptions

submitit = pytest.importorskip("submitit")

# stands in for `spikenorm fit`: keeps run.json as the CLI does; with a `<run folder>.wait` file beside the run
# folder it waits (marking `started`) until interrupted, with `<run folder>.crash` it dies at once
FAKE_FIT = r"""
import json, os, sys, time
folder = os.path.dirname(sys.argv[sys.argv.index("--config") + 1])
resume = "--ckpt_path" in sys.argv
def status(state, results=None):
    with open(os.path.join(folder, "run.json"), "w") as f:
        entries = {"status": state, "started": "t", "pid": os.getpid(), "resumes": int(resume)}
        json.dump({**entries, "results": results or {}}, f)
status("running")
print("threads", os.environ["OMP_NUM_THREADS"], "resume", resume, flush=True)
if os.path.exists(folder + ".wait"):
    open(os.path.join(folder, "started"), "w").close()
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        status("interrupted")
        sys.exit(130)
if os.path.exists(folder + ".crash"):
    sys.exit(3)
status("finished", {"test/acc": 0.75})
"""


class ScriptRunner(StudyRunner):
    """StudyRunner whose run is FAKE_FIT (with the arguments `spikenorm fit` would get)."""

    def command(self, folder: Path, resume: bool) -> list[str]:
        return [self.python, "-c", FAKE_FIT, *super().command(folder, resume)[3:]]


def _task(folder: Path, seed: int = 0, **files: str) -> RunTask:
    run = folder / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / STUDY_CONFIG).write_text("{}\n")
    for name in files:  # markers for FAKE_FIT
        run.with_name(f"{run.name}.{name}").write_text("")
    return RunTask(f"c seed {seed}", "c", seed, run)


def test_the_run_is_spikenorm_fit_of_its_config_decided_again_when_the_task_starts(tmp_path):
    """A task starts, resumes, skips or restarts its run by the study's rule, from what the folder holds when it
    starts (a task requeued by a cluster goes on where its run stopped)."""
    folder = tmp_path / "seed_0"
    fit = [sys.executable, "-m", "spikenorm.cli", "fit", "--config", str(folder / STUDY_CONFIG)]
    runner = StudyRunner(threads=3, cwd=tmp_path)
    assert runner.command(folder, False) == fit and runner.command(folder, True) == [*fit, "--ckpt_path", "last"]

    task = _task(tmp_path)
    outcome = ScriptRunner(threads=3, cwd=tmp_path)(task)
    assert (outcome.status, outcome.resumed, outcome.returncode) == ("finished", False, 0)
    assert outcome.results == {"test/acc": 0.75} and outcome.error is None
    assert "threads 3 resume False" in (folder / STUDY_LOG).read_text()
    again = ScriptRunner(1, tmp_path)(task)  # finished: not run again
    assert (again.status, again.returncode) == ("finished", None)
    assert (folder / STUDY_LOG).read_text().count("# 20") == 1

    (folder / "run.json").write_text('{"status": "running", "started": "t"}')  # killed, with a last.ckpt
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    resumed = ScriptRunner(1, tmp_path)(task)
    assert resumed.resumed and read_run_status(folder).resumes == 1
    log = (folder / STUDY_LOG).read_text()  # appended to, one header per start
    assert log.count("# 20") == 2 and "'--ckpt_path', 'last'" in log and "threads 1 resume True" in log

    (folder / "run.json").write_text('{"status": "interrupted", "started": "t"}')
    (folder / "checkpoints" / "last.ckpt").unlink()  # stopped before its first last.ckpt: moved aside, afresh
    restarted = ScriptRunner(1, tmp_path)(task)
    assert (restarted.status, restarted.resumed) == ("finished", False)
    assert (tmp_path / "seed_0.interrupted-1" / STUDY_LOG).read_text().count("# 20") == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(["run.json", STUDY_CONFIG, STUDY_LOG])

    crashed = ScriptRunner(1, tmp_path)(_task(tmp_path, 1, crash=""))
    assert crashed.status == "running" and crashed.returncode == 3  # died without writing: run.json says running
    assert crashed.error == f"exit code 3; see {tmp_path / 'seed_1' / STUDY_LOG}"


def test_local_runs_go_two_at_a_time_through_joblib_threads(tmp_path):
    """Two runs must be in flight together to pass the barrier; never more than two are."""
    barrier, lock = threading.Barrier(2, timeout=30), threading.Lock()
    running, most = [0], [0]

    def runner(task: RunTask) -> RunOutcome:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        barrier.wait()
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return RunOutcome(task, "finished")

    tasks = [RunTask(f"c seed {s}", "c", s, tmp_path) for s in range(4)]
    started, ended = [], []
    outcomes = run_local(tasks, runner, 2, started.append, ended.append)
    assert most[0] == 2 and [o.task for o in outcomes] == tasks
    assert sorted(t.seed for t in started) == [0, 1, 2, 3] and sorted(ended, key=lambda o: o.task.seed) == outcomes


def test_the_debug_executor_runs_the_tasks_one_after_the_other_in_this_process(tmp_path):
    executor = submitit_executor("debug", tmp_path / "submitit", "s", ExecutorOptions(name="debug"))
    tasks = [_task(tmp_path, seed) for seed in range(3)]
    events = []
    jobs = submit(executor, ScriptRunner(1, tmp_path), tasks)
    assert not (tmp_path / "seed_0" / "run.json").exists()  # a debug job runs when its result is asked for
    outcomes = wait(jobs, tasks, True, lambda t: events.append(("start", t.seed)), lambda o: events.append(o.status))
    assert events == [("start", 0), "finished", ("start", 1), "finished", ("start", 2), "finished"]
    assert [o.task for o in outcomes] == tasks and {o.status for o in outcomes} == {"finished"}


def test_slurm_options_map_to_submitit_and_unknown_ones_are_refused(tmp_path):
    slurm = {"timeout_min": 30, "cpus_per_task": 2, "partition": "gpu", "array_parallelism": 4, "setup": ["x"]}
    assert slurm_parameters(slurm, "norms") == {
        "name": "norms",
        "timeout_min": 30,
        "cpus_per_task": 2,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 4,
        "slurm_setup": ["x"],
    }
    options = ExecutorOptions(name="debug", slurm={"partitoin": "gpu"})
    with pytest.raises(ValueError, match="executor.slurm: .*Unknown argument 'partitoin'"):
        submitit_executor("debug", tmp_path, "s", options)


def test_the_job_array_script_submitit_would_submit(tmp_path, monkeypatch):
    """Nine runs with array_parallelism 2 are one SLURM job array, 2 tasks at a time, with the study's resources
    and setup lines; each task unpickles a StudyRunner and its RunTask. sbatch is replaced by an echo of its
    answer; the script is the file submitit hands to sbatch."""
    from submitit.helpers import DelayedSubmission
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were there
    monkeypatch.setattr(SlurmExecutor, "_make_submission_command", lambda self, path: ["echo", "Submitted job 4242"])
    slurm = {
        "timeout_min": 120,
        "cpus_per_task": 2,
        "mem_gb": 8,
        "partition": "cpu",
        "array_parallelism": 2,
        "setup": ["module load python/3.11", "source ~/venvs/spikenorm/bin/activate"],
    }
    folder = tmp_path / "submitit"
    executor = submitit_executor("slurm", folder, "norms_digits", ExecutorOptions("slurm", threads=2, slurm=slurm))
    tasks = [_task(tmp_path, s) for s in range(9)]
    jobs = submit(executor, StudyRunner(2, tmp_path), tasks)
    assert [job.job_id for job in jobs] == [f"4242_{i}" for i in range(9)]
    recorded = json.loads((tmp_path / "seed_5" / STUDY_JOB).read_text())  # what a rerun asks sacct about
    assert recorded == {"job_id": "4242_5", "folder": str(folder)}
    script = (folder / "4242_submission.sh").read_text()
    for line in [
        "#SBATCH --array=0-8%2",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --time=120",
        "#SBATCH --mem=8GB",
        "#SBATCH --partition=cpu",
        "#SBATCH --job-name=norms_digits",
        "#SBATCH --signal=USR2@90",  # submitit's timeout signal: StudyRunner.checkpoint, then a requeue
        "# setup\nmodule load python/3.11\nsource ~/venvs/spikenorm/bin/activate\n",
        f"-m submitit.core._submit {folder}",
    ]:
        assert line in script, script
    submitted = DelayedSubmission.load(folder / "4242_5_submitted.pkl")
    assert isinstance(submitted.function, StudyRunner) and submitted.function.threads == 2
    assert submitted.args == (tasks[5],)


def test_a_timed_out_run_is_interrupted_and_requeued_as_the_same_task(tmp_path):
    """What submitit calls on a timeout or preemption: the run gets SIGINT (so run.json says interrupted, and the
    requeued task resumes from last.ckpt), and submitit gets the same runner and task to pickle and requeue."""
    task = _task(tmp_path, wait="")
    runner = ScriptRunner(1, tmp_path)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(runner(task)))
    thread.start()
    deadline = time.monotonic() + 60
    while not (task.folder / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    requeued = runner.checkpoint(task)
    thread.join(60)
    assert outcome[0].status == "interrupted" and outcome[0].returncode == 130
    assert requeued.function is runner and requeued.args == (task,)
    assert pickle.loads(pickle.dumps(requeued.function)).threads == 1  # no process handle travels


# -- slow: a real study through submitit's local executor ------------------------------------------------------


def _wandb_run_record(run_dir: Path):
    """The run record (project, group, job type, name) of an offline W&B run."""
    from wandb.proto import wandb_internal_pb2

    from spikenorm.wandb_runs import _find_log, _iter_records

    log = _find_log(run_dir)
    for raw, _ in _iter_records(log.read_bytes(), log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {log}")


@pytest.mark.slow
def test_a_digits_study_through_submitits_local_executor_with_wandb_grouping(tmp_path):
    """The acceptance study (3 norms x 3 seeds) with executor submitit-local and the recipe's W&B logger (offline):
    every run finishes through a submitit job, each W&B run is in the study's group with its cell as job type and
    "<cell> seed <s>" as name, the table is written, and a rerun skips every run."""
    from helpers import offline_wandb
    from test_study_runs import NORMS_STUDY

    from spikenorm.studies.study import run_study
    from spikenorm.wandb_runs import read_offline_run

    overrides = {k: v for k, v in NORMS_STUDY["overrides"].items() if k != "trainer.logger"}  # keep W&B
    executor = {"name": "submitit-local", "slurm": {"timeout_min": 30}}
    study = {**NORMS_STUDY, "overrides": overrides, "executor": executor}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    with offline_wandb(tmp_path):
        result = run_study(tmp_path / "study.yaml")
    output = tmp_path / "studies" / "norms_tiny"
    assert [o.status for o in result.outcomes] == ["finished"] * 9
    assert len(list((output / "submitit").glob("*_result.pkl"))) == 9 and (output / "compare.csv").is_file()
    for plan in result.plans:
        [run_dir] = (plan.folder / "wandb").glob("offline-run-*")
        record = _wandb_run_record(run_dir)
        assert (record.run_group, record.job_type, record.display_name) == ("norms_tiny", plan.cell, plan.label)
        assert read_offline_run(run_dir)["finished"]
    again = run_study(tmp_path / "study.yaml", executor="local")
    assert again.outcomes == [] and {d.action.value for d in again.decisions} == {"skip"}
