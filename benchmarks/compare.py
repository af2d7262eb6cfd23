"""spikenorm vs SpikingJelly vs snnTorch: one spiking VGG, same dynamics, speed and memory in one process,
in float32, under bf16 autocast and under ``torch.compile``.

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
  T (the idiomatic snnTorch way); each Leaky's ``reset_mem()`` before every batch (``snntorch.utils.reset``
  would reset every Leaky of the process, those of this benchmark's other networks too). Its BN sees one
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
outputs on one input are compared in float64 (train-mode forward: spikenorm vs SpikingJelly; eval-mode
forward: all three; train-mode snnTorch vs spikenorm with per-step ``"bn"``), plus the input gradient.

Modes (:data:`MODES`, ``--modes``), every library in every mode, all measured side by side in one run:

- ``fp32``: float32 eager, what each library does by default;
- ``bf16``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the forward and the loss, the
  backward and the optimizer step outside it (what Lightning's ``precision="bf16-mixed"`` does); inference
  under the same autocast. Autocast runs the convolutions and the linear layer in bfloat16 in all three
  libraries; everything else runs in the dtype it is handed. spikenorm's neurons compute their membrane
  state in float32 and emit bfloat16 spikes (0/1, exact), its norms keep their statistics in float32;
  SpikingJelly's and snnTorch's neurons run in whatever dtype autocast leaves them (SpikingJelly's state
  takes the bfloat16 of its input, snnTorch's float32 state is promoted against bfloat16 inputs). Each
  library runs as a user of it gets it under the same autocast, so the comparison is like for like;
- ``compiled``: each library's whole network wrapped in ``torch.compile`` (default options) in float32:
  what a user who reaches for a compiler would run instead, so the peers are compiled too;
- ``compiled-bf16``: both.

Per mode and library, before any timing, a warm-up (:data:`WARM_UP`): inference, training step, training step,
inference, inference, i.e. every transition the measurements make, since a compiled network may recompile at
each (SpikingJelly's state left by an inference call fails dynamo's guards in the next training call). Its
wall time minus the same calls at steady state is the warm-up overhead (compilation, spikenorm's kernel
generation, oneDNN's first-call set-up), reported as its own column with the dynamo graphs compiled and the
graph breaks met. Inductor's and AOTAutograd's on-disk caches are switched off, so that overhead is the cold
one every run; work already done by an earlier mode in the same process (e.g. spikenorm's fused kernels for
a dtype) is not paid again. dynamo's recompile limit is raised to 64 because this process compiles several
networks of the same classes (a user's single network would not share guards with them). A network that
fails in a mode (for instance a compile error) is reported with its error and left out of the timing, never
dropped silently. The outputs of the warm-up's first inference call and first training step (same weights,
same batch in every mode) are compared with the same library's float32 eager ones: the largest absolute
difference relative to the largest float32 logit, within :data:`AGREEMENT_TOLERANCE` of the mode (bf16
carries 8 significant bits, and a spike whose membrane lies within bf16 rounding of the threshold flips and
propagates; a compiler reorders float sums).

Measurements (one process; every (mode, library) pair interleaved round by round, the order rotated each
round, so drift of the machine is shared; medians):

- training throughput: forward + cross-entropy on the time-averaged logits + backward + SGD step, samples/s;
- inference throughput: eval mode under ``torch.inference_mode``, samples/s;
- peak memory of one training step above the memory held before it (parameters, optimizer state, input):
  on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the torch
  profiler with ``profile_memory=True``: every allocation and free by torch's CPU allocator is recorded
  with the allocator's running total of allocated bytes ("Total Allocated" of the ``[memory]`` events in
  the exported trace), and the peak is the maximum of that total during the step. It counts tensor
  memory, op workspaces allocated through torch included; memory that a kernel library (oneDNN) takes
  from the system allocator by itself is not seen;
- the neuron alone, in float32 and (when a bf16 mode runs) on a bfloat16 input: forward (no grad) and
  forward+backward time of each library's LIF on a ``[4, 32, 128, 16, 16]`` tensor, against the
  elementwise floor ``torch.mul(x, 0.5)`` over the same tensor (as in benchmarks/neurons.py). Measured last,
  on CPU with freed memory kept for reuse (:func:`spikenorm.allocator.retain_freed_memory`): every call
  allocates its 16 MiB output, and with glibc's defaults whether that block is faulted in and zeroed anew
  depends on what the call before it (another library's) freed; the floor, one ``torch.mul``, measured from
  1.2 to 3.0 ms on one machine in one day, once slower than the LIF itself.

Everything is reported also as ratios to spikenorm in the same mode and as ratios across modes (bf16 /
fp32, compiled / eager), and fastest against fastest: each library's fastest configuration among those measured
(any mode of ``--modes``; for spikenorm also any variant), chosen by the script for training and for inference
separately, with spikenorm's fastest divided by each peer's. The targets are marked PASS or FAIL, issue 30's
first: spikenorm's fastest at least 1.25x each peer's fastest in training and 1.0x in inference, and spikenorm's
LIF within 1.5x the elementwise floor forward and 3x forward+backward (both divided by the same floor, one
forward ``torch.mul``) in each dtype measured; then issue 18's: spikenorm's bf16 training at least 2x its
float32 training on a CPU with AMX (on AVX-512 BF16 without AMX the ratio is reported with what bounds it),
and spikenorm at least 1.25x SpikingJelly and 1.5x snnTorch in training throughput in every mode. A
torch.profiler table of one spikenorm training step per mode (top ops by self time) says where the
time goes, with the convolutions' share and the throughput bound it implies.

    python benchmarks/compare.py                      # cuda if available, else cpu; writes results
    python benchmarks/compare.py --modes fp32,bf16 --repeats 3 --no-save
    python benchmarks/compare.py --device cuda --modes fp32,bf16,compiled --output /tmp/gpu-compare.md
    python benchmarks/compare.py --retain-freed-memory   # malloc reuses freed pages (spikenorm.allocator)

The default run (all four modes) takes about 20 minutes on 2 CPU cores. The result replaces
benchmarks/results/compare.md (``--output`` writes elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from common import (
    RESULTS_DIR,
    benchmark_parser,
    cpu_flag_set,
    forward_and_backward,
    interleaved,
    markdown_table,
    stamp,
    sync,
    write_report,
)
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
PEERS = LIBRARIES[1:]
Key = tuple[str, str]  # (mode, library)
Name = TypeVar("Name", bound=Hashable)


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
        from snntorch import Leaky

        for module in self.features:  # its own neurons: snntorch.utils.reset resets every Leaky of the process
            if isinstance(module, Leaky):
                module.reset_mem()
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


# ------------------------------------------------------------------------------------------------ modes
@dataclass(frozen=True)
class Mode:
    """How a network runs: forward and loss under bfloat16 autocast or not, the network wrapped in
    ``torch.compile`` or not."""

    bf16: bool
    compiled: bool

    def autocast(self, device: torch.device) -> torch.autocast:
        """The autocast region of a forward pass and its loss (disabled in the float32 modes)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare(self, net: nn.Module, compile_backend: str = "inductor") -> nn.Module:
        """``net`` as this mode runs it: wrapped in ``torch.compile`` with ``compile_backend`` or not."""
        return torch.compile(net, backend=compile_backend) if self.compiled else net


