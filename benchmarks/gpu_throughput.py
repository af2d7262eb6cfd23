"""One-epoch training throughput of the CIFAR-10 recipes' networks on synthetic data, fp32 and bf16-mixed.

Each case is a recipe: its task and network built exactly as ``spikenorm fit --config <recipe>`` builds them
(the ``model`` section, so its ``time_steps``, loss, training mode — VGGSNN/OSR trains online — and
optimizer), its ``seed_everything`` and its batch size. One Lightning epoch of ``--samples`` random
CIFAR-shaped images (``3 x 32 x 32``, 10 classes; 50,000 like the CIFAR-10 training set) runs under each
precision (``32-true``, ``bf16-mixed``). The recipe's callbacks (checkpoints, folding), validation and loggers
are left out: this times the training step and the host-to-device copy of each batch, nothing else.

Reported per case and precision: steady-state samples/s (after ``--warmup-batches`` batches, which hold the
compilation of the fused neuron kernels and cuDNN's first calls), the epoch time as measured (warm-up
included) and, when ``--max-seconds`` stopped the epoch early, the full epoch estimated as measured time +
remaining samples / steady rate; and the peak CUDA memory allocated (``torch.cuda.max_memory_allocated``).
TF32 is left at torch's defaults (cuDNN convolutions may use it, matmuls do not), as a user's run has it.

Usage (``--output`` writes the markdown table to a file as well; benchmarks/gpu_check.sh collects it)::

    python benchmarks/gpu_throughput.py --device cuda --max-seconds 35 --output /tmp/throughput.md
    # tiny, on CPU (the test's run): narrow networks through --network-arg CLASS.ARG=VALUE (VALUE is YAML)
    python benchmarks/gpu_throughput.py --device cpu --samples 16 --batch-size 4 --warmup-batches 1 \\
        --network-arg SpikingResNet19.width=0.0625 --network-arg "SpikingVGG.cfg=[8, A, 16]"
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from common import machine, markdown_table, quiet_trainer
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from spikenorm.tasks import SpikingClassifier

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

#: case name -> recipe file (its network, T, batch size, training mode)
CASES = {
    "resnet19_tdbn": "cifar10_resnet19_tdbn.yaml",
    "resnet19_mpbn": "cifar10_resnet19_mpbn.yaml",
    "vggsnn_osr": "cifar10_vggsnn_osr.yaml",
}
#: precision name -> Lightning's precision setting
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
IMAGE_SHAPE, CLASSES = (3, 32, 32), 10
HEADER = (
    "case | network | T | training | batch | precision | samples/s | epoch s (measured) | epoch s (all samples) "
    "| peak memory MiB"
)


@dataclass
class Case:
    """A recipe's training setup: its task config (the ``model`` section's ``init_args``), seed and batch size."""

    name: str
    task_args: dict[str, Any]
    seed: int
    batch_size: int

    @property
    def network(self) -> str:
        return self.task_args["model"]["class_path"].rsplit(".", 1)[-1]

    def build(self) -> SpikingClassifier:
        """The task as the recipe builds it (a fresh network: every precision starts from the same weights)."""
        seed_everything(self.seed, verbose=False)
        return SpikingClassifier(**copy.deepcopy(self.task_args))


def load_case(name: str, batch_size: int | None = None) -> Case:
    """The case ``name`` of :data:`CASES` from its recipe; ``batch_size`` None: the recipe's."""
    recipe = yaml.safe_load((RECIPES / CASES[name]).read_text())
    task = recipe["model"]
    if task.get("class_path") != "spikenorm.tasks.SpikingClassifier":
        raise ValueError(f"{CASES[name]}: expected a spikenorm.tasks.SpikingClassifier model, got {task!r}")
    return Case(
        name,
        task["init_args"],
        int(recipe.get("seed_everything", 0)),
        batch_size or int(recipe["data"]["init_args"]["batch_size"]),
    )


def network_arg(text: str) -> tuple[str, str, Any]:
    """``CLASS.ARG=VALUE`` -> (class name, argument, YAML-parsed value)."""
    target, sep, value = text.partition("=")
    cls, dot, arg = target.partition(".")
    if not (sep and dot and cls and arg):
        raise argparse.ArgumentTypeError(f"expected CLASS.ARG=VALUE (e.g. SpikingResNet19.width=0.25), got {text!r}")
    return cls, arg, yaml.safe_load(value)


def apply_network_args(cases: list[Case], overrides: list[tuple[str, str, Any]]) -> None:
    """Set each ``(class, arg, value)`` in the network config of every case whose network is that class."""
    for cls, arg, value in overrides:
        matching = [case for case in cases if case.network == cls]
        if not matching:
            networks = ", ".join(sorted({case.network for case in cases}))
            raise ValueError(f"--network-arg {cls}.{arg}: no selected case builds a {cls} (they build: {networks})")
        for case in matching:
            case.task_args["model"].setdefault("init_args", {})[arg] = value


