"""Run a wave of study runs on an existing engine: joblib on this machine, submitit on a SLURM cluster.

Every run is one ``spikenorm fit --config <run folder>/study_run.yaml`` process started by :class:`StudyRunner`,
which decides again when the task starts, by the study's own rule (:func:`~spikenorm.studies.run_plans.decide`:
``--ckpt_path last`` for an unfinished run with a ``last.ckpt``, nothing for a finished one, the folder moved aside
for one that stopped before its first ``last.ckpt``), so that a task requeued by a cluster goes on where its run
stopped; with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the study's threads per run (torch
takes its intra-op thread count from ``OMP_NUM_THREADS``). Its output goes to ``<run folder>/study_run.log``.

* ``local`` (:func:`run_local`): ``joblib.Parallel(n_jobs=workers, backend="threading")``, one thread per run at a
  time, each waiting on its run's process; runs share nothing.
* ``slurm``, ``submitit-local``, ``debug`` (:func:`submitit_executor`, :func:`submit`, :func:`wait`): submitit's
  ``AutoExecutor`` with ``cluster="slurm"`` (one SLURM job array per wave: ``executor.map_array``), ``"local"``
  (every task of the array at once, as processes of this machine) or ``"debug"`` (in this process, one after the
  other). :class:`StudyRunner` has the ``checkpoint`` method submitit calls when a job times out or is preempted
  (as a ``submitit.helpers.Checkpointable`` has, without importing submitit, which local studies do not need): it
  interrupts the run (SIGINT: its ``run.json`` says ``interrupted``) and requeues the same task, which then
  resumes from ``last.ckpt``. On SLURM each run's job id is kept in its folder (:data:`STUDY_JOB`), so that a
  rerun of the study does not start a run whose job is still queued or running (:func:`active_job`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikenorm.extras import needs_extra
from spikenorm.run_status import read_run_status
from spikenorm.studies.run_plans import STUDY_CONFIG, STUDY_LOG, Action, decide, move_aside
from spikenorm.studies.study_files import ExecutorOptions, StudyFileError

__all__ = [
    "STUDY_JOB",
    "RunOutcome",
    "RunTask",
    "StudyRunner",
    "active_job",
    "default_workers",
    "run_local",
    "slurm_parameters",
    "submit",
    "submitit_executor",
    "wait",
]

#: ``executor.name`` -> submitit's cluster name
SUBMITIT_CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "debug": "debug"}
#: what the SLURM executor submitted for a run, in the run's folder: ``{"job_id": "<array>_<task>", "folder": ...}``
STUDY_JOB = "study_job.json"
#: ``sacct`` states of a SLURM job that is queued, running or about to run again
ACTIVE_SLURM_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
    | {"SUSPENDED", "PREEMPTED", "STOPPED", "SIGNALING", "STAGE_OUT"}
)
#: submitit's parameters shared by all its executors (``AutoExecutor``); the other ``executor.slurm`` entries are
#: SLURM options and get submitit's ``slurm_`` prefix
SHARED_PARAMETERS = ("name", "timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node")


@dataclass(frozen=True)
class RunTask:
    """One run to execute: its ``label`` (``"<cell> seed <s>"``), folder, and what the study decided for it
    (``action``: ``start``, ``restart`` or ``resume``; the task checks again when it starts)."""

    label: str
    cell: str
    seed: int
    folder: Path
    action: str = "start"


@dataclass
class RunOutcome:
    """How a run ended: ``status`` from its ``run.json`` (``finished``, ``crashed``, ``interrupted``,
    ``running`` for a process that died without a word) or ``failed`` (no ``run.json``: it never got going),
    whether it was resumed, the exit code, the wall time in seconds, its results (the post-fit test) and an
    ``error`` line for anything but ``finished``."""

    task: RunTask
    status: str
    resumed: bool = False
    returncode: int | None = None
    wall_s: float = 0.0
    results: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def default_workers(threads: int) -> int:
    """Runs at a time on this machine: the cores this process may use // ``threads`` (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // threads)


