"""The mechanisms, measured: does each paper's argument show in what :func:`spikenorm.diagnostics.diagnose` measures?

The runs are five studies (``benchmarks/studies/mechanisms_<part>.yaml``), each run an ordinary ``spikenorm fit``
with :class:`~spikenorm.callbacks.NormDiagnostics` attached, run by ``spikenorm study`` (parallel, resumable):

* ``carebn`` (CaRe-BN, Xu et al., ICLR 2026): TD3 on Hopper-v5 with BN (tdBN), Ca-BN and Ca-BN + Re-BN; the actor
  diagnosed every 1000 env steps on recent replay states (``metrics.csv``);
* ``osr`` (OSR / OTS, Zhu et al., ICLR 2024): online training on digits with vanilla BN, OSR and OSR + OTS; train/eval
  gap and statistics error at every epoch end (``metrics.csv``);
* ``mpbn`` (MPBN, Guo et al., ICCV 2023) and ``temporal`` (TEBN, TAB): digits, BPTT; the final network diagnosed on
  the test split at the post-fit test (``diagnostics/test-*.json`` in the run folder, membrane histograms included);
* ``attach``: the SpikingJelly and snnTorch example networks (``examples/*_digits.py``), diagnosed likewise.

This script reads the studies' run folders back (:func:`spikenorm.studies.run_records.find_runs`), turns each finished
run into the record its part's section reads (:func:`part_runs`) and writes the report (``mechanisms.md``, figures
``mechanisms_<part>.png``, copied to ``docs/benchmarks/`` when writing to ``benchmarks/results``)::

    spikenorm study benchmarks/studies/mechanisms_carebn.yaml          # 9 TD3 runs, about 45 min on 2 cores
    spikenorm study benchmarks/studies/mechanisms_osr.yaml             # ... and mpbn, temporal, attach
    python benchmarks/mechanisms.py --studies studies                  # the report of what is there
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, benchmark_parser, stamp
from mechanisms_report import HEADLINES, PART_VARIANTS, SECTIONS, PartRuns, coarse_histogram

from spikenorm.run_status import read_run_status
from spikenorm.studies.run_records import RunRecord, find_runs

NAME = "mechanisms"
PARTS = ("carebn", "osr", "mpbn", "temporal", "attach")
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
#: the flat config keys the parts read (the spikenorm CLI's resolved ``config.yaml``)
TASK = "model.init_args."
LAYERS = f"{TASK}model.init_args.layers."


# -- what a run is: its part's variant and settings, from its configuration -------------------------------------
def callback_args(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``init_args`` of each callback of class ``name`` (by its last dotted part) in the run's flat config."""
    out = []
    index = 0
    while f"trainer.callbacks[{index}].class_path" in config:
        if str(config[f"trainer.callbacks[{index}].class_path"]).rsplit(".", 1)[-1] == name:
            prefix = f"trainer.callbacks[{index}].init_args."
            out.append({k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)})
        index += 1
    return out


def variant_of(part: str, config: dict[str, Any]) -> str | None:
    """The name of the part's variant the run's configuration is (None: none of the part's variants)."""
    if part == "carebn":
        key = (config.get(f"{TASK}actor_layers.norm"), bool(callback_args(config, "ReplayRecalibration")))
    elif part == "osr":
        key = (config.get(f"{LAYERS}norm"), bool(config.get(f"{LAYERS}neuron_kwargs.ots", False)))
    elif part == "mpbn":
        key = (config.get(f"{LAYERS}norm"), config.get(f"{LAYERS}membrane_norm"))
    elif part == "temporal":
        key = config.get(f"{LAYERS}norm")
    else:
        key = config.get("model.class_path")
    return next((name for name, k in PART_VARIANTS[part].items() if k == key), None)


