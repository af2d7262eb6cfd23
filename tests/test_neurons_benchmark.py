"""benchmarks/neurons.py measures every configuration it names, each against the same floor."""

from __future__ import annotations

import pytest
import torch
from helpers import load_benchmark


def test_rows_cover_each_configuration_and_the_norm_fed_stages(monkeypatch: pytest.MonkeyPatch):
    neurons = load_benchmark(monkeypatch, "neurons")
    rows = neurons.measure([2, 3, 4, 2, 2], torch.float32, torch.device("cpu"), repeats=1, warmup=1)
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    names = [name for _, name, _, _ in cells]
    stages = ["tdBN + LIF, norm inside the fused kernels", "tdBN, then LIF (two layers)"]
    expected = [f"{c}: {part}" for c in [*neurons.CONFIGURATIONS, *stages] for part in ("forward", "forward+backward")]
    assert names == ["elementwise floor", *expected]
    assert {dtype for dtype, *_ in cells} == {"float32"}
    assert cells[0][3] == "1.00x"  # every ratio is to this floor
    assert all(float(ms) >= 0 and float(ratio.removesuffix("x")) >= 0 for *_, ms, ratio in cells)
