"""``torch.compile`` of a task's network, in place: the tasks' ``compile`` option.

A task compiles its network with :meth:`torch.nn.Module.compile`, which keeps the module object (so callbacks,
optimizers and checkpoints see the same parameters, and the state dict keeps its keys: no ``_orig_mod.``
prefix) and compiles its forward lazily, at the first call. Two settings differ from a bare ``torch.compile``:

* ``dynamic=False`` unless given: every new input shape (the smaller last batch of an epoch, another ``T`` in
  evaluation) compiles one more static graph instead of a graph with symbolic sizes. That costs no more
  compilations in a usual run (a dynamic graph is also compiled at the first new size) and avoids inductor's
  failures on symbolic image sizes behind convolutions of time-folded input (pytorch/pytorch#185510, raised
  as ``InductorError: TypeError: cannot determine truth value of Relational``).
* forward hooks are guarded: dynamo by default ignores hooks added to submodules after a first compilation
  (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a :class:`~spikenorm.monitoring.FiringRateRecorder`
  (the tasks' ``*/firing_rate``, :class:`~spikenorm.callbacks.SpikeMonitor`) attached after a forward without
  it would silently record nothing. The compiled network is traced with that skip turned off: one more graph
  per set of hooks, and the hooks run.

See ``docs/guides/compile.md``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch._dynamo
from torch import nn

#: what the ``compile`` option accepts: off, on with :data:`COMPILE_DEFAULTS`, or ``torch.compile`` arguments
CompileOption = bool | dict[str, Any]

#: ``torch.compile`` arguments a task uses unless its ``compile`` option sets them (see the module docstring)
COMPILE_DEFAULTS: dict[str, Any] = {"dynamic": False}


def compile_arguments() -> tuple[str, ...]:
    """The keyword arguments of ``torch.compile`` a ``compile`` option may set (all but the model)."""
    return tuple(name for name in inspect.signature(torch.compile).parameters if name != "model")


def compile_options(option: CompileOption, owner: str) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments of a ``compile`` option, or None when it is off.

    ``False``: off. ``True``: :data:`COMPILE_DEFAULTS`. A mapping: ``torch.compile`` arguments (``mode``,
    ``dynamic``, ``fullgraph``, ``backend``, ``options``, ``disable``) over the defaults. Checked now, with
    ``torch.compile``'s own checks (unknown mode or backend, ``mode`` together with ``options``), so a bad
    option fails when the task is built, not at the first training step.

    Args:
        option: the option's value.
        owner: who is asking, for the error messages (e.g. ``"SpikingClassifier(compile=...)"``).

    Raises:
        TypeError: ``option`` is neither a bool nor a mapping with string keys.
        ValueError: a key that ``torch.compile`` does not take, or a value it refuses.
    """
    if isinstance(option, bool):
        return dict(COMPILE_DEFAULTS) if option else None
    if not isinstance(option, Mapping) or not all(isinstance(key, str) for key in option):
        raise TypeError(f"{owner}: expected a bool or a dict of torch.compile arguments, got {option!r}")
    unknown = sorted(set(option) - set(compile_arguments()))
    if unknown:
        raise ValueError(
            f"{owner}: torch.compile takes no argument(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(compile_arguments())}"
        )
    options = {**COMPILE_DEFAULTS, **option}
    try:
        torch.compile(_identity, **options)  # builds torch's wrapper, which checks mode, backend and options
    except Exception as error:  # torch raises RuntimeError, ValueError or its own InvalidBackend
        raise ValueError(f"{owner}: torch.compile refuses {dict(option)!r}: {error}") from error
    return options


def compile_network(module: nn.Module, options: Mapping[str, Any]) -> None:
    """Compile ``module`` in place (:meth:`torch.nn.Module.compile`) with the arguments ``options`` (from
    :func:`compile_options`); its forward hooks are guarded (see the module docstring). Compiling again replaces
    the previous compilation."""
    module.compile(**options)
    module._compiled_call_impl = _with_hook_guards(module._compiled_call_impl)


def _with_hook_guards(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled``, traced with dynamo's guards on module hooks switched on (they are off by default)."""

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            return compiled(*args, **kwargs)

    return call


def _identity(x: Any) -> Any:
    return x
