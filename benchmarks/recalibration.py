"""Cost of exact BN re-calibration against plain eval forward passes, side by side in one process.

For each network, ``M`` batches of CIFAR-sized input (``[T, B, 3, 32, 32]``) are timed three ways,
interleaved round by round (median of repeats):

* ``plain``: ``M`` eval-mode forwards under ``torch.no_grad`` with the neuron state reset before each, the
  floor any re-calibration must pay;
* ``single_pass``: ``recalibrate_bn(mode="single_pass")``: one pass, every layer accumulating float64
  moments and normalising with them;
* ``exact``: ``recalibrate_bn(mode="exact")``: layer by layer, so it starts ``P`` forwards per batch
  (``L`` for ``L`` BN layers, plus the fixed-point passes of membrane norms), each stopped as soon as the
  layer it measures has its inputs; it is compared with ``P`` times the plain cost (the same number of
  forward passes, run to the end), and the last column says how many plain passes it costs.

The acceptance target is ``recalibration / plain <= 1.3`` at the same number of forward passes. Networks:
spikenorm's VGG-11 with tdBN, the same with MPBN membrane norms, and an snnTorch-style VGG-11 (torch
``BatchNorm2d`` reused at every step, ``snntorch.Leaky`` neurons looped over time) when snnTorch is installed.

    python benchmarks/recalibration.py            # writes results/recalibration.md
"""

from __future__ import annotations

import statistics

import torch
from common import benchmark_parser, publish, table_report, timed
from torch import Tensor, nn

from spikenorm.interop import reset_neuron_states
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.recalibrate import recalibrate_bn, statistics_layers

NEURON = {"decay": 0.5, "threshold": 1.0}


class SnnTorchVGG(nn.Module):
    """VGG-11 (average pooling) written the snnTorch way: per-step loop, one BN and Leaky per conv."""

    def __init__(self, cfg: list, num_classes: int = 10) -> None:
        super().__init__()
        import snntorch as snn

        layers, channels = [], 3
        for item in cfg:
            if item == "A":
                layers.append(nn.AvgPool2d(2))
                continue
            layers += [
                nn.Conv2d(channels, item, 3, padding=1, bias=False),
                nn.BatchNorm2d(item),
                snn.Leaky(beta=0.5, init_hidden=True),
            ]
            channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.classifier(self.features(x_t).mean((2, 3))) for x_t in x])


def networks(device: torch.device) -> dict[str, nn.Module]:
    from spikenorm.models.vgg import VGG_CONFIGS

    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {
        "spikenorm VGG-11, tdBN": SpikingVGG(
            "vgg11", in_channels=3, input_size=32, layers=LayerSpec(norm="tdbn", neuron_kwargs=NEURON)
        ),
        "spikenorm VGG-11, tdBN + MPBN": SpikingVGG(
            "vgg11",
            in_channels=3,
            input_size=32,
            layers=LayerSpec(norm="tdbn", membrane_norm="mpbn", neuron_kwargs=NEURON),
        ),
    }
    try:
        nets["snnTorch-style VGG-11, BN reused per step"] = SnnTorchVGG(VGG_CONFIGS["vgg11"])
    except ImportError:
        pass
    return {name: net.to(device).eval() for name, net in nets.items()}


def plain_forwards(net: nn.Module, batches: list[Tensor], passes: int) -> None:
    with torch.no_grad():
        for _ in range(passes):
            for x in batches:
                reset_neuron_states(net)
                net(x)


def count_passes(net: nn.Module, batches: list[Tensor]) -> int:
    """Forward passes over all batches that exact re-calibration makes on this network."""
    calls = 0

    def forward(model: nn.Module, x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return model(x)

    recalibrate_bn(net, batches, forward=forward, mode="exact")
    return calls // len(batches)


def main() -> None:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--batches", type=int, default=2, help="M, batches per re-calibration")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = args.device
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.time_steps, args.batch, 3, 32, 32, generator=g).to(device) + 0.1 * j
        for j in range(args.batches)
    ]
    rows = []
    for name, net in networks(device).items():
        passes = count_passes(net, batches)
        jobs = {
            "plain": lambda: plain_forwards(net, batches, 1),
            "single_pass": lambda: recalibrate_bn(net, batches, mode="single_pass"),
            "exact": lambda: recalibrate_bn(net, batches, mode="exact"),
        }
        samples: dict[str, list[float]] = {job: [] for job in jobs}
        for job, fn in jobs.items():
            timed(fn, device, repeats=1, warmup=1)
        for _ in range(args.repeats):  # interleaved, so machine drift hits every job alike
            for job, fn in jobs.items():
                samples[job] += timed(fn, device, repeats=1, warmup=0)
        median = {job: statistics.median(s) for job, s in samples.items()}
        layers = len(statistics_layers(net))
        plain = median["plain"]
        rows.append(
            f"| {name} | {layers} | {plain:.3f} | {median['single_pass']:.3f} | "
            f"**{median['single_pass'] / plain:.2f}** | {passes} | {passes * plain:.3f} | {median['exact']:.3f} | "
            f"**{median['exact'] / (passes * plain):.2f}** | {median['exact'] / plain:.2f} |"
        )
    description = (
        f"M = {args.batches} batches of [T={args.time_steps}, B={args.batch}, 3, 32, 32], median of {args.repeats} "
        "interleaved repeats (seconds). Target: ratio <= 1.3 at the same number of forward passes."
    )
    header = (
        "network | BN layers | plain: M forwards | single_pass | ratio | exact: forwards started per batch P "
        "| P x plain | exact | ratio | exact / plain"
    )
    report = table_report(device, description, header, rows)
    publish("recalibration", "BN re-calibration: cost against plain eval forwards", report, save=not args.no_save)


if __name__ == "__main__":
    main()
