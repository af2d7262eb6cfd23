"""SEI-BWSNN ablation on digits: full precision vs binary weights, + shortcuts, + KD, + both; T=1 vs T=2.

Every run trains ``SpikingVGG([32, 32, "A", 64, 64, "A"])`` (``--narrow``: ``[8, 8, "A", 16, 16, "A"]``, where
1-bit weights cost more; tdBN, LIF, sigmoid surrogate) on scikit-learn's digits for ``--epochs`` epochs (Adam
5e-3, cosine) and reports the test accuracy of the best-validation checkpoint. Variants (the design is
spikenorm's inference of SEI-BWSNN: Meng et al., "A Self-Ensemble Inspired Approach for Effective Training of
Binary-Weight Spiking Neural Networks", arXiv 2508.12609):

* ``full precision``: no binarization (no shortcuts);
* ``binary``: 1-bit weights (sign * per-channel mean|W|, clipped STE) in every conv but the first, and the
  classifier full precision;
* ``+ shortcuts``: ``shortcuts="per_layer"`` (a shortcut around every binary conv);
* ``+ KD``: distillation from the full-precision T=2 network of the same seed (trained first, frozen),
  distillation weight 0.5, temperature 4, on time-averaged logits;
* ``+ both``.

Each variant at T=1 (a binary-activation network: one member of the self-ensemble) and T=2. The model size
of the binary network, packed (1 bit per binary weight + alpha, everything else float32), is reported
against the full-precision one.

    python benchmarks/bw_ablation.py              # writes results/bw_ablation.md
    python benchmarks/bw_ablation.py --narrow     # the narrow network: writes results/bw_ablation_narrow.md
    python benchmarks/bw_ablation.py --seeds 1 --epochs 2 --no-save
"""

from __future__ import annotations

import statistics
import time

import torch
from common import fit_and_test, publish, seed_cells, seeds_parser, table_report
from lightning.pytorch import seed_everything

from spikenorm.binary_packing import model_size
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import Distillation, SpikingClassifier

CFG = [32, 32, "A", 64, 64, "A"]  # --narrow: NARROW_CFG, where 1-bit weights cost more
NARROW_CFG = [8, 8, "A", 16, 16, "A"]
VARIANTS = {
    "full precision": {"binary": False, "shortcuts": False, "kd": False},
    "binary": {"binary": True, "shortcuts": False, "kd": False},
    "binary + shortcuts": {"binary": True, "shortcuts": True, "kd": False},
    "binary + KD": {"binary": True, "shortcuts": False, "kd": True},
    "binary + shortcuts + KD": {"binary": True, "shortcuts": True, "kd": True},
}
TIME_STEPS = (1, 2)
TEACHER_T = 2


def network(cfg: list[int | str], binary: bool, shortcuts: bool) -> SpikingVGG:
    return SpikingVGG(
        cfg,
        in_channels=1,
        num_classes=10,
        input_size=8,
        layers=LayerSpec(
            norm="tdbn",
            surrogate_kwargs={"alpha": 4.0},
            binary_weights=binary,
            shortcuts="per_layer" if shortcuts else "none",
        ),
    )


def run(
    cfg: list[int | str], variant: dict, time_steps: int, seed: int, epochs: int, teacher: SpikingVGG | None
) -> tuple[float, SpikingVGG]:
    seed_everything(seed)
    net = network(cfg, variant["binary"], variant["shortcuts"])
    kd = {"distillation": Distillation(teacher, weight=0.5, temperature=4.0)} if variant["kd"] else {}
    task = SpikingClassifier(
        net,
        time_steps=time_steps,
        optimizer=lambda p: torch.optim.Adam(p, lr=5e-3),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
        **kd,
    )
    result = fit_and_test(task, DigitsDataModule(batch_size=64), epochs)
    return 100 * result["test/acc"], net


def main() -> None:
    parser = seeds_parser(__doc__)
    parser.add_argument("--narrow", action="store_true", help=f"the narrow network {NARROW_CFG}")
    args = parser.parse_args()
    cfg = NARROW_CFG if args.narrow else CFG
    start = time.perf_counter()
    acc: dict[tuple[str, int], list[float]] = {(name, t): [] for name in VARIANTS for t in TIME_STEPS}
    teacher_acc = []
    for seed in range(args.seeds):
        teacher_acc.append(None)
        teacher = None
        # the full-precision T=2 network first: it is also the KD teacher of this seed
        order = sorted(acc, key=lambda key: key != ("full precision", TEACHER_T))
        for name, t in order:
            value, net = run(cfg, VARIANTS[name], t, seed, args.epochs, teacher)
            acc[(name, t)].append(value)
            if (name, t) == ("full precision", TEACHER_T):
                teacher, teacher_acc[-1] = net, value
            print(f"seed {seed} | {name} | T={t} | {value:.2f}", flush=True)
    rows = []
    for name in VARIANTS:
        gain = [a - b for a, b in zip(acc[(name, 2)], acc[(name, 1)])]
        cells = " | ".join(seed_cells(acc[(name, t)]) for t in TIME_STEPS)
        rows.append(f"| {name} | {cells} | {statistics.mean(gain):+.2f} |")
    size = model_size(network(cfg, True, True))
    size_plain = model_size(network(cfg, True, False))
    description = (
        f"Digits test set (360 images), SpikingVGG {cfg} (tdBN, LIF), {args.seeds} seeds (0..{args.seeds - 1}),"
        f" {args.epochs} epochs, Adam 5e-3 cosine, best-val checkpoint. KD teacher: the full-precision "
        f"T={TEACHER_T}"
        f" network of the same seed (test acc {statistics.mean(teacher_acc):.2f}%), distillation weight 0.5, tau 4."
        f" Wall {time.perf_counter() - start:.0f} s."
    )
    header = "variant | T=1 test acc % | T=1 per seed | T=2 test acc % | T=2 per seed | T=2 - T=1 (mean over seeds)"
    sizes = (
        f"Model size, packed binary vs float32: without shortcuts {size_plain.packed_bytes} B vs"
        f" {size_plain.full_precision_bytes} B (ratio {size_plain.ratio:.3f}); with per-layer shortcuts"
        f" {size.packed_bytes} B vs {size.full_precision_bytes} B (ratio {size.ratio:.3f}). The first conv, the"
        f" classifier and the norms stay full precision."
    )
    report = table_report(torch.device("cpu"), description, header, rows, notes=[sizes, ""])
    title = "SEI-BWSNN ablation on digits (binary weights, shortcuts, KD, T)"
    if args.narrow:
        publish("bw_ablation_narrow", f"{title}, narrow network", report, save=not args.no_save)
    else:
        publish("bw_ablation", title, report, save=not args.no_save)


if __name__ == "__main__":
    main()
