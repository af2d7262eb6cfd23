"""How an object was built, as data: record, rebuild, flatten and compare construction configs.

A *config* is the LightningCLI form of a constructor call, ``{"class_path": "pkg.Class", "init_args": {...}}``,
whose ``init_args`` hold only plain data (numbers, strings, booleans, ``None``, lists, string-keyed dicts) and
nested configs. A dataclass argument (such as a model's :class:`~spikenorm.models.LayerSpec`) is written as the
dict of its fields, the YAML form LightningCLI reads, and :func:`instantiate` turns that dict back into the
dataclass the constructor's annotation names.

A config is what a checkpoint stores to rebuild its network without the user's code that built it,
what a run logs so that runs can be filtered by any constructor argument, and what a loaded checkpoint is
compared against.

* :class:`RecordsInit`: a mixin; every instance remembers the arguments of its outermost ``__init__`` call
  (defaults filled in). The spikenorm models and surrogates use it; add it to your own module to make its
  checkpoints self-contained (``class MyNet(RecordsInit, nn.Module)``).
* :func:`describe` returns the config of a :class:`RecordsInit` instance, or of a ``functools.partial`` of a
  class (how LightningCLI passes optimizer and scheduler factories), and raises :class:`UnrecordableError`
  saying why for anything else.
* :func:`instantiate` rebuilds an object (or, ``partial=True``, a factory) from a config.
* :func:`flatten` turns nested configs into flat, filterable keys (``model.layers.norm``, ``optimizer.lr``);
  :func:`differences` lists the flat keys on which two configs disagree.
* :func:`with_defaults` / :func:`without_defaults` add or drop the arguments equal to the installed class's
  defaults: complete configs to log and compare, minimal ones to store where a class's arguments may differ
  between versions (torch's optimizers gain arguments between releases).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "RecordsInit",
    "UnrecordableError",
    "class_defaults",
    "class_path_of",
    "describe",
    "differences",
    "flatten",
    "import_object",
    "instantiate",
    "is_config",
    "with_defaults",
    "without_defaults",
]

_PLAIN = (bool, int, float, str, type(None))


class UnrecordableError(TypeError):
    """An object whose construction cannot be written down as a config (the message says why)."""


def class_path_of(cls: type) -> str:
    """``module.QualifiedName`` of a class, the ``class_path`` that :func:`instantiate` imports."""
    return f"{cls.__module__}.{cls.__qualname__}"


def is_config(value: Any) -> bool:
    """Whether ``value`` is a config dict (has a string ``class_path``)."""
    return isinstance(value, Mapping) and isinstance(value.get("class_path"), str)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain data (tuples become lists, dataclasses dicts of their fields, recorded objects configs),
    or raise."""
    if isinstance(value, _PLAIN):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.init]
        return {name: _plain(getattr(value, name), f"{where}.{name}") for name in fields}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise UnrecordableError(f"{where} is a dict with non-string keys")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    return describe(value, where)