MODES: dict[str, Mode] = {
    "fp32": Mode(bf16=False, compiled=False),
    "bf16": Mode(bf16=True, compiled=False),
    "compiled": Mode(bf16=False, compiled=True),
    "compiled-bf16": Mode(bf16=True, compiled=True),
}

#: largest |output - float32 eager output| / largest |float32 eager output| accepted per mode. bf16 keeps 8
#: significant bits: spikes whose membrane lies within its rounding of the threshold flip and the flips spread
#: through five layers (the first training step of the default VGG: 0.36-0.44 in all three libraries alike);
#: a compiler only reorders float32 sums
AGREEMENT_TOLERANCE = {"bf16": 0.5, "compiled": 1e-3, "compiled-bf16": 0.5}

#: issue 30's targets: spikenorm's fastest configuration / each peer's fastest, per workload (at least); the LIF
#: alone against the elementwise floor, forward and forward+backward (at most)
FASTEST_TARGETS = {"training": 1.25, "inference": 1.0}
NEURON_FLOOR_TARGETS = {"fwd": 1.5, "fwd+bwd": 3.0}
#: issue 18's targets: spikenorm bf16 / fp32 training on a CPU with AMX; spikenorm / peer training per mode
BF16_SPEEDUP_TARGET = 2.0
PEER_TARGETS = {"spikingjelly": 1.25, "snntorch": 1.5}


def parse_modes(text: str) -> list[str]:
    """``--modes``: comma-separated names of :data:`MODES`; ``fp32`` (the reference of the agreement checks and
    cross-mode ratios) is always run first."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown modes {unknown or text!r}: choose from {', '.join(MODES)}")
    return list(dict.fromkeys(["fp32", *names]))


# ------------------------------------------------------------------------------------------- measuring
def train_step_fn(net: nn.Module, x: Tensor, y: Tensor, mode: Mode = MODES["fp32"]) -> Callable[[], Tensor]:
    """One SGD training step of ``net`` on ``(x, y)``: forward and loss in the mode's autocast region, backward
    and optimizer step outside it; returns the detached train-mode output."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> Tensor:
        net.train()
        opt.zero_grad(set_to_none=True)
        with mode.autocast(x.device):
            out = net(x)
            loss = F.cross_entropy(out.mean(0), y)
        loss.backward()
        opt.step()
        return out.detach()

    return step


