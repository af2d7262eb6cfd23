"""benchmarks/finite_check.py: the check really alternates step by step, and the report holds what it promises."""

from __future__ import annotations

import argparse

import pytest
from helpers import load_benchmark


@pytest.fixture
def bench(monkeypatch):
    return load_benchmark(monkeypatch, "finite_check")


# times quickstart steps with the check on and off over three epochs (~10 s): slow. The check itself is in the
# default suite (tests/test_nonfinite.py), and the report's arithmetic below
@pytest.mark.slow
def test_steps_alternate_the_check_and_leave_it_on(bench, monkeypatch):
    import spikenorm.tasks.base as task_base

    calls = []
    real = task_base.check_finite
    monkeypatch.setattr(task_base, "check_finite", lambda x, where: calls.append(where) or real(x, where))
    task, data = bench.quickstart()
    assert task.hparams.time_steps == 4 and data.hparams.batch_size == 64
    assert bench.full_batches(data) == 1257 // 64

    times = bench.time_steps(task, data, rounds=2, steps=3, warmup_epochs=1)
    # epoch 0 (warm-up): on, off, on; epoch 1: off, on, off; epoch 2: on, off, on
    assert [len(r) for r in times[True]] == [1, 2] and [len(r) for r in times[False]] == [2, 1]
    assert all(t > 0 for rounds in times.values() for r in rounds for t in r)
    assert len(calls) == 2 * 5  # input and loss, in each of the 5 steps run with the check on
    assert task.hparams.check_finite is True

    calls.clear()
    check = bench.time_check_alone(task, data, calls=3, repeats=2)
    assert len(check) == 2 and all(t > 0 for t in check)
    assert len(calls) == 2 * 3 * 3  # a batch and a loss check per call, 3 calls, 1 warm-up + 2 repeats


def report_for(bench, on: list[list[float]], off: list[list[float]]) -> tuple[dict[str, float], str]:
    times, check = {True: on, False: off}, [1e-5, 3e-5]
    args = argparse.Namespace(rounds=len(on), steps=2, repeats=2, calls=10)
    summary = bench.summary(times, check)
    return summary, bench.report(summary, times, check, args, "python benchmarks/finite_check.py --rounds 2")


def test_report_numbers_and_structure_when_noise_hides_the_effect(bench):
    summary, text = report_for(bench, on=[[1.0, 1.1], [1.0, 1.2]], off=[[1.0, 1.0], [0.9, 1.1]])
    assert summary["on"] == pytest.approx(1.05) and summary["off"] == pytest.approx(1.0)
    assert summary["ratio"] == pytest.approx(1.05) and summary["cost_percent"] == pytest.approx(5.0)
    assert summary["paired_percent"] == pytest.approx(10.0)  # on - off of adjacent steps: 0, .1, .1, .1
    assert summary["check_percent"] == pytest.approx(2e-3)  # 20 us of a 1 s step
    assert text.startswith("## ") and "torch threads: " in text and "AVX-512: " in text and "AMX: " in text
    assert "`python benchmarks/finite_check.py --rounds 2`" in text
    for row in (
        "step, check on, ms",
        "step, check off, ms",
        "ratio on / off (medians) | **1.0500**",
        "relative cost of the check on the step | **+5.00%**",
        "adjacent step pairs",
        "per-round cost",
        "check alone (`check_batch` + `check_loss`), us",
        "check alone / median step (off) | **0.002%**",
    ):
        assert row in text, row
    assert "within the noise" in text  # the step IQR (15% of the median) exceeds the 5% difference


def test_report_says_when_steps_resolve_the_cost(bench):
    _, text = report_for(bench, on=[[1.10, 1.10], [1.11, 1.10]], off=[[1.0, 1.0], [1.0, 1.01]])
    assert "Whole steps resolve it: +10.00%" in text and "within the noise" not in text
