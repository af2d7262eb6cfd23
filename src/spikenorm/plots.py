"""Figures of recorded spiking activity. matplotlib is imported when a figure is made, never at import time.

Figures are built as bare :class:`matplotlib.figure.Figure` objects, without pyplot, so they need no GUI
backend, are never shown, and hold no global state (nothing to close); ``fig.savefig`` renders with Agg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def firing_rate_heatmap(step_rates: Mapping[str, Tensor | Sequence[float]], title: str | None = None) -> Figure:
    """Heatmap of per-step firing rates: one row per layer (in the given order), one column per time step.

    Args:
        step_rates: layer name -> firing rate at each step, e.g.
            :meth:`spikenorm.monitoring.FiringRateRecorder.step_rates`. Layers with fewer steps leave the
            missing cells blank.
        title: optional figure title.

    Returns:
        The figure: colour = firing rate (spikes per neuron per step, colour bar from 0 to the largest rate,
        at least 1e-3), x axis = time step, y axis = layer.

    Raises:
        ValueError: no layers, or a layer with no steps.
    """
    from matplotlib.figure import Figure

    if not step_rates:
        raise ValueError("firing_rate_heatmap needs at least one layer of step rates, got none")
    rows = {name: torch.as_tensor(rates, dtype=torch.float64).flatten() for name, rates in step_rates.items()}
    empty = [name for name, rates in rows.items() if rates.numel() == 0]
    if empty:
        raise ValueError(f"firing_rate_heatmap: layers with no recorded steps: {empty}")
    steps = max(r.numel() for r in rows.values())
    grid = torch.full((len(rows), steps), float("nan"), dtype=torch.float64)
    for i, rates in enumerate(rows.values()):
        grid[i, : rates.numel()] = rates
    top = max(float(grid.nan_to_num(0.0).max()), 1e-3)

    fig = Figure(figsize=(3.5 + 0.4 * steps, 1.5 + 0.3 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
    ax.set_xlabel("time step")
    ax.set_ylabel("layer")
    ax.set_xticks(range(steps))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="firing rate")
    return fig