class SyntheticCifar(Dataset):
    """``samples`` random CIFAR-shaped images and labels in batches of ``batch_size`` (the last one may be
    smaller), cycling through a few pre-made batches so that making data costs nothing."""

    def __init__(self, samples: int, batch_size: int, distinct: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(distinct, batch_size, *IMAGE_SHAPE, generator=g)
        self.labels = torch.randint(CLASSES, (distinct, batch_size), generator=g)
        self.samples, self.batch_size = samples, batch_size

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = min(self.batch_size, self.samples - index * self.batch_size)
        slot = index % len(self.images)
        return self.images[slot, :size], self.labels[slot, :size]


class EpochClock(Callback):
    """Times the epoch (synchronising CUDA at the marks): from the start of training, from the end of batch
    ``warmup_batches``, to the end; with ``max_seconds``, stops the epoch once that much time has passed and
    at least one batch after the warm-up has run."""

    def __init__(self, device: torch.device, warmup_batches: int, max_seconds: float | None) -> None:
        self.device, self.warmup_batches, self.max_seconds = device, warmup_batches, max_seconds
        self.samples = self.steady_samples = 0
        self.start = self.steady_start = self.end = 0.0
        self.stopped_early = False

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = self.steady_start = self._now()  # no warm-up batches: steady from the start

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int):
        self.samples += len(batch[1])
        if idx + 1 == self.warmup_batches:
            self.steady_start, self.steady_samples = self._now(), self.samples
        steady = idx + 1 > self.warmup_batches  # at least one batch timed at steady state
        if steady and self.max_seconds is not None and time.perf_counter() - self.start > self.max_seconds:
            self.stopped_early = trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.end = self._now()


def run(case: Case, precision: str, device: torch.device, samples: int, warmup: int, max_seconds: float | None):
    """One epoch of ``case`` at ``precision`` (a :data:`PRECISIONS` name); returns its table row."""
    task = case.build()
    data = DataLoader(SyntheticCifar(samples, case.batch_size), batch_size=None, pin_memory=device.type == "cuda")
    clock = EpochClock(device, warmup, max_seconds)
    trainer = quiet_trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=PRECISIONS[precision],
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(task, train_dataloaders=data)
    if clock.samples <= clock.steady_samples:
        raise RuntimeError(f"{case.name} {precision}: no batch ran after the {warmup} warm-up batches")
    rate = (clock.samples - clock.steady_samples) / (clock.end - clock.steady_start)
    measured = clock.end - clock.start
    full = measured + (samples - clock.samples) / rate
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "n/a (CPU)"
    estimated = f"{full:.1f} (stopped at {clock.samples} samples)" if clock.stopped_early else f"{full:.1f}"
    mode = task.training_mode
    return (
        f"| {case.name} | {case.network} | {task.hparams.time_steps} | {mode} | {case.batch_size} | {precision} "
        f"| {rate:.1f} | {measured:.1f} | {estimated} | {memory} |"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=torch.device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"from: {', '.join(PRECISIONS)}")
    parser.add_argument("--samples", type=int, default=50_000, help="samples in the epoch (default: CIFAR-10's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each recipe's")
    parser.add_argument("--warmup-batches", type=int, default=5, help="batches before the steady-state clock")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop each epoch after this long")
    parser.add_argument("--network-arg", type=network_arg, action="append", default=[], metavar="CLASS.ARG=VALUE")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    names, precisions = args.cases.split(","), args.precisions.split(",")
    unknown = [n for n in names if n not in CASES] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown {unknown}; cases: {', '.join(CASES)}; precisions: {', '.join(PRECISIONS)}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    cases = [load_case(name, args.batch_size) for name in names]
    try:
        apply_network_args(cases, args.network_arg)
    except ValueError as error:
        parser.error(str(error))
    batches = -(-args.samples // min(case.batch_size for case in cases))
    if args.warmup_batches < 0 or batches <= args.warmup_batches:
        parser.error(f"--samples {args.samples} gives {batches} batches: need more than --warmup-batches")

    lines = [
        f"Device: {machine(args.device)} ({args.device.type}), torch {torch.__version__}; {args.samples} synthetic "
        f"samples per epoch, steady state after {args.warmup_batches} warm-up batches"
        + (f", each epoch stopped after {args.max_seconds:g} s" if args.max_seconds else "")
        + ".",
        "",
    ]
    rows = []
    for case in cases:
        for precision in precisions:
            rows.append(run(case, precision, args.device, args.samples, args.warmup_batches, args.max_seconds))
            print(rows[-1], flush=True)
    report = "\n".join([*lines, *markdown_table(HEADER, rows)]) + "\n"
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return report


if __name__ == "__main__":
    main()