class StudyRunner:
    """Runs one :class:`RunTask` as its own ``spikenorm fit`` process and waits for it (the callable every
    executor calls, in a thread or in a submitit job).

    Args:
        threads: torch / OpenMP threads of the run.
        cwd: the working folder of the run's process (the study's, so that relative paths in the recipe mean
            what they mean to the user).
        python: the interpreter (this one by default).
        stop_timeout_s: when submitit checkpoints the job, how long the interrupted run may take to stop before
            it is killed.
    """

    def __init__(
        self, threads: int, cwd: str | os.PathLike[str], python: str = sys.executable, stop_timeout_s: float = 60.0
    ) -> None:
        self.threads = threads
        self.cwd = str(cwd)
        self.python = python
        self.stop_timeout_s = stop_timeout_s
        self._child: subprocess.Popen[bytes] | None = None

    def command(self, folder: Path, resume: bool) -> list[str]:
        """The run's command line: ``<python> -m spikenorm.cli fit --config <folder>/study_run.yaml``."""
        command = [self.python, "-m", "spikenorm.cli", "fit", "--config", str(folder / STUDY_CONFIG)]
        return command + (["--ckpt_path", "last"] if resume else [])

    def environment(self) -> dict[str, str]:
        """This process' environment with the run's thread counts."""
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def __call__(self, task: RunTask) -> RunOutcome:
        config_text = (task.folder / STUDY_CONFIG).read_text(encoding="utf-8")
        decision = decide(task.folder, yaml.safe_load(config_text))
        if decision.action is Action.SKIP:  # a requeued task whose run had finished
            return RunOutcome(task, "finished", results=dict(decision.status.results))
        if decision.action not in (Action.START, Action.RESTART, Action.RESUME):
            return RunOutcome(task, "failed", error=decision.reason)
        if decision.action is Action.RESTART:  # a requeued task whose run stopped before its first last.ckpt
            move_aside(task.folder, decision.aside or "replaced")
            task.folder.mkdir()
            (task.folder / STUDY_CONFIG).write_text(config_text, encoding="utf-8")
        resume = decision.action is Action.RESUME
        command = self.command(task.folder, resume)
        start = time.monotonic()
        with open(task.folder / STUDY_LOG, "ab") as log:
            log.write(f"# {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} {command}\n".encode())
            log.flush()
            self._child = subprocess.Popen(command, cwd=self.cwd, env=self.environment(), stdout=log, stderr=log)
            returncode = self._child.wait()
        self._child = None
        status = read_run_status(task.folder)
        outcome = RunOutcome(task, status.status if status else "failed", resume, returncode, time.monotonic() - start)
        if status is not None:
            outcome.results = dict(status.results)
        if outcome.status != "finished":
            reason = status.error if status is not None and status.error else f"exit code {returncode}"
            outcome.error = f"{reason}; see {task.folder / STUDY_LOG}"
        return outcome

    def checkpoint(self, task: RunTask) -> Any:
        """Called by submitit when the job times out or is preempted: interrupt the run (SIGINT, so that it stops
        as ``interrupted``; killed after ``stop_timeout_s``) and give submitit the same task to requeue."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return DelayedSubmission(self, task)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_child": None}  # a process handle does not travel with the pickled job


def run_local(
    tasks: Sequence[RunTask],
    runner: Callable[[RunTask], RunOutcome],
    workers: int,
    on_start: Callable[[RunTask], None],
    on_end: Callable[[RunOutcome], None],
) -> list[RunOutcome]:
    """Run ``tasks`` on this machine, ``workers`` at a time (joblib threads, each waiting on one run's process);
    ``on_start`` and ``on_end`` are called in the task's thread as it starts and ends. Returns the outcomes in
    ``tasks``' order."""
    from joblib import Parallel, delayed

    def one(task: RunTask) -> RunOutcome:
        on_start(task)
        outcome = runner(task)
        on_end(outcome)
        return outcome

    return Parallel(n_jobs=workers, backend="threading")(delayed(one)(task) for task in tasks)


def slurm_parameters(slurm: Mapping[str, Any], job_name: str) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments from ``executor.slurm``: submitit's shared parameters as they
    are, every other entry as the SLURM option ``slurm_<key>``; the job name defaults to ``job_name``."""
    parameters = {"name": job_name}
    for key, value in slurm.items():
        parameters[key if key in SHARED_PARAMETERS else f"slurm_{key}"] = value
    return parameters


def submitit_executor(name: str, folder: Path, job_name: str, options: ExecutorOptions) -> Any:
    """submitit's ``AutoExecutor`` for ``name`` (``slurm``, ``submitit-local``, ``debug``), its jobs' files in
    ``folder``, configured from ``options.slurm`` (:func:`slurm_parameters`).

    Raises:
        spikenorm.extras.MissingExtraError: submitit is not installed (``pip install 'spikenorm[studies]'``).
        StudyFileError: an ``executor.slurm`` entry submitit does not know (submitit's message lists the valid
            ones).
        RuntimeError: ``slurm`` where there is no SLURM (``srun`` not found).
    """
    with needs_extra("studies", f"spikenorm study with executor {name!r}"):
        import submitit
    executor = submitit.AutoExecutor(folder=folder, cluster=SUBMITIT_CLUSTERS[name])
    try:
        executor.update_parameters(**slurm_parameters(options.slurm, job_name))
    except (NameError, ValueError, AssertionError) as error:  # how submitit reports unknown or mistyped ones
        raise StudyFileError(f"spikenorm study: executor.slurm: {error}") from error
    return executor


def submit(executor: Any, runner: StudyRunner, tasks: Sequence[RunTask]) -> list[Any]:
    """Submit ``tasks`` as one job array (``executor.map_array``); returns submitit's jobs, in ``tasks``' order.
    On SLURM each run's job is recorded in its folder (:data:`STUDY_JOB`, read by :func:`active_job`)."""
    jobs = executor.map_array(runner, list(tasks))
    if getattr(executor, "cluster", None) == "slurm":
        for job, task in zip(jobs, tasks):
            record = {"job_id": job.job_id, "folder": str(job.paths.folder)}
            (task.folder / STUDY_JOB).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return jobs


def active_job(folder: Path) -> str | None:
    """Why the run in ``folder`` must not be started again: ``"its SLURM job <id> is PENDING"`` while the job
    submitted for it (:data:`STUDY_JOB`) is queued or running, as ``sacct`` says (a run on another machine
    cannot be told alive from its ``run.json``). None when no job was recorded, or it is over (or unknown to
    ``sacct``)."""
    path = folder / STUDY_JOB
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    from submitit.slurm.slurm import SlurmJob

    state = SlurmJob(folder=record["folder"], job_id=record["job_id"]).state
    return f"its SLURM job {record['job_id']} is {state}" if state.split(" ")[0] in ACTIVE_SLURM_STATES else None


def wait(
    jobs: Sequence[Any],
    tasks: Sequence[RunTask],
    in_order: bool,
    on_start: Callable[[RunTask], None],
    on_end: Callable[[RunOutcome], None],
    poll_s: float = 5.0,
) -> list[RunOutcome]:
    """Wait for submitted jobs and return their outcomes; a job that failed outside the run (an import error in
    the job, a cancelled job) gives a ``failed`` outcome with submitit's message. ``in_order``: take the results
    one after the other, in ``tasks``' order (submitit's debug executor runs a job when its result is asked for;
    ``on_start`` is called just before), else as the jobs complete (polled every ``poll_s`` seconds)."""
    from submitit.helpers import as_completed

    task_of = {id(job): task for job, task in zip(jobs, tasks)}
    outcomes = []
    for job in jobs if in_order else as_completed(list(jobs), poll_frequency=poll_s):
        task = task_of[id(job)]
        if in_order:
            on_start(task)
        try:
            outcome = job.result()
        except Exception as error:  # submitit's FailedJobError / UncompletedJobError
            lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            outcome = RunOutcome(task, "failed", error=f"job {job.job_id}: {lines[-1].strip()}")
        on_end(outcome)
        outcomes.append(outcome)
    return outcomes