def infer_fn(net: nn.Module, x: Tensor, mode: Mode = MODES["fp32"]) -> Callable[[], Tensor]:
    def infer() -> Tensor:
        net.eval()
        with torch.inference_mode(), mode.autocast(x.device):
            return net(x)

    return infer


def dynamo_counts() -> tuple[int, int]:
    """How many graphs dynamo has compiled in this process so far, and how many graph breaks it has met."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


#: the warm-up of every network: its first calls cover each transition the measurements make (eval -> train,
#: train -> train, train -> eval, eval -> eval), since a compiled network may recompile at each of them (e.g.
#: SpikingJelly's state tensors left by an inference call fail dynamo's guards in a training call)
WARM_UP = ("infer", "step", "step", "infer", "infer")


@dataclass
class Run:
    """One network in one mode: its training step and inference callables and what its warm-up gave (seconds,
    dynamo graphs compiled and graph breaks met, the first eval and train-mode outputs), or the error that
    stopped it."""

    step: Callable[[], Tensor]
    infer: Callable[[], Tensor]
    warm_up_seconds: float = math.nan
    graphs: int = 0
    graph_breaks: int = 0
    eval_out: Tensor | None = None
    train_out: Tensor | None = None
    error: str | None = None

    def warm_up(self, device: torch.device) -> None:
        """The calls of :data:`WARM_UP` (compilation happens here), timed together; the first inference and
        training outputs are kept. An exception is kept as :attr:`error`."""
        counts = dynamo_counts()
        outputs: dict[str, Tensor] = {}
        try:
            sync(device)
            start = time.perf_counter()
            for call in WARM_UP:
                out = getattr(self, call)()
                outputs.setdefault(call, out.float())
            sync(device)
            self.warm_up_seconds = time.perf_counter() - start
            self.eval_out, self.train_out = outputs["infer"], outputs["step"]
        except Exception as error:  # reported in the table: a mode a library cannot run is a result
            message = str(error).strip().splitlines()
            self.error = f"{type(error).__name__}: {message[0][:160] if message else ''}"
        self.graphs, self.graph_breaks = (after - before for after, before in zip(dynamo_counts(), counts))

    def overhead(self, step_seconds: float, infer_seconds: float) -> float:
        """Seconds the warm-up took beyond the same calls at steady state (compilation, first-call set-up)."""
        return self.warm_up_seconds - WARM_UP.count("step") * step_seconds - WARM_UP.count("infer") * infer_seconds


def build_runs(
    modes: Sequence[str],
    cfg: Sequence[int | str],
    x: Tensor,
    y: Tensor,
    variants: Sequence[str] = ("spikenorm",),
    compile_backend: str = "inductor",
) -> dict[Key, Run]:
    """The ``(mode, library)`` runs, each on its own copy of the networks (weights copied from spikenorm's, the
    same in every mode), warmed up. The spikenorm ``variants`` run in the eager modes only; compiled modes use
    ``torch.compile(backend=compile_backend)``."""
    runs: dict[Key, Run] = {}
    for mode_name in modes:
        mode = MODES[mode_name]
        nets = build_all(cfg, device=x.device, variants=() if mode.compiled else variants)
        for library, net in nets.items():
            net = mode.prepare(net, compile_backend)
            run = Run(train_step_fn(net, x, y, mode), infer_fn(net, x, mode))
            run.warm_up(x.device)
            print(
                f"{mode_name:>13} {library:<22} warm-up {run.warm_up_seconds:6.1f} s, dynamo graphs {run.graphs}, "
                f"graph breaks {run.graph_breaks}" + (f", FAILED {run.error}" if run.error else ""),
                flush=True,
            )
            runs[(mode_name, library)] = run
    return runs


def agreement(runs: dict[Key, Run]) -> dict[Key, tuple[float, float]]:
    """Per ``(mode, library)`` outside fp32: the largest |difference| of the first calls' eval and train-mode
    outputs to the same library's float32 eager ones, relative to the largest |float32 output|."""
    out = {}
    for (mode, library), run in runs.items():
        ref = runs.get(("fp32", library))
        if mode == "fp32" or run.error or ref is None or ref.error:
            continue
        out[(mode, library)] = tuple(
            ((a - b).abs().max() / b.abs().max()).item()
            for a, b in ((run.eval_out, ref.eval_out), (run.train_out, ref.train_out))
        )
    return out


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


@dataclass
class StepProfile:
    """A profiler table of one training step (top ops by self time) and the step's split in seconds:
    convolution kernels (forward and backward), dtype casts, and everything (self time of all ops)."""

    table: str
    conv_seconds: float
    cast_seconds: float
    total_seconds: float


