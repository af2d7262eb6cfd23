"""Reproduction on digits, online training: vanilla BN vs OSR vs OSR+OTS vs OTTT, 5 seeds.

All variants train online (per-step backward, temporal path detached, one optimizer step per batch) a
SpikingVGG ``small`` with the OSR paper's neuron (LIF tau 2, threshold 1, soft reset with detached reset,
sigmoid surrogate alpha 4), T=4, TET loss (MSE weight 0.05), Adam 5e-3 with cosine decay over 20 epochs:

* ``vanilla BN``: per-step batch statistics (``bn``) with ``running_update="per_batch"``, the paper's baseline
  as its code runs it (``BN_type: old``): one running update per batch, from the mean over steps of the
  per-step mean and biased variance;
* ``OSR``: online spiking renormalization;
* ``OSR + OTS``: plus the online threshold stabilizer (dynamic per-layer thresholds, as in the paper);
* ``OTTT``: no normalization, presynaptic-trace weight gradients.

Reported: test accuracy of the best-validation checkpoint, the gross firing rate and the per-step firing
rate (mean over the spiking layers) on the test set; the paper's Fig. 2b shape is a first step that fires
less than the later ones without OTS, and flat steps with it.

    python benchmarks/osr_digits.py            # about 8 minutes on 2 CPU cores: writes results/osr_digits.md
"""

from __future__ import annotations

import statistics
import time

import torch
from common import fit_and_test, print_as_made, publish, seed_cells, seeds_parser, table_report
from lightning.pytorch import seed_everything

from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.tasks import OnlineTraining, SpikingClassifier

NEURON = {"tau": 2.0, "threshold": 1.0, "reset": "soft", "detach_reset": True}
VARIANTS = {
    "vanilla BN": {"norm": "bn", "norm_kwargs": {"running_update": "per_batch"}},
    "OSR": {"norm": "osr"},
    "OSR + OTS": {"norm": "osr", "neuron_kwargs": {**NEURON, "ots": True}},
    "OTTT": {"norm": "none", "trace": True},
}


def run(variant: dict, seed: int, epochs: int, time_steps: int) -> dict:
    seed_everything(seed)
    options = {"neuron_kwargs": NEURON, **variant}
    net = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=10,
        layers=LayerSpec(surrogate="sigmoid", surrogate_kwargs={"alpha": 4.0}, **options),
    )
    task = SpikingClassifier(
        net,
        time_steps=time_steps,
        loss="tet",
        tet_mse_weight=0.05,
        online=OnlineTraining(),
        optimizer=lambda p: torch.optim.Adam(p, lr=5e-3),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
    )
    data = DigitsDataModule(batch_size=64)
    accuracy = fit_and_test(task, data, epochs)["test/acc"]
    task.eval()
    with torch.no_grad(), FiringRateRecorder(task.model) as recorder:
        for x, _ in data.test_dataloader():
            task(x)
    per_step = torch.stack(list(recorder.step_rates().values())).mean(0)
    return {"acc": accuracy, "steps": per_step.tolist(), "gross": recorder.mean_rate()}


def variant_row(name: str, runs: list[dict]) -> str:
    """The table row of one variant from its runs (one per seed); the per-step rates are means over seeds."""
    acc = [100 * r["acc"] for r in runs]
    steps = [statistics.mean(step_rates) for step_rates in zip(*(r["steps"] for r in runs))]
    return (
        f"| {name} | {seed_cells(acc)} | {statistics.mean(r['gross'] for r in runs):.3f} | "
        f"{' / '.join(f'{s:.3f}' for s in steps)} | {steps[0] / statistics.mean(steps[1:]):.2f} |"
    )


def main() -> None:
    parser = seeds_parser(__doc__)
    parser.add_argument("--time-steps", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = print_as_made(
        variant_row(name, [run(variant, seed, args.epochs, args.time_steps) for seed in range(args.seeds)])
        for name, variant in VARIANTS.items()
    )
    description = (
        f"Digits test set (360 images), online training, T={args.time_steps}, {args.seeds} seeds "
        f"(0..{args.seeds - 1}), {args.epochs} epochs, best-val checkpoint; "
        f"wall {time.perf_counter() - start:.0f} s. "
        'Vanilla BN: `bn` with `running_update="per_batch"` (one running update per batch from the mean '
        "per-step mean and biased variance, the OSR code's baseline). "
        "Firing rates on the test set (eval mode), mean over the three spiking layers."
    )
    header = (
        "variant | test acc % (mean ± std) | per seed | gross firing rate | firing rate per step t=1..T | "
        "step 1 / later steps"
    )
    report = table_report(torch.device("cpu"), description, header, rows)
    publish("osr_digits", "OSR / OTS reproduction on digits (online training)", report, save=not args.no_save)


if __name__ == "__main__":
    main()
