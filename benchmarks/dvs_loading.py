"""Loading speed of the DVS DataModules: samples/s with the frame cache cold, warm, and without a cache.

One train epoch (batch 32, no augmentation, ``num_workers=0``, so the numbers are the loading pipeline
alone on one core) is timed three ways, interleaved per repeat to share machine drift:

* ``no cache``: every sample is read from its event file and framed;
* ``cold``: the first epoch with an empty cache directory (read, frame, write one HDF5 file per sample);
* ``warm``: the next epoch over the same cache (read the HDF5 frames only).

Data: no real dataset can be downloaded here, so the files are written in each dataset's own on-disk
format by :mod:`spikenorm.datamodules.testing` (the writers the tests use) with uniformly random events, at the
sizes given on the command line; event-digits is the embedded dataset itself (real emulator output).
Absolute rates depend on the event count per sample, the ratios much less.

    python benchmarks/dvs_loading.py            # writes results/dvs_loading.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from common import print_as_made, publish, table_report

from spikenorm.datamodules import EventDigitsDataModule, TonicDataModule
from spikenorm.datamodules.base import SplitDataModule
from spikenorm.datamodules.testing import write_cifar10dvs, write_nmnist


def epoch_seconds(dm: SplitDataModule) -> float:
    """Wall-clock seconds of one pass over the train loader."""
    start = time.perf_counter()
    for _ in dm.train_dataloader():
        pass
    return time.perf_counter() - start


def measure(make: Callable[[str | None, bool], SplitDataModule], repeats: int) -> dict[str, list[float]]:
    """Seconds per epoch for no cache / cold / warm, ``repeats`` interleaved rounds."""
    times: dict[str, list[float]] = {"no cache": [], "cold": [], "warm": []}
    epoch_seconds(_ready(make(None, False)))  # warm the OS file cache and the imports
    for _ in range(repeats):
        times["no cache"].append(epoch_seconds(_ready(make(None, False))))
        with tempfile.TemporaryDirectory() as cache:
            cached = _ready(make(cache, True))
            times["cold"].append(epoch_seconds(cached))
            times["warm"].append(epoch_seconds(cached))
    return times


def rate_row(name: str, make: Callable[[str | None, bool], SplitDataModule], repeats: int) -> str:
    """The table row of one data setup: train samples/s without cache, with a cold and a warm cache."""
    times = measure(make, repeats)
    samples = len(_ready(make(None, False)).train_dataset)
    rate = {mode: samples / statistics.median(values) for mode, values in times.items()}
    return (
        f"| {name} | {samples} | {rate['no cache']:.0f} | {rate['cold']:.0f} | {rate['warm']:.0f} | "
        f"{rate['warm'] / rate['no cache']:.2f} | {rate['cold'] / rate['no cache']:.2f} |"
    )


def _ready(dm: SplitDataModule) -> SplitDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nmnist-per-class", type=int, default=100, help="N-MNIST-format train files per digit")
    parser.add_argument("--nmnist-events", type=int, default=4000, help="events per N-MNIST-format file")
    parser.add_argument("--cifar10dvs-per-class", type=int, default=20)
    parser.add_argument("--cifar10dvs-events", type=int, default=50_000, help="events per CIFAR10-DVS-format file")
    parser.add_argument("--save", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        write_nmnist(root, {"Train": args.nmnist_per_class, "Test": 1}, rng, num_events=args.nmnist_events)
        write_cifar10dvs(root, args.cifar10dvs_per_class, rng, num_events=args.cifar10dvs_events)
        common = {"root": root, "augment": False, "batch_size": 32, "val_fraction": 0.2}
        setups = {
            f"N-MNIST format, 34x34, T=10, {args.nmnist_events} events/sample": lambda cache, on: TonicDataModule(
                "nmnist", time_bins=10, cache=on, cache_dir=cache, **common
            ),
            f"CIFAR10-DVS format (AEDAT4), 128->48, T=10, {args.cifar10dvs_events} events/sample": (
                lambda cache, on: TonicDataModule(
                    "cifar10dvs", time_bins=10, sensor_size=48, cache=on, cache_dir=cache, **common
                )
            ),
        }
        with tempfile.TemporaryDirectory() as streams:
            setups["event-digits (embedded), 16x16, T=6, ~1200 events/sample"] = lambda cache, on: (
                EventDigitsDataModule(cache=on, cache_dir=cache or streams, augment=False)
            )
            rows = print_as_made(rate_row(name, make, args.repeats) for name, make in setups.items())
    description = (
        f"One train epoch, batch 32, num_workers 0, no augmentation, 1 torch thread; samples/s, median of "
        f"{args.repeats} interleaved repeats."
    )
    header = "data | train samples | no cache | cache cold | cache warm | warm / no cache | cold / no cache"
    report = table_report(torch.device("cpu"), description, header, rows)
    publish("dvs_loading", "DVS loading: TonicDataModule / EventDigitsDataModule samples/s", report, args.save)


if __name__ == "__main__":
    main()