def profile_step(step: Callable[[], object], device: torch.device) -> StepProfile:
    """:class:`StepProfile` of one call of ``step`` (self CPU time on CPU, self device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):  # the first profiled call only warms the profiler up
        with profile(activities=activities) as prof:
            step()
            sync(device)
    averages = prof.key_averages()
    sort_key = "self_cpu_time_total" if device.type == "cpu" else "self_device_time_total"

    def seconds(keep: Callable[[str], bool]) -> float:
        return sum(getattr(e, sort_key) for e in averages if keep(e.key)) / 1e6

    return StepProfile(
        table=averages.table(sort_by=sort_key, row_limit=15),
        conv_seconds=seconds(lambda k: k.startswith("aten::") and "convolution" in k),
        cast_seconds=seconds(lambda k: k in ("aten::copy_", "aten::_to_copy")),
        total_seconds=seconds(lambda k: True),
    )


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


#: the name of the elementwise floor among :func:`neuron_fns`' callables
FLOOR = "elementwise floor"


def neuron_fns(
    shape: Sequence[int], device: torch.device, variants: Sequence[str] = (), dtype: torch.dtype = torch.float32
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """(forward, forward+backward) callables of each library's LIF on one ``[T, B, C, H, W]`` tensor of
    ``dtype``, and of the elementwise floor on it."""
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    x = (torch.randn(*shape, device=device) + 0.5).to(dtype)

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
    with torch.no_grad():  # the same function; in bfloat16 the peers' state is rounded to bfloat16, spikenorm's not
        ref = sn(x).float()
        for name in [n for n in runs if n != "spikenorm"]:
            differ = (runs[name](x).float() != ref).float().mean().item()
            if differ:
                print(f"{'warning: ' * (dtype == torch.float32)}{name} LIF on {dtype}: {differ:.2%} of spikes differ")
    fns[FLOOR] = (lambda: torch.mul(x, 0.5), lambda: torch.mul(x, 0.5))
    return fns


def neuron_times(
    shape: Sequence[int], device: torch.device, variants: Sequence[str], dtype: torch.dtype, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median forward and forward+backward seconds of :func:`neuron_fns` (one warm-up call each)."""
    fns = neuron_fns(shape, device, variants, dtype)
    med = statistics.median
    out = []
    for part in (0, 1):
        calls = {name: pair[part] for name, pair in fns.items()}
        for call in calls.values():
            call()
        out.append({name: med(t) for name, t in interleaved(calls, device, repeats).items()})
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------- report
@dataclass
class Measured:
    """Everything one run of the benchmark measured, by ``(mode, library)`` where it is per network."""

    modes: list[str]
    batch: int
    libraries: dict[str, list[str]]  # per mode, in table order
    runs: dict[Key, Run]
    train_sps: dict[Key, float]
    infer_sps: dict[Key, float]
    memory: dict[Key, int]
    agree: dict[Key, tuple[float, float]]
    profiles: dict[str, StepProfile]  # spikenorm's training step per mode
    neuron: dict[str, tuple[dict[str, float], dict[str, float]]]  # per dtype name: (forward, forward+backward)


