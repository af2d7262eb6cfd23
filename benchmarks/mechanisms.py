"""The mechanisms, measured: does each paper's argument show in what :func:`spikenorm.diagnostics.diagnose` measures?

Parts (``--part``; all by default), each a set of runs on seeds ``0..--seeds - 1``:

* ``carebn`` (CaRe-BN, Xu et al., ICLR 2026): TD3 with the PopSAN actor (CLIF, T = 5) on Hopper-v5, actor norm
  BN (``tdbn``: pooled over batch and time, EMA running statistics, the paper's standard-BN / tdBN baseline),
  Ca-BN (``carebn``) and Ca-BN + Re-BN (``carebn`` + ``ReplayRecalibration`` every 5000 env steps). Every 1000 env
  steps :class:`~spikenorm.callbacks.NormDiagnostics` measures the actor's statistics error against the recent
  replay states and the eval/train action gap (:mod:`mechanisms_rl`);
* ``osr`` (OSR / OTS, Zhu et al., ICLR 2024): online training on digits with per-step vanilla BN, OSR and
  OSR + OTS (the settings of ``osr_digits.py``); train/eval gap and statistics error at every epoch end
  (``NormDiagnostics`` on the validation batches, train pass one step at a time);
* ``mpbn`` (MPBN, Guo et al., ICCV 2023): tdBN vs tdBN + MPBN at T = 1, 2, 4 (the settings of ``mpbn_digits.py``):
  the membrane relative to the threshold per spiking layer, firing and accuracy;
* ``temporal`` (TEBN, NeurIPS 2022; TAB, ICLR 2024): tdBN vs TEBN vs TAB at T = 4: how far each step's statistics
  sit from the pooled ones (``step_shift``) and each norm's statistics error per step (``step_stat_w2``);
* ``attach``: the same diagnostics on the SpikingJelly and snnTorch example networks (``examples/*_digits.py``).

Runs are resumable: each finished run is appended as one JSON line to ``mechanisms_runs.jsonl`` in the results
folder, keyed by part, variant, seed and settings; a stored run is not run again. Every invocation rebuilds the
whole report (``mechanisms.md``, figures ``mechanisms_<part>.png``, copied to ``docs/benchmarks/`` when writing to
``benchmarks/results``) from the stored runs of the current settings. ``--jobs 2`` runs two runs at a time in
spawned processes with ``--threads`` (1) torch threads each. ``--smoke`` uses tiny budgets (seconds per run) and, unless
``--results-dir`` is given, a temporary results folder.

    python benchmarks/mechanisms.py --part carebn --jobs 2       # 9 TD3 runs, about 45 min on 2 cores
    python benchmarks/mechanisms.py --part osr mpbn temporal attach --jobs 2
    python benchmarks/mechanisms.py --report-only                 # the report of what is stored
    python benchmarks/mechanisms.py --smoke --part mpbn --seeds 1 --no-save
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from common import RESULTS_DIR, benchmark_parser, run_each, stamp
from mechanisms_report import HEADLINES, SECTIONS

NAME = "mechanisms"
PARTS = ("carebn", "osr", "mpbn", "temporal", "attach")
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
DEFAULT_SEEDS = {"carebn": 3, "osr": 5, "mpbn": 5, "temporal": 5, "attach": 5}


def part_settings(part: str, smoke: bool) -> list[tuple[str, dict[str, Any]]]:
    """The ``(variant, settings)`` cells of ``part``: the full budget, or the smoke test's tiny one."""
    if part == "carebn":
        from mechanisms_rl import VARIANTS

        if smoke:
            budget = {"env": "Hopper-v5", "steps": 300, "warmup": 300, "eval_every": 600, "eval_episodes": 1}
            budget |= {"diag_every": 150, "rebn_every": 300, "diag_batches": 1, "diag_batch_size": 32, "recent": 1000}
        else:
            budget = {"env": "Hopper-v5", "steps": 10_000, "warmup": 2_500, "eval_every": 2_500, "eval_episodes": 10}
            budget |= {"diag_every": 1000, "rebn_every": 5000, "diag_batches": 4, "diag_batch_size": 256}
            budget |= {"recent": 10_000}
        return [(variant, budget) for variant in VARIANTS]
    from mechanisms_digits import ATTACH_VARIANTS, MPBN_VARIANTS, TEMPORAL_VARIANTS, osr_variants

    budget = {"epochs": 1, "limit_train_batches": 2, "diagnose_batches": 1} if smoke else {"epochs": 10}
    if part == "osr":
        return [(v, {**budget, "time_steps": 4, "diagnose_batches": 1 if smoke else 3}) for v in osr_variants()]
    if part == "mpbn":
        steps = (1, 2) if smoke else (1, 2, 4)
        return [(v, {**budget, "time_steps": t}) for t in steps for v in MPBN_VARIANTS]
    if part == "temporal":
        return [(v, {**budget, "time_steps": 2 if smoke else 4}) for v in TEMPORAL_VARIANTS]
    if part == "attach":
        return [(v, budget) for v in ATTACH_VARIANTS]
    raise ValueError(f"unknown part {part!r}; available: {', '.join(PARTS)}")