class RecordsInit:
    """Mixin: an instance remembers how it was constructed, as a config (see :func:`describe`).

    Every subclass's ``__init__`` is wrapped; only the outermost call (the one for the instance's own class)
    records, after it returns, with the signature's defaults filled in. An argument that is not plain data or
    a recorded object makes the instance unrecordable; :func:`describe` then raises with the argument's name.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls, cls.__dict__["__init__"])


def _recording(owner: type, init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        outermost = next(c for c in type(self).__mro__ if "__init__" in c.__dict__)
        if outermost is not owner:
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])  # drop self
        for name, parameter in signature.parameters.items():  # **kwargs are recorded as plain arguments
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and arguments.pop(name, ()):
                object.__setattr__(self, "_init_config", f"positional *{name} arguments cannot be recorded")
                return
        path = class_path_of(type(self))
        try:
            record: dict[str, Any] | str = {
                "class_path": path,
                "init_args": {k: _plain(v, f"{path} argument {k!r}") for k, v in arguments.items()},
            }
        except UnrecordableError as error:
            record = str(error)
        object.__setattr__(self, "_init_config", record)

    return wrapper


def describe(obj: Any, where: str | None = None) -> dict[str, Any]:
    """The config that rebuilds ``obj``: ``{"class_path": ..., "init_args": {...}}``.

    Accepts a :class:`RecordsInit` instance (every argument, defaults filled in) and a ``functools.partial``
    of a class with keyword arguments (LightningCLI's optimizer/scheduler factories: the arguments given;
    :func:`with_defaults` adds the class's defaults).

    Raises:
        UnrecordableError: anything else, or a recorded object one of whose arguments was not plain data.
    """
    where = where or type(obj).__name__
    record = getattr(obj, "_init_config", None)
    if isinstance(record, dict):
        return record
    if isinstance(record, str):
        raise UnrecordableError(record)
    if isinstance(obj, functools.partial) and inspect.isclass(obj.func) and not obj.args:
        return {
            "class_path": class_path_of(obj.func),
            "init_args": {k: _plain(v, f"{where} argument {k!r}") for k, v in obj.keywords.items()},
        }
    raise UnrecordableError(
        f"{where} ({class_path_of(type(obj))}) does not record how it was built: spikenorm models do; for your own "
        "module add the spikenorm.config.RecordsInit mixin, for an optimizer pass functools.partial(Class, ...)"
    )


def import_object(class_path: str) -> Any:
    """The object a dotted path names (``package.module.Class``, nested classes included)."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {class_path!r} is not of the form 'package.module.Class'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError:  # a nested class: import the outer one and walk down
        target = import_object(module_name)
    try:
        return getattr(target, name)
    except AttributeError as error:
        raise ValueError(f"class_path {class_path!r}: {module_name} has no attribute {name!r}") from error


def _build(value: Any) -> Any:
    if is_config(value):
        return instantiate(value)
    if isinstance(value, list):
        return [_build(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _build(v) for k, v in value.items()}
    return value


def _dataclass_parameters(cls: Any) -> dict[str, type]:
    """The constructor parameters of class ``cls`` annotated with a dataclass (alone or in a union with None)."""
    if not inspect.isclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(inspect.unwrap(cls.__init__))
    except (AttributeError, NameError, SyntaxError, TypeError):  # annotations that do not resolve: none found
        return {}
    found = {}
    for name, hint in hints.items():
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        classes = [m for m in members if dataclasses.is_dataclass(m)]
        if len(classes) == 1:
            found[name] = classes[0]
    return found


def instantiate(config: Mapping[str, Any], partial: bool = False) -> Any:
    """Build the object a config describes (nested configs in ``init_args`` are built first).

    Args:
        config: ``{"class_path": ..., "init_args": {...}}``.
        partial: return ``functools.partial(Class, **init_args)`` (a factory, e.g. an optimizer that still
            needs its parameters) instead of an instance.
    """
    if not is_config(config):
        raise ValueError(f"expected a config with a 'class_path', got {config!r}")
    cls = import_object(config["class_path"])
    init_args = {k: _build(v) for k, v in (config.get("init_args") or {}).items()}
    for name, dataclass in _dataclass_parameters(cls).items():
        _gather_flat_fields(cls, name, dataclass, init_args)
        if isinstance(init_args.get(name), Mapping):  # the dict of a dataclass's fields -> the dataclass
            default = inspect.signature(cls).parameters[name].default
            base = default if isinstance(default, dataclass) else None
            given = init_args[name]
            init_args[name] = dataclass(**given) if base is None else dataclasses.replace(base, **given)
    return functools.partial(cls, **init_args) if partial else cls(**init_args)


def _gather_flat_fields(cls: type, name: str, dataclass: type, init_args: dict[str, Any]) -> None:
    """Move arguments that ``cls`` does not take but that are fields of its dataclass parameter ``name`` into
    that parameter's mapping: configs written before the fields were grouped (e.g. a model's flat ``norm=...``
    from before :class:`~spikenorm.models.LayerSpec`) build the same object."""
    taken = inspect.signature(cls).parameters
    flat = {key for key in init_args if key not in taken and key in {f.name for f in dataclasses.fields(dataclass)}}
    if flat:
        grouped = dict(init_args.get(name) or {})
        grouped.update({key: init_args.pop(key) for key in sorted(flat)})
        init_args[name] = grouped


def class_defaults(cls: Any) -> dict[str, Any]:
    """The plain-data defaults of a class's keyword arguments (none if it cannot be inspected); where the
    constructor passes ``**kwargs`` on, the defaults of the base classes' constructors it reaches too."""
    try:
        signatures = [inspect.signature(cls)]
        if inspect.isclass(cls):
            signatures += [inspect.signature(base.__init__) for base in cls.__mro__[1:]]
    except (ValueError, TypeError):
        return {}
    defaults: dict[str, Any] = {}
    for signature in signatures:
        for p in signature.parameters.values():
            if p.name in defaults or p.default is inspect.Parameter.empty:
                continue
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                try:
                    defaults[p.name] = _plain(p.default, p.name)
                except UnrecordableError:
                    continue
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return defaults


def _defaults(class_path: str) -> dict[str, Any]:
    """:func:`class_defaults` of the class a class path names (none if it cannot be imported)."""
    try:
        return class_defaults(import_object(class_path))
    except ValueError:
        return {}


def with_defaults(value: Any) -> Any:
    """``value`` with every config's missing arguments set to the installed class's defaults, recursively.

    Used to log complete configurations and to compare a stored config with one of a newer spikenorm, whose
    classes may have gained arguments (an argument the old config lacks compares as its default). A dataclass
    argument's fields left out get the dataclass's defaults; a dataclass that names parts built by other classes
    (as :class:`~spikenorm.models.LayerSpec` names its surrogate and its options) declares
    ``complete_config_fields(fields) -> fields``, which fills in what those classes default to, so that
    ``surrogate_kwargs: {}`` and ``surrogate_kwargs: {alpha: 4.0}`` (Sigmoid's default) compare equal.
    """
    if is_config(value):
        defaults = _defaults(value["class_path"])
        init_args = {k: with_defaults(v) for k, v in (value.get("init_args") or {}).items()}
        init_args = {**defaults, **init_args}
        for name, dataclass in _dataclass_parameters(_import_or_none(value["class_path"])).items():
            if not isinstance(init_args.get(name), Mapping):
                continue
            if isinstance(defaults.get(name), Mapping):  # fields left out: their defaults
                init_args[name] = {**defaults[name], **init_args[name]}
            complete = getattr(dataclass, "complete_config_fields", None)
            if complete is not None:
                init_args[name] = complete(init_args[name])
        return {**value, "init_args": init_args}
    return value


def _import_or_none(class_path: str) -> Any:
    try:
        return import_object(class_path)
    except (ImportError, ValueError):
        return None


def without_defaults(value: Any) -> Any:
    """``value`` with every argument equal to the installed class's default left out (recursively): what a
    checkpoint stores for factories such as optimizers, so that it still loads where the class has other
    (newer or older) arguments."""
    if is_config(value):
        defaults = _defaults(value["class_path"])
        missing = object()
        init_args = {
            k: without_defaults(v) for k, v in (value.get("init_args") or {}).items() if defaults.get(k, missing) != v
        }
        return {**value, "init_args": init_args}
    return value


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Flat ``prefix.key`` entries of a config or dict: ``init_args`` disappear from the keys.

    ``flatten(describe(SpikingVGG(layers=LayerSpec(surrogate_kwargs={"alpha": 4.0}))), "model")`` gives
    ``{"model.class_path": "...SpikingVGG", "model.layers.norm": "tdbn", "model.layers.surrogate_kwargs.alpha": 4.0,
    ...}``. Lists and scalars are leaves.
    """
    if is_config(value):
        flat = {f"{prefix}.class_path": value["class_path"]}
        flat.update(flatten(dict(value.get("init_args") or {}), prefix))
        return flat
    if isinstance(value, Mapping):
        if not value:
            return {prefix: {}}
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def differences(old: Any, new: Any, prefix: str) -> list[str]:
    """The flat keys on which ``old`` and ``new`` differ, as ``"key: old -> new"`` lines (sorted).

    Arguments a config lacks count as the class's defaults (:func:`with_defaults`), and ``None``, ``{}`` and an
    absent key are the same empty value (``norm_kwargs=None`` and ``norm_kwargs={}`` build the same layer).
    """
    missing = object()
    old_flat, new_flat = flatten(with_defaults(old), prefix), flatten(with_defaults(new), prefix)
    lines = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        a, b = old_flat.get(key, missing), new_flat.get(key, missing)
        if all(v is missing or v is None or v == {} for v in (a, b)):
            continue
        one_side_none = (a is None and b is missing) or (a is missing and b is None)
        if one_side_none and any(k.startswith(f"{key}.") for k in (old_flat | new_flat)):
            continue  # None on one side, a dict on the other: its entries are listed instead
        if a != b:
            lines.append(
                f"{key}: {'(absent)' if a is missing else repr(a)} -> {'(absent)' if b is missing else repr(b)}"
            )
    return lines
