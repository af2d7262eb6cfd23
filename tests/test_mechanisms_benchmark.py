"""benchmarks/mechanisms.py: the mechanisms report read back from the studies' run folders (hand-made here: config,
run.json, metrics.csv, diagnosis files), the CaRe-BN ratio's definition, and the study files' cells as the report
names them; a real smoke study (slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import load_benchmark

from spikenorm.run_status import RunStatus, write_run_status

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "benchmarks" / "studies"
LAYERS = ("snn.0.1", "snn.1.1", "snn.2.1")
#: the run median of stat W2 after the warm-up, per variant (seed s adds 0.01 s); mean error is half of it
W2 = {"BN (tdBN, EMA)": 0.20, "Ca-BN": 0.10, "Ca-BN + Re-BN": 0.05}
CAREBN = {"BN (tdBN, EMA)": ("tdbn", False), "Ca-BN": ("carebn", False), "Ca-BN + Re-BN": ("carebn", True)}
#: the CaRe-BN budget of the fake runs: measurements every 150 env steps, Re-BN every 300, 300 warm-up steps
BUDGET = {"warmup": 300, "total": 1200, "diag_every": 150, "rebn_every": 300}


@pytest.fixture
def bench(monkeypatch):
    load_benchmark(monkeypatch, "mechanisms_report")  # the scripts import their helpers by module name
    return load_benchmark(monkeypatch, "mechanisms")


def write_run(folder: Path, config: dict, rows: list[dict], status: str = "finished", results: dict | None = None):
    """A run folder as ``spikenorm fit`` leaves it: ``config.yaml``, ``metrics.csv`` (rows in logging order) and
    ``run.json``."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    keys = sorted({k for row in rows for k in row} - {"step"})
    with (folder / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["step", *keys])
        writer.writeheader()
        writer.writerows(rows)
    started = "2026-12-06T10:00:00+00:00"
    ended = None if status == "running" else "2026-12-06T10:01:40+00:00"
    write_run_status(folder, RunStatus(status, started, ended, host="test host", results=results or {}))


def carebn_config(variant_key: tuple[str, bool], seed: int) -> dict:
    diagnostics = {
        "class_path": "spikenorm.callbacks.NormDiagnostics",
        "init_args": {"every_n_env_steps": BUDGET["diag_every"], "num_batches": 1, "batch_size": 32, "recent": 1000},
    }
    callbacks = [{"class_path": "spikenorm.callbacks.LastCheckpoint", "init_args": {"every_n_env_steps": 300}}]
    callbacks.append(diagnostics)
    if variant_key[1]:
        rebn = {"every_n_env_steps": BUDGET["rebn_every"], "num_batches": 100, "batch_size": 256}
        callbacks.append({"class_path": "spikenorm.callbacks.ReplayRecalibration", "init_args": rebn})
        after = {**diagnostics["init_args"], "every_n_env_steps": BUDGET["rebn_every"]}
        callbacks.append({"class_path": "spikenorm.callbacks.NormDiagnostics", "init_args": after})
    task = {
        "env_name": "Hopper-v5",
        "total_env_steps": BUDGET["total"],
        "warmup_steps": BUDGET["warmup"],
        "eval_every": 600,
        "eval_episodes": 1,
        "seed": seed,
        "actor_layers": {"norm": variant_key[0], "neuron": "clif", "surrogate": "rectangle"},
    }
    return {
        "seed_everything": seed,
        "trainer": {"max_epochs": 1, "callbacks": callbacks},
        "model": {"class_path": "spikenorm.tasks.SpikingTD3", "init_args": task},
    }


def carebn_rows(variant: str, seed: int) -> list[dict]:
    """Measurements every 150 env steps: 100 during the warm-up (the ratio must leave them out), then
    ``W2[variant] + 0.01 seed`` around which the later ones are symmetric (so that is the run's median); a Re-BN run
    logs, at each re-calibration, the scheduled measurement, Re-BN's row, then the one right after (value 0.001)."""
    value = W2[variant] + 0.01 * seed
    rows = []
    for step in range(BUDGET["diag_every"], BUDGET["total"] + 1, BUDGET["diag_every"]):
        v = (value + (0.001 if step % 300 else -0.001)) if step > BUDGET["warmup"] else 100.0
        row = {"step": step, "diagnostics/stat_w2": v, "diagnostics/mean_error": v / 2}
        row |= {"diagnostics/log_var_ratio": v, "diagnostics/action_gap": v, "diagnostics/train_eval_gap": v}
        rows.append(row | {f"diagnostics/stat_w2/{layer}": v for layer in LAYERS})
        if CAREBN[variant][1] and step % BUDGET["rebn_every"] == 0:
            rows.append({"step": step, "recalibration/stat_error/snn.0.1": 0.5, "recalibration/seconds": 1.0})
            rows.append({**{k: 0.001 for k in row if k != "step"}, "step": step})
        if step % 600 == 0:
            rows.append({"step": step, "rl/eval_return": 10.0 + seed, "rl/best_eval_return": 10.0 + seed})
    return rows


