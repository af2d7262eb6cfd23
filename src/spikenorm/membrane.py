"""The pre-firing membrane potential relative to the threshold, for spikenorm, snnTorch and SpikingJelly neurons.

At every step ``t`` a neuron compares its pre-firing membrane ``u_t`` (after any membrane norm, i.e. MPBN's
output) with its threshold ``theta``. :class:`MembraneRecorder` records the relative distance
``r = (u_t - theta) / theta`` of every neuron at every step: a histogram per layer and step (width
:data:`BIN_WIDTH` on ``[-RANGE, RANGE]``, values outside counted in the edge bins), and the exact count of
``|r| <= near`` (the neurons within ``near`` (10%) of the threshold, where a surrogate gradient is large).
Quantiles are read from the histogram and are exact to one bin width (0.01) inside the range and clamped to
``+-RANGE`` outside it.

Where each library's ``u_t`` is read (no library's forward is re-implemented except SpikingJelly's, below):

* spikenorm (:class:`~spikenorm.neurons.SpikingNeuron`): its :attr:`~spikenorm.neurons.SpikingNeuron.membrane_probe`
  receives ``(u_t, theta_t)`` at every step of the eager loop (the neuron runs the eager loop while recorded; the
  fused kernels give the same spikes bit for bit). With OTS, ``theta_t`` is the step's stabilised threshold.
* snnTorch: the instance's ``fire(mem)`` is wrapped; ``mem`` is the membrane compared with ``threshold`` (before
  the reset, whatever ``reset_delay``).
* SpikingJelly (``BaseNode`` subclasses with the explicit-state API ``single_step_functional_forward``): the
  forward runs that API step by step (SpikingJelly's own reference path for multi-step neurons), and the
  charged membrane ``H_t`` is the state that a step with the threshold raised to :data:`NO_FIRE` leaves (no
  spike, so no reset). A neuron for which that step still fires, or that lacks the API, is refused with the
  reason.

Under ``torch.distributed`` :meth:`MembraneRecorder.all_reduce` sums the counts of every process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spikenorm.distributed import sum_across_processes
from spikenorm.interop import neuron_library

RANGE = 10.0
"""Histogram range of ``(u - theta) / theta``: ``[-RANGE, RANGE]``."""
BIN_WIDTH = 0.01
"""Histogram bin width (the resolution of the quantiles)."""
NO_FIRE = 1e30
"""The threshold a SpikingJelly neuron gets for the step that reads its charged membrane (nothing fires)."""
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""The quantiles of ``(u - theta) / theta`` reported per layer and step."""

_BINS = round(2 * RANGE / BIN_WIDTH)


