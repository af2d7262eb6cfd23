"""benchmarks/rl_returns.py: the CaRe-BN table's rows, resumable runs keyed by settings, the report and the plot."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from helpers import load_benchmark

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = {"steps": 300, "warmup": 300, "eval_every": 300, "rebn_every": 300}


@pytest.fixture
def bench(monkeypatch):
    return load_benchmark(monkeypatch, "rl_returns")


@pytest.mark.parametrize("key", ["ann", pytest.param("carebn", marks=pytest.mark.slow)])  # Re-BN: tests/test_td3.py
def test_a_tiny_run_trains_and_records_its_settings(bench, key):
    """One real run of the ANN row and of the CaRe-BN row (whose Re-BN callback runs at ``rebn_every``)."""
    spec = bench.RunSpec.of(bench.ROWS[key], "InvertedDoublePendulum-v5", seed=0, **TINY)
    record = bench.run(spec, threads=1)
    assert bench.RunSpec.of_record(record) == spec
    assert [steps for steps, _ in record["eval_history"]] == [300, 600]
    assert all(math.isfinite(value) and value > 0 for _, value in record["eval_history"])
    assert record["wall_s"] > 0 and record["threads"] == 1


MACHINE = {"machine": "test CPU", "finished": "2026-12-01 00:00 UTC"}
ROW_ORDER = ("ann", "none", "tdbn", "tebn", "tab", "carebn")  # the ANN, then the actor norms in the table's order


def fake_run(spec, threads: int) -> dict[str, object]:
    """A record whose returns identify the row and seed: best = 100 * row index + seed, last = best - 1 (two
    evaluations: the budgets below are two evaluation intervals long)."""
    best = 100 * ROW_ORDER.index("ann" if spec.actor == "ann" else spec.norm) + spec.seed
    history = [[spec.eval_every, float(best)], [2 * spec.eval_every, best - 1.0]]
    return {**asdict(spec), "eval_history": history, "wall_s": 60.0, "threads": threads, **MACHINE}


def test_report_has_the_six_rows_per_env_the_paper_column_and_the_plot(bench, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "run", lambda spec, threads: calls.append(spec) or fake_run(spec, threads))
    # an earlier version's records: no actor / rebn_every; CaRe-BN matches its row, plain BN is no row
    old = {"env": "Hopper-v5", "seed": 0, "steps": 4700, "warmup": 300, "eval_every": 2500, **MACHINE}
    old_carebn = {**old, "norm": "carebn", "eval_history": [[2500, 5.0], [5000, 7.0]], "wall_s": 1.0, "threads": 1}
    old_bn = {**old, "norm": "bn", "eval_history": [[2500, 1.0], [5000, 2.0]], "wall_s": 1.0, "threads": 1}
    runs_file = tmp_path / "rl_returns_runs.jsonl"
    runs_file.write_text(json.dumps(old_carebn) + "\n" + json.dumps(old_bn) + "\n")
    argv = ["rl_returns.py", "--seeds", "2", "--steps", "4700", "--warmup", "300", "--eval-every", "2500"]
    monkeypatch.setattr(sys, "argv", [*argv, "--results-dir", str(tmp_path)])
    bench.main()
    assert len(calls) == 2 * 6 * 2 - 1  # the old CaRe-BN record is Hopper's seed 0
    assert {(s.actor, s.norm, s.rebn_every) for s in calls} == {
        ("ann", "none", 0),
        ("spiking", "none", 0),
        ("spiking", "tdbn", 0),
        ("spiking", "tebn", 0),
        ("spiking", "tab", 0),
        ("spiking", "carebn", 5000),
    }
    report = (tmp_path / "rl_returns.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| InvertedDoublePendulum-v5 |")]
    assert [line.split(" | ")[1] for line in rows] == ["ANN", "pop-SAN (no BN)", "tdBN", "TEBN", "TAB", "CaRe-BN"]
    assert "| InvertedDoublePendulum-v5 | tdBN | `norm=tdbn` | 200.5 ± 0.7 | 199.5 ± 0.7 | 200 / 201 | 9346 |" in report
    assert "| Hopper-v5 | ANN | `actor=ann` | 0.5 ± 0.7 | -0.5 ± 0.7 | 0 / 1 | 3410 |" in report
    # seed 0 is the old record (best 7, last 7), seed 1 a new one (best 501, last 500)
    assert "| Hopper-v5 | CaRe-BN | `norm=carebn` + Re-BN | 254.0 ± 349.3 | 253.5 ± 348.6 | 7 / 501 | 3586 |" in report
    assert "**4700 env steps** after 300 random warm-up steps" in report and "test CPU" in report
    assert (tmp_path / "rl_returns.png").stat().st_size > 0
    assert len(runs_file.read_text().splitlines()) == 2 + len(calls)

    calls.clear()  # resumed: every run is stored, only the report is made again
    capsys.readouterr()
    bench.main()
    assert calls == [] and "24 runs, 24 already stored" in capsys.readouterr().out


def test_one_env_and_some_rows_at_a_time(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run", lambda spec, threads: calls.append(spec) or fake_run(spec, threads))
    argv = ["rl_returns.py", "--seeds", "1", "--steps", "300", "--warmup", "300", "--eval-every", "300"]
    monkeypatch.setattr(sys, "argv", [*argv, "--envs", "Hopper-v5", "--rows", "ann", "tab", "--no-save"])
    bench.main()
    assert [(s.env, s.actor, s.norm) for s in calls] == [("Hopper-v5", "ann", "none"), ("Hopper-v5", "spiking", "tab")]
    assert not list(tmp_path.iterdir())  # --no-save: nothing written


def test_every_row_has_its_recipes_with_the_same_settings(bench):
    """``recipes/td3_<row>_<env>.yaml`` is the row's 1M-step run on the paper's settings."""
    for key, row in bench.ROWS.items():
        for env in bench.ENVS:
            config = yaml.safe_load((RECIPES / f"td3_{key}_{bench.env_family(env).lower()}.yaml").read_text())
            init = config["model"]["init_args"]
            assert init["env_name"] == env
            assert init.get("actor", "spiking") == row.actor
            assert (init["actor_layers"] or {}).get("norm", "none") == row.norm
            assert (init["total_env_steps"], init["warmup_steps"], init["eval_every"]) == (1_025_000, 25_000, 5000)
            rebn = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ReplayRecalibration")]
            assert [c["init_args"] for c in rebn] == (
                [{"every_n_env_steps": 5000, "num_batches": 100, "batch_size": 256, "unusable": "warn"}]
                if row.rebn
                else []
            )
