"""Running a model over measuring batches: each forward from reset neuron state, with chosen layers intercepted.

Shared by re-calibration (:mod:`spikenorm.recalibrate`) and diagnostics (:mod:`spikenorm.diagnostics`). Every
neuron's state is cleared before every batch (:func:`spikenorm.interop.reset_neuron_states`: spikenorm, snnTorch
``reset_mem``, SpikingJelly ``reset``; then the user's ``reset_fn`` for neurons of their own), so no batch's
measurement depends on the batches before it.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from torch import Tensor, nn

from spikenorm.interop import reset_neuron_states
from spikenorm.statistics_layers import StatisticsLayer
from spikenorm.validation import check_not_batch_major

ResetFn = Callable[[nn.Module], None]
"""``reset_fn(model)``: clears neuron state that the built-in resets do not know (see
:func:`spikenorm.recalibrate.recalibrate_bn`)."""


def take_batches(batches: Iterable[Any], num_batches: int | None, caller: str = "recalibrate_bn") -> list[Any]:
    """The first ``num_batches`` of ``batches`` (all of them when None) as a list.

    Raises:
        ValueError: no batch, ``num_batches < 1``, or fewer batches than ``num_batches`` (``caller`` names the
            function in the message).
    """
    if num_batches is None:
        taken = list(batches)
        if not taken:
            raise ValueError(f"{caller} needs at least one batch, got an empty iterable")
        return taken
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    taken = list(itertools.islice(batches, num_batches))
    if len(taken) < num_batches:
        raise ValueError(
            f"{caller} was asked for num_batches={num_batches} but the data gave only {len(taken)} "
            "batch(es); lower num_batches or give more data"
        )
    return taken


class StopForward(Exception):
    """Raised inside a forward once the layer being measured has seen all of its inputs for this batch."""


@dataclass
class PassContext:
    """What every pass needs: the model, its layers, the batches, the user's forward (None: ``model(batch)``) and
    extra reset."""

    model: nn.Module
    layers: dict[str, StatisticsLayer]
    batches: list[Any]
    forward: Callable[[nn.Module, Any], Any] | None = None
    reset_fn: ResetFn | None = None

    def run(self, model: nn.Module, batch: Any) -> Any:
        return model(batch) if self.forward is None else self.forward(model, batch)

    def check_batches(self, time_steps: int | None) -> None:
        """Refuse, before the model runs, batches that ``model(batch)`` cannot take (a tuple or list, when no
        ``forward`` unpacks it) and, with ``time_steps``, tensor batches of rank >= 3 that look batch-major."""
        for index, batch in enumerate(self.batches):
            if self.forward is None and isinstance(batch, (tuple, list)):
                parts = ", ".join(
                    f"Tensor{list(part.shape)}" if isinstance(part, Tensor) else type(part).__name__ for part in batch
                )
                raise TypeError(
                    f"recalibrate_bn runs model(batch) when no forward= is given, so each batch must be the model's "
                    f"input (a tensor); batch {index} is a {type(batch).__name__} ({parts}), e.g. (x, y) from a "
                    "DataLoader. Expected a tensor, or a forward= that unpacks the batch: "
                    "forward=lambda model, batch: model(batch[0])"
                )
            if time_steps is not None and isinstance(batch, Tensor) and batch.ndim >= 3:
                check_not_batch_major(batch, f"recalibrate_bn (time_steps={time_steps}): batch {index}", time_steps)

    def reset(self) -> None:
        """The built-in neuron resets (:func:`~spikenorm.interop.reset_neuron_states`), then ``reset_fn``."""
        reset_neuron_states(self.model)
        if self.reset_fn is not None:
            self.reset_fn(self.model)

    def fresh(self, batch: Any) -> None:
        """One forward from fresh neuron state (ended early by :class:`StopForward`)."""
        self.reset()
        try:
            self.run(self.model, batch)
        except StopForward:
            pass


@contextlib.contextmanager
def intercepted(layers: dict[str, StatisticsLayer], make: Callable[[str, Callable], Callable]) -> Iterator[None]:
    """Replace the forward of each named layer by ``make(name, original_forward)`` for the scope.

    Replacing the forward (rather than hooking it) spares computing an output that would be thrown away."""
    own = {name: layer.module.__dict__.get("forward") for name, layer in layers.items()}  # instance overrides
    for name, layer in layers.items():
        layer.module.forward = make(name, layer.module.forward)
    try:
        yield
    finally:
        for name, layer in layers.items():
            if own[name] is None:
                del layer.module.forward
            else:
                layer.module.forward = own[name]