def make_carebn_study(root: Path) -> Path:
    folder = root / "mechanisms_carebn"
    for variant, key in CAREBN.items():
        for seed in range(3):
            slug = variant.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
            write_run(folder / slug / f"seed_{seed}", carebn_config(key, seed), carebn_rows(variant, seed))
    write_run(folder / "crashed" / "seed_0", carebn_config(("carebn", False), 0), [], status="crashed")
    write_run(folder / "tebn" / "seed_0", carebn_config(("tebn", False), 0), carebn_rows("Ca-BN", 0))
    return folder


def test_the_carebn_report_reads_run_folders_and_defines_the_ratio(bench, tmp_path, capsys):
    """The report from hand-made run folders: the ratio of run medians after the warm-up, the Re-BN measurements
    told apart from the scheduled ones, unfinished and unknown runs listed apart, the parts without runs named."""
    make_carebn_study(tmp_path / "studies")
    bench.main(["--studies", str(tmp_path / "studies"), "--results-dir", str(tmp_path / "results")])
    report = (tmp_path / "results" / "mechanisms.md").read_text()
    # median over the measurements after the warm-up, then over seeds: BN 0.21, Ca-BN 0.11, Ca-BN + Re-BN 0.06
    assert "Ca-BN / BN = 0.52; Ca-BN + Re-BN / BN = 0.29**" in report
    assert "| Ca-BN | 0, 1, 2 | 0.1100 | 0.1100 ± 0.0100 | 0.1000, 0.1100, 0.1200 | **0.52** |" in report
    assert "claimed mechanism **shows for Ca-BN** and **shows for Ca-BN + Re-BN**" in report
    # Re-BN: at env steps 300, 600, 900, 1200 the scheduled value before (300: warm-up, 100) and 0.001 right after
    rebn = [line for line in report.splitlines() if line.startswith("| 0 | ")]
    assert [row.split(" | ")[1:4] for row in rebn] == [
        ["300", "100.0000", "0.0010"],
        ["600", "0.0490", "0.0010"],
        ["900", "0.0490", "0.0010"],
        ["1200", "0.0490", "0.0010"],
    ]
    assert "over its 12 re-calibrations" in report  # 4 per run, 3 seeds
    assert "| BN (tdBN, EMA) | 0, 1, 2 |" in report
    assert "| 11.0 ± 1.0 | 11.0 ± 1.0 |" in report  # best and last eval return: 10 + seed
    left_out = report.split("Left out (2 run(s)): ")[1]
    assert "crashed/seed_0 (crashed)" in left_out and "tebn/seed_0 (not one of the part's variants)" in left_out
    assert "No finished runs yet (`spikenorm study benchmarks/studies/mechanisms_mpbn.yaml`)" in report
    assert (tmp_path / "results" / "mechanisms_carebn.png").stat().st_size > 0
    assert "9 finished runs, 0.25 h of run time" in report  # 100 s each, from run.json
    capsys.readouterr()


def neuron(median: float) -> dict:
    q = {"q05": median - 1, "q25": median - 0.5, "q50": median, "q75": median + 0.5, "q95": median + 1}
    return {"kind": "LIF", "quantiles": q, "near_threshold": 0.1, "firing_rate": 0.2, "never_firing": 0.0}