@dataclass(frozen=True)
class RunSpec:
    """What identifies a stored run."""

    part: str
    variant: str
    seed: int
    settings: str  # the settings as canonical JSON

    @classmethod
    def of(cls, part: str, variant: str, seed: int, settings: dict[str, Any]) -> RunSpec:
        return cls(part, variant, seed, json.dumps(settings, sort_keys=True))

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> RunSpec:
        return cls.of(record["part"], record["variant"], record["seed"], record["settings"])


def runner(part: str) -> Callable[[str, int, dict[str, Any], int], dict[str, Any]]:
    if part == "carebn":
        from mechanisms_rl import run_carebn

        return run_carebn
    from mechanisms_digits import RUNNERS

    return RUNNERS[part]


def run(spec: RunSpec, threads: int) -> dict[str, Any]:
    """One run (in this process or a spawned one): its record, with the spec's fields."""
    settings = json.loads(spec.settings)
    record = runner(spec.part)(spec.variant, spec.seed, settings, threads)
    return {"part": spec.part, "variant": spec.variant, "seed": spec.seed, "settings": settings, **record}


def stored_runs(path: Path) -> dict[RunSpec, dict[str, Any]]:
    """The runs stored in ``path`` (JSON lines) by their key; the last record of a key wins."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {RunSpec.of_record(r): r for r in records}


def compact(value: Any) -> Any:
    """``value`` with every float rounded to 6 significant digits (the stored records stay small)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def run_missing(
    todo: list[RunSpec], jobs: int, threads: int, store: Path | None
) -> tuple[dict[RunSpec, dict[str, Any]], dict[RunSpec, str]]:
    """Run ``todo`` (``jobs`` at a time in spawned processes; 1: here), appending each finished run to ``store``."""
    records: dict[RunSpec, dict[str, Any]] = {}
    errors: dict[RunSpec, str] = {}

    def keep(spec: RunSpec, result: Callable[[], dict[str, Any]]) -> None:
        try:
            record = result()
        except Exception as error:  # noqa: BLE001 - one failed run must not lose the others
            errors[spec] = f"{type(error).__name__}: {error}"
            print(f"{spec.part} {spec.variant} seed {spec.seed}: FAILED {errors[spec]}", flush=True)
            return
        records[spec] = record
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            line = (json.dumps(compact(record)) + "\n").encode()
            fd = os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:  # one write() with O_APPEND: two invocations may append to the same file at once
                os.write(fd, line)
            finally:
                os.close(fd)
        print(f"{spec.part} {spec.variant} seed {spec.seed}: done in {record['wall_s']:.0f} s", flush=True)

    run_each(todo, run, jobs, threads, keep)
    return records, errors