def settings_of(part: str, config: dict[str, Any]) -> dict[str, Any]:
    """The settings the part's section reports, from the run's configuration."""
    if part == "carebn":
        diag = callback_args(config, "NormDiagnostics")[0]
        warmup = int(config[f"{TASK}warmup_steps"])
        settings = {
            "env": config[f"{TASK}env_name"],
            "warmup": warmup,
            "steps": int(config[f"{TASK}total_env_steps"]) - warmup,
            "eval_every": int(config[f"{TASK}eval_every"]),
            "eval_episodes": int(config[f"{TASK}eval_episodes"]),
            "diag_every": int(diag["every_n_env_steps"]),
            "diag_batches": int(diag["num_batches"]),
            "diag_batch_size": int(diag["batch_size"]),
            "recent": int(diag["recent"]),
        }
        rebn = callback_args(config, "ReplayRecalibration")
        return settings | ({"rebn_every": int(rebn[0]["every_n_env_steps"])} if rebn else {})
    settings: dict[str, Any] = {"epochs": int(config["trainer.max_epochs"])}
    if part in ("osr", "mpbn", "temporal"):
        settings["time_steps"] = int(config[f"{TASK}time_steps"])
    if part == "osr":
        settings["diagnose_batches"] = int(callback_args(config, "NormDiagnostics")[0]["num_batches"])
    return settings


# -- what a run measured, as its part's section reads it -----------------------------------------------------------
def logged_rows(run: RunRecord, prefix: str) -> list[tuple[int, dict[str, float]]]:
    """The rows of the keys starting with ``prefix``, in logging order: the n-th value of every key at a step makes
    that step's n-th row (a step logged twice, as the Re-BN runs' diagnostics at a re-calibration, gives two)."""
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for key, points in run.histories.items():
        if not key.startswith(prefix):
            continue
        seen: dict[int, int] = {}
        for step, value in points:
            n = seen[int(step)] = seen.get(int(step), -1) + 1
            rows.setdefault((int(step), n), {})[key] = value
    return [(step, row) for (step, _), row in sorted(rows.items())]


def rl_measurements(run: RunRecord) -> dict[str, Any]:
    """Evaluation returns, the scheduled diagnostics, those right after each Re-BN, and Re-BN's own rows: at a
    re-calibration's env step the last diagnostics row is the one taken right after it (its NormDiagnostics comes
    after ReplayRecalibration in the callback list), an earlier one the scheduled measurement before it."""
    recalibrations = [{"env_step": step, **row} for step, row in logged_rows(run, "recalibration/")]
    recalibrated = {r["env_step"] for r in recalibrations}
    rows = logged_rows(run, "diagnostics/")
    diagnostics, after_rebn = [], []
    for i, (step, row) in enumerate(rows):
        last_at_step = i + 1 == len(rows) or rows[i + 1][0] != step
        (after_rebn if step in recalibrated and last_at_step else diagnostics).append({"env_step": step, **row})
    return {
        "eval_history": [[int(step), value] for step, value in run.histories.get("rl/eval_return", [])],
        "diagnostics": diagnostics,
        "after_rebn": after_rebn,
        "recalibrations": recalibrations,
    }