def ratio_text(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def mode_rows(m: Measured) -> list[str]:
    """One row per ``(mode, library)``: throughputs and memory with their ratio to spikenorm of the same mode,
    first-call overhead, graph breaks, agreement with float32 eager; or the error that stopped the network."""
    rows = []
    for mode in m.modes:
        for library in m.libraries[mode]:
            run = m.runs[(mode, library)]
            if run.error:
                rows.append(f"| {mode} | {library} | failed: `{run.error}` | – | – | – | – | – |")
                continue
            key, ref = (mode, library), (mode, "spikenorm")

            def rel(d: dict[Key, float], k: Key = key) -> str:
                return ratio_text(d[k] / d[ref] if ref in d else None)

            overhead = run.overhead(m.batch / m.train_sps[key], m.batch / m.infer_sps[key])
            agree = m.agree.get(key)
            agree_text = "reference" if mode == "fp32" else "–"
            if agree:
                ok = all(a <= AGREEMENT_TOLERANCE[mode] for a in agree)
                agree_text = f"{agree[0]:.2g} / {agree[1]:.2g} ({'ok' if ok else 'ABOVE TOLERANCE'})"
            rows.append(
                f"| {mode} | {library} | {m.train_sps[key]:.1f} ({rel(m.train_sps)}) "
                f"| {m.infer_sps[key]:.1f} ({rel(m.infer_sps)}) | {m.memory[key] / 2**20:.0f} ({rel(m.memory)}) "
                f"| {overhead:.1f} | {run.graphs} ({run.graph_breaks}) | {agree_text} |"
            )
    return rows


def cross_mode_rows(m: Measured) -> list[str]:
    """Per library: training and inference throughput of each mode divided by fp32 eager (and compiled by
    eager in the same precision)."""
    pairs = [(mode, "fp32") for mode in m.modes if mode != "fp32"]
    if "compiled-bf16" in m.modes and "bf16" in m.modes:
        pairs.append(("compiled-bf16", "bf16"))
    rows = []
    for library in m.libraries["fp32"]:
        if library not in LIBRARIES:
            continue
        cells = []
        for a, b in pairs:
            for sps in (m.train_sps, m.infer_sps):
                ka, kb = (a, library), (b, library)
                cells.append(ratio_text(sps[ka] / sps[kb] if ka in sps and kb in sps else None))
        rows.append(f"| {library} | " + " | ".join(cells) + " |")
    header = "library | " + " | ".join(f"{a} / {b} train | {a} / {b} inference" for a, b in pairs)
    return markdown_table(header, rows) if pairs else []


def amx_kind(device: torch.device) -> str:
    """``"amx"`` on a CPU with AMX BF16 tiles, ``"avx512_bf16"`` on one with AVX-512 BF16 only, else ``"none"``;
    ``"cuda"`` on a GPU (the CPU target does not apply)."""
    if device.type != "cpu":
        return device.type
    flags = cpu_flag_set()
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


def library_of(network: str) -> str:
    """The library a measured network belongs to: spikenorm's variants (``spikenorm[eager]``) are spikenorm."""
    return network.split("[", 1)[0]


def fastest(sps: dict[Key, float]) -> dict[str, Key]:
    """Per library of :data:`LIBRARIES` with a measurement, in that order: the ``(mode, network)`` of its highest
    throughput in ``sps``, over every measured mode and, for spikenorm, every variant (a network that failed has
    no throughput)."""
    best: dict[str, Key] = {}
    for key, value in sps.items():
        library = library_of(key[1])
        if library not in best or value > sps[best[library]]:
            best[library] = key
    return {library: best[library] for library in LIBRARIES if library in best}


def configuration(key: Key) -> str:
    """A ``(mode, network)`` as the fastest-vs-fastest rows name it: the mode, and the variant if it is not the
    library's default network."""
    mode, network = key
    return mode if network in LIBRARIES else f"{mode}, {network}"


def fastest_rows(m: Measured) -> list[str]:
    """Per library: its fastest measured configuration in training and in inference (:func:`fastest`), that
    throughput, and spikenorm's fastest divided by it."""
    winners = [(sps, fastest(sps)) for sps in (m.train_sps, m.infer_sps)]
    rows = []
    for library in LIBRARIES:
        cells = []
        for sps, best in winners:
            key, ours = best.get(library), best.get("spikenorm")
            if key is None:
                cells += ["not measured (every configuration failed)", "–", "–"]
                continue
            cells += [configuration(key), f"{sps[key]:.1f}", ratio_text(sps[ours] / sps[key] if ours else None)]
        rows.append(f"| {library} | " + " | ".join(cells) + " |")
    return rows


def verdict(ok: bool) -> str:
    """A target's verdict from whether the measurement meets it."""
    return "PASS" if ok else "FAIL"


def fastest_target_rows(m: Measured) -> list[str]:
    """Issue 30: spikenorm's fastest configuration against each peer's fastest, in training and in inference."""
    rows = []
    for workload, sps in (("training", m.train_sps), ("inference", m.infer_sps)):
        target, best = FASTEST_TARGETS[workload], fastest(sps)
        ours = best.get("spikenorm")
        for peer in PEERS:
            theirs, measured = best.get(peer), "–"
            if ours is None:
                result = "FAIL (no spikenorm configuration measured)"
            elif theirs is None:
                result = f"not measured (no {peer} configuration measured)"
            else:
                value = sps[ours] / sps[theirs]
                measured = f"{value:.2f}x (spikenorm: {configuration(ours)}; {peer}: {configuration(theirs)})"
                result = verdict(value >= target)
            rows.append(
                f"| 30 | spikenorm's fastest >= {target:g}x {peer}'s fastest, {workload} | {measured} | {result} |"
            )
    return rows


def neuron_target_rows(m: Measured) -> list[str]:
    """Issue 30: spikenorm's LIF (its default backend) against the elementwise floor, forward and forward+backward,
    per dtype measured."""
    rows = []
    for dtype_name, (fwd, fb) in m.neuron.items():
        floor = floor_seconds(fwd, fb)
        for (part, limit), times in zip(NEURON_FLOOR_TARGETS.items(), (fwd, fb)):
            value = times["spikenorm"] / floor
            rows.append(
                f"| 30 | spikenorm LIF {part} <= {limit:g}x the elementwise floor, {dtype_name} | {value:.2f}x "
                f"| {verdict(value <= limit)} |"
            )
    return rows


def target_rows(m: Measured, device: torch.device) -> list[str]:
    """The issues' targets with the measured ratios and PASS / FAIL (or why a target does not apply): issue 30's
    first (:func:`fastest_target_rows`, :func:`neuron_target_rows`), then issue 18's (bf16 / fp32 on a CPU with
    AMX, spikenorm / each peer per mode)."""
    rows = fastest_target_rows(m) + neuron_target_rows(m)
    sps = m.train_sps
    if "bf16" in m.modes:
        kind = amx_kind(device)
        value = sps.get(("bf16", "spikenorm"), math.nan) / sps.get(("fp32", "spikenorm"), math.nan)
        result = {
            "amx": verdict(value >= BF16_SPEEDUP_TARGET),
            "avx512_bf16": "not applicable: AVX-512 BF16 without AMX (see where the time goes)",
            "none": "not applicable: no bf16 instructions on this CPU",
        }.get(kind, f"not applicable on {kind}")
        rows.append(
            f"| 18 | spikenorm bf16 training >= {BF16_SPEEDUP_TARGET:g}x spikenorm fp32 (CPU with AMX; this machine: "
            f"{kind}) | {ratio_text(value)}x | {result} |"
        )
    for mode in m.modes:
        for peer, target in PEER_TARGETS.items():
            ours, theirs = sps.get((mode, "spikenorm")), sps.get((mode, peer))
            if ours is None:
                result, value = f"FAIL (spikenorm failed: {m.runs[(mode, 'spikenorm')].error})", None
            elif theirs is None:
                result, value = f"not measured ({peer} failed: {m.runs[(mode, peer)].error})", None
            else:
                value = ours / theirs
                result = verdict(value >= target)
            rows.append(f"| 18 | spikenorm >= {target:g}x {peer}, training, {mode} | {ratio_text(value)}x | {result} |")
    return markdown_table("issue | target | measured | verdict", rows)


def time_split_lines(m: Measured, conv_flops: int, batch: int) -> list[str]:
    """Per profiled mode: the convolutions' and casts' share of spikenorm's training step, and the bound the
    rest puts on throughput; for bf16, the bf16 / fp32 speed-up the non-convolution time allows."""
    lines = []
    for mode, prof in m.profiles.items():
        other = prof.total_seconds - prof.conv_seconds
        peers = [(mode, p) for p in PEER_TARGETS if (mode, p) in m.train_sps]
        line = (
            f"- **{mode}**: profiled step {prof.total_seconds * 1e3:.0f} ms of op self time: convolutions "
            f"{prof.conv_seconds * 1e3:.0f} ms ({conv_flops / 1e9 / prof.conv_seconds:.0f} GFLOP/s), dtype casts "
            f"(`copy_`, `_to_copy`) {prof.cast_seconds * 1e3:.0f} ms, everything else {other * 1e3:.0f} ms. With "
            f"the rest at zero cost these convolutions would train at most {batch / prof.conv_seconds:.1f} samples/s"
        )
        line += "".join(f", {batch / prof.conv_seconds / m.train_sps[k]:.2f}x {k[1]}" for k in peers)
        fp32 = m.profiles.get("fp32")
        if mode == "bf16" and fp32:
            bound = fp32.total_seconds / other
            line += (
                f". bf16 / fp32 of the profiled steps {fp32.total_seconds / prof.total_seconds:.2f}x; with bf16 "
                f"convolutions free the non-convolution time bounds it at {bound:.2f}x"
            )
        lines.append(line + ".")
    return lines


def floor_seconds(fwd: dict[str, float], fb: dict[str, float]) -> float:
    """The elementwise floor of one dtype: one ``torch.mul(x, 0.5)`` on the neuron tensor (a forward op only,
    no backward), the mean of its medians in the forward and in the forward+backward rounds. The LIF's forward
    and its forward+backward are both divided by this one floor."""
    return (fwd[FLOOR] + fb[FLOOR]) / 2


def neuron_rows(m: Measured) -> list[str]:
    """The LIF alone per dtype: forward and forward+backward ms, ratio to spikenorm and to the floor."""
    rows = []
    for dtype_name, (fwd, fb) in m.neuron.items():
        floor = floor_seconds(fwd, fb)
        for name in (n for n in fwd if n != FLOOR):
            cells = [
                f"{d[name] * 1e3:.2f} ({d[name] / d['spikenorm']:.2f}; {d[name] / floor:.1f}x floor)" for d in (fwd, fb)
            ]
            rows.append(f"| {dtype_name} | {name} | {cells[0]} | {cells[1]} |")
    return rows


def report(m: Measured, args: argparse.Namespace, eq: dict[str, float], allocator: str) -> str:
    cfg, t, b, size = args.cfg, args.time_steps, args.batch, args.size
    conv_flops = training_step_conv_flops(cfg, 3, t, b, size)
    eq_text = ", ".join(f"{k} {v:.2g}" for k, v in eq.items() if k != "spike rate")
    neuron_header = f"dtype | library | LIF {list(args.neuron_shape)} fwd ms | LIF fwd+bwd ms"
    tolerances = ", ".join(f"{k} {v:g}" for k, v in AGREEMENT_TOLERANCE.items() if k in m.modes)
    lines = [
        stamp(args.device),
        "",
        f"Spiking VGG {cfg} + GAP + FC, input [{t}, {b}, 3, {size}, {size}], 10 classes; LIF decay 0.5, threshold "
        f"1, hard reset to 0 (detached), sigmoid surrogate slope 4 in all three. spikenorm tdBN (alpha = v_th = 1), "
        f"SpikingJelly multi-step BN, snnTorch per-step BN in a python time loop. Modes: {', '.join(m.modes)} "
        f"(`bf16`: forward and loss under `torch.autocast(bfloat16)`, backward outside, as Lightning's "
        f"`bf16-mixed`; `compiled`: each library's whole network under `torch.compile` (backend "
        f"{args.compile_backend}), peers too). "
        f"Allocator: {allocator}. Medians of {args.repeats} rounds in which every (mode, library) pair runs once, "
        f"interleaved, after a warm-up of each ({', '.join(WARM_UP)}; neuron alone: {args.neuron_repeats} rounds). In "
        f"brackets: ratio to spikenorm in the same mode (throughput: higher is faster; memory and time: lower is "
        f'better). `spikenorm` = the library\'s defaults (neuron `backend="auto"`, which picks the compiled kernel '
        f"for these layer sizes; convolutions channels-last on CPU); `[eager]` = the python loop over time; "
        f"`[eager, NCHW]` = also convolutions in NCHW (eager modes only; the neuron alone has no layout: no row).",
        "",
        f"Equivalence after weight copy (max |diff| to spikenorm, float64, [T={t}, B=4] input): {eq_text}; first-layer "
        f"spike rate {eq['spike rate']:.2f}.",
        "",
        "### Fastest vs fastest",
        "",
        f"Each library's fastest configuration among those measured in this run (modes {', '.join(m.modes)}; for "
        "spikenorm also its variants, the `spikenorm[...]` rows of the per-mode table), chosen by the script from the "
        "medians below, separately for training and for inference. `spikenorm / it`: spikenorm's fastest throughput "
        "divided by this library's fastest (higher: spikenorm faster).",
        "",
        *markdown_table(
            "library | fastest training | train samples/s | spikenorm / it "
            "| fastest inference | inference samples/s | spikenorm / it",
            fastest_rows(m),
        ),
        "",
        "### Targets",
        "",
        "Issue 30's targets first: spikenorm's fastest configuration against each peer's fastest (the table above); "
        "spikenorm's LIF (its default backend) against the elementwise floor, its forward and its forward+backward "
        "time both divided by the same floor, the time of one forward `torch.mul(x, 0.5)` on the neuron tensor of "
        "that dtype (see the neuron alone). Then issue 18's: bf16 / fp32 on a CPU with AMX, and spikenorm against each "
        "peer in the same mode.",
        "",
        *target_rows(m, args.device),
        "",
        "### Per mode",
        "",
        "Warm-up overhead: the warm-up's calls (compilation under `torch.compile`, with the on-disk caches off, "
        "recompilations included) minus the same calls at steady state. Dynamo graphs: graphs compiled in the "
        "warm-up (one per recompilation and per piece between graph breaks). Agreement: max |output - the same "
        "library's fp32 eager "
        "output| / max |fp32 output| on the first eval / train-mode forward (same weights, same batch); "
        f"tolerance {tolerances}.",
        "",
        *markdown_table(
            "mode | library | train samples/s | inference samples/s | peak train-step memory MiB "
            "| warm-up overhead s | dynamo graphs (breaks) | agreement eval / train",
            mode_rows(m),
        ),
        "",
        "### Across modes",
        "",
        *cross_mode_rows(m),
        "",
        "### Where the time goes (spikenorm training step, torch.profiler)",
        "",
        f"The convolutions of a training step are {conv_flops / 1e9:.0f} GFLOP (forward, weight and input gradients).",
        "",
        *time_split_lines(m, conv_flops, b),
        "",
        "### The neuron alone",
        "",
        *markdown_table(neuron_header, neuron_rows(m)),
        "",
        "In brackets: ratio to spikenorm's LIF on the same dtype, and to the elementwise floor (`torch.mul(x, 0.5)` "
        "on the neuron tensor of that dtype, forward only: both columns are divided by it)"
        + (
            "; measured last, with freed memory kept for reuse (`retain_freed_memory`: the outputs' allocations "
            "page-faulted or not depending on the call before)"
            if args.device.type == "cpu"
            else ""
        )
        + ". Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated` above the pre-step allocation."
            if args.device.type == "cuda"
            else "torch profiler `profile_memory=True`, max of the CPU allocator's running total during the step "
            "above its value before the step (tensor memory allocated through torch)."
        ),
        "",
    ]
    for mode, prof in m.profiles.items():
        lines += [
            f"<details><summary>One spikenorm training step, {mode}, top ops by self time (torch.profiler)</summary>",
            "",
            "```",
            prof.table.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = benchmark_parser(__doc__, device=True)
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=list(MODES),
        help=f"comma-separated, of {', '.join(MODES)} (fp32 always runs: the reference); default all",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled modes (inductor: what users get; eager / aot_eager: debugging)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "compare.md", help="where the report goes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="input height = width")
    parser.add_argument("--cfg", nargs="+", default=[str(c) for c in CFG], help="VGG layer list, e.g. 64 128 A 256 A")
    parser.add_argument("--neuron-shape", type=int, nargs="+", default=[4, 32, 128, 16, 16], help="T B C H W")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--neuron-repeats", type=int, default=20)
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=[v for v in VARIANTS if v != "spikenorm"],
        default=[v for v in VARIANTS if v != "spikenorm"],
        help="spikenorm configurations besides the default, one row each in the eager modes",
    )
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="let malloc reuse freed memory instead of unmapping it (spikenorm.allocator; all libraries gain)",
    )
    args = parser.parse_args()
    args.cfg = [c if c in ("A", "M") else int(c) for c in args.cfg]
    if args.retain_freed_memory and not retain_freed_memory():
        parser.error("--retain-freed-memory needs glibc's mallopt")
    return args


