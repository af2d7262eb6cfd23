"""NIR export and import: a folded spikenorm network as a NIR graph, and a NIR graph as a spikenorm network.

NIR (Neuromorphic Intermediate Representation; Pedersen et al., "Neuromorphic intermediate representation:
A unified instruction set for interoperable brain-inspired computing", Nature Communications 15, 8122, 2024)
describes a network as continuous-time nodes joined by identity edges; the edges entering a node are summed.
spikenorm neurons are discrete: at step ``t`` a neuron charges ``h_t`` from its input ``x_t``, fires
``s_t = 1[h_t > theta]`` and hard-resets ``v_t = h_t (1 - s_t) + v_r s_t`` (:mod:`spikenorm.neurons`). One
spikenorm step is the forward-Euler step of length ``dt`` of NIR's ODE, with the reset in the same step
(``v_leak = 0``; every parameter is an array of the neuron's per-sample feature shape). Each neuron class
gives its own node (:meth:`spikenorm.neurons.SpikingNeuron.nir_node`); the base class derives it from the
declared :class:`~spikenorm.recurrence.LinearCharge` (input scale ``s = 1`` below; another ``s`` multiplies
``r``, or ``w_in`` for CubaLIF):

* IF ``h_t = v_{t-1} + x_t``  <->  NIR ``IF``: ``dv/dt = R I``; ``r = 1/dt``.
* LIF ``h_t = d v_{t-1} + x_t``  <->  NIR ``LIF``: ``tau dv/dt = (v_leak - v) + R I``; ``tau = dt/(1 - d)``,
  ``r = tau/dt`` (a LIF with ``d = 1`` is exported as an IF).
* CLIF ``c_t = a c_{t-1} + x_t``, ``h_t = b v_{t-1} + c_t``  <->  NIR ``CubaLIF``:
  ``tau_syn dI/dt = -I + w_in S``, ``tau_mem dv/dt = (v_leak - v) + R I``; ``tau_syn = dt/(1 - a)``,
  ``w_in = tau_syn/dt``, ``tau_mem = dt/(1 - b)``, ``r = tau_mem/dt``.
* threshold ``theta`` (scalar, per channel ``[C]`` or per element ``[C, H, W]``)  <->  ``v_threshold``
  broadcast to the feature shape (NIR fires on ``v > v_threshold``, spikenorm on ``h > theta``);
  hard reset value ``v_r``  <->  ``v_reset``.

The Euler step of ``tau dv/dt = (v_leak - v) + R I`` is ``v_t = (1 - dt/tau) v_{t-1} + (dt R/tau) I_t``:
the decay is ``d = 1 - dt/tau`` and the input gain ``dt R/tau = 1``; the CubaLIF membrane takes the synaptic
current of the same step (``I_t``, like spikenorm's ``c_t``). A :class:`~spikenorm.fold.SignFlip` left by a
fold (spike when ``-h_t > theta``) is exported exactly as a ``Scale`` node of ±1 in front of the neuron and
``v_reset = sign * v_r``: the dynamics are linear in the state, so negating the input negates the trajectory.

Layers: ``nn.Linear`` -> ``Affine`` (``Linear`` without bias); ``nn.Conv1d``/``nn.Conv2d`` -> ``Conv1d``/
``Conv2d`` (stride, padding, dilation, input shape); ``nn.AvgPool2d`` without padding -> ``AvgPool2d``;
flatten -> ``Flatten`` (``start_dim``/``end_dim`` index the per-sample shape, without time and batch, as NIR
types do); a global average pool ``x.mean((3, 4))`` -> ``AvgPool2d`` over the whole map (metadata
``spikenorm_op = "mean"``, so :func:`from_nir` computes it bit for bit as the model did) and ``Flatten``; a
residual ``a + b`` -> two edges into the consumer (NIR sums the edges entering a node); dropout and identity
vanish (the model is in eval mode). Every node's ``input_type``/``output_type`` comes from running
``sample_input`` through the model. The graph metadata holds ``dt`` (NIR has no field for the step); the
discretization above is the contract a simulator must follow to reproduce the spikes.

Refused with a ValueError naming the node, as NIR cannot express them faithfully: soft reset (NIR neurons
only reset to ``v_reset``), max pooling, padded average pooling, grouped convolutions (NIR 1.0.8 types a
grouped conv's input with ``in_channels / groups`` channels), a threshold stabiliser without a fixed inference
threshold (OTS with ``ots_eval="dynamic"``; one with a fixed threshold exports it), norm layers (fold first),
binary-weight layers, CLIF without leak (``a = 1`` or ``b = 1``: infinite time constant), a neuron without a NIR
mapping (no linear charge and no ``nir_node`` of its own, or more than one current stage), and any other module
or operation.

snnTorch 1.0 (``snntorch.import_nir.import_from_nir``) reads NIR time in seconds with a fixed ``dt = 1e-4``:
export with ``to_nir(..., dt=1e-4)`` for it. It then reproduces LIF (as ``Leaky``) and CLIF (as ``Synaptic``)
networks of Affine/Linear, Conv2d, AvgPool2d and residual sums spike for spike, with these differences: it
asserts one ``v_threshold`` per layer (MPBN-folded per-channel or per-element thresholds are refused); its
reset bookkeeping (``spk - reset``) diverges for a negative threshold; it ignores ``v_reset`` (always resets to
0); it builds an IF as a ``Leaky`` with ``beta = 0.9``, subtractive reset and ``init_hidden=False`` (not an IF,
and its tuple output breaks the graph); and it maps NIR ``Flatten(start_dim)`` to
``torch.nn.Flatten(start_dim)`` on the batched tensor, off by the batch axis.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from spikenorm.binary import BinaryLayer
from spikenorm.extras import needs_extra
from spikenorm.fold import FoldedModel, SignFlip, fold_model
from spikenorm.neurons import CLIF, IF, LIF, SpikingNeuron
from spikenorm.norm import TimeMajorNorm
from spikenorm.synapse import TimeDistributed, TraceSynapse

with needs_extra("export", __name__):
    import nir
from spikenorm.validation import check_time_major

_ADD = (operator.add, torch.add)
_FLATTEN = ("flatten", torch.flatten)
_MEAN = ("mean", torch.mean)
_PASS_THROUGH = (nn.Dropout, nn.Identity)
_UNIT_GAIN_RTOL = 1e-12  # float64 round-off of tau/dt * dt/tau


# --- spikenorm -> NIR ----------------------------------------------------------------------------------


def to_nir(model: nn.Module, sample_input: Tensor, dt: float = 1.0) -> nir.NIRGraph:
    """The NIR graph of a folded spikenorm network (see the module docstring for the mapping).

    Args:
        model: the output of :func:`spikenorm.fold.fold_model`, or a network without norm layers (which
            :func:`~spikenorm.fold.fold_model` then only traces, fixing the thresholds of threshold stabilisers).
        sample_input: one time-major batch ``[T, B, ...]``; only its shapes matter (a batch of 1 is enough).
        dt: the duration of one spikenorm step in NIR's time unit (``1e-4`` for snnTorch's import).

    Raises:
        ValueError: norm layers left (fold first), or a node NIR cannot represent (named).
        TypeError: a network without norm layers that ``torch.fx`` cannot trace.
    """
    check_time_major(sample_input, "to_nir sample_input")
    if not dt > 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a positive finite number, got {dt}")
    norms = [name for name, m in model.named_modules() if isinstance(m, TimeMajorNorm)]
    if norms:
        raise ValueError(
            f"to_nir needs a network without norm layers, but {type(model).__name__} has {norms}; "
            "call spikenorm.fold.fold_model(model) first and export its result"
        )
    gm = model if isinstance(model, FoldedModel) else fold_model(model)
    return _GraphBuilder(gm, _record_shapes(gm, sample_input), dt).build()


def write_nir(model: nn.Module, sample_input: Tensor, path: str | Path, dt: float = 1.0) -> Path:
    """:func:`to_nir` and ``nir.write`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    graph = to_nir(model, sample_input, dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(path, graph)
    return path


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.shapes[n] = tuple(out.shape)
        return out


def _record_shapes(gm: fx.GraphModule, sample_input: Tensor) -> dict[fx.Node, tuple[int, ...]]:
    """Per-step shape (without time and batch) of every tensor node, from one run on ``sample_input``."""
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(sample_input)
    leading = tuple(sample_input.shape[:2])
    for node, shape in recorder.shapes.items():
        if shape[:2] != leading:
            raise ValueError(
                f"node '{node.name}' ({node.format_node()}) changes the time/batch axes {leading} -> {shape[:2]}; "
                "NIR nodes act on one sample at one step"
            )
    return {node: shape[2:] for node, shape in recorder.shapes.items()}


def _array(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _per_element(value: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A scalar, per-channel ``[C]`` or per-element tensor broadcast to the full feature ``shape``."""
    return value.reshape(value.shape + (1,) * (len(shape) - value.ndim)).expand(shape)


class _GraphBuilder:
    """Walks a folded model's fx graph; ``sources[n]`` are the NIR nodes whose summed outputs give fx node ``n``."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...]], dt: float) -> None:
        self.gm, self.shapes, self.dt = gm, shapes, float(dt)
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[fx.Node, list[str]] = {}

    def build(self) -> nir.NIRGraph:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                if not isinstance(node.args[0], fx.Node):
                    raise _unsupported(node, "the model output must be one tensor")
                self._add("output", nir.Output(np.array(self.shapes[node.args[0]])), node.args[0])
            elif node.op == "placeholder":
                self.nodes["input"] = nir.Input(np.array(self.shapes[node]))
                self.sources[node] = ["input"]
            elif node.users:  # a node nobody uses (an input check) does not change the output
                self._convert(node)
        metadata = {"generator": "spikenorm", "dt": self.dt}
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)

    def _add(self, name: str, nir_node: nir.NIRNode, source: fx.Node) -> None:
        """Add ``nir_node`` fed by the NIR nodes that make up fx node ``source``."""
        inputs = self.sources[source]
        if len(set(inputs)) != len(inputs):
            raise ValueError(
                f"cannot export '{name}': its input sums one node with itself ({inputs}); NIR has no duplicate edges"
            )
        self.nodes[name] = nir_node
        self.edges += [(src, name) for src in inputs]

    def _convert(self, node: fx.Node) -> None:
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if (
            node.op == "call_function"
            and node.target in _ADD
            and not node.kwargs
            and len(node.args) == 2
            and all(isinstance(a, fx.Node) for a in node.args)
        ):
            self.sources[node] = self.sources[node.args[0]] + self.sources[node.args[1]]
            return
        if source is None:
            raise _unsupported(node, f"{node.op} '{getattr(node.target, '__name__', node.target)}' has no tensor input")
        if node.op == "call_module":
            self._convert_module(node, source, self.gm.get_submodule(node.target))
        elif node.target in _FLATTEN and node.op in ("call_method", "call_function"):
            self._flatten(node.name, node, source)
        elif node.target in _MEAN and node.op in ("call_method", "call_function"):
            self._global_mean(node, source)
        else:
            target = getattr(node.target, "__name__", node.target)
            raise _unsupported(node, f"{node.op} '{target}' has no NIR equivalent")
        self.sources.setdefault(node, [node.name])

    def _convert_module(self, node: fx.Node, source: fx.Node, module: nn.Module) -> None:
        if isinstance(module, TraceSynapse):
            module = module.layer
        if isinstance(module, TimeDistributed):
            module = module.module
        in_shape = self.shapes[source]
        if isinstance(module, BinaryLayer):
            raise _unsupported(
                node,
                f"binary-weight layer {type(module).__name__}: its forward weights are not "
                "the latent .weight; export is not supported",
            )
        if isinstance(module, _PASS_THROUGH):
            self.sources[node] = self.sources[source]
        elif isinstance(module, nn.Linear):
            if len(in_shape) != 1:
                raise _unsupported(node, f"nn.Linear on per-step input of shape {in_shape}; NIR Affine takes vectors")
            weight = _array(module.weight)
            layer = nir.Linear(weight) if module.bias is None else nir.Affine(weight, _array(module.bias))
            self._add(node.name, layer, source)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            self._add(node.name, _conv(node, module, in_shape), source)
        elif isinstance(module, nn.AvgPool2d):
            self._add(node.name, _avg_pool(node, module), source)
        elif isinstance(module, nn.Flatten):
            self._flatten(node.name, node, source)
        elif isinstance(module, SpikingNeuron):
            self._neuron(node, source, module)
        else:
            raise _unsupported(node, f"module {type(module).__name__} has no NIR equivalent")

    def _flatten(self, name: str, node: fx.Node, source: fx.Node) -> None:
        in_shape, out_shape = self.shapes[source], self.shapes[node]
        if in_shape == out_shape:
            self.sources[node] = self.sources[source]
            return
        start = next(i for i, (a, b) in enumerate(zip(in_shape, out_shape)) if a != b)
        end = len(in_shape) - len(out_shape) + start
        if in_shape[end + 1 :] != out_shape[start + 1 :] or math.prod(in_shape[start : end + 1]) != out_shape[start]:
            raise _unsupported(node, f"the reshape {in_shape} -> {out_shape} is not a flatten")
        end_dim = -1 if end == len(in_shape) - 1 else end
        self._add(name, nir.Flatten(np.array(in_shape), start_dim=start, end_dim=end_dim), source)

    def _global_mean(self, node: fx.Node, source: fx.Node) -> None:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        rank = len(self.shapes[source]) + 2
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if len(self.shapes[source]) != 3 or sorted(d % rank for d in dims) != [rank - 2, rank - 1]:
            raise _unsupported(
                node,
                f"mean over dims {dims} of a [T, B, *{self.shapes[source]}] tensor; only the "
                "global average pool over H, W of [T, B, C, H, W] maps to NIR",
            )
        channels, height, width = self.shapes[source]
        pool = nir.AvgPool2d(
            kernel_size=np.array([height, width]),
            stride=np.array([height, width]),
            padding=np.array([0, 0]),
            metadata={"spikenorm_op": "mean"},
        )
        self._add(node.name, pool, source)
        self.sources[node] = [node.name]
        if not node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False):
            flat = f"{node.name}_flatten"
            self._add(flat, nir.Flatten(np.array([channels, 1, 1]), start_dim=0, end_dim=-1), node)
            self.sources[node] = [flat]

    def _neuron(self, node: fx.Node, source: fx.Node, neuron: SpikingNeuron) -> None:
        shape = self.shapes[node]
        threshold = neuron.threshold
        if neuron.threshold_stabilizer is not None:
            try:
                threshold = neuron.threshold_stabilizer.fixed_threshold(threshold)
            except ValueError as err:
                raise _unsupported(node, f"its {type(neuron.threshold_stabilizer).__name__}: {err}") from err
        if neuron.reset != "hard":
            raise _unsupported(node, "soft reset (v -= theta s) cannot be expressed; NIR neurons reset to v_reset")
        sign = torch.ones(shape, dtype=neuron.threshold.dtype)
        if neuron.membrane_norm is not None:
            if not isinstance(neuron.membrane_norm, SignFlip):
                norm = type(neuron.membrane_norm).__name__
                raise _unsupported(node, f"membrane norm {norm} left; fold the model first")
            sign = _per_element(neuron.membrane_norm.sign.to(sign.dtype), shape)
            flip = f"{node.name}_sign"
            meta = {"spikenorm_op": f"SignFlip of neuron '{node.target}': input and v_reset negated where -1"}
            self._add(flip, nir.Scale(_array(sign), metadata=meta), source)
            self.sources[node] = [flip]
            source = node
        theta = _array(_per_element(threshold, shape))
        v_reset = _array(sign * neuron.reset_value + 0.0)  # + 0.0: no negative zeros
        try:
            nir_node = neuron.nir_node(theta, v_reset, self.dt, {"spikenorm_neuron": type(neuron).__name__})
        except ValueError as err:
            raise _unsupported(node, str(err)) from err
        self._add(node.name, nir_node, source)
        self.sources[node] = [node.name]


def _unsupported(node: fx.Node, what: str) -> ValueError:
    where = f"'{node.target}'" if node.op == "call_module" else f"'{node.name}'"
    return ValueError(f"cannot export node {where} to NIR: {what}")


def _conv(node: fx.Node, conv: nn.Conv1d | nn.Conv2d, in_shape: tuple[int, ...]) -> nir.NIRNode:
    if conv.padding_mode != "zeros":
        raise _unsupported(node, f"padding_mode={conv.padding_mode!r} has no NIR equivalent (zeros only)")
    if conv.groups != 1:  # nir 1.0.8 types a conv's input as weight.shape[1] = in_channels / groups channels
        raise _unsupported(
            node,
            f"a grouped convolution (groups={conv.groups}) would be typed by NIR with "
            f"{conv.in_channels // conv.groups} instead of {conv.in_channels} input channels",
        )
    bias = _array(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels, dtype=_array(conv.weight).dtype)
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    if isinstance(conv, nn.Conv1d):
        return nir.Conv1d(
            input_shape=in_shape[1],
            weight=_array(conv.weight),
            stride=conv.stride[0],
            padding=padding if isinstance(padding, str) else padding[0],
            dilation=conv.dilation[0],
            groups=1,
            bias=bias,
        )
    return nir.Conv2d(
        input_shape=tuple(in_shape[1:]),
        weight=_array(conv.weight),
        stride=tuple(conv.stride),
        padding=padding,
        dilation=tuple(conv.dilation),
        groups=1,
        bias=bias,
    )


def _avg_pool(node: fx.Node, pool: nn.AvgPool2d) -> nir.AvgPool2d:
    kernel = np.broadcast_to(np.asarray(pool.kernel_size), (2,))
    stride = np.broadcast_to(np.asarray(pool.stride if pool.stride is not None else pool.kernel_size), (2,))
    if np.any(np.asarray(pool.padding) != 0) or pool.ceil_mode or pool.divisor_override is not None:
        raise _unsupported(
            node,
            "average pooling with padding (NIR does not say whether padding counts in the "
            "average), ceil_mode or divisor_override has no NIR equivalent",
        )
    return nir.AvgPool2d(kernel_size=kernel.copy(), stride=stride.copy(), padding=np.array([0, 0]))


# --- NIR -> spikenorm ----------------------------------------------------------------------------------


class NIRNetwork(nn.Module):
    """A NIR graph rebuilt from spikenorm layers: time-major ``[T, B, *input]`` in, ``[T, B, *output]`` out.

    The nodes run in topological order; a node's input is the sum of its incoming edges (NIR's rule), added
    in edge order. Like every spikenorm network it starts each forward from zero state.
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        inputs: dict[str, list[str]],
        order: list[str],
        input_name: str,
        output_name: str,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.inputs, self.order = inputs, order
        self.input_name, self.output_name = input_name, output_name

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, "NIRNetwork")
        values = {self.input_name: x}
        for name in self.order:
            values[name] = self.layers[name](self._gather(values, name))
        return self._gather(values, self.output_name)

    def _gather(self, values: dict[str, Tensor], name: str) -> Tensor:
        return functools.reduce(operator.add, [values[src] for src in self.inputs[name]])


class _Scale(nn.Module):
    """``x * scale`` with ``scale`` shaped like the per-step features (NIR ``Scale``)."""

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class _AvgPool2d(nn.Module):
    """NIR ``AvgPool2d`` on ``[T, B, C, H, W]``; ``as_mean`` computes it as ``mean`` over H, W, bit for bit as a
    model's global average pool (set from the metadata ``spikenorm_op = "mean"`` that :func:`to_nir` writes)."""

    def __init__(
        self, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], as_mean: bool
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.as_mean = kernel, stride, padding, as_mean

    def forward(self, x: Tensor) -> Tensor:
        if self.as_mean and tuple(x.shape[-2:]) == self.kernel:
            return x.mean(dim=(-2, -1), keepdim=True)
        y = F.avg_pool2d(x.flatten(0, 1), self.kernel, self.stride, self.padding)
        return y.unflatten(0, x.shape[:2])


def from_nir(graph: nir.NIRGraph | str | Path, dt: float | None = None) -> NIRNetwork:
    """An executable spikenorm network (:class:`NIRNetwork`) of a NIR graph or ``.nir`` file.

    Supported nodes: Input, Output, Affine, Linear, Conv1d, Conv2d, AvgPool2d, Flatten, Scale, IF, LIF and
    CubaLIF with ``v_leak = 0``, one time constant and one ``v_reset`` per node (spikenorm neurons have one
    decay and one reset value per layer); thresholds may be per element. The inverse of :func:`to_nir`'s
    parameter mapping gives the neuron: ``d = 1 - dt/tau`` (per time constant), an input gain other than 1
    (``r dt`` for IF, ``r dt/tau`` for LIF, ``(w_in dt/tau_syn)(r dt/tau_mem)`` for CubaLIF) becomes a
    multiplication in front of it.

    Args:
        graph: a graph, or the path of a file written by ``nir.write``.
        dt: the step length in the graph's time unit; default: the graph's ``dt`` metadata (written by
            :func:`to_nir`).

    Raises:
        ValueError: no ``dt``, an unsupported node or parameter (named), a recurrent graph.
    """
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    if dt is None:
        if "dt" not in graph.metadata:
            raise ValueError(
                "the NIR graph has no 'dt' metadata (it was not written by spikenorm): pass dt, the "
                "length of one time step in the graph's time unit (snnTorch uses 1e-4)"
            )
        dt = float(graph.metadata["dt"])
    inputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"from_nir needs one Input and one Output node, got inputs {inputs} and outputs {outputs}")
    keys = {name: name.replace(".", "_") for name in graph.nodes}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"NIR node names collide once '.' is replaced by '_': {sorted(graph.nodes)}")
    incoming: dict[str, list[str]] = {keys[name]: [] for name in graph.nodes}
    for src, dst in graph.edges:
        incoming[keys[dst]].append(keys[src])
    order = _topological_order(incoming, keys[inputs[0]])
    order.remove(keys[outputs[0]])
    layers = {}
    for name, node in graph.nodes.items():
        if keys[name] in order:
            try:
                layers[keys[name]] = _module_from_nir(node, dt)
            except ValueError as err:
                raise ValueError(f"cannot import NIR node '{name}' ({type(node).__name__}): {err}") from err
    return NIRNetwork(layers, incoming, order, keys[inputs[0]], keys[outputs[0]])


def _topological_order(incoming: dict[str, list[str]], input_name: str) -> list[str]:
    done, order = {input_name}, []
    pending = [name for name in incoming if name != input_name]
    while pending:
        ready = [name for name in pending if incoming[name] and all(src in done for src in incoming[name])]
        if not ready:
            raise ValueError(
                f"the NIR graph is recurrent or has nodes without input ({pending}); from_nir runs feed-forward graphs"
            )
        done.update(ready)
        order += ready
        pending = [name for name in pending if name not in done]
    return order


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def _module_from_nir(node: nir.NIRNode, dt: float) -> nn.Module:
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = _tensor(node.weight)
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
        bias = _tensor(node.bias) if isinstance(node, nir.Affine) else None
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias, requires_grad=False)
        return layer
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        weight = _tensor(node.weight)
        cls = nn.Conv1d if isinstance(node, nir.Conv1d) else nn.Conv2d
        padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
        conv = cls(
            weight.shape[1] * node.groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=_ints(node.stride),
            padding=padding,
            dilation=_ints(node.dilation),
            groups=node.groups,
            dtype=weight.dtype,
        )
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(_tensor(node.bias), requires_grad=False)
        return TimeDistributed(conv)
    if isinstance(node, nir.AvgPool2d):
        kernel, stride, padding = (
            tuple(np.broadcast_to(np.asarray(v), (2,)).tolist()) for v in (node.kernel_size, node.stride, node.padding)
        )
        return _AvgPool2d(kernel, stride, padding, as_mean=node.metadata.get("spikenorm_op") == "mean")
    if isinstance(node, nir.Flatten):
        start = node.start_dim + 2 if node.start_dim >= 0 else node.start_dim
        end = node.end_dim + 2 if node.end_dim >= 0 else node.end_dim
        return nn.Flatten(start, end)
    if isinstance(node, nir.Scale):
        return _Scale(_tensor(node.scale))
    if isinstance(node, (nir.IF, nir.LIF, nir.CubaLIF)):
        return _neuron_from_nir(node, dt)
    raise ValueError(
        "unsupported node type; from_nir supports Input, Output, Affine, Linear, Conv1d, Conv2d, "
        "AvgPool2d, Flatten, Scale, IF, LIF and CubaLIF"
    )


def _ints(value: Any) -> int | tuple[int, ...]:
    array = np.asarray(value)
    return int(array) if array.ndim == 0 else tuple(int(v) for v in array)


def _uniform(name: str, value: np.ndarray) -> float:
    flat = np.asarray(value, dtype=np.float64).ravel()
    if not np.all(flat == flat[0]):
        raise ValueError(f"{name} must be the same for every neuron of a node (spikenorm neurons share one per layer)")
    return float(flat[0])


def _neuron_from_nir(node: nir.IF | nir.LIF | nir.CubaLIF, dt: float) -> nn.Module:
    if not isinstance(node, nir.IF) and np.any(np.asarray(node.v_leak) != 0):
        raise ValueError("v_leak must be 0 (spikenorm neurons leak towards 0)")
    reset_value = _uniform("v_reset", node.v_reset)
    threshold = _tensor(node.v_threshold)
    if isinstance(node, nir.IF):
        neuron, gain = IF(reset_value=reset_value), np.asarray(node.r) * dt
    elif isinstance(node, nir.LIF):
        tau = _uniform("tau", node.tau)
        neuron, gain = LIF(decay=1 - dt / tau, reset_value=reset_value), np.asarray(node.r) * dt / tau
    else:
        tau_mem, tau_syn = _uniform("tau_mem", node.tau_mem), _uniform("tau_syn", node.tau_syn)
        neuron = CLIF(decay=1 - dt / tau_mem, current_decay=1 - dt / tau_syn, reset_value=reset_value)
        gain = (np.asarray(node.w_in) * dt / tau_syn) * (np.asarray(node.r) * dt / tau_mem)
    neuron.threshold = threshold
    gain = np.broadcast_to(gain, threshold.shape)
    if np.allclose(gain, 1.0, rtol=_UNIT_GAIN_RTOL, atol=0.0):
        return neuron
    return nn.Sequential(_Scale(_tensor(gain).to(threshold.dtype)), neuron)
