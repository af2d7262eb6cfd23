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
* OTS neurons with ``ots_eval="running"``: the running threshold becomes the neuron's fixed threshold
  (with ``"dynamic"`` the threshold depends on the inference batch and folding raises a ValueError).
* ``identity`` norms are dropped; ``unfoldable`` ones (``bntt``, ``tebn``, ``tab``: their maps differ per step)
  raise a ValueError naming the layer and giving the layer's ``unfoldable_reason``.

The trained model is never modified; the folded model is in eval mode, has no gradients, and refuses
``train()``. :func:`check_equivalence` compares the two spike by spike.

Mixed precision: a model trained under ``torch.autocast`` keeps float32 weights and statistics, and that is what
is folded: the fold arithmetic is elementwise float64 (``torch.autocast`` lowers only matrix products,
convolutions and attention, so it cannot reach it even when :func:`fold_model` is called inside an autocast
region). :func:`check_equivalence` runs both models with autocast disabled, in float32 or float64, because it
tests the fold, not the rounding of a half-precision convolution. :func:`save_folded` writes a folded
model as tensors plus a spec of its modules and graph, and :func:`load_folded` rebuilds it without running code
from the file (pickles only with an explicit ``trusted=True``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import keyword
import math
import operator
import os
import pickle as _pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.binary import BINARY_WEIGHT_FUNCTIONS, BinaryLayer
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


class FoldedModel(fx.GraphModule):
    """An fx GraphModule for inference only: ``train(True)`` raises."""

    def train(self, mode: bool = True) -> "FoldedModel":
        if mode:
            raise ValueError(
                "a folded model is inference-only (its norms are folded into weights and thresholds); "
                "train the original model and fold it again"
            )
        return super().train(False)


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
    _fold_membrane_norms(folded)
    _fold_ots_thresholds(folded)
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
def _fold_ots_thresholds(gm: fx.GraphModule) -> None:
    for name, neuron in spiking_neurons(gm):
        if not neuron.ots:
            continue
        if neuron.ots_eval != "running":
            raise ValueError(
                f"cannot fold the OTS threshold of neuron '{name}': with ots_eval='dynamic' it is recomputed "
                "from every inference batch; train with ots_eval='running' for a fixed, foldable threshold"
            )
        neuron.threshold = neuron.ots_running_threshold.clone()
        neuron.ots = False
        del neuron.ots_running_threshold


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


# --- saving ------------------------------------------------------------------------------------------
#
# The safe format (see save_folded). What a file names is checked against these allowlists on loading: module
# paths, input names and functions end up in the Python code that fx generates for the graph.

FOLDED_FORMAT = "spikenorm.folded"
FOLDED_FORMAT_VERSION = 1

# functions a folded graph may call (qualified names, resolved on first use): pure tensor operations and the
# input checks and spike encoders the spikenorm models register with ``torch.fx.wrap``
_GRAPH_FUNCTIONS = (
    *(f"operator.{name}" for name in ("add", "sub", "mul", "truediv", "floordiv", "neg", "pow", "matmul", "getitem")),
    *(
        f"torch.{name}"
        for name in (
            "add",
            "sub",
            "mul",
            "div",
            "neg",
            "exp",
            "log",
            "tanh",
            "sigmoid",
            "relu",
            "abs",
            "clamp",
            "flatten",
            "reshape",
            "cat",
            "stack",
            "mean",
            "sum",
            "amax",
            "matmul",
            "softmax",
            "transpose",
            "permute",
            "unsqueeze",
            "squeeze",
        )
    ),
    *(
        f"torch.nn.functional.{name}"
        for name in (
            "relu",
            "sigmoid",
            "softmax",
            "avg_pool2d",
            "max_pool2d",
            "adaptive_avg_pool2d",
            "linear",
            "conv2d",
            "pad",
        )
    ),
    "spikenorm.models.layers.check_model_input",
    "spikenorm.models.rl.check_batch_input",
    "spikenorm.models.rl.check_spike_input",
    "spikenorm.models.rl.regular_spike_train",
    "spikenorm.models.transformer.check_spatial_size",
    "spikenorm.binary.binarize_weight",
    "spikenorm.binary._deployed_weight",
)
# tensor methods a folded graph may call: pure shape and arithmetic operations
_TENSOR_METHODS = frozenset(
    {
        "abs",
        "add",
        "amax",
        "chunk",
        "clamp",
        "contiguous",
        "div",
        "exp",
        "expand",
        "flatten",
        "mean",
        "mul",
        "neg",
        "permute",
        "pow",
        "reshape",
        "sigmoid",
        "size",
        "split",
        "squeeze",
        "sub",
        "sum",
        "tanh",
        "transpose",
        "unflatten",
        "unsqueeze",
        "view",
    }
)
_MODULE_NAMESPACES = ("torch.nn.modules.", "spikenorm.")  # where the classes of a folded model's modules live
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping, rebuilt by nn.Module.__init__
_PICKLE_HINT = (
    "save_folded(folded, path, pickle=True) writes such a model as a pickle, which only "
    "load_folded(path, trusted=True) reads (it runs code from the file: only for files you trust)"
)


class UnsafeFoldedFileError(ValueError):
    """A folded-model file that can only be read by unpickling (running code from the file)."""


def save_folded(folded: FoldedModel, path: str | Path | BinaryIO, *, pickle: bool = False) -> Path | BinaryIO:
    """Save a folded model to ``path`` (a file name, or a binary file object as for ``torch.save``) and return
    ``path``; :func:`load_folded` restores it.

    The file holds no code: the tensors, and a JSON spec naming each module's class (``torch.nn`` and spikenorm
    classes only) with its plain-data attributes, and each graph node's operation (allowlisted pure tensor
    functions and methods, and the spikenorm models' input checks) with its arguments. It can be shared:
    loading it runs no code from it. A model outside that set (a custom module class, a hook, another
    function) raises a ValueError naming what the format cannot hold.

    ``pickle=True`` writes the pickled fx module instead, for such models. Warning: loading a pickle runs code
    stored in the file, so :func:`load_folded` reads it only with ``trusted=True``.
    """
    if not isinstance(folded, fx.GraphModule):
        raise TypeError(f"save_folded takes the output of fold_model, got {type(folded).__name__}")
    if pickle:
        payload: object = folded
    else:
        tensors: dict[str, Tensor] = {}
        spec = {
            "class_name": type(folded).__name__,
            "graph": [_node_spec(node) for node in folded.graph.nodes],
            "modules": _module_spec(folded, "", tensors),
        }
        payload = {
            "format": FOLDED_FORMAT,
            "version": FOLDED_FORMAT_VERSION,
            "spec": json.dumps(spec),
            "tensors": tensors,
        }
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_folded(
    path: str | Path | BinaryIO, map_location: str | torch.device = "cpu", *, trusted: bool = False
) -> FoldedModel:
    """Load a model written by :func:`save_folded`, in eval mode.

    The default format is read with ``torch.load(weights_only=True)`` and rebuilt from its spec, so loading
    runs no code from the file. A pickled model (``save_folded(..., pickle=True)``, or any file written by
    spikenorm before the safe format) is refused with an :class:`UnsafeFoldedFileError` unless
    ``trusted=True``. Warning: ``trusted=True`` unpickles, which runs whatever code the file holds; use it
    only for files you made yourself or trust as you would trust a Python script.
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except _pickle.UnpicklingError as err:
        if not trusted:
            raise UnsafeFoldedFileError(
                f"{path} holds pickled Python objects, which can run code when loaded (a file written by "
                "save_folded(..., pickle=True) or by an older spikenorm); load_folded refused it. If you trust "
                "the file, load it with load_folded(path, trusted=True), then save_folded(model, path) writes it "
                "in the safe format"
            ) from err
        if hasattr(path, "seek"):
            path.seek(0)
        payload = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(payload, fx.GraphModule):
            raise ValueError(f"{path} does not hold a folded model (got {type(payload).__name__})") from err
        return FoldedModel(payload, payload.graph, class_name=type(payload).__name__).eval()
    if not isinstance(payload, dict) or payload.get("format") != FOLDED_FORMAT:
        raise ValueError(f"{path} is not a folded model written by spikenorm.fold.save_folded")
    if payload.get("version") != FOLDED_FORMAT_VERSION:
        raise ValueError(
            f"{path}: folded-model format version {payload.get('version')!r} is not supported "
            f"(expected {FOLDED_FORMAT_VERSION})"
        )
    try:
        spec = json.loads(payload["spec"])
        root = _build_module(spec["modules"], payload["tensors"])
        graph = _build_graph(spec["graph"])
        _check_targets(graph, root)
        return FoldedModel(root, graph, class_name=str(spec["class_name"])).eval()
    except (KeyError, TypeError, AttributeError, SyntaxError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is a damaged folded-model file ({type(err).__name__}: {err})") from err


def _check_targets(graph: fx.Graph, root: nn.Module) -> None:
    """Every module and attribute the graph names must be a submodule, parameter or buffer of the rebuilt root:
    fx copies them by walking the path with getattr/setattr, which must never leave the module tree."""
    modules = dict(root.named_modules())
    attributes = {*modules, *dict(root.named_parameters()), *dict(root.named_buffers())}
    for node in graph.nodes:
        if (node.op == "call_module" and node.target not in modules) or (
            node.op == "get_attr" and node.target not in attributes
        ):
            raise ValueError(
                f"a folded-model file's graph names {node.target!r:.80}, which is not a module, "
                "parameter or buffer of the model it holds"
            )


class _Unsupported(ValueError):
    pass


def _encode(value: object) -> object:
    """A JSON-able form of a graph argument or attribute (plain data, slices, dtypes, graph nodes)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    raise _Unsupported(f"a {type(value).__name__} value ({value!r:.60})")


def _decode(value: object, nodes: dict[str, fx.Node] | None = None) -> object:
    """The inverse of :func:`_encode`; graph nodes are looked up in ``nodes``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, content),) = value.items()
        if tag == "node" and nodes is not None and content in nodes:
            return nodes[content]
        if tag == "tuple" and isinstance(content, list):
            return tuple(_decode(v, nodes) for v in content)
        if tag == "dict" and isinstance(content, dict):
            return {k: _decode(v, nodes) for k, v in content.items()}
        if tag == "slice" and isinstance(content, list) and len(content) == 3:
            return slice(*(_decode(v, nodes) for v in content))
        if tag == "dtype" and isinstance(getattr(torch, str(content), None), torch.dtype):
            return getattr(torch, content)
    raise ValueError(f"invalid value in a folded-model file: {value!r:.80}")


def _checked_path(target: object, what: str) -> str:
    """``target`` if it is a dotted path of public identifiers or indices (what names a submodule), else a
    ValueError; no part may start with ``_`` (``__class__`` would lead out of the module tree)."""
    parts = target.split(".") if isinstance(target, str) else [""]
    if not all((p.isidentifier() and not p.startswith("_")) or p.isdigit() for p in parts):
        raise ValueError(f"invalid {what} {target!r:.80} in a folded-model file")
    return target


@functools.cache
def _graph_functions() -> dict[str, Callable]:
    functions = {}
    for name in _GRAPH_FUNCTIONS:
        module, _, attribute = name.rpartition(".")
        functions[name] = getattr(importlib.import_module(module), attribute)
    return functions


def _node_spec(node: fx.Node) -> dict[str, object]:
    target = node.target
    if node.op == "call_function":
        target = next((name for name, fn in _graph_functions().items() if fn is node.target), None)
        if target is None:
            name = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"
            raise ValueError(
                f"cannot save the folded model safely: node '{node.name}' calls {name!r}, which is not "
                "among the functions the safe format allows (pure tensor operations and the spikenorm "
                f"models' input checks); {_PICKLE_HINT}"
            )
    elif node.op == "call_method" and target not in _TENSOR_METHODS:
        allowed = ", ".join(sorted(_TENSOR_METHODS))
        raise ValueError(
            f"cannot save the folded model safely: node '{node.name}' calls the method {target!r}, "
            f"which is not among the methods the safe format allows ({allowed}); {_PICKLE_HINT}"
        )
    try:
        args, kwargs = _encode(node.args), _encode(node.kwargs)
    except _Unsupported as err:
        raise ValueError(
            f"cannot save the folded model safely: node '{node.name}' takes {err}; {_PICKLE_HINT}"
        ) from None
    # an fx-wrapped function stays one node when the rebuilt model is traced again (e.g. folded once more)
    wrapped = bool(node.meta.get("is_wrapped", False))
    return {"name": node.name, "op": node.op, "target": target, "args": args, "kwargs": kwargs, "wrapped": wrapped}


def _build_graph(specs: list[dict]) -> fx.Graph:
    """The fx graph of a spec, every target checked against the allowlists (their names reach generated code)."""
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for spec in specs:
        op, target = spec["op"], spec["target"]
        if op == "placeholder" and not (isinstance(target, str) and target.isidentifier()):
            raise ValueError(f"invalid input name {target!r:.80} in a folded-model file")
        if op in ("call_module", "get_attr"):
            _checked_path(target, "module path")
        elif op == "call_function":
            if target not in _graph_functions():
                raise ValueError(f"a folded-model file calls {target!r:.80}, which the safe format does not allow")
            target = _graph_functions()[target]
        elif op == "call_method":
            if target not in _TENSOR_METHODS:
                raise ValueError(
                    f"a folded-model file calls the method {target!r:.80}, which the safe format does not allow"
                )
        elif op not in ("placeholder", "output"):
            raise ValueError(f"invalid graph operation {op!r:.80} in a folded-model file")
        kwargs = _decode(spec["kwargs"], nodes)
        if not (isinstance(kwargs, dict) and all(k.isidentifier() and not keyword.iskeyword(k) for k in kwargs)):
            raise ValueError(f"invalid keyword arguments {spec['kwargs']!r:.80} in a folded-model file")
        args = _decode(spec["args"], nodes)
        if not isinstance(args, tuple):
            raise ValueError(f"invalid arguments {spec['args']!r:.80} in a folded-model file")
        node = graph.create_node(op, target, args, kwargs, name=str(spec["name"]))
        if spec.get("wrapped") is True:
            node.meta["is_wrapped"] = True
        nodes[spec["name"]] = node
    graph.lint()
    return graph


def _module_spec(module: nn.Module, path: str, tensors: dict[str, Tensor]) -> dict[str, object]:
    """The class, plain attributes, tensors (stored in ``tensors``) and children of ``module``, recursively.

    The root (the fx module, whose class and code are generated) is recorded as a plain ``nn.Module``."""
    where = f"module '{path}'" if path else "the folded model"
    cls = nn.Module if not path else type(module)
    _module_class(cls.__module__, cls.__qualname__, where)
    hooks = [k for k in _MODULE_INTERNALS if "hook" in k and isinstance(vars(module)[k], dict) and vars(module)[k]]
    if hooks:
        raise ValueError(
            f"cannot save the folded model safely: {where} has hooks ({hooks}), which are code; "
            f"remove them or: {_PICKLE_HINT}"
        )
    try:
        attributes = {k: _encode(v) for k, v in vars(module).items() if k not in _MODULE_INTERNALS} if path else {}
    except _Unsupported as err:
        raise ValueError(f"cannot save the folded model safely: {where} holds {err}; {_PICKLE_HINT}") from None
    prefix = f"{path}." if path else ""

    def store(named: dict[str, Tensor | None]) -> dict[str, str | None]:
        tensors.update({f"{prefix}{name}": t.detach() for name, t in named.items() if t is not None})
        return {name: None if t is None else f"{prefix}{name}" for name, t in named.items()}

    return {
        "module": cls.__module__,
        "class": cls.__qualname__,
        "attributes": attributes,
        "parameters": store(module._parameters),
        "buffers": store(module._buffers),
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "children": [
            [name, None if child is None else _module_spec(child, f"{prefix}{name}", tensors)]
            for name, child in module._modules.items()
        ],
    }


#: classes that moved since files of this format were first written: ``(old module, name) -> new module``
_MOVED_CLASSES = {
    ("spikenorm.models.layers", "TimeDistributed"): "spikenorm.synapse",
    ("spikenorm.trace", "TraceSynapse"): "spikenorm.synapse",
}


def _module_class(module_name: object, qualname: object, where: str) -> type[nn.Module]:
    """The nn.Module class named by a spec, if it is a torch.nn or spikenorm class (not an fx module); a class
    that moved (:data:`_MOVED_CLASSES`) is found in its new module."""
    module_name = _MOVED_CLASSES.get((module_name, qualname), module_name)
    allowed = isinstance(module_name, str) and module_name.startswith(_MODULE_NAMESPACES)
    allowed = allowed and isinstance(qualname, str) and all(p.isidentifier() for p in qualname.split("."))
    cls: object = None
    if allowed:
        with contextlib.suppress(ImportError):
            cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
    defined_there = isinstance(cls, type) and (cls.__module__, cls.__qualname__) == (module_name, qualname)
    if not (defined_there and issubclass(cls, nn.Module) and not issubclass(cls, fx.GraphModule)):
        raise ValueError(
            f"cannot save or load the folded model safely: {where} is a {module_name}.{qualname}; "
            f"the safe format rebuilds only torch.nn and spikenorm modules; {_PICKLE_HINT}"
        )
    return cls


def _build_module(spec: dict, tensors: dict[str, Tensor]) -> nn.Module:
    """The module of a :func:`_module_spec`, built without running its ``__init__`` (nor any code from the file)."""
    cls = _module_class(spec["module"], spec["class"], "a module of the file")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name, value in spec["attributes"].items():
        if name in _MODULE_INTERNALS or name.startswith("__"):
            raise ValueError(f"invalid attribute {name!r} in a folded-model file")
        module.__dict__[name] = _decode(value)
    for name, key in spec["parameters"].items():
        module._parameters[name] = None if key is None else nn.Parameter(_stored(tensors, key), requires_grad=False)
    for name, key in spec["buffers"].items():
        module._buffers[name] = None if key is None else _stored(tensors, key)
    module._non_persistent_buffers_set = set(spec["non_persistent"])
    for name, child in spec["children"]:
        module._modules[_checked_path(name, "module name")] = None if child is None else _build_module(child, tensors)
    module.training = False
    return module


def _stored(tensors: dict[str, Tensor], key: str) -> Tensor:
    tensor = tensors.get(key)
    if not isinstance(tensor, Tensor):
        raise ValueError(f"a folded-model file names the tensor {key!r:.80} but does not hold it")
    return tensor
