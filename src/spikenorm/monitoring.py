"""Firing-rate recording for spikenorm neurons, usable with or without Lightning."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikenorm.neurons import spiking_neurons


class FiringRateRecorder:
    """Context manager that accumulates firing rates of every spikenorm neuron in ``model``.

    A rate is spikes per neuron per time step. Every forward of a neuron inside the scope adds its spike
    tensor ``[T, B, ...]`` to the totals, so several batches accumulate::

        with FiringRateRecorder(net) as rec:
            net(x)
        rec.layer_rates()     # {"features.0.2": 0.13, ...}
        rec.step_rates()      # {"features.0.2": tensor([0.09, 0.15, 0.14, 0.14]), ...}
        rec.mean_rate()       # unweighted mean of the layer rates
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = dict(spiking_neurons(model))
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no spikenorm neurons to record")
        self._step_spikes: dict[str, Tensor] = {}  # per-step spike sums [T]
        self._step_counts: dict[str, Tensor] = {}  # per-step neuron counts [T]
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(module: nn.Module, inputs: Any, spikes: Tensor) -> None:
            sums = spikes.detach().flatten(1).sum(1, dtype=torch.float64)
            counts = torch.full_like(sums, float(spikes[0].numel()))
            if name in self._step_spikes:
                sums = _add_padded(self._step_spikes[name], sums)
                counts = _add_padded(self._step_counts[name], counts)
            self._step_spikes[name], self._step_counts[name] = sums, counts

        return record

    def __enter__(self) -> "FiringRateRecorder":
        self._handles = [n.register_forward_hook(self._hook(name)) for name, n in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def step_rates(self) -> dict[str, Tensor]:
        """Per-layer firing rate at each step index ``t`` of the recorded forwards."""
        return {k: (s / self._step_counts[k]).float() for k, s in self._step_spikes.items()}

    def layer_rates(self) -> dict[str, float]:
        """Per-layer firing rate over all recorded steps."""
        return {k: float(s.sum() / self._step_counts[k].sum()) for k, s in self._step_spikes.items()}

    def mean_rate(self) -> float:
        """Unweighted mean of the layer rates (NaN if nothing was recorded)."""
        rates = list(self.layer_rates().values())
        return sum(rates) / len(rates) if rates else float("nan")


def _add_padded(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` for 1-D tensors of possibly different lengths (forwards with different T)."""
    n = max(a.numel(), b.numel())
    out = torch.zeros(n, dtype=a.dtype, device=a.device)
    out[: a.numel()] += a
    out[: b.numel()] += b
    return out
