"""The networks of benchmarks/compare.py are the same function in spikenorm, SpikingJelly and snnTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("spikingjelly")
pytest.importorskip("snntorch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def load_compare():
    spec = importlib.util.spec_from_file_location("benchmark_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_networks_agree_after_weight_copy():
    compare = load_compare()
    cfg = [8, "A", 16, "A"]
    diffs = compare.equivalence(cfg, in_channels=3, num_classes=10, shape=(3, 4, 8))
    assert diffs["spike rate"] > 0.02  # the first layer fires, so the comparison is not between silent nets
    for key in ("spikingjelly eval", "snntorch eval", "spikingjelly train", "snntorch train"):
        assert diffs[key] < 1e-10, (key, diffs)
    for key in ("spikingjelly grad", "snntorch grad"):
        assert diffs[key] < 1e-6, (key, diffs)


def test_builders_share_the_architecture():
    compare = load_compare()
    nets = compare.build_all([8, "A", 16, "A"], num_classes=10)
    counts = {name: [len(part) for part in compare._parts(net)] for name, net in nets.items()}
    assert counts["spikenorm"] == counts["spikingjelly"] == counts["snntorch"] == [2, 2, 1]
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    assert len(set(params.values())) == 1, params


def test_convolution_flop_count_matches_torch_flop_counter():
    """The analytic FLOPs of a training step's convolutions equal torch's FlopCounterMode on that step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    compare = load_compare()
    cfg, t, b, size = [8, "A", 16, 16, "A"], 2, 3, 12
    net = compare.build_spikenorm(cfg, in_channels=3, num_classes=10, backend="eager")
    x = torch.rand(t, b, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    conv = sum(v for op, v in counts.items() if "convolution" in str(op))
    assert conv > 0
    assert compare.training_step_conv_flops(cfg, 3, t, b, size) == conv
