"""The digits quickstart in float32 and in bf16 mixed precision, 5 seeds each: does bf16 cost accuracy?

Each run is ``recipes/quickstart.yaml`` (SpikingVGG ``small``, tdBN, LIF, sigmoid surrogate alpha 4, T=4, Adam 5e-3
with cosine decay, 20 epochs, FoldNormalization) through the ``spikenorm`` CLI in this process, as a user runs it:

    spikenorm fit --config recipes/quickstart.yaml --seed_everything S --trainer.precision P

with ``P`` = ``32-true`` (float32) and ``bf16-mixed`` (Lightning's bf16 autocast: convolutions and linear layers
in bfloat16, norm statistics and neuron state in float32), no logger, its files in a temporary folder. The two
precisions alternate seed by seed, so drift of the machine is shared. Per run: test accuracy of the
best-validation checkpoint, the folded model's accuracy, flipped spikes and largest output difference (the
FoldNormalization check, in float64), the test firing rate, and the wall time of fit + test.

Within seed noise: the difference of the mean accuracies (bf16 - fp32) is tested with Welch's two-sample t-test
(B. L. Welch, "The generalization of Student's problem when several different population variances are
involved", Biometrika 34, 1947), two-sided; "within seed noise" means p >= 0.05, i.e. with this many seeds the
precisions cannot be told apart from the spread between seeds. Welch's rather than Student's test because bf16
may change the spread as well as the mean. The runs are not paired by seed: the same seed gives the same
initial weights and batch order, but the trajectories part at the first rounding difference.

    python benchmarks/precision_digits.py            # about 5 minutes on 2 CPU cores: results/precision_digits.md
    python benchmarks/precision_digits.py --seeds 1 --epochs 1 --no-save
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import markdown_table, print_as_made, publish, seed_cells, seeds_parser, table_report
from scipy import stats

from spikenorm.allocator import retain_freed_memory
from spikenorm.cli import SpikenormCLI

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
PRECISIONS = {"32-true": "fp32", "bf16-mixed": "bf16"}
SIGNIFICANCE = 0.05


def run_quickstart(precision: str, seed: int, epochs: int) -> dict[str, float]:
    """Fit + test of the quickstart recipe through the CLI; its test metrics and ``wall`` seconds."""
    with tempfile.TemporaryDirectory() as root:
        args = [
            "fit",
            "--config",
            str(RECIPE),
            f"--seed_everything={seed}",
            f"--trainer.precision={precision}",
            f"--trainer.max_epochs={epochs}",
            f"--model.init_args.lr_scheduler.init_args.T_max={epochs}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
        ]
        start = time.perf_counter()
        cli = SpikenormCLI(args=args)
        wall = time.perf_counter() - start
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items() if key.startswith("test/")}
    if "test/acc" not in metrics:
        raise RuntimeError(f"the {precision} run of seed {seed} logged no test accuracy: {sorted(metrics)}")
    return {**metrics, "wall": wall}


def run_row(precision: str, seed: int, run: dict[str, float]) -> str:
    return (
        f"| {PRECISIONS[precision]} | {seed} | {100 * run['test/acc']:.2f} | {100 * run['test/acc_folded']:.2f} "
        f"| {int(run['test/flipped_spikes_folded'])} | {run['test/max_abs_diff_folded']:.2g} "
        f"| {run['test/firing_rate']:.3f} | {run['wall']:.1f} |"
    )


def within_seed_noise(fp32: list[float], bf16: list[float]) -> str:
    """The difference of means and Welch's test of it (see the module docstring), as one sentence."""
    diff = statistics.mean(bf16) - statistics.mean(fp32)
    if min(len(fp32), len(bf16)) < 2:
        return f"Difference of means (bf16 - fp32): {diff:+.2f} points; the test needs at least 2 seeds."
    welch = stats.ttest_ind(bf16, fp32, equal_var=False)
    se = (statistics.variance(fp32) / len(fp32) + statistics.variance(bf16) / len(bf16)) ** 0.5
    if se == 0:  # every seed gave the same accuracy in both precisions: no spread to compare against
        verdict = "identical runs" if diff == 0 else "beyond seed noise (no spread between seeds)"
        return f"Difference of means (bf16 - fp32): {diff:+.2f} points, no spread between seeds: {verdict}."
    verdict = "within seed noise" if welch.pvalue >= SIGNIFICANCE else "beyond seed noise"
    return (
        f"Difference of means (bf16 - fp32): {diff:+.2f} ± {se:.2f} points (standard error); Welch's t = "
        f"{welch.statistic:.2f}, two-sided p = {welch.pvalue:.2f}: **{verdict}** (p >= {SIGNIFICANCE} means "
        f"the precisions cannot be told apart from seed-to-seed spread)."
    )


def summary_rows(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    rows = []
    for precision, results in runs.items():
        acc = [100 * r["test/acc"] for r in results]
        rows.append(
            f"| {PRECISIONS[precision]} (`{precision}`) | {seed_cells(acc)} "
            f"| {statistics.mean(100 * r['test/acc_folded'] for r in results):.2f} "
            f"| {int(sum(r['test/flipped_spikes_folded'] for r in results))} "
            f"| {statistics.mean(r['test/firing_rate'] for r in results):.3f} "
            f"| {statistics.mean(r['wall'] for r in results):.1f} |"
        )
    return rows


def main() -> None:
    args = seeds_parser(__doc__).parse_args()
    retain_freed_memory()  # what the spikenorm console script does first: wall times comparable with the CLI's
    start = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {precision: [] for precision in PRECISIONS}
    per_run = []
    for seed in range(args.seeds):
        for precision in PRECISIONS:
            runs[precision].append(run_quickstart(precision, seed, args.epochs))
            per_run.append(run_row(precision, seed, runs[precision][-1]))
            print(per_run[-1], flush=True)
    rows = print_as_made(summary_rows(runs))
    fp32, bf16 = ([100 * r["test/acc"] for r in runs[p]] for p in PRECISIONS)
    wall_ratio = statistics.mean(r["wall"] for r in runs["bf16-mixed"]) / statistics.mean(
        r["wall"] for r in runs["32-true"]
    )
    description = (
        f"`recipes/quickstart.yaml` through the spikenorm CLI at `--trainer.precision 32-true` and `bf16-mixed`, "
        f"{args.seeds} seeds (0..{args.seeds - 1}) each, {args.epochs} epochs, digits test set (360 images), "
        f"best-validation checkpoint; total wall {time.perf_counter() - start:.0f} s."
    )
    notes = [
        within_seed_noise(fp32, bf16),
        "",
        f"Wall time of fit + test, bf16 / fp32: {wall_ratio:.2f}x (the quickstart's network is small: data "
        f"loading, validation, folding and Python overhead weigh as much as the convolutions).",
        "",
        *markdown_table(
            "precision | seed | test acc % | folded acc % | flipped spikes | max output difference | firing rate "
            "| fit + test wall s",
            per_run,
        ),
    ]
    header = (
        "precision | test acc % (mean ± std) | per seed | folded acc % (mean) | flipped spikes (all seeds) "
        "| firing rate | fit + test wall s (mean)"
    )
    report = table_report(torch.device("cpu"), description, header, rows, notes)
    publish("precision_digits", "Digits quickstart: bf16 mixed precision vs float32", report, save=not args.no_save)


if __name__ == "__main__":
    main()
