"""benchmarks/mechanisms.py: resumable runs keyed by settings, the CaRe-BN ratio's definition, a real smoke run."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark

LAYERS = ("snn.0.1", "snn.1.1", "snn.2.1")
MACHINE = {"machine": "test CPU", "finished": "2026-12-01 00:00 UTC", "wall_s": 1.0, "threads": 1}
#: the run median of stat W2 after the warm-up, per variant (seed s adds 0.01 s); mean error is half of it
W2 = {"BN (tdBN, EMA)": 0.20, "Ca-BN": 0.10, "Ca-BN + Re-BN": 0.05}


@pytest.fixture
def bench(monkeypatch):
    load_benchmark(monkeypatch, "mechanisms_report")  # the scripts import their helpers by module name
    return load_benchmark(monkeypatch, "mechanisms")


def fake_carebn(variant: str, seed: int, settings: dict, threads: int) -> dict:
    """Measurements every ``diag_every`` env steps: 100 during the warm-up (the ratio must leave them out), then
    ``W2[variant] + 0.01 seed`` around which the later ones are symmetric (so that is the run's median)."""
    value = W2[variant] + 0.01 * seed
    rows = []
    for step in range(settings["diag_every"], settings["warmup"] + settings["steps"] + 1, settings["diag_every"]):
        after = step > settings["warmup"]
        v = (value + (0.001 if step % 300 else -0.001)) if after else 100.0
        row = {"env_step": step, "diagnostics/stat_w2": v, "diagnostics/mean_error": v / 2}
        row |= {"diagnostics/log_var_ratio": v, "diagnostics/action_gap": v, "diagnostics/train_eval_gap": v}
        rows.append(row | {f"diagnostics/stat_w2/{layer}": v for layer in LAYERS})
    return {
        "eval_history": [[settings["eval_every"], 10.0 + seed]],
        "diagnostics": rows,
        "after_rebn": [],
        "recalibrations": [],
        **MACHINE,
    }


def test_smoke_report_resumes_and_defines_the_carebn_ratio(bench, tmp_path, monkeypatch, capsys):
    real_runner = bench.runner
    calls = []

    def runner(part):
        calls.append(part)
        return fake_carebn if part == "carebn" else real_runner(part)

    monkeypatch.setattr(bench, "runner", runner)
    argv = ["--smoke", "--results-dir", str(tmp_path)]
    bench.main([*argv, "--part", "temporal", "--seeds", "1"])  # tdBN, TEBN, TAB: real tiny runs, seed 0
    bench.main([*argv, "--part", "carebn", "--seeds", "3"])  # 3 variants x 3 seeds, fake
    assert calls.count("temporal") == 3 and calls.count("carebn") == 9
    report = (tmp_path / "mechanisms.md").read_text()
    # median over the measurements after the warm-up, then over seeds: BN 0.21, Ca-BN 0.11, Ca-BN + Re-BN 0.06
    assert "Ca-BN / BN = 0.52; Ca-BN + Re-BN / BN = 0.29**" in report
    assert "| Ca-BN | 0, 1, 2 | 0.1100 | 0.1100 ± 0.0100 | 0.1000, 0.1100, 0.1200 | **0.52** |" in report
    assert "claimed mechanism **shows for Ca-BN** and **shows for Ca-BN + Re-BN**" in report

    rows = [line for line in report.split("## TEBN / TAB")[1].splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| tdBN", "| TEBN", "| TAB"]
    for row in rows:
        cells = row.split(" | ")
        assert cells[1] == "0"  # the one seed stored
        shift, step_w2 = cells[2].split(" / "), cells[3].split(" / ")
        assert len(shift) == len(step_w2) == 2  # T = 2 in smoke mode: one value per step
        assert all(float(v.split(" ± ")[0]) >= 0 for v in shift + step_w2)
        assert 0 <= float(cells[5].split(" ± ")[0]) <= 100  # test accuracy %
    assert (tmp_path / "mechanisms_carebn.png").stat().st_size > 0
    assert (tmp_path / "mechanisms_temporal.png").stat().st_size > 0
    assert "No stored runs for the current settings yet (`--part mpbn`)" in report
    stored = [json.loads(line) for line in (tmp_path / "mechanisms_runs.jsonl").read_text().splitlines()]
    assert len(stored) == 12 and {r["part"] for r in stored} == {"carebn", "temporal"}

    calls.clear()  # resumed: every run is stored, only the report is made again
    capsys.readouterr()
    bench.main([*argv, "--part", "carebn", "temporal", "--seeds", "1", "--no-save"])
    assert calls == [] and "0 run(s) to make; 12 stored" in capsys.readouterr().out


def test_settings_are_part_of_a_runs_key(bench):
    full = dict(bench.part_settings("carebn", smoke=False))
    assert full["Ca-BN"]["steps"] >= 10_000 and full["Ca-BN + Re-BN"]["rebn_every"] == 5000
    assert full["Ca-BN"]["diag_every"] == 1000
    smoke = dict(bench.part_settings("carebn", smoke=True))
    assert bench.RunSpec.of("carebn", "Ca-BN", 0, full["Ca-BN"]) != bench.RunSpec.of(
        "carebn", "Ca-BN", 0, smoke["Ca-BN"]
    )
    mpbn = bench.part_settings("mpbn", smoke=False)
    assert sorted({s["time_steps"] for _, s in mpbn}) == [1, 2, 4]
    assert {v for v, _ in mpbn} == {"tdBN", "tdBN + MPBN"}
    record = {"part": "mpbn", "variant": "tdBN", "seed": 3, "settings": mpbn[0][1]}
    assert bench.RunSpec.of_record(record) == bench.RunSpec.of("mpbn", "tdBN", 3, mpbn[0][1])


def test_an_unknown_part_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.main(["--part", "sei"])
