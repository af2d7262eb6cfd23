"""benchmarks/fused_ab.py runs another version of spikenorm/fused.py beside the installed one, in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import load_benchmark

from spikenorm import fused


def test_a_baseline_copy_registers_its_own_operators_and_gives_the_same_spikes(monkeypatch: pytest.MonkeyPatch):
    fused_ab = load_benchmark(monkeypatch, "fused_ab")
    monkeypatch.setitem(sys.modules, "fused_baseline", None)  # (removed again after the test)
    baseline = fused_ab.load_baseline(Path(fused.__file__))  # this checkout's file as its own baseline
    assert baseline is not fused and baseline._neuron_op is not fused._neuron_op
    assert hasattr(getattr(torch.ops, baseline.namespace), "fused_neuron")  # both versions registered side by side
    old, new, ratios, same, diff = fused_ab.measure(baseline, [2, 3, 4, 2, 2], torch.float32, False, 2, False, False)
    assert same and diff == 0.0 and len(ratios) == 2 and old > 0 and new > 0
