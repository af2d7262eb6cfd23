"""Norm folding: a trained model in, an inference-only model with no norm layers out, exactly equivalent.

:func:`fold_model` traces the model with ``torch.fx`` (neurons, norm layers and time-distributed layers
are leaves) and removes every norm layer:

* ``weights`` norms (``bn``, ``tdbn``): their inference map ``y = a x + b`` per channel (``a = gamma /
  sqrt(var + eps)``, ``b = beta - mu a``; tdBN's gain includes ``alpha * v_th``) goes into the producing
  conv/linear: ``W' = a W``, ``b' = a b_conv + b``. Computed in float64.
* ``threshold`` norms (MPBN, the membrane norm of a neuron): the spike condition ``a m + b > theta``
  becomes ``m > theta' = (theta - b) / a = mu + (theta - beta) sqrt(var + eps) / gamma`` for ``a > 0``.
  For ``a < 0`` it is ``m < theta'``, i.e. ``-m > -theta'``: the neuron's input is negated for those
  features. Leak, charge and hard reset to 0 are linear in the state, so negating the input negates the
  whole trajectory; the negation is pushed into the producing conv/linear weights and bias (through
  residual additions) when every path can take it, and otherwise left as a ``SignFlip`` (one ±1
  multiply) in the neuron's membrane hook, which is exact for any reset value. For ``a = 0`` (gamma = 0)
  the decision is the constant ``b > theta``, realised exactly by a threshold of ``-inf`` (always fire)
  or ``+inf`` (never fire).
* threshold stabilisers (OTS, :mod:`spikenorm.threshold_stabilizers`): the stabiliser's
  ``fixed_threshold`` becomes the neuron's threshold (OTS with ``ots_eval="running"``: its running threshold),
  before a membrane norm is folded into it; a stabiliser without one (OTS ``"dynamic"``) raises a ValueError.
* ``identity`` norms are dropped; ``unfoldable`` ones (``bntt``, ``tebn``, ``tab``: their maps differ per step)
  raise a ValueError naming the layer and giving the layer's ``unfoldable_reason``.

The trained model is never modified; the folded model is in eval mode, has no gradients, and refuses
``train()``. :func:`check_equivalence` compares the two spike by spike, with autocast disabled (it tests the fold,
not half-precision rounding). Folded models are saved and loaded by :mod:`spikenorm.folded_files`
(:func:`save_folded`, :func:`load_folded`, re-exported here).
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.binary import BINARY_WEIGHT_FUNCTIONS, BinaryLayer

# the file format's names, re-exported: spikenorm.fold is where users, callbacks and the CLI import them from
from spikenorm.folded_files import FoldedModel
from spikenorm.folded_files import UnsafeFoldedFileError as UnsafeFoldedFileError
from spikenorm.folded_files import load_folded as load_folded
from spikenorm.folded_files import save_folded as save_folded
from spikenorm.interop import neuron_library
from spikenorm.neurons import SpikingNeuron, spiking_neurons
from spikenorm.norm import TimeMajorNorm
from spikenorm.synapse import TimeDistributed, TraceSynapse

_LINEAR_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class SignFlip(nn.Module):
    """Multiply by a fixed ±1 tensor shaped like the features (left in a neuron's membrane hook by a fold)."""

    def __init__(self, sign: Tensor) -> None:
        super().__init__()
        self.register_buffer("sign", sign.clone())

    def forward(self, x: Tensor) -> Tensor:  # x: [T, B, *features, ...]
        k = self.sign.ndim
        return x * self.sign.reshape(*self.sign.shape, *([1] * (x.ndim - 2 - k)))


class _SpikingTracer(fx.Tracer):
    """Keeps neurons, norm layers and time-distributed layers as opaque leaves of the graph."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (SpikingNeuron, TimeMajorNorm, TimeDistributed, TraceSynapse)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def fold_model(model: nn.Module) -> FoldedModel:
    """Return an inference-only copy of ``model`` with every norm layer folded away (see the module doc).

    Only spikenorm layers fold: before tracing, a model holding layers of other kinds that fold_model cannot fold
    or trace (snnTorch and SpikingJelly neurons and layers, torch ``BatchNorm*d``) is refused with their types and
    names.

    Raises:
        ValueError: layers of other libraries (their types named), a norm that cannot be folded (named), or a
            norm whose input is not a conv/linear layer used by it alone.
        TypeError: a model that ``torch.fx`` cannot trace.
    """
    _check_foldable_layers(model)
    source = copy.deepcopy(model).eval()
    try:
        graph = _SpikingTracer().trace(source)
    except Exception as err:  # fx raises several types; say what failed and why
        raise TypeError(
            f"fold_model could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
            "a foldable model's forward must not branch on tensor values or shapes outside its layers"
        ) from err
    folded = FoldedModel(source, graph, class_name=f"Folded{type(model).__name__}")
    _fold_post_linear_norms(folded)
    _fold_threshold_stabilizers(folded)
    _fold_membrane_norms(folded)
    folded.graph.lint()
    folded.delete_all_unused_submodules()
    folded.recompile()
    leftover = [name for name, m in folded.named_modules() if isinstance(m, TimeMajorNorm)]
    if leftover:
        raise AssertionError(f"fold_model left norm layers behind: {leftover}")
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.eval()


def _foreign_kind(module: nn.Module) -> str | None:
    """Why fold_model cannot fold ``module``, or None: a neuron or layer of snnTorch or SpikingJelly, or a BatchNorm
    that is not a spikenorm norm."""
    package = type(module).__module__.split(".")[0]
    library = neuron_library(module)
    if library not in (None, "spikenorm"):
        return f"{library} neuron"
    if isinstance(module, _BatchNorm):
        return f"{package} BatchNorm"
    return f"{package} layer" if package in ("snntorch", "spikingjelly") else None


def _check_foldable_layers(model: nn.Module) -> None:
    """Refuse a model with layers fold_model cannot fold or trace (see :func:`_foreign_kind`), naming their types
    and where they are (the submodules of such a layer are not listed again)."""
    found: dict[tuple[str, str], list[str]] = {}
    reported: list[str] = []
    for name, module in model.named_modules():
        kind = _foreign_kind(module)
        if kind is None or any(name.startswith(f"{outer}.") for outer in reported):
            continue
        reported.append(name)
        found.setdefault((type(module).__name__, kind), []).append(f"'{name}'")
    if not found:
        return
    listed = "; ".join(
        f"{cls} ({kind}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for (cls, kind), names in found.items()
    )
    raise ValueError(
        f"fold_model folds spikenorm layers only (spikenorm neurons and spikenorm.norm layers); {type(model).__name__} "
        f"holds layers it cannot fold: {listed}. Expected a network built from spikenorm layers "
        "(spikenorm.models, spikenorm.norm.build_norm, spikenorm.neurons), e.g. build_norm('bn', C) for a BatchNorm"
    )


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _linear_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The conv/linear layer a node calls (unwrapping TraceSynapse and TimeDistributed), else None."""
    m = _module(gm, node)
    if isinstance(m, TraceSynapse):
        m = m.layer
    if isinstance(m, TimeDistributed):
        m = m.module
    # a binary layer is a module call when wrapped, or traced through (its weight made by a binarizer node)
    binarizer = next((a for a in node.args if isinstance(a, fx.Node) and a.target in BINARY_WEIGHT_FUNCTIONS), None)
    if isinstance(m, BinaryLayer) or (node.op == "call_function" and binarizer is not None):
        where = node.target if m is not None else str(binarizer.all_input_nodes[-1].target).rpartition(".")[0]
        raise ValueError(
            f"cannot fold into '{where}': it is a binary-weight layer "
            f"({type(m).__name__ if m is not None else 'traced'});"
            " folding into binary weights is not supported (a fold would rescale the latent weights, not the "
            "±alpha weights the layer uses); keep this layer full precision or do not fold"
        )
    return m if isinstance(m, _LINEAR_TYPES) else None


@torch.no_grad()
def _scale_output_features(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """``layer(x) -> scale * layer(x) + shift`` per output feature, computed in float64."""
    w = layer.weight.double()
    view = (-1,) + (1,) * (w.ndim - 1)
    layer.weight.copy_(w * scale.reshape(view))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_bias = bias * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype), requires_grad=False)
    else:
        layer.bias.copy_(new_bias)


