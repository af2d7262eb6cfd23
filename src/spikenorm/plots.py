"""Figures of recorded spiking activity. matplotlib is imported when a figure is made, never at import time.

Figures are built as bare :class:`matplotlib.figure.Figure` objects, without pyplot, so they need no GUI
backend, are never shown, and hold no global state (nothing to close); ``fig.savefig`` renders with Agg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from spikenorm.diagnostics import NormDiagnosis


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
    grid, names = layer_step_grid(step_rates, "firing_rate_heatmap")
    fig = Figure(figsize=(3.5 + 0.4 * grid.shape[1], 1.5 + 0.3 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    draw_layer_step_grid(
        ax, fig, grid, names, "firing rate", vmin=0.0, vmax=max(float(grid.nan_to_num(0.0).max()), 1e-3)
    )
    if title:
        ax.set_title(title)
    return fig


def layer_step_grid(rows: Mapping[str, Tensor | Sequence[float]], caller: str) -> tuple[Tensor, list[str]]:
    """``[layers, steps]`` float64 grid of per-step values (missing steps NaN) and the layer names.

    Raises:
        ValueError: a layer with no steps (``caller`` names the function).
    """
    values = {name: torch.as_tensor(v, dtype=torch.float64).flatten() for name, v in rows.items()}
    empty = [name for name, v in values.items() if v.numel() == 0]
    if empty:
        raise ValueError(f"{caller}: layers with no recorded steps: {empty}")
    steps = max((v.numel() for v in values.values()), default=0)
    grid = torch.full((len(values), steps), float("nan"), dtype=torch.float64)
    for i, v in enumerate(values.values()):
        grid[i, : v.numel()] = v
    return grid, list(values)


def draw_layer_step_grid(
    ax: Any, fig: Figure, grid: Tensor, names: list[str], label: str, vmin: float, vmax: float, cmap: str = "viridis"
) -> None:
    """Draw a :func:`layer_step_grid` on ``ax``: x axis time step, y axis layer, a colour bar labelled ``label``."""
    image = ax.imshow(grid.numpy(), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("time step")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(len(names)), labels=names)
    fig.colorbar(image, ax=ax, label=label)


def diagnosis_figure(diagnosis: NormDiagnosis, title: str | None = None) -> Figure:
    """The layers x steps view of a :class:`~spikenorm.diagnostics.NormDiagnosis`, one panel each (those with
    layers): the fraction of the membrane within the near-threshold band, the median ``(u - theta) / theta``
    (diverging colours around 0, the threshold), and each norm layer's statistics error per step
    (``step_stat_w2``).

    Raises:
        ValueError: a diagnosis with neither norm layers nor spiking layers.
    """
    from matplotlib.figure import Figure

    panels = []
    if diagnosis.neurons:
        near = {name: d.step_near_threshold for name, d in diagnosis.neurons.items()}
        median = {name: [q["q50"] for q in d.step_quantiles] for name, d in diagnosis.neurons.items()}
        panels.append((near, "near threshold (fraction)", "viridis", False))
        panels.append((median, "median (u - θ) / θ", "coolwarm", True))
    if diagnosis.layers:
        panels.append(({name: d.step_stat_w2 for name, d in diagnosis.layers.items()}, "statistics W2", "magma", False))
    if not panels:
        raise ValueError("diagnosis_figure: the diagnosis has neither norm layers nor spiking layers")
    grids = [(layer_step_grid(rows, "diagnosis_figure"), label, cmap, centred) for rows, label, cmap, centred in panels]
    steps = max(grid.shape[1] for (grid, _), *_ in grids)
    height = sum(1.2 + 0.3 * len(names) for (_, names), *_ in grids)
    fig = Figure(figsize=(4.5 + 0.4 * steps, 0.5 + height), layout="constrained")
    axes = fig.subplots(len(grids), 1, squeeze=False)[:, 0]
    for ax, ((grid, names), label, cmap, centred) in zip(axes, grids):
        top = float(grid.nan_to_num(0.0).abs().max()) or 1e-3
        draw_layer_step_grid(ax, fig, grid, names, label, vmin=-top if centred else 0.0, vmax=top, cmap=cmap)
    if title:
        fig.suptitle(title)
    return fig
