"""Multi-step LIF forward and forward+backward time against the elementwise memory-bandwidth floor.

The floor is one elementwise pass over the neuron's input tensor (``torch.mul(x, 0.5)``: read once, write once, a
fresh output like the neuron's). A multi-step neuron must at least read its input and write its spikes, so its
forward can approach one such pass. The fused kernels (:mod:`spikenorm.fused`) save only the input for the
backward, which reads it and the spikes' gradient and writes the input's gradient: 1.5 passes. Forward+backward can
therefore approach 2.5x the floor when arithmetic is free; what the backward computes per element and step (the
surrogate derivative: an exponential and a division for the sigmoid, none for the triangle) adds to it on a CPU with
few cores. The rows: the default backend (``auto``: the fused kernels at this size) with the sigmoid surrogate (the
compared configuration of ``compare.py``) and with the triangle surrogate (no transcendental function: what the
memory traffic alone costs), and the eager loop. Then the norm that feeds the neuron in spikenorm's stages (tdBN in
training mode, per-channel batch statistics) on the same tensor in channels-last layout (what spikenorm's
convolutions return on CPU), with the same LIF: applied inside the fused kernels
(``LIF.forward_normalized``, what :class:`~spikenorm.models.layers.SpikingStage` calls) and as a layer of its own
before the neuron. Its memory bound: forward 1.5x the floor (the statistics read the input once more), backward 4x
(the fused backward writes ``dL/dy`` in the input's dtype, the norm's reductions read it with the input, and one pass
forms the input's gradient), 5.5x together. All calls interleaved (the order rotated each round), medians of
``--repeats`` rounds; ratios to the floor of the same dtype.

    python benchmarks/neurons.py                       # CPU (or CUDA when available), writes results
    python benchmarks/neurons.py --repeats 20 --no-save

Results (machine, date, CPU flags, medians and ratios) replace benchmarks/results/neurons.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from common import benchmark_parser, channels_last_steps, forward_and_backward, interleaved, publish, table_report

from spikenorm.neurons import LIF
from spikenorm.norm import build_norm

#: the rows besides the floor: (name, LIF keyword arguments)
CONFIGURATIONS = {
    "LIF, sigmoid surrogate": {"surrogate": "sigmoid", "surrogate_kwargs": {"alpha": 4.0}},
    "LIF, triangle surrogate": {"surrogate": "triangle"},
    "LIF, sigmoid surrogate, eager loop": {
        "surrogate": "sigmoid",
        "surrogate_kwargs": {"alpha": 4.0},
        "backend": "eager",
    },
}


def measure(shape: list[int], dtype: torch.dtype, device: torch.device, repeats: int, warmup: int) -> list[str]:
    """Table rows of one dtype: the floor, then forward and forward+backward of every configuration."""
    torch.manual_seed(0)
    x = (torch.randn(*shape, device=device) + 0.5).to(dtype)
    fns: dict[str, Callable[[], object]] = {"elementwise floor": lambda: torch.mul(x, 0.5)}
    for name, kwargs in CONFIGURATIONS.items():
        neuron = LIF(decay=0.5, threshold=1.0, detach_reset=True, **kwargs).to(device)
        fns[f"{name}: forward"], fns[f"{name}: forward+backward"] = forward_and_backward(neuron, x)
    neuron = LIF(decay=0.5, threshold=1.0, detach_reset=True, **CONFIGURATIONS["LIF, sigmoid surrogate"]).to(device)
    norm = build_norm("tdbn", shape[2]).to(device)  # training mode: batch statistics, running update
    stages: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "tdBN + LIF, norm inside the fused kernels": lambda inp: neuron.forward_normalized(norm, inp),
        "tdBN, then LIF (two layers)": lambda inp: neuron(norm(inp)),
    }
    for name, stage in stages.items():
        fns[f"{name}: forward"], fns[f"{name}: forward+backward"] = forward_and_backward(stage, channels_last_steps(x))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    medians = {name: statistics.median(t) for name, t in interleaved(fns, device, repeats).items()}
    floor = medians["elementwise floor"]
    dtype_name = str(dtype).removeprefix("torch.")
    return [f"| {dtype_name} | {name} | {sec * 1e3:.3f} | {sec / floor:.2f}x |" for name, sec in medians.items()]


def main() -> None:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 32, 128, 16, 16], help="T B C H W")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    rows = [
        row
        for dtype in (torch.float32, torch.bfloat16)
        for row in measure(args.shape, dtype, args.device, args.repeats, args.warmup)
    ]
    description = (
        f"Input {list(args.shape)}, LIF (decay 0.5, threshold 1, hard reset, detached reset), default backend "
        f"unless marked; medians of {args.repeats} interleaved rounds after {args.warmup} warm-up calls of each. "
        "Memory bound of the fused kernels: forward 1x the floor, forward+backward 2.5x; with tdBN inside them 1.5x "
        "and 5.5x (module docstring)."
    )
    report = table_report(args.device, description, "dtype | measurement | median ms | ratio to floor", rows)
    publish("neurons", "Multi-step neuron vs the elementwise memory-bandwidth floor", report, save=not args.no_save)


if __name__ == "__main__":
    main()