def diagnosis_at_test(run: RunRecord) -> dict[str, Any]:
    """The diagnosis NormDiagnostics wrote at the run's (last) test, its membrane histograms made coarse."""
    files = sorted((run.path / "diagnostics").glob("test-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{run.path}: no diagnostics/test-*.json (NormDiagnostics with records at test)")
    diagnosis = json.loads(files[-1].read_text())
    diagnosis.pop("seconds", None)
    diagnosis["histograms"] = {
        name: coarse_histogram(torch.tensor([counts], dtype=torch.float64))
        for name, counts in diagnosis.get("histograms", {}).items()
    }
    return diagnosis


def run_record(part: str, run: RunRecord) -> dict[str, Any]:
    """The record of one finished run as the part's section reads it, with its seed and timing."""
    if part == "carebn":
        record = rl_measurements(run)
    elif part == "osr":
        record = {"acc": run.final["test/acc"], "epochs": [row for _, row in logged_rows(run, "diagnostics/")]}
    else:
        record = {"acc": run.final["test/acc"], "diagnosis": diagnosis_at_test(run)}
    status = read_run_status(run.path)
    wall = float("nan")
    if status is not None and status.ended:
        wall = (dt.datetime.fromisoformat(status.ended) - dt.datetime.fromisoformat(status.started)).total_seconds()
    return {
        **record,
        "seed": run.seed,
        "wall_s": wall,
        "machine": status.host if status else "",
        "finished": status.ended if status else "",
    }


def part_runs(part: str, folder: Path) -> tuple[PartRuns, list[str]]:
    """The finished runs under ``folder`` (a study's output) as the part's :class:`PartRuns`, and a line for each
    run left out (not finished, or of none of the part's variants)."""
    runs = PartRuns(part)
    left_out = []
    found = find_runs([folder]) if folder.exists() else []
    for run in sorted(found, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))):
        variant = variant_of(part, run.config)
        if run.status != "finished" or variant is None:
            why = run.status if run.status != "finished" else "not one of the part's variants"
            left_out.append(f"{run.path} ({why})")
            continue
        runs.add(variant, settings_of(part, run.config), run_record(part, run))
    return runs, left_out


# -- the report ----------------------------------------------------------------------------------------------------
def header(parts: dict[str, PartRuns], folders: dict[str, Path]) -> str:
    """The report's heading: machine and CPU flags, where the runs ran and when, their total and median wall time."""
    stored = [r for p in parts.values() for rs in p.runs.values() for r in rs]
    wall = sum(float(r["wall_s"]) for r in stored if r["wall_s"] == r["wall_s"])
    hosts = sorted({str(r["machine"]) for r in stored if r["machine"]})
    finished = sorted(str(r["finished"]) for r in stored if r["finished"])
    per_part = ", ".join(
        f"{part} {statistics.median(float(r['wall_s']) for rs in p.runs.values() for r in rs) / 60:.1f}"
        for part, p in parts.items()
        if any(p.runs.values())
    )
    where = ", ".join(f"`{folder}`" for folder in folders.values())
    return (
        f"{stamp(torch.device('cpu'))}\n\n"
        f"Runs on {'; '.join(hosts) or 'no machine yet'}, finished {finished[0] if finished else '—'} to "
        f"{finished[-1] if finished else '—'}; {len(stored)} finished runs, {wall / 3600:.2f} h of run time in all "
        f"(sum of the runs' wall times; median minutes per run: {per_part or '—'}), read from the studies' run "
        f"folders {where}. Nothing here was tuned: every setting is the one the benchmark named below uses, and "
        "every number is reported whatever its sign."
    )


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--studies", type=Path, default=Path("studies"), help="the folder holding the studies' outputs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the report and figures go")
    args = parser.parse_args(argv)
    folders = {part: args.studies / f"{NAME}_{part}" for part in PARTS}
    parts, left_out = {}, []
    for part, folder in folders.items():
        parts[part], skipped = part_runs(part, folder)
        left_out += skipped
    figures = None if args.no_save else args.results_dir
    HEADLINES.clear()
    sections = [SECTIONS[part](parts[part], figures) for part in PARTS]
    summary = "## Summary\n\n" + "\n".join(f"- {HEADLINES[part]}" for part in PARTS if part in HEADLINES)
    report = "\n\n".join([header(parts, folders), summary, *sections])
    if left_out:
        report += f"\n\nLeft out ({len(left_out)} run(s)): " + "; ".join(left_out)
    print(report)
    if not args.no_save:
        path = args.results_dir / f"{NAME}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# The mechanisms, measured\n\n{report.rstrip()}\n")
        if args.results_dir.resolve() == RESULTS_DIR.resolve():
            for png in sorted(args.results_dir.glob(f"{NAME}_*.png")):
                shutil.copyfile(png, DOCS_DIR / png.name)


if __name__ == "__main__":
    main()
