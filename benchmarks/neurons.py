"""Multi-step LIF forward+backward time against the elementwise memory-bandwidth floor.

The floor is one elementwise pass over the same tensor (``y = x * a``: read once, write once). A
multi-step neuron must at least read its input and write its spikes, so its forward can approach one
such pass; forward+backward needs a few. The ratio says how far the neuron is from that floor.

    python benchmarks/neurons.py                       # CPU (or CUDA when available), writes results
    python benchmarks/neurons.py --repeats 20 --no-save

Results (machine, date, CPU flags, medians and ratios) replace benchmarks/results/neurons.md.
"""

from __future__ import annotations

import statistics

import torch
from common import benchmark_parser, forward_and_backward, publish, table_report, timed

from spikenorm.neurons import LIF


def main() -> None:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 32, 128, 16, 16], help="T B C H W")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device)
    neuron = LIF(decay=0.5, threshold=1.0, surrogate="sigmoid").to(device)
    forward, forward_backward = forward_and_backward(neuron, x)

    def floor() -> None:
        torch.mul(x, 0.5)

    rows = {
        name: statistics.median(timed(fn, device, args.repeats, args.warmup))
        for name, fn in (
            ("elementwise floor", floor),
            ("LIF forward", forward),
            ("LIF forward+backward", forward_backward),
        )
    }
    base = rows["elementwise floor"]
    description = (
        f"Input {list(args.shape)} float32, LIF (decay 0.5, hard reset, sigmoid surrogate), eager multi-step loop;"
        f" median of {args.repeats} repeats after {args.warmup} warm-up calls."
    )
    lines = (f"| {name} | {sec * 1e3:.3f} | {sec / base:.1f}x |" for name, sec in rows.items())
    report = table_report(device, description, "measurement | median ms | ratio to floor", lines)
    publish("neurons", "Multi-step neuron vs the elementwise memory-bandwidth floor", report, save=not args.no_save)


if __name__ == "__main__":
    main()
