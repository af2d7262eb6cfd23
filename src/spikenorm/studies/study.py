"""``spikenorm study <study.yaml>``: run every cell x seed of a study as an ordinary ``spikenorm fit`` run, then
tabulate them with :func:`spikenorm.studies.compare.compare`.

:func:`run_study` reads and checks the study file (:func:`~spikenorm.studies.study_files.load_study`), expands
its runs (:func:`~spikenorm.studies.study_files.expand_runs`), parses every composed configuration with the CLI's
parser (:func:`~spikenorm.studies.study_files.check_configs`) and decides what each run folder needs
(:func:`~spikenorm.studies.run_plans.decide`), all before anything runs: a run folder that holds a run of another
configuration, or one running now, stops the study with the list of them. Then, holding a lock on the output
folder, it runs each wave (the runs that need other runs' checkpoints wait for them) on the chosen executor
(:mod:`~spikenorm.studies.executors`), printing one line per run start and end under a progress bar, and writes
the comparison (``compare.md``, ``compare.csv``, learning curves) into the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikenorm.run_status import read_run_status
from spikenorm.studies.executors import (
    SUBMITIT_CLUSTERS,
    RunOutcome,
    RunTask,
    StudyRunner,
    active_job,
    default_workers,
    run_local,
    submit,
    submitit_executor,
    wait,
)
from spikenorm.studies.run_plans import STUDY_CONFIG, Action, Decision, decide, move_aside
from spikenorm.studies.study_files import (
    EXECUTOR_NAMES,
    ExecutorOptions,
    RunPlan,
    Study,
    StudyFileError,
    check_configs,
    expand_runs,
    fill_placeholders,
    flatten,
    load_study,
    placeholder_keys,
)

__all__ = ["StudyRefused", "StudyResult", "main", "run_study", "study_command", "study_parser"]

#: the lock file a running study holds in its output folder
LOCK_FILE = ".study.lock"
#: the folder of submitit's job files inside the output folder
SUBMITIT_FOLDER = "submitit"


class StudyRefused(RuntimeError):
    """The study cannot run now: run folders that hold runs of another configuration or runs that are running,
    or another study holding the output folder. Nothing was run."""


@dataclass
class StudyResult:
    """What :func:`run_study` did: the study, every run's plan and :class:`~spikenorm.studies.run_plans.Decision`
    (in plan order), the outcomes of the runs it ran, and the comparison (None on a dry run or when no run
    finished)."""

    study: Study
    plans: list[RunPlan]
    decisions: list[Decision]
    outcomes: list[RunOutcome] = field(default_factory=list)
    comparison: Any = None

    @property
    def unfinished(self) -> list[str]:
        """The labels of the runs that ended in any state but ``finished``."""
        return [o.task.label for o in self.outcomes if o.status != "finished"]


def _pending_keys(config: Any) -> set[str]:
    """The flat keys whose value waits for another run's best checkpoint."""
    return {k for k, v in flatten(config).items() if isinstance(v, str) and "{best_checkpoint:" in v}


def _decide(plan: RunPlan, config: Mapping[str, Any], ignore: Collection[str] = ()) -> Decision:
    """:func:`~spikenorm.studies.run_plans.decide`, and ``busy`` for a run whose SLURM job is still queued or
    running (:func:`~spikenorm.studies.executors.active_job`)."""
    decision = decide(plan.folder, config, ignore)
    if decision.action is not Action.SKIP and (busy := active_job(plan.folder)):
        return Decision(Action.BUSY, busy, status=decision.status)
    return decision