def _fold_post_linear_norms(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        norm = _module(gm, node)
        if not isinstance(norm, TimeMajorNorm):
            continue
        if norm.fold_target == "identity":
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            continue
        if norm.fold_target != "weights":
            hint = (
                "MPBN folds into a threshold, so it must be a neuron's membrane_norm, not a layer of its own"
                if norm.fold_target == "threshold"
                else norm.unfoldable_reason
            )
            raise ValueError(f"cannot fold norm layer '{node.target}' ({type(norm).__name__}): {hint}")
        producer = node.args[0]
        layer = _linear_layer(gm, producer) if isinstance(producer, fx.Node) else None
        if layer is None or len(producer.users) != 1 or len(norm.feature_shape) != 1:
            raise ValueError(
                f"cannot fold norm layer '{node.target}' ({type(norm).__name__}): it must follow a conv/linear "
                f"layer whose output it alone uses, with per-channel statistics (its input is {producer})"
            )
        scale, shift = norm.inference_affine()
        _scale_output_features(layer, scale, shift)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)


def _flippable_layers(gm: fx.GraphModule, node: fx.Node) -> list[nn.Module] | None:
    """Conv/linear layers whose output-channel negation negates ``node``'s value, or None if impossible."""
    if len(node.users) != 1:
        return None
    layer = _linear_layer(gm, node)
    if layer is not None:
        return [layer]
    if node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2:
        branches = [_flippable_layers(gm, a) if isinstance(a, fx.Node) else None for a in node.args]
        if all(b is not None for b in branches):
            return [layer for branch in branches for layer in branch]
    return None


