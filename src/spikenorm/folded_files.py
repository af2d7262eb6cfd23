"""The safe file format of folded models: :func:`save_folded` writes tensors and a JSON description of the modules
and the graph, :func:`load_folded` rebuilds the model from it without running code from the file.

On loading, what a file names is checked against allowlists, because module paths, input names and functions end up
in the Python code that fx generates for the graph: module classes of ``torch.nn`` and spikenorm, pure tensor
functions and methods, and the model functions decorated with :func:`spikenorm.traceable.traceable`. A pickled model
(``save_folded(..., pickle=True)``, or a file of a spikenorm older than the format) loads only with
``trusted=True``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import keyword
import os
import pickle as _pickle
from pathlib import Path
from typing import BinaryIO, Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from spikenorm.traceable import traceable_function, traceable_functions

__all__ = [
    "FOLDED_FORMAT",
    "FOLDED_FORMAT_VERSION",
    "FoldedModel",
    "UnsafeFoldedFileError",
    "load_folded",
    "save_folded",
]


class FoldedModel(fx.GraphModule):
    """An fx GraphModule for inference only: ``train(True)`` raises. What :func:`spikenorm.fold.fold_model` returns
    and :func:`load_folded` rebuilds."""

    def train(self, mode: bool = True) -> "FoldedModel":
        if mode:
            raise ValueError(
                "a folded model is inference-only (its norms are folded into weights and thresholds); "
                "train the original model and fold it again"
            )
        return super().train(False)


FOLDED_FORMAT = "spikenorm.folded"
FOLDED_FORMAT_VERSION = 1

# functions a folded graph may call besides the registered traceable ones (qualified names, resolved on first use):
# pure tensor operations
_TENSOR_FUNCTIONS = (
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
    functions and methods, and the functions decorated with :func:`~spikenorm.traceable.traceable`) with its
    arguments. It can be shared: loading it runs no code from it. A model outside that set (a custom module
    class, a hook, another function) raises a ValueError naming what the format cannot hold.

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
def _tensor_functions() -> dict[str, Callable]:
    functions = {}
    for name in _TENSOR_FUNCTIONS:
        module, _, attribute = name.rpartition(".")
        functions[name] = getattr(importlib.import_module(module), attribute)
    return functions


def _function_name(fn: object) -> str | None:
    """The name under which a file calls ``fn``: an allowed tensor function's or a registered traceable function's;
    None for any other function."""
    functions = {**_tensor_functions(), **traceable_functions()}
    return next((name for name, f in functions.items() if f is fn), None)


def _graph_function(name: object) -> Callable | None:
    """The function a file names, or None when the safe format does not allow it. A traceable function of a spikenorm
    module not imported yet is registered by importing that module (named by the file, so only spikenorm's)."""
    if not isinstance(name, str):
        return None
    if name in _tensor_functions():
        return _tensor_functions()[name]
    module = name.rpartition(".")[0]
    if traceable_function(name) is None and module.startswith("spikenorm.") and _checked_path(module, "module"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return traceable_function(name)


def _node_spec(node: fx.Node) -> dict[str, object]:
    target = node.target
    if node.op == "call_function":
        target = _function_name(node.target)
        if target is None:
            name = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"
            raise ValueError(
                f"cannot save the folded model safely: node '{node.name}' calls {name!r}, which is not "
                "among the functions the safe format allows (pure tensor operations, and model functions "
                f"decorated with @spikenorm.traceable.traceable); {_PICKLE_HINT}"
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
            function = _graph_function(target)
            if function is None:
                raise ValueError(f"a folded-model file calls {target!r:.80}, which the safe format does not allow")
            target = function
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
    """The module of a :func:`_module_spec`, built without running its ``__init__`` (nor any code from the file).

    Its state goes through the class's ``__setstate__``, as when unpickling, so a class that upgrades the state of
    modules saved by an older spikenorm does so for these files too."""
    cls = _module_class(spec["module"], spec["class"], "a module of the file")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    state = dict(vars(module))
    for name, value in spec["attributes"].items():
        if name in _MODULE_INTERNALS or name.startswith("__"):
            raise ValueError(f"invalid attribute {name!r} in a folded-model file")
        state[name] = _decode(value)
    for name, key in spec["parameters"].items():
        state["_parameters"][name] = None if key is None else nn.Parameter(_stored(tensors, key), requires_grad=False)
    for name, key in spec["buffers"].items():
        state["_buffers"][name] = None if key is None else _stored(tensors, key)
    state["_non_persistent_buffers_set"] = set(spec["non_persistent"])
    for name, child in spec["children"]:
        state["_modules"][_checked_path(name, "module name")] = None if child is None else _build_module(child, tensors)
    state["training"] = False
    module.__setstate__(state)
    return module


def _stored(tensors: dict[str, Tensor], key: str) -> Tensor:
    tensor = tensors.get(key)
    if not isinstance(tensor, Tensor):
        raise ValueError(f"a folded-model file names the tensor {key!r:.80} but does not hold it")
    return tensor
