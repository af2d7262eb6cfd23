"""spikenorm vs SpikingJelly vs snnTorch: one spiking VGG, same dynamics, speed and memory in one process.

The network (CIFAR-sized input ``[T=4, B=32, 3, 32, 32]``, 10 classes) is built three times:

- **spikenorm**: :class:`spikenorm.models.SpikingVGG` with layer list ``CFG`` (an int is conv3x3 -> tdBN
  -> LIF, ``"A"`` a 2x2 average pool), then global average pooling and one linear layer. tdBN here has
  ``alpha = v_th = 1``, i.e. plain BN with statistics pooled over ``(T, B, H, W)``. Built with the
  library's defaults (neurons ``backend="auto"``, which at these layer sizes runs the compiled kernel of
  :mod:`spikenorm.fused`; convolutions in channels-last layout on CPU), and as the variants of
  :data:`VARIANTS` that take those choices back (``[eager]``, ``[eager, NCHW]``), so each one's share shows.
- **SpikingJelly 2.0** (``spikingjelly.activation_based``): ``layer.Conv2d / BatchNorm2d / AvgPool2d /
  Linear`` with ``step_mode='m'`` (T folded into the batch, so BN pools over ``(T, B, H, W)`` like tdBN)
  and ``neuron.LIFNode(tau=2, decay_input=False, v_reset=0, step_mode='m')``. Its charge is
  ``H = V - (V - V_reset)/tau + X = (1 - 1/tau) V + X``, i.e. decay 0.5. SpikingJelly 2.0's LIFNode has
  no ``backend`` argument (the old ``backend='torch'|'cupy'`` is gone; multi-step goes through
  ``functional.lif_multi_step``). ``functional.reset_net`` clears the state before every batch.
- **snnTorch 1.0**: plain ``torch.nn`` conv/BN/pool/linear and ``snn.Leaky(beta=0.5, threshold=1,
  reset_mechanism='zero', init_hidden=True)``, the whole network run step by step in a python loop over
  T (the idiomatic snnTorch way); ``snntorch.utils.reset`` before every batch. Its BN therefore sees one
  step at a time: in training its statistics are per step (spikenorm's ``"bn"`` norm, not tdBN) and its
  running statistics are updated T times per batch. In eval mode all three are the same function.

Neuron constants everywhere: decay 0.5, threshold 1.0, hard reset to 0, the reset term detached from the
graph (snnTorch always detaches it, so ``detach_reset=True`` is set in spikenorm and SpikingJelly too;
then gradients agree as well). Sigmoid surrogate, same slope 4 in all three:

- spikenorm ``surrogate="sigmoid", alpha=4``: ``g(x) = a sig(a x)(1 - sig(a x))``, spike ``1[x > 0]``;
- SpikingJelly ``surrogate.Sigmoid(alpha=4)``: the same ``g``, spike ``1[x >= 0]`` (differs only at exact
  equality ``u == theta``);
- snnTorch ``surrogate.sigmoid(slope=4)``: ``g(x) = k e^{-kx} / (1 + e^{-kx})^2`` which is the same ``g``
  with ``k = a`` (its default slope is 25), spike ``1[x > 0]``.

snnTorch's Leaky applies a zero reset with one step delay (``mem_t = beta (1 - s_{t-1}) mem_{t-1} + x_t``),
which is the same recurrence as the others' ``v_t = h_t (1 - s_t)``, ``h_{t+1} = decay v_t + x_{t+1}``.

Equivalence check: weights and BN buffers are copied from the spikenorm net into the other two and the
outputs on one input are compared (train-mode forward: spikenorm vs SpikingJelly; eval-mode forward: all
three; train-mode snnTorch vs spikenorm with per-step ``"bn"``), plus the input gradient.

Measurements (one process; libraries interleaved round by round, the order rotated each round, so drift of
the machine is shared; warm-up first; medians):

- training throughput: forward + cross-entropy on the time-averaged logits + backward + SGD step, samples/s;
- inference throughput: eval mode under ``torch.inference_mode``, samples/s;
- peak memory of one training step above the memory held before it (parameters, optimizer state, input):
  on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the torch
  profiler with ``profile_memory=True``: every allocation and free by torch's CPU allocator is recorded
  with the allocator's running total of allocated bytes ("Total Allocated" of the ``[memory]`` events in
  the exported trace), and the peak is the maximum of that total during the step. It counts tensor
  memory, op workspaces allocated through torch included; memory that a kernel library (oneDNN) takes
  from the system allocator by itself is not seen;
- the neuron alone: forward (no grad) and forward+backward time of each library's LIF on a
  ``[4, 32, 128, 16, 16]`` tensor, against the elementwise floor ``torch.mul(x, 0.5)`` over the same tensor
  (as in benchmarks/neurons.py).

Everything is reported also as ratios to spikenorm. A torch.profiler table of one spikenorm training step
(top ops by self CPU time) is printed and saved.

    python benchmarks/compare.py                      # cuda if available, else cpu; writes results
    python benchmarks/compare.py --retain-freed-memory   # malloc reuses freed pages (spikenorm.allocator)
    python benchmarks/compare.py --repeats 3 --no-save

The result replaces benchmarks/results/compare.md.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.allocator import retain_freed_memory
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import LIF
from spikenorm.norm.base import TimeMajorNorm
from spikenorm.synapse import TimeDistributed

#: conv widths and pools of the compared VGG (4 convs at 32, 16, 16, 8 pixels after pooling, then GAP + FC)
CFG: list[int | str] = [64, 128, "A", 256, 256, "A", 512, "A"]
DECAY, THRESHOLD, ALPHA = 0.5, 1.0, 4.0
LIBRARIES = ("spikenorm", "spikingjelly", "snntorch")


# --------------------------------------------------------------------------------------------- builders
#: spikenorm configurations measured, as ``build_spikenorm`` options. ``spikenorm`` is the library's default
#: (neuron ``backend="auto"``: fused kernel for large layers; convolutions channels-last on CPU) and the
#: reference of every ratio; the others take those choices back one at a time.
VARIANTS: dict[str, dict[str, object]] = {
    "spikenorm": {},
    "spikenorm[eager]": {"backend": "eager"},
    "spikenorm[eager, NCHW]": {"backend": "eager", "channels_last": False},
}


def build_spikenorm(
    cfg: Sequence[int | str] = CFG,
    in_channels: int = 3,
    num_classes: int = 10,
    norm: str = "tdbn",
    backend: str = "auto",
    channels_last: bool | None = None,
) -> nn.Module:
    """spikenorm's SpikingVGG; ``backend`` is the neurons' multi-step backend (``auto`` | ``eager`` |
    ``fused``), ``channels_last`` the convolutions' layout (None: spikenorm's choice, see ``TimeDistributed``)."""
    neuron_kwargs = {"decay": DECAY, "threshold": THRESHOLD, "detach_reset": True, "backend": backend}
    net = SpikingVGG(
        list(cfg),
        in_channels=in_channels,
        num_classes=num_classes,
        layers=LayerSpec(
            norm=norm, neuron="lif", neuron_kwargs=neuron_kwargs, surrogate="sigmoid", surrogate_kwargs={"alpha": ALPHA}
        ),
    )
    for module in net.modules():
        if isinstance(module, TimeDistributed):
            module.channels_last = channels_last
    return net


def spikingjelly_lif() -> nn.Module:
    """spikenorm's LIF (decay, threshold, hard reset to 0, sigmoid surrogate, detached reset) as a SpikingJelly
    multi-step ``LIFNode``: ``tau = 1 / (1 - decay)`` without input decay gives the same charge equation."""
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(
        tau=1.0 / (1.0 - DECAY),
        decay_input=False,
        v_threshold=THRESHOLD,
        v_reset=0.0,
        surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
        detach_reset=True,
        step_mode="m",
    )


def snntorch_leaky() -> nn.Module:
    """spikenorm's LIF as an snnTorch ``Leaky`` neuron (``beta`` = decay, reset to zero) holding its own state."""
    import snntorch as snn
    from snntorch import surrogate

    return snn.Leaky(
        beta=DECAY,
        threshold=THRESHOLD,
        spike_grad=surrogate.sigmoid(slope=ALPHA),
        reset_mechanism="zero",
        init_hidden=True,
    )


