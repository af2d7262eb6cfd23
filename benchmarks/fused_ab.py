"""The fused kernels of this checkout against another version of ``spikenorm/fused.py``, in one process.

A change to the fused kernels is measured against the code before it, side by side: the baseline file (e.g. the
previous commit's, ``git show HEAD~1:src/spikenorm/fused.py > /tmp/fused_before.py``) is loaded as a second module
with its operators renamed (``spikenorm::`` -> ``spikenorm_baseline_<random>::``), so both register and run in the same
process, on the same neuron, norm and input, timed in interleaved rounds (the order rotated each round): on a VM
whose speed drifts between runs, the per-round ratios still compare like with like. The stages measured: the LIF
alone (forward, and forward+backward; the neuron of ``compare.py``'s neuron benchmark), and what spikenorm's
``conv -> tdBN -> LIF`` stages run in training: tdBN (per-channel batch statistics, running update) applied inside
the LIF's fused kernels (``fused_forward(neuron, x, norm)``), forward+backward, channels-last (what spikenorm's
convolutions return on CPU) and NCHW; float32 and bfloat16. Both versions must give the same spikes (checked) and
input gradients within rounding (the largest difference is reported). The process keeps freed memory for reuse
(:func:`spikenorm.allocator.retain_freed_memory`): with glibc's defaults a 16 MiB block is sometimes a fresh
``mmap`` whose pages are faulted in and zeroed at first touch, sometimes reused heap, depending on what the previous
call freed, which made the same stage 4.9 or 7.2 ms from one run to the next.

    python benchmarks/fused_ab.py --baseline /tmp/fused_before.py
    python benchmarks/fused_ab.py --baseline /tmp/fused_before.py --baseline-version "62b9640" --repeats 30

Results (machine, date, CPU flags, medians and ratios) replace benchmarks/results/fused_ab.md.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from common import benchmark_parser, channels_last_steps, interleaved, publish, table_report

from spikenorm import fused
from spikenorm.allocator import retain_freed_memory
from spikenorm.neurons import LIF
from spikenorm.norm import build_norm


def load_baseline(path: Path) -> ModuleType:
    """``path`` (a version of ``spikenorm/fused.py``) as the module ``fused_baseline``, its operators renamed into a
    namespace of their own (``spikenorm_baseline_<random>``, the module's ``namespace``: operators cannot be
    unregistered, so a second load gets another one)."""
    namespace = f"spikenorm_baseline_{uuid.uuid4().hex[:8]}"
    source = path.read_text().replace('"spikenorm::', f'"{namespace}::')
    spec = importlib.util.spec_from_loader("fused_baseline", loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses resolve their annotations there)
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - a file the user names
    module.namespace = namespace
    return module


#: the stages measured: (name, with tdBN before the neuron, with the backward)
STAGES = [
    ("LIF, forward", False, False),
    ("LIF, forward+backward", False, True),
    ("tdBN + LIF, forward+backward", True, True),
]


def measure(
    baseline: ModuleType,
    shape: list[int],
    dtype: torch.dtype,
    channels_last: bool,
    repeats: int,
    with_norm: bool,
    backward: bool,
) -> tuple[float, float, list[float], bool, float]:
    """Median seconds of the baseline and of this checkout, the per-round ratios (this / baseline), whether the
    spikes are equal and the largest input-gradient difference (0 without the backward)."""
    torch.manual_seed(0)
    x = (torch.randn(shape) + 0.5).to(dtype)
    x = (channels_last_steps(x) if channels_last else x).requires_grad_()
    grad = torch.ones_like(x)
    neuron = LIF(decay=0.5, threshold=1.0, surrogate="sigmoid", surrogate_kwargs={"alpha": 4.0}, detach_reset=True)
    norm = build_norm("tdbn", shape[2]) if with_norm else None  # training mode

    def step(module: ModuleType) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            x.grad = None
            with torch.set_grad_enabled(backward):
                spikes = module.fused_forward(neuron, x, norm)
            if backward:
                spikes.backward(grad)
            return spikes, x.grad if backward else torch.zeros(())

        return run

    fns = {"baseline": step(baseline), "this checkout": step(fused)}
    (s0, g0), (s1, g1) = (fn() for fn in fns.values())
    same_spikes = torch.equal(s0, s1)
    grad_diff = (g0.float() - g1.float()).abs().max().item()
    for fn in fns.values():
        fn()
    times = interleaved(fns, torch.device("cpu"), repeats)
    ratios = [new / old for new, old in zip(times["this checkout"], times["baseline"])]
    return (
        statistics.median(times["baseline"]),
        statistics.median(times["this checkout"]),
        ratios,
        same_spikes,
        grad_diff,
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="another version of src/spikenorm/fused.py")
    parser.add_argument("--baseline-version", default="", help="what the baseline is (a commit), for the report")
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 32, 128, 16, 16], help="T B C H W")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    retain_freed_memory()
    baseline = load_baseline(args.baseline)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for stage, with_norm, backward in STAGES:
            for channels_last in (True, False) if with_norm else (False,):  # (the neuron alone has no layout)
                old, new, ratios, same, diff = measure(
                    baseline, args.shape, dtype, channels_last, args.repeats, with_norm, backward
                )
                dtype_name = str(dtype).removeprefix("torch.")
                layout = "channels-last" if channels_last else "NCHW" if with_norm else "–"
                rows.append(
                    f"| {stage} | {dtype_name} | {layout} | {old * 1e3:.2f} | {new * 1e3:.2f} | {new / old:.3f} | "
                    f"{statistics.median(ratios):.3f} | {'yes' if same else 'NO'} | {diff:.1e} |"
                )
                print(rows[-1], flush=True)
    version = f" ({args.baseline_version})" if args.baseline_version else ""
    description = (
        f"The LIF alone and with tdBN (training) inside its fused kernels, input {list(args.shape)}; baseline: "
        f"`{args.baseline.name}`{version}. Medians of {args.repeats} interleaved rounds in one process; per-round: "
        "the median of this checkout's time over the baseline's in the same round. Freed memory kept for reuse "
        "(`spikenorm.allocator.retain_freed_memory`)."
    )
    header = (
        "stage | dtype | layout | baseline ms | this checkout ms | ratio of medians | per-round ratio | same spikes | "
        "max abs input-gradient difference"
    )
    report = table_report(torch.device("cpu"), description, header, rows)
    publish("fused_ab", "Fused norm + neuron kernels: this checkout against a baseline", report, save=not args.no_save)


if __name__ == "__main__":
    main()