@dataclass
class PartRuns:
    """The stored runs of one part under the current settings, per variant (in the part's order) and seed."""

    part: str
    cells: list[tuple[str, dict[str, Any]]]
    seeds: int
    runs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def of(self, variant: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
        return self.runs.get((variant, json.dumps(settings, sort_keys=True)), [])


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--part", nargs="+", default=list(PARTS), choices=PARTS, help="which mechanisms to run")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 3 for carebn, 5 otherwise)")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: the whole machinery in seconds")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    parser.add_argument("--results-dir", type=Path, default=None, help="where the report, figures and runs go")
    parser.add_argument("--report-only", action="store_true", help="make no run: rebuild the report from the stored")
    args = parser.parse_args(argv)
    results_dir = args.results_dir or (Path(tempfile.gettempdir()) / "mechanisms_smoke" if args.smoke else RESULTS_DIR)
    store = results_dir / f"{NAME}_runs.jsonl"
    done = stored_runs(store)
    parts = {}
    todo = []
    for part in PARTS:
        seeds = args.seeds or DEFAULT_SEEDS[part]
        cells = part_settings(part, args.smoke)
        parts[part] = PartRuns(part, cells, seeds)
        if part in args.part and not args.report_only:
            todo += [
                spec
                for variant, settings in cells
                for seed in range(seeds)
                if (spec := RunSpec.of(part, variant, seed, settings)) not in done
            ]
    print(f"{len(todo)} run(s) to make; {len(done)} stored in {store}", flush=True)
    records, errors = run_missing(todo, args.jobs, args.threads, None if args.no_save else store)
    done.update(records)
    for part, runs in parts.items():
        for variant, settings in runs.cells:
            key = (variant, json.dumps(settings, sort_keys=True))
            runs.runs[key] = [
                done[spec] for seed in range(runs.seeds) if (spec := RunSpec.of(part, variant, seed, settings)) in done
            ]
    figures = results_dir if not args.no_save else None
    HEADLINES.clear()
    sections = [SECTIONS[part](parts[part], figures) for part in PARTS]
    summary = "## Summary\n\n" + "\n".join(f"- {HEADLINES[part]}" for part in PARTS if part in HEADLINES)
    stored = [r for p in parts.values() for rs in p.runs.values() for r in rs]
    wall = sum(float(r["wall_s"]) for r in stored)
    machines = sorted({str(r["machine"]) for r in stored})
    threads = ", ".join(str(t) for t in sorted({int(r["threads"]) for r in stored})) or "—"
    per_part = ", ".join(
        f"{part} {statistics.median(float(r['wall_s']) for rs in p.runs.values() for r in rs) / 60:.1f}"
        for part, p in parts.items()
        if any(p.runs.values())
    )
    finished = sorted(str(r["finished"]) for r in stored)
    header = (
        f"{stamp(torch.device('cpu'))}\n\n"
        f"Runs on {'; '.join(machines) or 'no machine yet'}, finished {finished[0] if finished else '—'} to "
        f"{finished[-1] if finished else '—'}; {len(stored)} stored runs, {wall / 3600:.2f} h of run time in all "
        f"(sum of the runs' wall times; {threads} torch thread(s) per run; median minutes per run: {per_part}). "
        "The machine was shared with other jobs, so wall times vary (the first CaRe-BN runs waited most). Stored in "
        f"`{store.name}`{' (smoke budgets)' if args.smoke else ''}. Nothing here was tuned: every setting is the "
        "one the benchmark named below uses, and every number is reported whatever its sign."
    )
    report = "\n\n".join([header, summary, *sections])
    if errors:
        report += (
            "\n\n"
            + f"{len(errors)} run(s) failed: "
            + "; ".join(f"{s.part} {s.variant} seed {s.seed}: {e}" for s, e in errors.items())
        )
    print(report)
    if not args.no_save:
        path = results_dir / f"{NAME}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# The mechanisms, measured\n\n{report.rstrip()}\n")
        if results_dir.resolve() == RESULTS_DIR.resolve():
            for png in sorted(results_dir.glob(f"{NAME}_*.png")):
                shutil.copyfile(png, DOCS_DIR / png.name)
    if errors:
        raise SystemExit(f"{len(errors)} run(s) failed; the others are stored, run again to retry")


if __name__ == "__main__":
    main()