def test_the_mpbn_section_reads_the_test_diagnosis_files(bench, tmp_path):
    """An MPBN run's record: its test accuracy (run.json) and the diagnosis file NormDiagnostics wrote at the test,
    whose fine membrane histogram (0.01-wide bins on [-10, 10]) becomes the report's coarse one (0.1 on [-4, 4])."""
    from spikenorm.membrane import BIN_WIDTH, RANGE

    bins = round(2 * RANGE / BIN_WIDTH)
    folder = tmp_path / "mechanisms_mpbn"
    for variant, membrane_norm, median, acc in (("tdBN", None, -1.0, 0.9), ("MPBN", "mpbn", -0.5, 0.95)):
        layers = {"norm": "tdbn", "membrane_norm": membrane_norm}
        config = {
            "seed_everything": 0,
            "trainer": {"max_epochs": 10},
            "model": {"init_args": {"time_steps": 2, "model": {"init_args": {"layers": layers}}}},
        }
        run = folder / variant / "seed_0"
        write_run(run, config, [{"step": 200, "test/acc": acc}], results={"test/acc": acc})
        counts = [0] * bins
        counts[round((median + RANGE) / BIN_WIDTH)] = 30  # (u - θ)/θ = median
        counts[0] = 10  # far below -4: the edge bin
        diagnosis = {"layers": {}, "neurons": {"features.0.2": neuron(median)}, "output": {}, "seconds": 1.0}
        (run / "diagnostics").mkdir()
        (run / "diagnostics" / "test-step200.json").write_text(
            json.dumps(diagnosis | {"histograms": {"features.0.2": counts}})
        )
    runs, left_out = bench.part_runs("mpbn", folder)
    assert left_out == [] and [v for v, _ in runs.cells] == ["tdBN", "tdBN + MPBN"]
    (record,) = runs.of("tdBN + MPBN", {"epochs": 10, "time_steps": 2})
    assert record["acc"] == 0.95 and record["seed"] == 0 and "seconds" not in record["diagnosis"]
    coarse = record["diagnosis"]["histograms"]["features.0.2"]
    assert len(coarse) == 80 and coarse[0] == pytest.approx(0.25) and coarse[35] == pytest.approx(0.75)
    section = bench.SECTIONS["mpbn"](runs, None)
    assert "| 2 | tdBN | 0 | 90.00 |" in section and "| 2 | tdBN + MPBN | 0 | 95.00 |" in section
    assert "|median| 1.00 → 0.50" in section


@pytest.mark.parametrize("part", ["carebn", "osr", "mpbn", "temporal", "attach"])
def test_every_cell_of_a_study_file_is_a_variant_of_its_part(bench, part):
    """The report names each run by what its configuration is: every cell of the study file maps to the variant
    of the cell's name, and its settings read from the composed configuration."""
    from spikenorm.studies.run_records import flatten_config
    from spikenorm.studies.study_files import expand_runs, load_study

    plans = expand_runs(load_study(STUDIES / f"mechanisms_{part}.yaml"))
    for plan in plans:
        config = flatten_config(plan.config)
        assert bench.variant_of(part, config) == plan.variant
        settings = bench.settings_of(part, config)
        assert settings.get("epochs", 1) >= 1 and ("rebn_every" in settings) == (plan.variant == "Ca-BN + Re-BN")
    seeds = {plan.seed for plan in plans}
    assert seeds == set(range(3 if part == "carebn" else 5))


@pytest.mark.slow
def test_a_smoke_osr_study_runs_and_is_reported(bench, tmp_path):
    """The OSR study file's cells at a tiny budget (1 epoch of 2 batches, seed 0) through ``spikenorm study``; the
    report reads the three runs' per-epoch diagnostics and test accuracies."""
    study = yaml.safe_load((STUDIES / "mechanisms_osr.yaml").read_text())
    study |= {
        "base": str(STUDIES / "recipes" / "mechanisms_osr.yaml"),
        "seeds": [0],
        "overrides": {
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 2,
            "trainer.callbacks[1].init_args.num_batches": 1,
            "model.init_args.lr_scheduler.init_args.T_max": 1,
        },
    }
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(study))
    output = tmp_path / "studies" / "mechanisms_osr"
    command = [
        sys.executable,
        "-m",
        "spikenorm.commands",
        "study",
        str(tmp_path / "smoke.yaml"),
        "--output",
        str(output),
    ]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=600)
    bench.main(["--studies", str(tmp_path / "studies"), "--results-dir", str(tmp_path / "results")])
    report = (tmp_path / "results" / "mechanisms.md").read_text()
    rows = [line for line in report.split("## OSR / OTS")[1].splitlines() if line.startswith("| ")][1:4]
    assert [row.split(" | ")[0] for row in rows] == ["| vanilla BN", "| OSR", "| OSR + OTS"]
    for row in rows:
        cells = row.split(" | ")
        assert cells[1] == "0" and 0 <= float(cells[-1].rstrip(" |")) <= 100  # seed 0; test accuracy %