@torch.no_grad()
def _fold_membrane_norms(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        neuron = _module(gm, node)
        if not isinstance(neuron, SpikingNeuron) or neuron.membrane_norm is None:
            continue
        norm = neuron.membrane_norm
        if not isinstance(norm, TimeMajorNorm) or norm.fold_target != "threshold":
            raise ValueError(
                f"cannot fold the membrane norm of neuron '{node.target}' ({type(norm).__name__}): only "
                "threshold-foldable norms (MPBN) can be folded into a neuron"
            )
        threshold, sign = membrane_threshold(norm, neuron.threshold)
        neuron.membrane_norm = None
        flipped = sign < 0
        if flipped.any():
            channel_sign = _uniform_per_channel(sign)
            layers = _flippable_layers(gm, node.args[0]) if channel_sign is not None else None
            if layers is not None and neuron.reset_value == 0.0:
                for layer in layers:
                    _scale_output_features(layer, channel_sign, torch.zeros_like(channel_sign))
            else:
                neuron.membrane_norm = SignFlip(sign.to(neuron.threshold.dtype))
        neuron.threshold = (sign * threshold).to(neuron.threshold.dtype)


@torch.no_grad()
def _fold_threshold_stabilizers(gm: fx.GraphModule) -> None:
    """Replace every neuron's threshold stabiliser by the fixed threshold it declares."""
    for name, neuron in spiking_neurons(gm):
        stabilizer = neuron.threshold_stabilizer
        if stabilizer is None:
            continue
        try:
            neuron.threshold = stabilizer.fixed_threshold(neuron.threshold)
        except ValueError as err:
            raise ValueError(
                f"cannot fold the threshold of neuron '{name}' ({type(stabilizer).__name__}): {err}"
            ) from None
        neuron.threshold_stabilizer = None


def membrane_threshold(norm: TimeMajorNorm, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Threshold on the raw membrane equivalent to ``norm(m) > theta``, and the sign of the comparison.

    Returns ``(theta', sign)`` shaped like ``norm.feature_shape`` (float64): the spike is
    ``sign * m > sign * theta'``. ``sign`` is -1 where the norm's gain is negative; where the gain is 0
    the decision is constant and ``theta'`` is ``-inf`` (always) or ``+inf`` (never).
    """
    scale, shift = norm.inference_affine()
    shape = norm.feature_shape
    theta = theta.double()
    if theta.ndim:
        theta = theta.reshape(*theta.shape, *([1] * (len(shape) - theta.ndim)))
    theta = theta.expand(shape)
    sign = torch.where(scale < 0, -1.0, 1.0).double()
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    threshold = (theta - shift) / safe
    constant = torch.where(shift > theta, -math.inf, math.inf).double()
    return torch.where(scale == 0, constant, threshold), sign


def _uniform_per_channel(sign: Tensor) -> Tensor | None:
    """The per-channel sign when it is constant across every channel's elements, else None."""
    flat = sign.reshape(sign.shape[0], -1)
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else None


# --- equivalence -------------------------------------------------------------------------------------


@dataclass
class LayerSpikes:
    """Spike agreement of one neuron layer: flipped spikes, spikes of the original, neuron-steps seen."""

    flipped: int = 0
    spikes: int = 0
    neuron_steps: int = 0


@dataclass
class FoldReport:
    """Result of :func:`check_equivalence`."""

    max_abs_diff: float = 0.0
    layers: dict[str, LayerSpikes] = field(default_factory=dict)
    folded_output: Tensor | None = field(default=None, repr=False)

    @property
    def flipped_spikes(self) -> int:
        return sum(layer.flipped for layer in self.layers.values())

    @property
    def total_spikes(self) -> int:
        return sum(layer.spikes for layer in self.layers.values())

    @property
    def exact(self) -> bool:
        """No spike differs anywhere."""
        return self.flipped_spikes == 0

    def __str__(self) -> str:
        rows = [f"{'layer':<28} {'flipped':>8} {'spikes':>10} {'neuron-steps':>13}"]
        for name, s in self.layers.items():
            rows.append(f"{name:<28} {s.flipped:>8} {s.spikes:>10} {s.neuron_steps:>13}")
        rows.append(f"max |output difference| = {self.max_abs_diff:.3g}; flipped spikes = {self.flipped_spikes}")
        return "\n".join(rows)


def check_equivalence(
    model: nn.Module,
    folded: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    dtype: torch.dtype | None = None,
) -> FoldReport:
    """Run ``model`` (in eval mode) and ``folded`` on the same inputs and compare spikes and outputs.

    Args:
        model: the trained model (not modified: it is put back in its previous mode).
        folded: the output of :func:`fold_model`.
        inputs: one time-major batch ``[T, B, ...]`` or an iterable of batches.
        dtype: run both on copies in this dtype (``torch.float64`` separates the fold's exactness from
            float32 rounding); None runs them as they are. Either way autocast is disabled for the inputs'
            device, so a call from inside a ``torch.autocast`` region (a ``bf16-mixed`` run) compares the models
            in full precision.

    Returns:
        A :class:`FoldReport`: max absolute output difference, and per neuron layer the flipped spikes,
        the spikes of the original and the neuron-steps compared. ``folded_output`` holds the folded
        model's output on the last batch.
    """
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not batches:
        raise ValueError("check_equivalence needs at least one input batch")
    was_training = model.training
    if dtype is not None:
        model, folded = copy.deepcopy(model).to(dtype), copy.deepcopy(folded).to(dtype)
    names = [name for name, _ in spiking_neurons(model)]
    folded_names = [name for name, _ in spiking_neurons(folded)]
    if names != folded_names:
        raise ValueError(f"the models' neuron layers differ: {names} vs {folded_names}")
    report = FoldReport(layers={name: LayerSpikes() for name in names})
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(batches[0].device.type, enabled=False):
            for x in batches:
                x = x if dtype is None else x.to(dtype)
                ref_out, ref_spikes = _run_recording(model, x)
                out, spikes = _run_recording(folded, x)
                report.max_abs_diff = max(report.max_abs_diff, float((ref_out - out).abs().max()))
                report.folded_output = out
                for name in names:
                    layer = report.layers[name]
                    layer.flipped += int((ref_spikes[name] != spikes[name]).sum())
                    layer.spikes += int(ref_spikes[name].sum())
                    layer.neuron_steps += ref_spikes[name].numel()
    finally:
        model.train(was_training)
    return report


def _run_recording(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    spikes: dict[str, list[Tensor]] = {}
    handles = [
        neuron.register_forward_hook(lambda m, i, out, name=name: spikes.setdefault(name, []).append(out))
        for name, neuron in spiking_neurons(model)
    ]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, {name: torch.cat(parts) for name, parts in spikes.items()}
