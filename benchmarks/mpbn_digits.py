"""Reproduction on digits: tdBN vs tdBN + MPBN (channel-wise) vs tdBN + MPBN (element-wise), 5 seeds.

Every run uses the MPBN paper's neuron (LIF decay 0.25, threshold 0.5, hard reset, Dspike b=3), T=4,
SpikingVGG ``small``, Adam 5e-3 with cosine decay over 20 epochs (the ``quickstart_mpbn`` recipe); only
the membrane norm differs. Test accuracy of the best-validation checkpoint; the folded model's test
accuracy and flipped spikes (float64 check) come from FoldNormalization.

    python benchmarks/mpbn_digits.py            # about 5 minutes on 2 CPU cores: writes results/mpbn_digits.md
"""

from __future__ import annotations

import statistics
import time

import torch
from common import fit_and_test, print_as_made, publish, seed_cells, seeds_parser, table_report
from lightning.pytorch import seed_everything

from spikenorm.callbacks import FoldNormalization
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import SpikingClassifier

VARIANTS = {
    "tdbn": {},
    "tdbn + mpbn (channel-wise)": {"membrane_norm": "mpbn"},
    "tdbn + mpbn (element-wise)": {"membrane_norm": "mpbn", "membrane_norm_kwargs": {"elementwise": True}},
}


def run(variant: dict, seed: int, epochs: int) -> dict[str, float]:
    seed_everything(seed)
    net = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=10,
        input_size=8,
        layers=LayerSpec(norm="tdbn", neuron_kwargs={"decay": 0.25, "threshold": 0.5}, surrogate="dspike", **variant),
    )
    task = SpikingClassifier(
        net,
        time_steps=4,
        optimizer=lambda p: torch.optim.Adam(p, lr=5e-3),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
    )
    result = fit_and_test(
        task, DigitsDataModule(batch_size=64), epochs, [FoldNormalization(every_n_epochs=epochs, save_on_fit_end=False)]
    )
    return {
        "acc": result["test/acc"],
        "acc_folded": result["test/acc_folded"],
        "flipped": result["test/flipped_spikes_folded"],
        "firing_rate": result["test/firing_rate"],
    }


def variant_row(name: str, runs: list[dict[str, float]]) -> str:
    """The table row of one variant from its runs (one per seed)."""
    acc = [100 * r["acc"] for r in runs]
    return (
        f"| {name} | {seed_cells(acc)} | "
        f"{statistics.mean(100 * r['acc_folded'] for r in runs):.2f} | "
        f"{int(sum(r['flipped'] for r in runs))} | {statistics.mean(r['firing_rate'] for r in runs):.3f} |"
    )


def main() -> None:
    args = seeds_parser(__doc__).parse_args()
    start = time.perf_counter()
    rows = print_as_made(
        variant_row(name, [run(variant, seed, args.epochs) for seed in range(args.seeds)])
        for name, variant in VARIANTS.items()
    )
    description = (
        f"Digits test set (360 images), {args.seeds} seeds (0..{args.seeds - 1}), {args.epochs} epochs, best-val "
        f"checkpoint; wall {time.perf_counter() - start:.0f} s."
    )
    header = (
        "variant | test acc % (mean ± std) | per seed | folded acc % (mean) | flipped spikes (all seeds) | firing rate"
    )
    report = table_report(torch.device("cpu"), description, header, rows)
    publish("mpbn_digits", "MPBN reproduction on digits", report, save=not args.no_save)


if __name__ == "__main__":
    main()