class MembraneRecorder:
    """Records ``(u - theta) / theta`` of every recognised neuron, per layer and time step (see the module doc).

    Used as a context manager around forwards; call :meth:`new_sequence` before each batch so that the next step
    every neuron takes is step 0::

        with MembraneRecorder(recognised_neurons(model)) as rec:  # spikenorm.monitoring.recognised_neurons
            for x in batches:
                rec.new_sequence()
                model(x)
        rec.near_threshold()   # {"features.0.2": 0.18, ...}
        rec.quantiles()        # {"features.0.2": {0.05: -0.93, 0.25: -0.61, ...}, ...}

    Args:
        neurons: the neurons to record, by qualified name (e.g. :func:`spikenorm.monitoring.recognised_neurons`).
        near: the half width of the near-threshold band, relative to the threshold (0.1: within +-10%).

    Raises:
        ValueError: a neuron whose membrane cannot be read (a custom class, a SpikingJelly neuron without the
            explicit-state API), naming it and why; a threshold that is not positive (at the first step).
    """

    def __init__(self, neurons: dict[str, nn.Module], near: float = 0.1) -> None:
        if not 0 < near < RANGE:
            raise ValueError(f"near must be in (0, {RANGE}), got {near}")
        self.neurons = neurons
        self.near = near
        for name, neuron in neurons.items():
            _check_readable(name, neuron)
        self._histograms: dict[str, Tensor] = {}  # name -> [steps, bins] float64 counts
        self._near_counts: dict[str, Tensor] = {}  # name -> [steps] float64
        self._steps: dict[str, int] = {}
        self._stack: contextlib.ExitStack | None = None

    # -- recording -------------------------------------------------------------------------------------
    def __enter__(self) -> MembraneRecorder:
        self._stack = contextlib.ExitStack()
        for name, neuron in self.neurons.items():
            self._stack.enter_context(_probe(neuron, self._recorder(name)))
        self.new_sequence()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    def new_sequence(self) -> None:
        """Start a new sequence: the next step every neuron takes is step 0."""
        self._steps.clear()

    def _recorder(self, name: str) -> Callable[[Tensor, Tensor], None]:
        def record(u: Tensor, theta: Tensor | float) -> None:
            theta = torch.as_tensor(theta, dtype=torch.float64, device=u.device)
            if bool((theta <= 0).any()):
                raise ValueError(
                    f"layer '{name}': the membrane relative to the threshold needs a positive threshold, got "
                    f"{theta.min().item():g}"
                )
            relative = (u.detach().double() - theta) / theta
            step = self._steps.get(name, 0)
            self._steps[name] = step + 1
            self._add(name, step, relative)

        return record

    def _add(self, name: str, step: int, relative: Tensor) -> None:
        index = ((relative.clamp(-RANGE, RANGE) + RANGE) / BIN_WIDTH).floor().long().clamp_(0, _BINS - 1)
        counts = torch.bincount(index.flatten(), minlength=_BINS).double()
        near = (relative.abs() <= self.near).sum(dtype=torch.float64)
        histogram = self._histograms.get(name)
        if histogram is None or histogram.shape[0] <= step:
            grown = torch.zeros(step + 1, _BINS, dtype=torch.float64, device=counts.device)
            grown_near = torch.zeros(step + 1, dtype=torch.float64, device=counts.device)
            if histogram is not None:
                grown[: histogram.shape[0]] = histogram
                grown_near[: histogram.shape[0]] = self._near_counts[name]
            self._histograms[name], self._near_counts[name] = grown, grown_near
        self._histograms[name][step] += counts
        self._near_counts[name][step] += near

    def all_reduce(self) -> None:
        """Sum the counts over processes when ``torch.distributed`` is initialised (every process must call it)."""
        local = {}
        for name in self.neurons:
            histogram = self._histograms.get(name)
            local[f"{name}\0h"] = histogram.flatten() if histogram is not None else torch.zeros(0, dtype=torch.float64)
            local[f"{name}\0n"] = self._near_counts.get(name, torch.zeros(0, dtype=torch.float64))
        summed = sum_across_processes(local)
        for name in self.neurons:
            near = summed[f"{name}\0n"]
            if near.numel():
                self._near_counts[name] = near
                self._histograms[name] = summed[f"{name}\0h"].reshape(near.numel(), _BINS)

    # -- results ---------------------------------------------------------------------------------------
    def histograms(self) -> dict[str, Tensor]:
        """Per layer, the counts ``[steps, bins]`` of ``(u - theta) / theta`` (bin ``i`` covers
        ``[-RANGE + i BIN_WIDTH, -RANGE + (i + 1) BIN_WIDTH)``; the edge bins also hold the values beyond)."""
        return {name: h.clone() for name, h in self._histograms.items()}

    def near_threshold(self) -> dict[str, float]:
        """Per layer, the fraction of (neuron, sample, step) values with ``|u - theta| <= near theta``."""
        return {name: float(self._near_counts[name].sum() / h.sum()) for name, h in self._histograms.items()}

    def step_near_threshold(self) -> dict[str, list[float]]:
        """Per layer and step, the fraction within ``near`` of the threshold."""
        return {name: (self._near_counts[name] / h.sum(1)).tolist() for name, h in self._histograms.items()}

    def quantiles(self) -> dict[str, dict[float, float]]:
        """Per layer, the :data:`QUANTILES` of ``(u - theta) / theta`` over all steps."""
        return {name: histogram_quantiles(h.sum(0)) for name, h in self._histograms.items()}

    def step_quantiles(self) -> dict[str, list[dict[float, float]]]:
        """Per layer and step, the :data:`QUANTILES` of ``(u - theta) / theta``."""
        return {name: [histogram_quantiles(row) for row in h] for name, h in self._histograms.items()}