def _refusal(plans: Sequence[RunPlan], decisions: Sequence[Decision], replace_changed: bool) -> str | None:
    """The message that stops the study (runs with the same reason and differences listed together), or None."""
    groups: dict[tuple[str, tuple[str, ...]], list[RunPlan]] = {}
    for plan, decision in zip(plans, decisions):
        if decision.action is Action.BUSY or (decision.action is Action.CHANGED and not replace_changed):
            n = len(decision.differences)
            shown = decision.differences[:8] + ((f"... and {n - 8} more",) if n > 8 else ())
            groups.setdefault((decision.reason, shown), []).append(plan)
    if not groups:
        return None
    lines = []
    for (reason, differences), group in groups.items():
        labels = ", ".join(p.label for p in group[:6]) + (f" and {len(group) - 6} more" if len(group) > 6 else "")
        lines.append(f"  {labels}: {reason}" + (f" ({group[0].folder})" if len(group) == 1 else ""))
        lines += [f"      {d}" for d in differences]
    return (
        f"spikenorm study: nothing was run; run folders under {plans[0].folder.parent.parent} hold a run of another "
        "configuration (stored -> now) or a run that is running now:\n"
        + "\n".join(lines)
        + "\nFor a changed run: rerun with --replace-changed to move it aside (<folder>.changed-<n>) and run it "
        "afresh, or give the study another output folder (--output). For a running one: wait for it or stop it."
    )


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock (``fcntl.flock``) on ``<output>/.study.lock`` for the duration.

    Raises:
        StudyRefused: another process holds it (its pid is named).
    """
    import fcntl

    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise StudyRefused(f"spikenorm study: another study (pid {holder}) is running in {output}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _first_metric(results: dict[str, float], metrics: Sequence[str] | None) -> str:
    """``key=value`` of the first reported metric in ``results`` (the study's first metric, else the first
    ``test/`` key), or an empty string."""
    keys = [m for m in metrics or () if m in results] or [k for k in results if k.startswith("test/")] or []
    return f"{keys[0]}={results[keys[0]]:.4f}" if keys else ""


class _Progress:
    """One line per run start and end, under a tqdm bar over the runs that run (called from the runs' threads)."""

    def __init__(self, total: int, metrics: Sequence[str] | None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
        self.metrics = metrics
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._tqdm.write(text, file=sys.stdout)

    def add_run(self) -> None:
        """Count one more run than planned (a run whose dependency ran again)."""
        self.bar.total += 1
        self.bar.refresh()

    def start(self, task: RunTask) -> None:
        self.line(f"start     {task.label}" + (f"  ({task.action})" if task.action != "start" else ""))

    def end(self, outcome: RunOutcome) -> None:
        with self._lock:
            self.bar.update(1)
        resumed = ", resumed" if outcome.resumed else ""
        tail = _first_metric(outcome.results, self.metrics) if outcome.status == "finished" else outcome.error
        self.line(f"{outcome.status:<9} {outcome.task.label}  {outcome.wall_s:.1f} s{resumed}  {tail or ''}".rstrip())

    def close(self) -> None:
        self.bar.close()


def _prepare(plan: RunPlan, decision: Decision, config: dict[str, Any]) -> RunTask:
    """Move a folder aside when the decision says so, write the composed config, and make the run's task."""
    if decision.action in (Action.RESTART, Action.CHANGED) and plan.folder.exists():
        move_aside(plan.folder, decision.aside or "replaced")
    plan.folder.mkdir(parents=True, exist_ok=True)
    if decision.action is not Action.RESUME:
        (plan.folder / STUDY_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    action = "resume" if decision.action is Action.RESUME else decision.action.value
    return RunTask(plan.label, plan.cell, plan.seed, plan.folder, action)


def _resolve(plan: RunPlan, by_key: Mapping[tuple[str, int], RunPlan]) -> dict[str, Any] | str:
    """``plan.config`` with the best checkpoints it needs filled in, or why they cannot be."""
    paths = {}
    for cell, key in plan.needs.items():
        status = read_run_status(by_key[key].folder)
        if status is None or status.status != "finished" or not status.best_checkpoint:
            return f"needs the best checkpoint of {by_key[key].label}, which did not finish with one"
        paths[cell] = status.best_checkpoint
    return fill_placeholders(plan.config, lambda name: paths.get(name.split(":", 1)[-1]))


def run_study(
    path: str | os.PathLike[str],
    executor: str | None = None,
    workers: int | None = None,
    output: str | os.PathLike[str] | None = None,
    replace_changed: bool = False,
    dry_run: bool = False,
) -> StudyResult:
    """Run the study file at ``path`` (see the module docstring and docs/reference/study-files.md).

    Args:
        path: the study file.
        executor: ``local``, ``slurm``, ``submitit-local`` or ``debug``; wins over the file's ``executor.name``.
        workers: local runs at a time; wins over the file's ``executor.workers``.
        output: the output folder; wins over the file's ``output``.
        replace_changed: move run folders that hold a run of another configuration aside and run them afresh,
            instead of refusing.
        dry_run: check everything and print what each run would do, run nothing.

    Raises:
        FileNotFoundError: no study file or no base recipe.
        StudyFileError: a study file or composed configuration that is not valid (nothing ran).
        StudyRefused: changed or running runs, another study in the output folder, an executor that cannot run
            here (no submitit, no SLURM); nothing ran.
    """
    study = load_study(path, output)
    options = study.executor
    if executor is not None:
        if executor not in EXECUTOR_NAMES:
            raise StudyFileError(f"--executor must be one of {', '.join(EXECUTOR_NAMES)}, got {executor!r}")
        options = dataclasses.replace(options, name=executor)
    plans = expand_runs(study)
    check_configs(study, plans)
    decisions = [_decide(plan, plan.config, _pending_keys(plan.config)) for plan in plans]
    result = StudyResult(study, plans, decisions)
    message = _refusal(plans, decisions, replace_changed)
    if message:
        raise StudyRefused(message)
    engine = None
    if options.name in SUBMITIT_CLUSTERS and not dry_run:
        try:
            engine = submitit_executor(options.name, study.output / SUBMITIT_FOLDER, study.name, options)
        except (ImportError, RuntimeError) as error:  # no submitit; no SLURM here
            raise StudyRefused(f"spikenorm study: executor {options.name}: {error}") from error
    counts: dict[str, int] = {}
    for decision in decisions:
        counts[decision.action.value] = counts.get(decision.action.value, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in counts.items())
    print(f"study {study.name}: {len(plans)} runs in {study.output} ({summary}), executor {options.name}")
    if dry_run:
        for plan, decision in zip(plans, decisions):
            print(f"  {decision.action.value:<8} {plan.label}  ({decision.reason}) {plan.folder}")
        return result
    with output_lock(study.output):
        progress = _Progress(sum(d.action is not Action.SKIP for d in decisions), study.metrics)
        try:
            for wave in sorted({plan.wave for plan in plans}):
                tasks = _wave_tasks([p for p in plans if p.wave == wave], result, replace_changed, progress)
                if tasks:
                    result.outcomes += _execute(tasks, options, workers, engine, study.output, progress)
        finally:
            progress.close()
        finished = [p for p in plans if (s := read_run_status(p.folder)) is not None and s.status == "finished"]
        not_finished = f"; not finished: {', '.join(result.unfinished)}" if result.unfinished else ""
        print(f"study {study.name}: {len(finished)} of {len(plans)} runs finished{not_finished}")
        if finished:
            from spikenorm.studies.compare import compare

            result.comparison = compare(
                [p.folder for p in plans],
                metrics=list(study.metrics) if study.metrics else None,
                baseline=study.baseline,
                strata=study.strata,
                output=study.output,
                ignore=placeholder_keys(study),
            )
            print(f"table and curves written to {study.output}")
    return result


def _wave_tasks(
    wave: Sequence[RunPlan], result: StudyResult, replace_changed: bool, progress: _Progress
) -> list[RunTask]:
    """Decide again for the runs of one wave (the checkpoints they need are known now), move folders aside, write
    the composed configs; returns the tasks to run. A run whose dependency did not finish is ``blocked``; one whose
    dependency's checkpoint changed is rerun."""
    by_key = {plan.key: plan for plan in result.plans}
    planned = {plan.key: decision for plan, decision in zip(result.plans, result.decisions)}
    tasks = []
    for plan in wave:
        config = _resolve(plan, by_key)
        if isinstance(config, str):  # a run it needs did not finish
            outcome = RunOutcome(RunTask(plan.label, plan.cell, plan.seed, plan.folder), "blocked", error=config)
            progress.end(outcome)
            result.outcomes.append(outcome)
            continue
        decision = _decide(plan, config)
        if decision.action is Action.SKIP:
            progress.line(f"skip      {plan.label}  (finished before)")
            continue
        if decision.action is Action.BUSY or (
            decision.action is Action.CHANGED and not (replace_changed or plan.needs)
        ):
            raise StudyRefused(_refusal([plan], [decision], replace_changed) or decision.reason)
        if planned[plan.key].action is Action.SKIP:
            progress.add_run()
        tasks.append(_prepare(plan, decision, config))
    return tasks


def _execute(
    tasks: list[RunTask], options: ExecutorOptions, workers: int | None, engine: Any, output: Path, progress: _Progress
) -> list[RunOutcome]:
    """Run one wave's tasks on the local executor (``engine`` None) or submit them to submitit's and wait."""
    runner = StudyRunner(options.threads, os.getcwd())
    if engine is None:
        workers = workers or options.workers or default_workers(options.threads)
        return run_local(tasks, runner, workers, progress.start, progress.end)
    jobs = submit(engine, runner, tasks)
    progress.line(
        f"submitted {len(jobs)} runs to {options.name}: jobs {jobs[0].job_id} .. {jobs[-1].job_id}, "
        f"job files in {output / SUBMITIT_FOLDER}"
    )
    poll_s = 30.0 if options.name == "slurm" else 1.0
    return wait(jobs, tasks, options.name == "debug", progress.start, progress.end, poll_s)


def study_parser() -> argparse.ArgumentParser:
    """The options of ``spikenorm study``."""
    parser = argparse.ArgumentParser(
        prog="spikenorm study",
        allow_abbrev=False,
        description=(
            "Run every cell x seed of a study file as its own `spikenorm fit` run (skipping finished runs, resuming "
            "interrupted ones from last.ckpt, rerunning crashed ones), then write the comparison table and "
            "learning curves into the study's output folder. See docs/reference/study-files.md."
        ),
    )
    parser.add_argument("study", help="the study file (YAML)")
    parser.add_argument(
        "--executor", choices=EXECUTOR_NAMES, default=None, help="where the runs run (default: the file's, else local)"
    )
    parser.add_argument("--workers", type=int, default=None, help="local: runs at a time (default: cores // threads)")
    parser.add_argument("--output", default=None, help="the output folder (default: the file's, else studies/<name>)")
    parser.add_argument(
        "--replace-changed",
        action="store_true",
        help="move run folders holding a run of another configuration aside and run them afresh",
    )
    parser.add_argument("--dry-run", action="store_true", help="check the study and show what each run would do")
    return parser


def study_command(argv: Sequence[str]) -> int:
    """Run ``spikenorm study <argv>``; the exit status: 0 when every run finished, 1 when some did not, 2 when the
    study could not start (the reason is printed to stderr), 130 when it was interrupted (Ctrl-C)."""
    options = study_parser().parse_args(list(argv))
    if options.workers is not None and options.workers < 1:
        study_parser().error(f"--workers must be at least 1, got {options.workers}")
    try:
        result = run_study(
            options.study,
            executor=options.executor,
            workers=options.workers,
            output=options.output,
            replace_changed=options.replace_changed,
            dry_run=options.dry_run,
        )
    except (FileNotFoundError, StudyFileError, StudyRefused) as error:
        print(error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspikenorm study: interrupted; run the same command again to go on from here", file=sys.stderr)
        return 130
    return 1 if result.unfinished else 0


def main() -> None:
    """``python -m spikenorm.studies.study <study.yaml> ...``, as ``spikenorm study``."""
    sys.exit(study_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
