"""The networks of benchmarks/compare.py are the same function in spikenorm, SpikingJelly and snnTorch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("spikingjelly")
pytest.importorskip("snntorch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def load_compare():
    """The script as a module: benchmarks/ on sys.path (it imports benchmarks/common.py) and the module registered
    under its name (its dataclasses look themselves up there)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("benchmark_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
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


def test_modes_parse_with_fp32_first_and_refuse_unknown_names():
    import argparse

    compare = load_compare()
    assert compare.parse_modes("bf16,compiled") == ["fp32", "bf16", "compiled"]
    assert compare.parse_modes("compiled-bf16, fp32") == ["fp32", "compiled-bf16"]
    with pytest.raises(argparse.ArgumentTypeError, match="fp16"):
        compare.parse_modes("fp32,fp16")


def test_every_mode_runs_and_agrees_with_float32_eager():
    """Tiny nets in fp32, bf16 and compiled mode (dynamo with the eager backend: tracing, not inductor's codegen)."""
    import torch

    compare = load_compare()
    torch.manual_seed(0)
    x, y = torch.rand(2, 4, 3, 8, 8), torch.randint(0, 10, (4,))
    runs = compare.build_runs(["fp32", "bf16", "compiled"], [8, "A", 16, "A"], x, y, compile_backend="eager")
    assert sorted(runs) == sorted((m, lib) for m in ("fp32", "bf16", "compiled") for lib in compare.LIBRARIES)
    assert all(run.error is None for run in runs.values()), {k: r.error for k, r in runs.items()}
    assert all(run.graphs > 0 for (mode, _), run in runs.items() if mode == "compiled")  # dynamo really traced
    agree = compare.agreement(runs)
    for (mode, library), (eval_diff, train_diff) in agree.items():
        assert max(eval_diff, train_diff) <= compare.AGREEMENT_TOLERANCE[mode], (mode, library, agree)
    for library in compare.LIBRARIES:
        assert agree[("compiled", library)] == (0.0, 0.0)  # the eager backend runs the same ops
        assert agree[("bf16", library)][0] > 0  # autocast really ran the convolutions in bfloat16


def test_a_network_that_fails_is_reported_not_dropped():
    import torch

    compare = load_compare()

    def broken() -> torch.Tensor:
        raise RuntimeError("cannot compile this\nsecond line")

    run = compare.Run(step=broken, infer=lambda: torch.zeros(2, 4, 10))
    run.warm_up(torch.device("cpu"))
    assert run.error == "RuntimeError: cannot compile this"
    measured = compare.Measured(
        modes=["fp32"],
        batch=4,
        libraries={"fp32": ["spikenorm", "spikingjelly", "snntorch"]},
        runs={("fp32", "spikenorm"): run, ("fp32", "spikingjelly"): run, ("fp32", "snntorch"): run},
        train_sps={},
        infer_sps={},
        memory={},
        agree={},
        profiles={},
        neuron={},
    )
    assert all("failed: `RuntimeError: cannot compile this`" in row for row in compare.mode_rows(measured))
    targets = "\n".join(compare.target_rows(measured, torch.device("cpu")))
    assert targets.count("FAIL (spikenorm failed: RuntimeError: cannot compile this)") == 2


def synthetic_measured(compare, modes, train_sps, infer_sps, neuron=None):
    """A :class:`Measured` with given throughputs (and neuron times) only: what the report's tables read."""
    return compare.Measured(
        modes=modes,
        batch=4,
        libraries={},
        runs={},
        train_sps=train_sps,
        infer_sps=infer_sps,
        memory={},
        agree={},
        profiles={},
        neuron=neuron or {},
    )


@pytest.mark.parametrize(
    ("flags", "verdict"),
    [({"amx_bf16", "amx_tile", "avx512_bf16"}, "PASS"), ({"avx512_bf16"}, "not applicable: AVX-512 BF16 without")],
)
def test_targets_say_pass_fail_and_where_the_bf16_target_applies(monkeypatch, flags, verdict):
    import torch

    compare = load_compare()
    monkeypatch.setattr(compare, "cpu_flag_set", lambda: flags)
    sps = {
        ("fp32", "spikenorm"): 10.0,
        ("fp32", "spikingjelly"): 7.0,  # 1.43x: PASS
        ("fp32", "snntorch"): 8.0,  # 1.25x: FAIL
        ("bf16", "spikenorm"): 25.0,  # 2.5x fp32
        ("bf16", "spikingjelly"): 25.0,
        ("bf16", "snntorch"): 10.0,
    }
    measured = synthetic_measured(compare, ["fp32", "bf16"], sps, {})
    rows = [row for row in compare.target_rows(measured, torch.device("cpu")) if row.startswith("| 18 |")]
    assert f"| 2.50x | {verdict}" in rows[0]
    assert [row.rsplit("|", 2)[1].strip() for row in rows[1:]] == ["PASS", "FAIL", "FAIL", "PASS"]


def test_fastest_vs_fastest_picks_each_librarys_best_measured_configuration():
    """Any mode, and for spikenorm any variant, can win; a mode a library failed in (no throughput) cannot."""
    compare = load_compare()
    train = {
        ("fp32", "spikenorm"): 20.0,
        ("fp32", "spikenorm[eager]"): 18.0,
        ("fp32", "spikingjelly"): 16.0,
        ("fp32", "snntorch"): 17.0,
        ("bf16", "spikenorm"): 60.0,
        ("bf16", "spikenorm[eager]"): 66.0,  # spikenorm's fastest in training: a variant
        ("bf16", "spikingjelly"): 40.0,
        ("bf16", "snntorch"): 30.0,
        ("compiled-bf16", "spikenorm"): 64.0,
        ("compiled-bf16", "spikingjelly"): 48.0,  # 66 / 48 = 1.375: PASS
        # snntorch failed in compiled-bf16 (no throughput): its fastest training is bf16's, 66 / 30 = 2.2: PASS
    }
    infer = {key: value * 3 for key, value in train.items()}
    infer[("compiled-bf16", "spikenorm")] = 150.0  # 3 * 66 = 198 (bf16, spikenorm[eager]) stays faster
    infer[("fp32", "snntorch")] = 220.0  # snnTorch infers fastest in fp32, not its training's bf16: 198 / 220 = 0.9
    m = synthetic_measured(compare, ["fp32", "bf16", "compiled-bf16"], train, infer)

    assert compare.fastest(train) == {
        "spikenorm": ("bf16", "spikenorm[eager]"),
        "spikingjelly": ("compiled-bf16", "spikingjelly"),
        "snntorch": ("bf16", "snntorch"),
    }
    assert compare.fastest(infer)["snntorch"] == ("fp32", "snntorch")
    assert compare.fastest_rows(m) == [
        "| spikenorm | bf16, spikenorm[eager] | 66.0 | 1.00 | bf16, spikenorm[eager] | 198.0 | 1.00 |",
        "| spikingjelly | compiled-bf16 | 48.0 | 1.38 | compiled-bf16 | 144.0 | 1.38 |",
        "| snntorch | bf16 | 30.0 | 2.20 | fp32 | 220.0 | 0.90 |",
    ]
    assert compare.fastest_target_rows(m) == [
        "| 30 | spikenorm's fastest >= 1.25x spikingjelly's fastest, training "
        "| 1.38x (spikenorm: bf16, spikenorm[eager]; spikingjelly: compiled-bf16) | PASS |",
        "| 30 | spikenorm's fastest >= 1.25x snntorch's fastest, training "
        "| 2.20x (spikenorm: bf16, spikenorm[eager]; snntorch: bf16) | PASS |",
        "| 30 | spikenorm's fastest >= 1x spikingjelly's fastest, inference "
        "| 1.38x (spikenorm: bf16, spikenorm[eager]; spikingjelly: compiled-bf16) | PASS |",
        "| 30 | spikenorm's fastest >= 1x snntorch's fastest, inference "
        "| 0.90x (spikenorm: bf16, spikenorm[eager]; snntorch: fp32) | FAIL |",
    ]


def test_fastest_vs_fastest_with_one_mode_and_a_library_that_failed_everywhere():
    """``--modes fp32`` alone: fp32 is every library's fastest; a library with no throughput is not measured."""
    compare = load_compare()
    train = {("fp32", "spikenorm"): 12.0, ("fp32", "spikingjelly"): 10.0}  # snntorch failed
    m = synthetic_measured(compare, ["fp32"], train, dict(train))
    assert compare.fastest_rows(m)[2] == (
        "| snntorch | not measured (every configuration failed) | – | – "
        "| not measured (every configuration failed) | – | – |"
    )
    rows = compare.fastest_target_rows(m)
    assert rows[0].endswith("| 1.20x (spikenorm: fp32; spikingjelly: fp32) | FAIL |")
    assert rows[1].endswith("| – | not measured (no snntorch configuration measured) |")
    assert rows[2].endswith("| 1.20x (spikenorm: fp32; spikingjelly: fp32) | PASS |")
    nothing = synthetic_measured(compare, ["fp32"], {}, {})
    assert all(
        row.endswith("| – | FAIL (no spikenorm configuration measured) |")
        for row in compare.fastest_target_rows(nothing)
    )


def test_neuron_targets_divide_forward_and_forward_backward_by_the_same_floor():
    """The floor is one forward ``torch.mul``, the mean of its medians in the two rounds (here 2 ms), for both."""
    compare = load_compare()
    floor = compare.FLOOR
    neuron = {
        "float32": ({"spikenorm": 2.9e-3, floor: 1e-3}, {"spikenorm": 6.2e-3, floor: 3e-3}),  # 1.45x, 3.10x
        "bfloat16": ({"spikenorm": 3.2e-3, floor: 2e-3}, {"spikenorm": 5.0e-3, floor: 2e-3}),  # 1.60x, 2.50x
    }
    m = synthetic_measured(compare, ["fp32", "bf16"], {}, {}, neuron)
    assert compare.neuron_target_rows(m) == [
        "| 30 | spikenorm LIF fwd <= 1.5x the elementwise floor, float32 | 1.45x | PASS |",
        "| 30 | spikenorm LIF fwd+bwd <= 3x the elementwise floor, float32 | 3.10x | FAIL |",
        "| 30 | spikenorm LIF fwd <= 1.5x the elementwise floor, bfloat16 | 1.60x | FAIL |",
        "| 30 | spikenorm LIF fwd+bwd <= 3x the elementwise floor, bfloat16 | 2.50x | PASS |",
    ]
    assert "| float32 | spikenorm | 2.90 (1.00; 1.4x floor) | 6.20 (1.00; 3.1x floor) |" in compare.neuron_rows(m)


def test_main_reports_every_mode_and_writes_the_output_file(tmp_path, monkeypatch, capsys):
    # the script runs in a process of its own: start from a fresh dynamo state. In the full suite, the torch.compile
    # state earlier tests leave behind made SpikingJelly's compiled mode raise IndexError inside dynamo.
    torch._dynamo.reset()
    compare = load_compare()
    output = tmp_path / "out" / "compare.md"
    argv = ["compare.py", "--device", "cpu", "--modes", "fp32,bf16,compiled", "--output", str(output)]
    tiny = ["--compile-backend", "eager", "--cfg", "8", "A", "16", "A", "--batch", "4", "--size", "8"]
    tiny += ["--time-steps", "2", "--repeats", "1", "--neuron-repeats", "1", "--neuron-shape", "2", "4", "8", "4", "4"]
    monkeypatch.setattr(sys, "argv", argv + tiny + ["--variants"])
    retained: list[bool] = []  # (a spy: the real call would change this test process's malloc for good)
    monkeypatch.setattr(compare, "retain_freed_memory", lambda: retained.append(True) or True)
    compare.main()
    text = output.read_text()
    assert retained == [True] and "measured last, with freed memory kept for reuse" in text  # the neuron alone
    assert text.startswith("# spikenorm vs SpikingJelly vs snnTorch")
    for mode in ("fp32", "bf16", "compiled"):
        for library in compare.LIBRARIES:
            assert f"| {mode} | {library} | " in text
        assert f"training, {mode} |" in text
    assert "spikenorm bf16 training >= 2x spikenorm fp32" in text
    assert "### Fastest vs fastest" in text and text.index("### Fastest vs fastest") < text.index("### Targets")
    for library in compare.LIBRARIES:
        assert sum(line.startswith(f"| {library} | ") for line in text.splitlines()) == 2  # fastest, across modes
    assert "| 30 | spikenorm's fastest >= 1.25x snntorch's fastest, training |" in text
    assert "| 30 | spikenorm LIF fwd+bwd <= 3x the elementwise floor, bfloat16 |" in text
    assert text.index("| 30 | ") < text.index("| 18 | ")  # issue 30's targets first
    assert "| bf16 / fp32 train |" in text and "| bfloat16 | spikingjelly |" in text
    assert "failed" not in text