def histogram_quantiles(counts: Tensor, levels: Sequence[float] = QUANTILES) -> dict[float, float]:
    """Quantiles of the values binned in ``counts`` (:data:`BIN_WIDTH` bins on ``[-RANGE, RANGE]``), linear
    inside the bin that holds each (exact to one bin width; clamped to the range)."""
    cumulative = counts.cumsum(0)
    total = float(cumulative[-1])
    result = {}
    for q in levels:
        target = q * total
        i = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=cumulative.dtype)).clamp(max=_BINS - 1))
        below = float(cumulative[i - 1]) if i else 0.0
        inside = float(counts[i])
        fraction = (target - below) / inside if inside else 0.0
        result[q] = -RANGE + (i + min(max(fraction, 0.0), 1.0)) * BIN_WIDTH
    return result


def _check_readable(name: str, neuron: nn.Module) -> None:
    library = neuron_library(neuron)
    if library == "spikingjelly" and not _has_own(neuron, "single_step_functional_forward"):
        raise ValueError(
            f"layer '{name}' ({type(neuron).__name__}): its membrane cannot be read: the SpikingJelly neuron has no "
            "single_step_functional_forward (the explicit-state API spikenorm steps through)"
        )
    if library is None:
        raise ValueError(
            f"layer '{name}' ({type(neuron).__name__}): spikenorm reads the pre-firing membrane of spikenorm, "
            "snnTorch and SpikingJelly neurons only; exclude this layer"
        )


def _has_own(neuron: nn.Module, method: str) -> bool:
    """Whether some class of ``neuron`` below SpikingJelly's ``BaseNode`` implements ``method``."""
    for cls in type(neuron).__mro__:
        if cls.__name__ == "BaseNode":
            return False
        if method in vars(cls):
            return True
    return False


@contextlib.contextmanager
def _probe(neuron: nn.Module, record: Callable[[Tensor, Tensor], None]) -> Iterator[None]:
    library = neuron_library(neuron)
    if library == "spikenorm":
        backend = neuron.backend
        neuron.backend, neuron.membrane_probe = "eager", record
        try:
            yield
        finally:
            neuron.backend = backend
            del neuron.membrane_probe  # back to the class default (None)
        return
    if library == "snntorch":
        fire = neuron.fire

        def recorded_fire(mem: Tensor, *args: Any, **kwargs: Any) -> Any:
            record(mem, neuron.threshold)
            return fire(mem, *args, **kwargs)

        with _instance_attribute(neuron, "fire", recorded_fire):
            yield
        return
    with _instance_attribute(neuron, "forward", _spikingjelly_forward(neuron, record)):
        yield


@contextlib.contextmanager
def _instance_attribute(module: nn.Module, name: str, value: Any) -> Iterator[None]:
    own = module.__dict__.get(name)
    setattr(module, name, value)
    try:
        yield
    finally:
        if own is None:
            delattr(module, name)
        else:
            setattr(module, name, own)


def _spikingjelly_forward(neuron: Any, record: Callable[[Tensor, Tensor], None]) -> Callable[[Tensor], Tensor]:
    """A SpikingJelly neuron's forward run step by step through ``single_step_functional_forward``, recording the
    charged membrane of each step (see the module doc)."""

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if args or kwargs:
            raise ValueError(f"{type(neuron).__name__}: membrane recording takes a single input tensor")
        multi = neuron.step_mode == "m"
        sequence = x if multi else x.unsqueeze(0)
        states = neuron.materialize_states((sequence,), tuple(neuron._memories.values()), "m")
        spikes = []
        for x_t in sequence:
            theta = neuron.v_threshold
            neuron.v_threshold = NO_FIRE
            try:
                (quiet, *_), (charged, *_) = neuron.single_step_functional_forward((x_t,), states)
            finally:
                neuron.v_threshold = theta
            if bool(quiet.any()):
                raise ValueError(
                    f"{type(neuron).__name__} fired with its threshold raised to {NO_FIRE:g}, so its charged membrane "
                    "cannot be read this way"
                )
            record(charged, theta)
            (spike, *_), states = neuron.single_step_functional_forward((x_t,), states)
            spikes.append(spike)
        for memory, value in zip(neuron._memories, states):
            neuron._memories[memory] = value
        out = torch.stack(spikes)
        return out if multi else out[0]

    return forward
