"""Model functions that ``torch.fx`` keeps as one graph node and a folded-model file may name.

``@traceable`` on a module-level function does two things: ``torch.fx.wrap`` (a traced model, e.g. by
:func:`spikenorm.fold.fold_model`, calls it as one ``call_function`` node instead of tracing through it: an input
check that branches on shapes, a spike encoder with a Python loop), and registration under
``"<module>.<name>"``, the name by which :func:`spikenorm.fold.save_folded` writes such a node and
:func:`spikenorm.fold.load_folded` finds the function again. A function in the registry is one the safe file
format may call: it must be a pure function of its arguments, like the tensor operations the format allows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch.fx

__all__ = ["qualified_name", "traceable", "traceable_function", "traceable_functions"]

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}

# torch.fx.wrap registers the namespace of its caller's frame, which must run module-level code; this line, run in
# the decorated function's module namespace, is that call
_WRAP = compile("wrap(name)", "<spikenorm.traceable>", "exec")


def qualified_name(fn: Callable[..., Any]) -> str:
    """``"<module>.<name>"`` of a module-level function, its key in the registry."""
    return f"{fn.__module__}.{fn.__qualname__}"


def traceable(fn: F) -> F:
    """Decorator: ``torch.fx.wrap`` ``fn`` in its module and register it as safe to name in a folded-model file.

    Raises:
        TypeError: ``fn`` is not a function defined at the top level of a module (``torch.fx.wrap`` patches the
            module's global of that name while tracing).
    """
    if not inspect.isfunction(fn) or fn.__qualname__ != fn.__name__:
        raise TypeError(
            f"@traceable takes a function defined at the top level of a module, got {getattr(fn, '__qualname__', fn)!r}"
        )
    exec(_WRAP, fn.__globals__, {"wrap": torch.fx.wrap, "name": fn.__name__})  # noqa: S102 - the fixed line above
    _REGISTRY[qualified_name(fn)] = fn
    return fn


def traceable_function(name: str) -> Callable[..., Any] | None:
    """The function registered as ``name`` (``"<module>.<name>"``), or None."""
    return _REGISTRY.get(name)


def traceable_functions() -> dict[str, Callable[..., Any]]:
    """Every registered function by name (those of the modules imported so far)."""
    return dict(_REGISTRY)
