"""Learning curves of a metric per group: the mean over the group's runs and the band from their minimum to their
maximum, at the steps every run of the group logged (the logged ``step``; env steps for ``rl/`` metrics).

A ``test/…`` metric is logged once per run, so its curve is that of its ``val/…`` counterpart when the runs logged
one. Figures are bare :class:`matplotlib.figure.Figure` objects (Agg, no pyplot state); matplotlib is imported
when a figure is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from spikenorm.studies.tables import Group

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curve_file_name", "curve_metric", "group_curve", "learning_curves"]


def curve_file_name(metric: str) -> str:
    """``curves_<metric with / -> _>.png``."""
    return f"curves_{metric.replace('/', '_')}.png"


def curve_metric(metric: str, groups: Sequence[Group]) -> str:
    """The metric whose history draws ``metric``'s curve: ``val/x`` for ``test/x`` when a run logged it."""
    if metric.startswith("test/"):
        validation = "val/" + metric.removeprefix("test/")
        if any(validation in run.histories for group in groups for run in group.runs):
            return validation
    return metric


def group_curve(group: Group, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, minimum, maximum)`` over the group's runs at the steps every run logged ``metric`` at (the
    last value where a run logged a step twice); empty arrays when a run did not log it."""
    per_run = []
    for run in group.runs:
        points = {step: value for step, value in run.histories.get(metric, []) if not math.isnan(step)}
        if not points:
            return (np.empty(0),) * 4
        per_run.append(points)
    steps = np.array(sorted(set.intersection(*(set(points) for points in per_run))))
    values = np.array([[points[step] for step in steps] for points in per_run]).reshape(len(per_run), steps.size)
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def learning_curves(groups: Sequence[Group], metric: str) -> Figure | None:
    """The figure of ``metric`` (or its ``val/`` counterpart, :func:`curve_metric`): one line per group and its
    min-max band; ``None`` when no group has two common steps to draw a curve through."""
    drawn = curve_metric(metric, groups)
    curves = [(group.label, *group_curve(group, drawn)) for group in groups]
    curves = [curve for curve in curves if curve[1].size >= 2]
    if not curves:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    for label, steps, mean, low, high in curves:
        (line,) = axes.plot(steps, mean, label=label)
        axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("env steps" if drawn.startswith("rl/") else "step")
    axes.set_ylabel(drawn)
    axes.set_title(f"{drawn}: mean and min-max over runs")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure
