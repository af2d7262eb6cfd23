"""One home for ``T``: the task owns the number of time steps and gives it to its network.

A layer whose shape or parameters depend on ``T`` (``bntt``, ``tebn`` and ``tab`` keep per-step parameters; a
spikenorm model refuses input whose leading axis is not its ``T``) implements :class:`ReceivesTimeSteps`: built
without ``T`` it adopts the one it receives, built with another ``T`` it refuses with an error naming both.
:func:`bind_time_steps` walks a network, innermost layers first, and hands ``T`` to each such layer, so a
network built from objects needs ``T`` only in its task, in Python exactly as on the CLI.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ReceivesTimeSteps(Protocol):
    """A layer that knows ``T`` (None: not yet) and can be given it."""

    time_steps: int | None

    def receive_time_steps(self, time_steps: int) -> None:
        """Adopt ``time_steps`` if no ``T`` is known yet; raise a ValueError naming both if another ``T`` is."""


def check_time_steps_value(time_steps: object, name: str = "time_steps") -> int:
    """``time_steps`` if it is a positive int (not a bool), else a ValueError naming ``name``."""
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"{name} must be a positive int, got {time_steps!r}")
    return time_steps


def bind_time_steps(network: nn.Module, time_steps: int, eval_time_steps: int | None = None) -> list[str]:
    """Give ``time_steps`` to every layer of ``network`` that takes ``T`` (:class:`ReceivesTimeSteps`), innermost
    first (a model learns its ``T`` from its norms before it is asked), and let the spikenorm models inside it also
    accept ``eval_time_steps`` (a layer with an ``accept_time_steps(*T)`` method, such as
    :meth:`spikenorm.models.SpikingModel.accept_time_steps`: a network built for the training ``T`` also runs at the
    evaluation ``T``).

    Returns:
        The names of the layers that hold ``T`` afterwards (``""``: ``network`` itself).

    Raises:
        ValueError: a layer was built for another ``T`` (the message names the layer and both values).
    """
    check_time_steps_value(time_steps)
    if eval_time_steps is not None:
        check_time_steps_value(eval_time_steps, "eval_time_steps")
    bound = []
    for name, module in reversed(list(network.named_modules())):
        if not isinstance(module, ReceivesTimeSteps):
            continue
        try:
            module.receive_time_steps(time_steps)
        except ValueError as error:
            where = f"layer '{name}'" if name else type(module).__name__
            raise ValueError(f"{where} ({type(module).__name__}) cannot run at the task's T: {error}") from None
        if module.time_steps is not None:
            bound.append(name)
    if eval_time_steps is not None and eval_time_steps != time_steps:
        for module in network.modules():
            accept = getattr(module, "accept_time_steps", None)
            if callable(accept):
                accept(eval_time_steps)
    return bound
