"""Inference cost of MPBN after folding, side by side in one process, and fold exactness vs SpikingJelly.

Three networks with the same layer list and neurons, timed interleaved (median of repeats):

* ``no norm``: conv (with bias) -> LIF with a scalar threshold, nothing else, carrying the folded network's
  conv weights and biases (so activations, and any value-dependent CPU effects, match): the floor a
  zero-cost fold must reach;
* ``MPBN unfolded``: conv -> tdBN -> LIF with MPBN on the membrane, eval mode;
* ``MPBN folded``: the same after :func:`spikenorm.fold.fold_model` (tdBN in the weights, MPBN in
  per-channel thresholds).

The acceptance bar is ``folded / no norm <= 1.05``. When SpikingJelly is installed, the same trained weights
are also folded by SpikingJelly's ``MPBNLIFNode`` and the flipped-spike rates of the two folds are reported
(see ``sj_mpbn.py``).

    python benchmarks/fold_inference.py      # CPU (or CUDA when available): writes results/fold_inference.md
"""

from __future__ import annotations

import copy
import statistics

import torch
from common import benchmark_parser, markdown_table, publish, quiet_trainer, table_report, timed
from lightning.pytorch import seed_everything

from spikenorm.datamodules import DigitsDataModule
from spikenorm.fold import SignFlip, check_equivalence, fold_model
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.norm import MPBN
from spikenorm.tasks import SpikingClassifier

NEURON = {"decay": 0.25, "threshold": 0.5}


def timing_networks(cfg: str, size: int, channels: int) -> dict[str, torch.nn.Module]:
    """The three networks of the timing comparison (MPBN statistics moved off their initial values)."""
    torch.manual_seed(0)
    plain = SpikingVGG(cfg, in_channels=channels, input_size=size, layers=LayerSpec(norm="none", neuron_kwargs=NEURON))
    mpbn = SpikingVGG(
        cfg,
        in_channels=channels,
        input_size=size,
        layers=LayerSpec(norm="tdbn", membrane_norm="mpbn", neuron_kwargs=NEURON, surrogate="dspike"),
    )
    with torch.no_grad():
        mpbn(torch.randn(2, 8, channels, size, size))  # one training-mode pass sets real statistics
    mpbn.eval()
    folded = fold_model(mpbn)
    convs = {k: v for k, v in folded.state_dict().items() if k.endswith(("module.weight", "module.bias"))}
    plain.load_state_dict({**plain.state_dict(), **convs})
    return {"no norm": plain.eval(), "MPBN unfolded": mpbn, "MPBN folded": folded}


def time_inference(
    networks: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per forward, the networks interleaved round by round to share machine drift."""
    samples: dict[str, list[float]] = {name: [] for name in networks}
    with torch.inference_mode():
        for name, net in networks.items():  # warm-up
            timed(lambda: net(x), device, repeats=1, warmup=2)
        for _ in range(repeats):
            for name, net in networks.items():
                samples[name] += timed(lambda: net(x), device, repeats=1, warmup=0)
    return {name: statistics.median(v) for name, v in samples.items()}


def trained_mpbn(epochs: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A channel-wise MPBN SpikingVGG trained on digits, and one encoded test batch."""
    seed_everything(0)
    net = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=10,
        input_size=8,
        layers=LayerSpec(norm="tdbn", membrane_norm="mpbn", neuron_kwargs=NEURON, surrogate="dspike"),
    )
    task = SpikingClassifier(net, time_steps=4, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    data = DigitsDataModule(batch_size=64)
    quiet_trainer(max_epochs=epochs).fit(task, data)
    x, _ = next(iter(data.test_dataloader()))
    return net.eval(), task.encode(x)


def with_negative_gamma(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose last MPBN layer has every other channel's gamma negated (what training can produce)."""
    model = copy.deepcopy(model)
    last = [m for m in model.modules() if isinstance(m, MPBN)][-1]
    with torch.no_grad():
        last.weight[::2] *= -1
    return model


def spikingjelly_rows(model: torch.nn.Module, inputs: torch.Tensor) -> list[str]:
    """Flipped-spike rates of SpikingJelly's fold vs ours on the same weights (or why there are none)."""
    try:
        from sj_mpbn import spikingjelly_fold_flips

        sj = spikingjelly_fold_flips(model, inputs)
    except ImportError as err:
        return [f"SpikingJelly comparison skipped: {err}"]
    ours = check_equivalence(model, fold_model(model), inputs, dtype=torch.float64)
    ours_steps = sum(layer.neuron_steps for layer in ours.layers.values())
    rows = markdown_table(
        "fold | flipped spikes | neuron-steps | flipped rate",
        [f"| spikenorm `fold_model` | {ours.flipped_spikes} | {ours_steps} | {ours.flipped_spikes / ours_steps:.2%} |"],
    )
    for key, label in (
        ("default", "SpikingJelly `re_parameterize_v_threshold()` (defaults)"),
        ("normalize_residual", "SpikingJelly `re_parameterize_v_threshold(normalize_residual=True)`"),
    ):
        r = sj[key]
        rows.append(f"| {label} | {r['flipped']} | {r['neuron_steps']} | {r['rate']:.2%} |")
    rows += [
        "",
        f"Negative-gamma MPBN channels in the trained model: {sj['negative_gamma_channels']}. "
        f"SpikingJelly's unfolded MPBNLIFNode vs ours on the same weights (different membrane semantics): "
        f"{sj['sj_unfolded_vs_ours_mismatch_rate']:.2%} of spikes differ.",
    ]
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--cfg", default="vgg11", help="SpikingVGG layer list for the timing")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--train-epochs", type=int, default=10, help="digits training for the SpikingJelly comparison")
    args = parser.parse_args()
    device = args.device

    networks = {k: v.to(device) for k, v in timing_networks(args.cfg, args.size, 3).items()}
    x = torch.randn(args.time_steps, args.batch, 3, args.size, args.size, device=device)
    seconds = time_inference(networks, x, args.repeats, device)
    folded, plain, unfolded = seconds["MPBN folded"], seconds["no norm"], seconds["MPBN unfolded"]
    sign_flips = sum(isinstance(m, SignFlip) for m in networks["MPBN folded"].modules())
    description = (
        f"Inference, SpikingVGG `{args.cfg}`, "
        f"input [T={args.time_steps}, B={args.batch}, 3, {args.size}, {args.size}], "
        f"median of {args.repeats} interleaved repeats; SignFlip modules left by the fold: {sign_flips}."
    )
    saving = (
        f"Folded / no norm = **{folded / plain:.3f}** (bar: <= 1.05). Folding saves "
        f"**{1 - folded / unfolded:.1%}** of the unfolded MPBN network's inference time "
        f"({unfolded / folded:.2f}x faster)."
    )
    rows = (f"| {name} | {sec * 1e3:.2f} | {sec / plain:.3f}x |" for name, sec in seconds.items())
    timing = table_report(device, description, "network | median ms | vs no norm", rows, notes=[saving, ""])
    model, inputs = trained_mpbn(args.train_epochs)
    exactness = [
        f"Fold exactness on a channel-wise MPBN SpikingVGG `small` trained {args.train_epochs} epochs on digits "
        "(one test batch of 64, T=4, float64):",
        "",
        *spikingjelly_rows(model, inputs),
        "",
        "The same model with gamma negated in every other channel of its last MPBN layer:",
        "",
        *spikingjelly_rows(with_negative_gamma(model), inputs),
        "",
    ]
    report = "\n".join([timing, *exactness])
    publish("fold_inference", "MPBN folding: inference cost and exactness", report, save=not args.no_save)


if __name__ == "__main__":
    main()
