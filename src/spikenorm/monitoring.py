"""Firing-rate recording for spikenorm, snnTorch, SpikingJelly and your own neurons, with or without Lightning.

For a layer with ``N`` neurons, recorded over samples ``b`` and time steps ``t`` with spikes ``s[t, b, n]``:

* step rate ``r_t = sum_{b,n} s[t, b, n] / (B_t N)`` (``B_t``: samples recorded at step ``t``);
* layer rate ``r = sum_{t,b,n} s[t, b, n] / sum_t B_t N``;
* per neuron, the firing count ``c_n = #{(t, b): s[t, b, n] != 0}`` out of ``O = sum_t B_t`` observations;
  the neuron is *dead* if ``c_n = 0`` (never fired over everything recorded) and *saturated* if ``c_n = O``
  (fired at every step of every sample). Dead neurons pass no gradient through a surrogate that
  vanishes far below threshold and carry no information; saturated ones carry none either.

Time steps: a multi-step neuron (spikenorm; SpikingJelly ``step_mode="m"``) returns ``[T, B, ...]`` per call;
a single-step neuron (snnTorch; SpikingJelly ``step_mode="s"``) returns ``[B, ...]``, one step per call.
A call's first step index is the number of steps that neuron has produced since the current sequence
started, so a network called once per time step from a user loop records steps ``0, 1, ..., T-1`` (and a
neuron module called twice per step, shared between layers, would be read as two later steps: give each
layer its own neuron).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikenorm.distributed import sum_across_processes
from spikenorm.hooks import HookSession
from spikenorm.interop import any_spiking_neurons, check_neuron_types, is_multi_step, spike_tensor
from spikenorm.module_names import excluded


@dataclass
class _LayerTotals:
    """Running sums of one layer (all float64): per-step spikes and neuron-samples, per-neuron firing counts,
    and the observations (sample-steps) each neuron has seen."""

    step_spikes: Tensor
    step_counts: Tensor
    neuron_fired: Tensor
    observations: Tensor


def recognised_neurons(
    model: nn.Module, exclude: Sequence[str] = (), neuron_types: Sequence[type[nn.Module]] | None = None
) -> dict[str, nn.Module]:
    """The spiking neurons of ``model`` outside ``exclude``, by qualified name (the root's class name when
    ``model`` is itself a neuron): spikenorm, snnTorch and SpikingJelly neurons and instances of ``neuron_types``.

    Raises:
        ValueError: there is none; the message names the model's class and how to declare custom neurons.
        TypeError: ``neuron_types`` lists something that is not an ``nn.Module`` class.
    """
    types = check_neuron_types(neuron_types)
    neurons = {
        name or type(module).__name__: module
        for name, module in any_spiking_neurons(model, types)
        if not excluded(name, exclude)
    }
    if not neurons:
        looked_for = "spikenorm, snnTorch and SpikingJelly neurons" + "".join(f", {t.__name__}" for t in types)
        raise ValueError(
            f"{type(model).__name__} has no spiking neurons to record (looked for {looked_for}"
            f"{f' outside {list(exclude)}' if exclude else ''}); if it uses a neuron class of your own, pass "
            "neuron_types=[YourNeuron] (single-step: one call per time step; multi-step ones set step_mode = 'm')"
        )
    return neurons


class FiringRateRecorder(HookSession):
    """Context manager that accumulates the firing of every spiking neuron in ``model`` (see the module doc).

    Neurons of spikenorm, snnTorch and SpikingJelly, and instances of ``neuron_types``, are recognised
    (:mod:`spikenorm.interop`). Several
    batches accumulate::

        with FiringRateRecorder(net) as rec:
            net(x)
        rec.layer_rates()          # {"features.0.2": 0.13, ...}
        rec.step_rates()           # {"features.0.2": tensor([0.09, 0.15, 0.14, 0.14]), ...}
        rec.mean_rate()            # unweighted mean of the layer rates
        rec.dead_fractions()       # {"features.0.2": 0.25, ...}: neurons that never fired
        rec.saturated_fractions()  # neurons that fired at every step of every sample

    Args:
        model: the network whose neurons are recorded.
        sequence_on_forward: start a new sequence (step index 0) at every forward of ``model``. Turn it off
            when ``model`` is called once per time step and call :meth:`new_sequence` at each batch instead.
        exclude: qualified module names (and everything inside them) not to record, e.g. ``("teacher",)``.
        neuron_types: neuron classes of your own to record too (see :mod:`spikenorm.interop` for how their
            time steps are read).

    Raises:
        ValueError: ``model`` has no spiking neuron outside ``exclude``.
        TypeError: ``neuron_types`` lists something that is not an ``nn.Module`` class.
    """

    def __init__(
        self,
        model: nn.Module,
        sequence_on_forward: bool = True,
        exclude: Sequence[str] = (),
        neuron_types: Sequence[type[nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.sequence_on_forward = sequence_on_forward
        self.layers = recognised_neurons(model, exclude, neuron_types)
        self._totals: dict[str, _LayerTotals] = {}
        self._steps_in_sequence: dict[str, int] = {}

    # -- recording -------------------------------------------------------------------------------------
    def _hook(self, name: str, module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def record(neuron: nn.Module, inputs: Any, output: Any) -> None:
            if neuron is not module:  # a deepcopy of the model carries the hook along: ignore the copy
                return
            spikes = spike_tensor(output).detach()
            if not is_multi_step(neuron):  # read at every call: SpikingJelly's step_mode can be switched
                spikes = spikes.unsqueeze(0)
            if spikes.ndim < 2:
                raise ValueError(
                    f"layer '{name}' returned spikes of shape {tuple(spike_tensor(output).shape)}; expected "
                    f"[T, B, ...] from a multi-step neuron or [B, ...] from a single-step one"
                )
            self._add(name, spikes.reshape(spikes.shape[0], spikes.shape[1], -1))

        return record

    def _add(self, name: str, spikes: Tensor) -> None:
        """Add spikes ``[steps, batch, neurons]`` at the layer's current step offset."""
        steps, batch, neurons = spikes.shape
        offset = self._steps_in_sequence.get(name, 0)
        self._steps_in_sequence[name] = offset + steps
        sums = spikes.sum((1, 2), dtype=torch.float64)
        fired = (spikes != 0).sum((0, 1), dtype=torch.float64)
        totals = self._totals.get(name)
        if totals is None:
            zero = torch.zeros(0, dtype=torch.float64, device=spikes.device)
            totals = self._totals[name] = _LayerTotals(zero, zero, torch.zeros_like(fired), zero.new_zeros(1))
        elif totals.neuron_fired.numel() != neurons:
            raise ValueError(
                f"layer '{name}' gave {neurons} neurons per step, but {totals.neuron_fired.numel()} earlier; "
                "per-neuron statistics need a fixed feature shape (call reset() between differently shaped inputs)"
            )
        totals.step_spikes = _add_at(totals.step_spikes, sums, offset)
        totals.step_counts = _add_at(totals.step_counts, torch.full_like(sums, float(batch * neurons)), offset)
        totals.neuron_fired = totals.neuron_fired + fired
        totals.observations = totals.observations + steps * batch

    def new_sequence(self) -> None:
        """Start a new sequence: the next step every neuron produces is step 0."""
        self._steps_in_sequence.clear()

    def attach(self) -> list[RemovableHandle]:
        """The neuron hooks, and the sequence-start hook on the root; a new sequence starts."""
        self.new_sequence()
        handles = [m.register_forward_hook(self._hook(name, m)) for name, m in self.layers.items()]
        if self.sequence_on_forward:
            root = self.model

            def root_called(module: nn.Module, args: Any) -> None:  # a closure: deepcopy shares, never copies it
                if module is root:  # not a deepcopy that carried the hook along
                    self.new_sequence()

            handles.append(root.register_forward_pre_hook(root_called))
        return handles

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._totals.clear()
        self.new_sequence()

    def all_reduce(self) -> None:
        """Sum the totals over processes when ``torch.distributed`` is initialised (every process must call it).

        Afterwards every process holds the totals of the whole run; a layer no process recorded stays absent.
        """
        local: dict[str, Tensor] = {}
        for name in self.layers:
            totals = self._totals.get(name)
            for f in fields(_LayerTotals):
                local[f"{name}\0{f.name}"] = getattr(totals, f.name) if totals else torch.zeros(0, dtype=torch.float64)
        summed = sum_across_processes(local)
        for name in self.layers:
            values = {f.name: summed[f"{name}\0{f.name}"] for f in fields(_LayerTotals)}
            if values["observations"].numel() and values["observations"].item() > 0:
                self._totals[name] = _LayerTotals(**values)

    # -- results ---------------------------------------------------------------------------------------
    def step_rates(self) -> dict[str, Tensor]:
        """Per-layer firing rate at each step index ``t`` of the recorded sequences."""
        return {k: (v.step_spikes / v.step_counts).float() for k, v in self._totals.items()}

    def layer_rates(self) -> dict[str, float]:
        """Per-layer firing rate over all recorded steps."""
        return {k: float(v.step_spikes.sum() / v.step_counts.sum()) for k, v in self._totals.items()}

    def mean_rate(self) -> float:
        """Unweighted mean of the layer rates (NaN if nothing was recorded)."""
        rates = list(self.layer_rates().values())
        return sum(rates) / len(rates) if rates else float("nan")

    def neuron_fire_counts(self) -> dict[str, Tensor]:
        """Per layer, the number of (sample, step) pairs at which each neuron fired, flattened ``[N]``."""
        return {k: v.neuron_fired.clone() for k, v in self._totals.items()}

    def dead_fractions(self) -> dict[str, float]:
        """Per layer, the fraction of neurons that never fired over everything recorded."""
        return {k: float((v.neuron_fired == 0).double().mean()) for k, v in self._totals.items()}

    def saturated_fractions(self) -> dict[str, float]:
        """Per layer, the fraction of neurons that fired at every step of every recorded sample."""
        return {k: float((v.neuron_fired == v.observations).double().mean()) for k, v in self._totals.items()}


def _add_at(acc: Tensor, values: Tensor, offset: int) -> Tensor:
    """``acc`` with ``values`` added at ``acc[offset : offset + len(values)]``, grown with zeros if needed."""
    n = max(acc.numel(), offset + values.numel())
    out = torch.zeros(n, dtype=acc.dtype, device=values.device)
    out[: acc.numel()] += acc.to(values.device)
    out[offset : offset + values.numel()] += values
    return out
