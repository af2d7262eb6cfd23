"""Peak memory of one training step, online vs BPTT, as the number of time steps T grows.

One step = forward + backward of one batch (no optimizer step). BPTT keeps the graph of all T steps
until the backward, so its peak should grow about linearly in T; online training
(:func:`spikenorm.tasks.online.online_backward`) runs one time step at a time with the membrane carried
detached and back-propagates each step's loss at once, so its peak should not depend on T. The bar:
the online peak at the largest T is at most 1.25x its peak at the smallest T (T=16 vs T=2 by default).

Network: ``SpikingVGG`` (``--cfg``, OSR, LIF with OTS, decay 0.5, threshold 1, soft reset with detached reset,
sigmoid surrogate) on a random batch ``[B, 3, size, size]`` (fixed seed) repeated T times; loss TET
(``tet_loss``; online: ``tet_loss(out_t, y) / T`` per step). Parameter gradients are set to None
before every measured step, so both modes allocate them inside the step. Peak memory is measured by
``memory.peak_memory_bytes`` (CPU: profiler allocation events; CUDA: ``max_memory_allocated``) after one
warm-up step; time per step is the median of ``--repeats`` un-profiled steps after one warm-up.

    python benchmarks/online_memory.py --no-save      # print only
    python benchmarks/online_memory.py                # also write benchmarks/results/online_memory.md
"""

from __future__ import annotations

import gc
import os
import statistics
from collections.abc import Callable

import torch
from common import benchmark_parser, publish, stamp, timed
from memory import peak_memory_bytes

from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import tet_loss
from spikenorm.tasks.online import online_backward

BAR = 1.25
MB = 2**20


def build_model(cfg: str, device: torch.device) -> SpikingVGG:
    model = SpikingVGG(
        cfg,
        in_channels=3,
        num_classes=10,
        layers=LayerSpec(
            norm="osr",
            neuron="lif",
            neuron_kwargs={"decay": 0.5, "threshold": 1.0, "reset": "soft", "detach_reset": True, "ots": True},
            surrogate="sigmoid",
        ),
    )
    return model.to(device).train()


def training_step(mode: str, model: SpikingVGG, inputs: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of the batch ``inputs`` (``[T, B, ...]``), grads reset to None first."""
    T = inputs.shape[0]

    def bptt() -> None:
        logits = model(inputs)
        loss = tet_loss(logits, y)
        loss.backward()

    def online() -> None:
        online_backward(model, inputs, lambda out: tet_loss(out, y) / T)

    body = {"bptt": bptt, "online": online}[mode]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        body()

    return step


def main() -> None:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="input height = width")
    parser.add_argument("--cfg", default="small", help="SpikingVGG config name")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16], help="time steps T to measure")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per (mode, T); the median is shown")
    args = parser.parse_args()
    device = args.device
    steps = sorted(set(args.steps))

    torch.manual_seed(0)
    model = build_model(args.cfg, device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    load_before = os.getloadavg()[0]
    peak: dict[tuple[str, int], int] = {}
    ms: dict[tuple[str, int], float] = {}
    for T in steps:
        inputs = x.unsqueeze(0).expand(T, *x.shape)
        for mode in ("bptt", "online"):
            step = training_step(mode, model, inputs, y)
            step()  # warm-up (allocator, oneDNN primitives)
            model.zero_grad(set_to_none=True)
            gc.collect()
            peak[mode, T] = peak_memory_bytes(step, device)
            ms[mode, T] = statistics.median(timed(step, device, repeats=args.repeats, warmup=1)) * 1e3
            model.zero_grad(set_to_none=True)

    t0, t_last = steps[0], steps[-1]
    ratio = {key: peak[key] / peak[key[0], t0] for key in peak}
    online_growth = ratio["online", t_last]
    verdict = "PASS" if online_growth <= BAR else "FAIL"
    how = (
        "profiler allocation events (peak live CPU tensor bytes above the start)"
        if device.type == "cpu"
        else "torch.cuda.max_memory_allocated above the start"
    )
    lines = [
        stamp(device),
        "",
        (
            f"SpikingVGG({args.cfg!r}) OSR + LIF with OTS (decay 0.5, soft detached reset, sigmoid surrogate), "
            f"{sum(p.numel() for p in model.parameters()):,} parameters ({param_bytes / MB:.2f} MB); batch "
            f"[{args.batch}, 3, {args.size}, {args.size}] repeated T times; TET loss. One step = forward + "
            "backward of the batch, gradients set to None before it (both modes allocate them inside the step). "
            f"Peak memory: {how}, one measured step after a warm-up step; time: median of {args.repeats} steps "
            f"(informational; 1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run, "
            f"on {os.cpu_count()} cores)."
        ),
        "",
        (
            "| T | BPTT peak MB | online peak MB | BPTT ratio vs "
            f"T={t0} | online ratio vs T={t0} | BPTT ms/step | online ms/step |"
        ),
        "|---|---|---|---|---|---|---|",
        *(
            f"| {T} | {peak['bptt', T] / MB:.1f} | {peak['online', T] / MB:.1f} | {ratio['bptt', T]:.2f}x | "
            f"{ratio['online', T]:.2f}x | {ms['bptt', T]:.1f} | {ms['online', T]:.1f} |"
            for T in steps
        ),
        "",
        (
            f"Online peak at T={t_last} is {online_growth:.2f}x its peak at T={t0} (bar <= {BAR}x): **{verdict}**. "
            f"BPTT grows {ratio['bptt', t_last]:.2f}x over the same range (T ratio {t_last / t0:g}x)."
        ),
        "",
    ]
    publish(
        "online_memory",
        "Peak memory of one training step: online vs BPTT",
        "\n".join(lines),
        save=not args.no_save,
    )
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