def cold_compiler() -> None:
    """Every compilation in this process starts cold (no on-disk inductor / AOTAutograd cache hits), and
    several networks of the same classes compile without hitting dynamo's recompile limit."""
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def measure(args: argparse.Namespace) -> Measured:
    device, t, b = args.device, args.time_steps, args.batch
    variants = ["spikenorm", *dict.fromkeys(args.variants)]
    torch.manual_seed(0)
    x = torch.rand(t, b, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (b,), device=device)
    runs = build_runs(args.modes, args.cfg, x, y, variants, args.compile_backend)
    ok = {key: run for key, run in runs.items() if not run.error}
    train_t = interleaved({k: r.step for k, r in ok.items()}, device, args.repeats)
    infer_t = interleaved({k: r.infer for k, r in ok.items()}, device, args.repeats)
    memory = {k: peak_step_memory(r.step, device) for k, r in ok.items()}
    profiles = {
        mode: profile_step(ok[(mode, "spikenorm")].step, device) for mode in args.modes if (mode, "spikenorm") in ok
    }
    dtypes = {"float32": torch.float32} | (
        {"bfloat16": torch.bfloat16} if any(MODES[m].bf16 for m in args.modes) else {}
    )
    if device.type == "cpu":  # (the neuron alone: see the module docstring)
        retain_freed_memory()
    neuron = {
        name: neuron_times(args.neuron_shape, device, variants, dtype, args.neuron_repeats)
        for name, dtype in dtypes.items()
    }
    med = statistics.median
    libraries: dict[str, list[str]] = {}
    for mode, library in runs:
        libraries.setdefault(mode, []).append(library)
    return Measured(
        modes=list(args.modes),
        batch=b,
        libraries=libraries,
        runs=runs,
        train_sps={k: b / med(v) for k, v in train_t.items()},
        infer_sps={k: b / med(v) for k, v in infer_t.items()},
        memory=memory,
        agree=agreement(runs),
        profiles=profiles,
        neuron=neuron,
    )


def main() -> None:
    args = parse_args()
    allocator = "glibc malloc defaults"
    if args.retain_freed_memory:
        allocator = "malloc keeps freed memory (`--retain-freed-memory`: M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2 GiB)"
    cold_compiler()
    variants = ["spikenorm", *dict.fromkeys(args.variants)]
    eq = equivalence(args.cfg, shape=(args.time_steps, 4, args.size), device=args.device, variants=variants)
    print("equivalence (max |diff| to spikenorm, float64):", {k: f"{v:.3g}" for k, v in eq.items()})
    measured = measure(args)
    for mode, prof in measured.profiles.items():
        print(f"one spikenorm training step, {mode}, top ops by self time:\n{prof.table}")
    text = report(measured, args, eq, allocator)
    print(text)
    if not args.no_save:
        write_report(args.output, "spikenorm vs SpikingJelly vs snnTorch: same spiking VGG", text)


if __name__ == "__main__":
    main()