def vgg_features(
    cfg: Sequence[int | str], in_channels: int, layers: Any, neuron: Callable[[], nn.Module], **layer_kwargs: Any
) -> tuple[nn.Sequential, int]:
    """The feature stack of a layer list and its output channels: how the peer networks mirror spikenorm's
    SpikingVGG. An int ``c`` is ``layers.Conv2d(c_in, c, 3, padding=1, bias=False)``, ``layers.BatchNorm2d(c)``
    and ``neuron()``; ``"A"`` is ``layers.AvgPool2d(2)``. ``layers`` is ``torch.nn`` or a library's namespace of
    the same layers (SpikingJelly's ``layer``), built with ``layer_kwargs`` (e.g. ``step_mode="m"``)."""
    stack: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "A":
            stack.append(layers.AvgPool2d(2, **layer_kwargs))
        else:
            stack += [
                layers.Conv2d(channels, int(item), 3, padding=1, bias=False, **layer_kwargs),
                layers.BatchNorm2d(int(item), **layer_kwargs),
                neuron(),
            ]
            channels = int(item)
    return nn.Sequential(*stack), channels


class SpikingJellyVGG(nn.Module):
    """The same VGG with SpikingJelly multi-step layers; input and output time-major like spikenorm's."""

    def __init__(self, cfg: Sequence[int | str] = CFG, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer

        self.features, channels = vgg_features(cfg, in_channels, layer, spikingjelly_lif, step_mode="m")
        self.classifier = layer.Linear(channels, num_classes, step_mode="m")

    def forward(self, x: Tensor) -> Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        return self.classifier(self.features(x).mean(dim=(3, 4)))


class SnnTorchVGG(nn.Module):
    """The same VGG in snnTorch style: torch layers and Leaky neurons, the whole net looped over time."""

    def __init__(self, cfg: Sequence[int | str] = CFG, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features, channels = vgg_features(cfg, in_channels, nn, snntorch_leaky)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        from snntorch import utils

        utils.reset(self.features)  # it only looks at the direct children of the module it is given
        out = []
        for x_t in x.unbind(0):
            for module in self.features:
                # snnTorch fires float32 spikes whatever the input dtype; a no-op in float32
                x_t = module(x_t).to(x.dtype)
            out.append(self.classifier(x_t.mean(dim=(2, 3))))
        return torch.stack(out)


def build_spikingjelly(cfg: Sequence[int | str] = CFG, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return SpikingJellyVGG(cfg, in_channels, num_classes)


def build_snntorch(cfg: Sequence[int | str] = CFG, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return SnnTorchVGG(cfg, in_channels, num_classes)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "spikenorm": build_spikenorm,
    "spikingjelly": build_spikingjelly,
    "snntorch": build_snntorch,
}


def _parts(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, TimeMajorNorm))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return convs, norms, linears


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copy conv, BN (affine and running statistics) and linear tensors from ``src`` into ``dst``, in order."""
    for a_list, b_list in zip(_parts(src), _parts(dst)):
        if len(a_list) != len(b_list):
            raise ValueError(f"layer counts differ: {len(a_list)} vs {len(b_list)}")
        for a, b in zip(a_list, b_list):
            for name in ("weight", "bias", "running_mean", "running_var"):
                ta, tb = getattr(a, name, None), getattr(b, name, None)
                if (ta is None) != (tb is None):
                    raise ValueError(f"{name} present in only one of {type(a).__name__}, {type(b).__name__}")
                if ta is not None:
                    tb.copy_(ta)
    return dst


def build_all(
    cfg: Sequence[int | str] = CFG,
    in_channels: int = 3,
    num_classes: int = 10,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    variants: Sequence[str] = (),
) -> dict[str, nn.Module]:
    """The three networks (plus the spikenorm ``variants``, names of :data:`VARIANTS`), weights copied from
    spikenorm's."""
    torch.manual_seed(seed)
    ref = build_spikenorm(cfg, in_channels, num_classes)
    nets = {"spikenorm": ref}
    for name in variants:
        if name != "spikenorm":
            nets[name] = copy_weights(ref, build_spikenorm(cfg, in_channels, num_classes, **VARIANTS[name]))
    for name in ("spikingjelly", "snntorch"):
        nets[name] = copy_weights(ref, BUILDERS[name](cfg, in_channels, num_classes))
    return {k: v.to(device=device, dtype=dtype) for k, v in nets.items()}


def equivalence(
    cfg: Sequence[int | str] = CFG,
    in_channels: int = 3,
    num_classes: int = 10,
    shape: tuple[int, int, int] = (4, 8, 32),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    variants: Sequence[str] = (),
) -> dict[str, float]:
    """Max absolute differences of outputs (and input gradients) against spikenorm after weight copy.

    ``shape`` is ``(T, B, H)``. Keys: ``"<lib> train"`` / ``"<lib> eval"`` for outputs, ``"<lib> grad"`` for
    the gradient of the summed outputs w.r.t. the input (train mode); ``"snntorch train"`` compares with a
    spikenorm net using per-step BN (``norm="bn"``), the BN snnTorch's time loop amounts to. Also
    ``"spike rate"``: the mean firing rate of the first layer of the spikenorm net (so that a test
    can tell the nets are not trivially silent).
    """
    t, b, h = shape
    gen = torch.Generator().manual_seed(1)
    x = (2.0 * torch.rand(t, b, in_channels, h, h, generator=gen)).to(device=device, dtype=dtype)
    nets = build_all(cfg, in_channels, num_classes, device, dtype, variants=variants)
    per_step = copy_weights(nets["spikenorm"], build_spikenorm(cfg, in_channels, num_classes, norm="bn")).to(
        device, dtype
    )
    out: dict[str, float] = {}

    def run(net: nn.Module, train: bool) -> tuple[Tensor, Tensor | None]:
        net.train(train)
        xi = x.clone().requires_grad_(train)
        y = net(xi)
        if not train:
            return y.detach(), None
        y.sum().backward()
        return y.detach(), xi.grad

    ref_train, ref_grad = run(nets["spikenorm"], True)
    ref_eval, _ = run(nets["spikenorm"], False)
    for name in ("spikingjelly", "snntorch"):
        y_eval, _ = run(nets[name], False)
        out[f"{name} eval"] = (y_eval - ref_eval).abs().max().item()
    y_sj, g_sj = run(nets["spikingjelly"], True)
    out["spikingjelly train"] = (y_sj - ref_train).abs().max().item()
    out["spikingjelly grad"] = (g_sj - ref_grad).abs().max().item()
    pn_train, pn_grad = run(per_step, True)
    y_st, g_st = run(nets["snntorch"], True)
    out["snntorch train"] = (y_st - pn_train).abs().max().item()
    out["snntorch grad"] = (g_st - pn_grad).abs().max().item()
    for name in variants:
        if name != "spikenorm":
            y_b, g_b = run(nets[name], True)
            out[f"{name} train"] = (y_b - ref_train).abs().max().item()
            out[f"{name} grad"] = (g_b - ref_grad).abs().max().item()
            y_b, _ = run(nets[name], False)
            out[f"{name} eval"] = (y_b - ref_eval).abs().max().item()
    with torch.no_grad():
        nets["spikenorm"].train()
        out["spike rate"] = nets["spikenorm"].features[0](x).mean().item()
    return out


# ------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each fn: ``warmup`` untimed calls each, then ``repeats`` rounds in which every
    fn is timed once, the order rotated by one each round."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def train_step_fn(net: nn.Module, x: Tensor, y: Tensor) -> Callable[[], float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x).mean(0), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def infer_fn(net: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def infer() -> Tensor:
        net.eval()
        with torch.inference_mode():
            return net(x)

    return infer


def peak_step_memory(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call of ``step`` above what was allocated before it (see module
    docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted(
        (e["ts"], e["args"]) for e in events if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})
    )
    cpu = [a for _, a in mem if str(a.get("Device Type", 0)) in ("0", "cpu")]
    if not cpu:
        raise RuntimeError("the profiler recorded no CPU memory events")
    # the total before the first event is its total minus the bytes that event allocated (negative: freed)
    base = cpu[0]["Total Allocated"] - cpu[0]["Bytes"]
    return max(a["Total Allocated"] for a in cpu) - base


def profile_step(step: Callable[[], object], device: torch.device) -> tuple[str, float]:
    """A profiler table of one call of ``step`` (top ops by self time) and the seconds its convolution
    kernels took (forward and backward ops: self CPU time on CPU, self device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):  # the first profiled call only warms the profiler up
        with profile(activities=activities) as prof:
            step()
            sync(device)
    averages = prof.key_averages()
    sort_key = "self_cpu_time_total" if device.type == "cpu" else "self_device_time_total"
    conv_us = sum(getattr(e, sort_key) for e in averages if e.key.startswith("aten::") and "convolution" in e.key)
    return averages.table(sort_by=sort_key, row_limit=15), conv_us / 1e6


def training_step_conv_flops(cfg: Sequence[int | str], in_channels: int, time_steps: int, batch: int, size: int) -> int:
    """Floating-point operations of the 3x3 convolutions of one training step of the compared VGG (2 per
    multiply-add): the forward, the weight gradient, and the input gradient of every convolution but the
    first (the image needs none). Everything else in the network is elementwise or tiny next to this."""
    flops, channels, side, first = 0, in_channels, size, True
    for item in cfg:
        if item in ("A", "M"):
            side //= 2
            continue
        macs = time_steps * batch * side * side * channels * int(item) * 9
        flops += 2 * macs * (2 if first else 3)
        channels, first = int(item), False
    return flops


def neuron_fns(
    shape: Sequence[int], device: torch.device, variants: Sequence[str] = ()
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """(forward, forward+backward) callables of each library's LIF on one ``[T, B, C, H, W]`` tensor."""
    from common import forward_and_backward
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    x = torch.randn(*shape, device=device) + 0.5

    def spikenorm_lif(variant: str) -> LIF:
        backend = str(VARIANTS[variant].get("backend", "auto"))
        return LIF(
            decay=DECAY,
            threshold=THRESHOLD,
            surrogate="sigmoid",
            surrogate_kwargs={"alpha": ALPHA},
            detach_reset=True,
            backend=backend,
        ).to(device)

    sn = spikenorm_lif("spikenorm")
    sj = spikingjelly_lif().to(device)
    st = snntorch_leaky().to(device)

    def run_sj(inp: Tensor) -> Tensor:
        functional.reset_net(sj)
        return sj(inp)

    def run_st(inp: Tensor) -> Tensor:
        st.reset_mem()
        return torch.stack([st(x_t) for x_t in inp.unbind(0)])

    runs = {"spikenorm": sn, "spikingjelly": run_sj, "snntorch": run_st}
    for variant in variants:  # the layout does not matter to a neuron alone: one row per backend
        backend = VARIANTS[variant].get("backend", "auto")
        if variant != "spikenorm" and VARIANTS[variant] == {"backend": backend}:
            runs[variant] = spikenorm_lif(variant)

    fns = {name: forward_and_backward(fn, x) for name, fn in runs.items()}
    with torch.no_grad():  # the three neurons are the same function
        ref = sn(x)
        for name in [n for n in runs if n != "spikenorm"]:
            diff = (runs[name](x).float() - ref).abs().max().item()
            if diff:
                print(f"warning: {name} LIF differs from spikenorm's by {diff}")
    fns["elementwise floor"] = (lambda: torch.mul(x, 0.5), lambda: torch.mul(x, 0.5))
    return fns


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    from common import benchmark_parser, publish, stamp

    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="input height = width")
    parser.add_argument("--cfg", nargs="+", default=[str(c) for c in CFG], help="VGG layer list, e.g. 64 128 A 256 A")
    parser.add_argument("--neuron-shape", type=int, nargs="+", default=[4, 32, 128, 16, 16], help="T B C H W")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--neuron-repeats", type=int, default=20)
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=[v for v in VARIANTS if v != "spikenorm"],
        default=[v for v in VARIANTS if v != "spikenorm"],
        help="spikenorm configurations besides the default, one row each (the default is the reference)",
    )
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="let malloc reuse freed memory instead of unmapping it (spikenorm.allocator; all libraries gain)",
    )
    args = parser.parse_args()
    allocator = "glibc malloc defaults"
    if args.retain_freed_memory:
        if not retain_freed_memory():
            parser.error("--retain-freed-memory needs glibc's mallopt")
        allocator = "malloc keeps freed memory (`--retain-freed-memory`: M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2 GiB)"
    variants = ["spikenorm", *dict.fromkeys(args.variants)]
    libraries = variants + ["spikingjelly", "snntorch"]
    device = args.device
    cfg = [c if c in ("A", "M") else int(c) for c in args.cfg]
    t, b = args.time_steps, args.batch

    eq = equivalence(cfg, shape=(t, 4, args.size), device=device, variants=variants)
    print("equivalence (max |diff| to spikenorm, float64):", {k: f"{v:.3g}" for k, v in eq.items()})

    nets = build_all(cfg, device=device, variants=variants)
    torch.manual_seed(0)
    x = torch.rand(t, b, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    with torch.no_grad():
        for net in nets.values():
            net.eval()
        ref = nets["spikenorm"](x)
        eq32 = {k: (nets[k](x) - ref).abs().max().item() for k in libraries[1:]}
    print("benchmark nets, float32 eval outputs, max |diff| to spikenorm:", eq32)

    steps = {name: train_step_fn(net, x, y) for name, net in nets.items()}
    infers = {name: infer_fn(net, x) for name, net in nets.items()}
    train_t = interleaved(steps, device, args.repeats, args.warmup)
    infer_t = interleaved(infers, device, args.repeats, args.warmup)

    memory = {name: peak_step_memory(steps[name], device) for name in libraries}
    profile_table, conv_seconds = profile_step(steps["spikenorm"], device)
    print("one spikenorm training step, top ops by self CPU time:\n" + profile_table)

    nfns = neuron_fns(args.neuron_shape, device, variants)
    fwd_t = interleaved({k: v[0] for k, v in nfns.items()}, device, args.neuron_repeats, args.warmup)
    bwd_t = interleaved({k: v[1] for k, v in nfns.items()}, device, args.neuron_repeats, args.warmup)

    med = statistics.median
    train_sps = {k: b / med(v) for k, v in train_t.items()}
    infer_sps = {k: b / med(v) for k, v in infer_t.items()}
    floor = med(fwd_t["elementwise floor"] + bwd_t["elementwise floor"])
    conv_flops = training_step_conv_flops(cfg, 3, t, b, args.size)
    conv_bound = b / conv_seconds  # samples/s if everything but the convolutions took no time
    rows = []
    for name in libraries:
        rel = "1.00" if name == "spikenorm" else None

        def ratio(d: dict[str, float], k: str = name) -> str:
            return rel or f"{d[k] / d['spikenorm']:.2f}"

        neuron = "| – | – |"
        if name in fwd_t:
            fwd, fb = med(fwd_t[name]), med(bwd_t[name])
            fwd_rel = rel or f"{fwd / med(fwd_t['spikenorm']):.2f}"
            fb_rel = rel or f"{fb / med(bwd_t['spikenorm']):.2f}"
            neuron = (
                f"| {fwd * 1e3:.2f} ({fwd_rel}; {fwd / floor:.1f}x floor) "
                f"| {fb * 1e3:.2f} ({fb_rel}; {fb / floor:.1f}x floor) |"
            )
        rows.append(
            f"| {name} | {train_sps[name]:.1f} ({ratio(train_sps)}) | {infer_sps[name]:.1f} ({ratio(infer_sps)}) "
            f"| {memory[name] / 2**20:.0f} ({ratio(memory)}) " + neuron
        )
    eq_text = ", ".join(f"{k} {v:.2g}" for k, v in eq.items() if k != "spike rate")
    lines = [
        stamp(device),
        "",
        f"Spiking VGG {cfg} + GAP + FC, input [{t}, {b}, 3, {args.size}, {args.size}] float32, 10 classes; "
        f"LIF decay 0.5, threshold 1, hard reset to 0 (detached), sigmoid surrogate slope 4 in all three. spikenorm "
        f"tdBN (alpha = v_th = 1), SpikingJelly multi-step BN, snnTorch per-step BN in a python time loop. "
        f"Allocator: {allocator}. Medians of {args.repeats} interleaved rounds after {args.warmup} warm-up calls "
        f"(neuron: {args.neuron_repeats} rounds). In brackets: ratio to spikenorm "
        f"(throughput: higher is faster; memory and time: lower is better). `spikenorm` = the library's defaults "
        f'(neuron `backend="auto"`, which picks the compiled kernel for these layer sizes; convolutions channels-last '
        f"on CPU); `[eager]` = the python loop over time; `[eager, NCHW]` = also convolutions in NCHW (the neuron "
        f"alone has no layout: no row). Compilation happens in the warm-up.",
        "",
        f"Equivalence after weight copy (max |diff| to spikenorm, float64, [T={t}, B=4] input): {eq_text}; first-layer "
        f"spike rate {eq['spike rate']:.2f}. float32 benchmark nets, eval: "
        + ", ".join(f"{k} {v:.2g}" for k, v in eq32.items())
        + ".",
        "",
        f"| library | train samples/s | inference samples/s | peak train-step memory MiB "
        f"| LIF {args.neuron_shape} fwd ms | LIF fwd+bwd ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Where the time goes: the convolutions of a training step are {conv_flops / 1e9:.0f} GFLOP (forward, weight "
        f"and input gradients; {conv_flops / 1e9 / conv_seconds:.0f} GFLOP/s) and took {conv_seconds * 1e3:.0f} ms of "
        f"the profiled spikenorm step below. With everything else (norms, neurons, pooling, loss, optimizer) at zero "
        f"cost, a step with these convolution kernels would still train at most {conv_bound:.1f} samples/s: "
        f"{conv_bound / train_sps['spikingjelly']:.2f}x SpikingJelly, "
        f"{conv_bound / train_sps['snntorch']:.2f}x snnTorch.",
        "",
        f"Elementwise floor (`torch.mul(x, 0.5)` on the neuron tensor): {floor * 1e3:.3f} ms. Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` above the pre-step allocation."
            if device.type == "cuda"
            else "torch profiler `profile_memory=True`, max of the CPU allocator's running total during the step "
            "above its value before the step (tensor memory allocated through torch)."
        ),
        "",
        "<details><summary>One spikenorm training step, top ops by self time (torch.profiler)</summary>",
        "",
        "```",
        profile_table.rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    publish(
        "compare", "spikenorm vs SpikingJelly vs snnTorch: same spiking VGG", "\n".join(lines), save=not args.no_save
    )


if __name__ == "__main__":
    main()
