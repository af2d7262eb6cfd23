r"""Synaptic operations, MACs and an energy estimate of a network, counted with forward hooks.

Every call of an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (wherever it sits: in a spikenorm ``TimeDistributed``,
a SpikingJelly ``layer.Linear``/``layer.Conv2d``/``SeqToANNContainer``, a plain snnTorch model) and of a norm
layer is counted. For a call with input ``x``:

* spike-driven synaptic layer (every value of ``x`` is 0 or 1): a synaptic operation (SOP, one
  accumulate) happens for each nonzero input and each weight it reaches, counted exactly:

  - Linear ``in -> out``: ``SOP = nnz(x) * out``;
  - Conv with ``C_out`` output channels in ``g`` groups: ``SOP = sum_{o} nnz(x restricted to the receptive
    field of o) * C_out / g`` over output positions ``o``. Summed the other way round, an input element at
    spatial position ``p`` is read once for each (output position, kernel tap) pair that lands on ``p``:
    ``SOP = C_out / g * sum_{n, c, p} [x_{n,c,p} != 0] * cover(p)``, where ``cover(p) = prod_i cover_i(p_i)``
    factorises over the spatial axes, ``cover_i(p) = #{(o, j): o s_i - pad_i + j d_i = p}`` (stride ``s``,
    dilation ``d``, left padding ``pad``; zero padding is never read as a spike; reflect/replicate/circular
    padding copies inputs, so it is applied to the nonzero mask first);
* any other synaptic layer (analog input, e.g. the first layer under direct encoding) does dense
  multiply-accumulates: Linear ``MAC = rows * in * out``; Conv ``MAC = numel(y) * C_in / g * prod(k)``;
* norm layers (torch ``_BatchNorm`` including SpikingJelly's BN, spikenorm ``TimeMajorNorm`` including the
  MPBN membrane norm called inside a neuron at every step) do one MAC per input element, the scale and
  shift ``y = a x + b`` of inference; ``NoNorm`` does nothing. A folded model
  (:func:`spikenorm.fold.fold_model`) has no norm layers, hence fewer MACs and the same SOPs.

Energy (Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm CMOS, 32-bit float):

    ``E = E_MAC * MAC + E_AC * SOP``,  ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ``,

the convention of Spikformer (Zhou et al., ICLR 2023), SEW-ResNet-style SNN energy comparisons and
Rathi & Roy (DIET-SNN, 2021), where the first (analog-input) layer costs MACs and every spike-driven layer
SOPs. The ANN reference (:attr:`EnergyReport.ann_energy_pj`) is the same synaptic layers run once on dense
inputs: ``E_ANN = E_MAC * sum_layers dense MACs / T``.

Not counted: neuron membrane updates (charge, leak, threshold comparison, reset), bias additions, pooling,
residual additions, attention matrix products done with functional calls (``torch.matmul``, ``@``),
layers whose weights are used by functional code rather than called (``nn.MultiheadAttention``),
LayerNorm/GroupNorm, and every memory access; the estimate is a lower bound on compute energy only, and
the 45 nm figures say nothing of a given accelerator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from spikenorm.distributed import sum_across_processes
from spikenorm.hooks import HookSession
from spikenorm.module_names import excluded
from spikenorm.norm import TimeMajorNorm

LayerKind = Literal["synaptic", "norm"]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per operation in picojoules; defaults are Horowitz (ISSCC 2014), 45 nm, 32-bit float.

    Raises:
        ValueError: a negative, NaN or infinite cost.
    """

    e_ac_pj: float = 0.9
    e_mac_pj: float = 4.6

    def __post_init__(self) -> None:
        for name in ("e_ac_pj", "e_mac_pj"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite energy >= 0 pJ, got {value}")


@dataclass(frozen=True)
class LayerOps:
    """Operations of one layer per sample: ``sops`` (spike-driven accumulates), ``macs`` (multiply-accumulates
    actually done), ``dense_macs`` (what the synaptic layer would cost on dense input over all recorded
    steps; 0 for norm layers)."""

    kind: LayerKind
    sops: float
    macs: float
    dense_macs: float

    def energy_pj(self, costs: EnergyCosts) -> float:
        """``E_MAC * macs + E_AC * sops``."""
        return costs.e_mac_pj * self.macs + costs.e_ac_pj * self.sops


@dataclass(frozen=True)
class EnergyReport:
    """Per-sample operations and energy of a network (see the module doc for the equations).

    Attributes:
        layers: qualified layer name -> its operations per sample, for every counted layer that ran.
        samples: number of samples the counts are averaged over.
        costs: the energy per operation.
        time_steps: ``T`` of the recorded runs, when known; needed for the ANN reference only.
    """

    layers: dict[str, LayerOps]
    samples: int
    costs: EnergyCosts
    time_steps: int | None = None

    @property
    def sops(self) -> float:
        return sum(op.sops for op in self.layers.values())

    @property
    def macs(self) -> float:
        return sum(op.macs for op in self.layers.values())

    @property
    def energy_pj(self) -> float:
        """Energy per sample in pJ: ``E_MAC * MACs + E_AC * SOPs``."""
        return self.costs.e_mac_pj * self.macs + self.costs.e_ac_pj * self.sops

    @property
    def energy_uj(self) -> float:
        """Energy per sample in µJ."""
        return self.energy_pj * 1e-6

    def layer_energy_pj(self) -> dict[str, float]:
        """Energy per sample of each layer, in pJ."""
        return {name: op.energy_pj(self.costs) for name, op in self.layers.items()}

    @property
    def ann_macs(self) -> float | None:
        """MACs per sample of the same synaptic layers run as an ANN (one dense step); None if ``T`` is unknown."""
        if self.time_steps is None:
            return None
        return sum(op.dense_macs for op in self.layers.values()) / self.time_steps

    @property
    def ann_energy_pj(self) -> float | None:
        """``E_MAC * ann_macs`` in pJ; None if ``T`` is unknown."""
        macs = self.ann_macs
        return None if macs is None else self.costs.e_mac_pj * macs


def _is_spike_input(x: Tensor) -> bool:
    """Whether every value of ``x`` is 0 or 1."""
    return bool(((x == 0) | (x == 1)).all())


@functools.lru_cache(maxsize=256)
def _cover_1d(size: int, outputs: int, kernel: int, stride: int, dilation: int, pad: int) -> tuple[int, ...]:
    """``cover[p] = #{(o, j): o * stride - pad + j * dilation = p}`` for input positions ``0 <= p < size``."""
    cover = [0] * size
    for o in range(outputs):
        for j in range(kernel):
            p = o * stride - pad + j * dilation
            if 0 <= p < size:
                cover[p] += 1
    return tuple(cover)


def _left_padding(conv: nn.Module, dims: int) -> tuple[int, ...]:
    """The zero padding before the first element of each spatial axis (torch's convention for ``"same"``)."""
    if conv.padding == "valid":
        return (0,) * dims
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


def _conv_sops(conv: nn.Module, x: Tensor, y: Tensor) -> int:
    """Exact SOPs of a conv call on binary input ``x`` (any leading axes before ``[C, *spatial]``)."""
    dims = len(conv.kernel_size)
    nonzero = (x != 0).reshape(-1, *x.shape[-(dims + 1) :])
    if conv.padding_mode != "zeros":  # padded cells copy inputs, so they carry spikes too
        nonzero = F.pad(nonzero.float(), conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        pads = (0,) * dims
    else:
        pads = _left_padding(conv, dims)
    per_position = nonzero.sum((0, 1), dtype=torch.float64)
    cover = torch.ones((), dtype=torch.float64, device=x.device)
    for i in range(dims):
        axis = _cover_1d(
            per_position.shape[i],
            y.shape[y.ndim - dims + i],
            conv.kernel_size[i],
            conv.stride[i],
            conv.dilation[i],
            pads[i],
        )
        cover = cover.unsqueeze(-1) * torch.tensor(axis, dtype=torch.float64, device=x.device)
    return int((per_position * cover).sum()) * (conv.out_channels // conv.groups)


def synaptic_ops(layer: nn.Module, x: Tensor, y: Tensor) -> tuple[int, int, int]:
    """``(SOPs, MACs, dense MACs)`` of one call ``y = layer(x)`` of a Linear or Conv layer (module doc)."""
    linear = isinstance(layer, nn.Linear)
    if linear:
        dense = x.numel() * layer.out_features
    else:
        dense = y.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if not _is_spike_input(x):
        return 0, dense, dense
    sops = int(torch.count_nonzero(x)) * layer.out_features if linear else _conv_sops(layer, x, y)
    return sops, 0, dense


def _layer_kind(module: nn.Module) -> LayerKind | None:
    if isinstance(module, (nn.Linear, *_CONVS)):
        return "synaptic"
    if isinstance(module, _BatchNorm) or (isinstance(module, TimeMajorNorm) and module.fold_target != "identity"):
        return "norm"
    return None


class OpCounter(HookSession):
    """Counts SOPs and MACs of every Linear/Conv and norm layer of ``model`` while it runs (module doc)::

        with OpCounter(net) as counter:
            net(x)                      # any number of calls: a multi-step forward, or T single steps
            counter.add_samples(x.shape[1])
        report = counter.report(EnergyCosts(), time_steps=T)
        report.energy_uj, report.sops, report.layers["features.0.0"].macs

    Args:
        model: the network.
        exclude: qualified module names (and everything inside them) not to count.

    Raises:
        ValueError: ``model`` has no Linear, Conv or norm layer outside ``exclude``.
    """

    def __init__(self, model: nn.Module, exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.kinds: dict[str, LayerKind] = {}
        self.layers: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            kind = _layer_kind(module)
            if kind is not None and not excluded(name, exclude):
                key = name or type(module).__name__
                self.kinds[key], self.layers[key] = kind, module
        if not self.layers:
            raise ValueError(
                f"{type(model).__name__} has no Linear, Conv or norm layer whose operations can be counted"
            )
        self._counts: dict[str, list[int]] = {}
        self.samples = 0

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        kind, layer = self.kinds[name], self.layers[name]

        def count(module: nn.Module, inputs: Any, output: Any) -> None:
            if module is not layer:  # a deepcopy of the model carries the hook along: ignore the copy
                return
            x = inputs[0].detach()
            if kind == "synaptic":
                ops = synaptic_ops(module, x, output)
            else:
                ops = (0, x.numel(), 0)
            totals = self._counts.setdefault(name, [0, 0, 0])
            for i, value in enumerate(ops):
                totals[i] += value

        return count

    def add_samples(self, n: int) -> None:
        """Count ``n`` more samples (the batch size of the forward(s) just counted)."""
        if n < 0:
            raise ValueError(f"the number of samples must be >= 0, got {n}")
        self.samples += int(n)

    def attach(self) -> list[RemovableHandle]:
        return [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]

    def reset(self) -> None:
        """Forget all counts and samples."""
        self._counts.clear()
        self.samples = 0

    def all_reduce(self) -> None:
        """Sum counts and samples over processes when ``torch.distributed`` is initialised (all must call it)."""
        local = {name: torch.tensor(self._counts.get(name, []), dtype=torch.int64) for name in self.layers}
        local["\0samples"] = torch.tensor([self.samples], dtype=torch.int64)
        summed = sum_across_processes(local)
        self.samples = int(summed.pop("\0samples").item())
        self._counts = {name: [int(v) for v in counts.tolist()] for name, counts in summed.items() if counts.numel()}

    def report(self, costs: EnergyCosts | None = None, time_steps: int | None = None) -> EnergyReport:
        """Per-sample operations and energy of everything counted so far.

        Args:
            costs: energy per operation; :class:`EnergyCosts` defaults when omitted.
            time_steps: ``T`` of the counted runs, for the ANN reference; None leaves it out.

        Raises:
            ValueError: no samples were counted (call :meth:`add_samples`), or ``time_steps < 1``.
        """
        if self.samples <= 0:
            raise ValueError("no samples counted: call add_samples(batch_size) for every counted batch")
        if time_steps is not None and time_steps < 1:
            raise ValueError(f"time_steps must be >= 1 or None, got {time_steps}")
        n = self.samples
        layers = {
            name: LayerOps(self.kinds[name], sops / n, macs / n, dense / n)
            for name, (sops, macs, dense) in self._counts.items()
        }
        return EnergyReport(layers, n, costs or EnergyCosts(), time_steps)
