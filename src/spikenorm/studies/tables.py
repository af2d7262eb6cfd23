"""Group finished runs by the configuration keys that differ between them, and tabulate a metric per group.

Grouping: a key is a grouping key when its value is not the same in every finished run, apart from the keys that
never say what a run computes (:data:`EXCLUDED_KEYS`: the seed, loggers, the checkpoint to resume, the config file,
the output folder) and the ``ignore``/``strata`` keys given. A key below another grouping key
(``…distillation.init_args.weight`` below ``…distillation``, present in one run and null in another) is shown
through that key (its ``class_path``, or the entries below it), unless its value differs between the runs that
have it: then it is a grouping key of its own. A group is labelled by the shortest dotted suffix of each grouping
key that no other grouping key ends with, ``name=value`` joined by ``", "``: ``"norm=tdbn, time_steps=2"``.

Paired differences: a group is compared with the baseline group (one with the baseline's values) that shares the
most of the group's own values of the other *primary* keys. A grouping key that adds no split (its values follow
from the other keys', like a norm layer's ``time_steps`` that the task sets for the norms that need it and leaves
null for the others) stays in the label but is not primary; of keys that follow from each other, the one with the
shortest label is primary.

Per metric and group (see :mod:`spikenorm.studies.statistics` for the definitions): the final and best values'
``n``, mean, standard deviation and 95% bootstrap interval, the final value per seed, the per-seed paired
difference to the baseline group, and for RL returns (``rl/…return…``) the interquartile mean with its stratified
bootstrap interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spikenorm.studies.run_records import RunRecord, lower_is_better
from spikenorm.studies.statistics import (
    Interval,
    PairedDifference,
    Summary,
    paired_difference,
    stratified_bootstrap_iqm,
    summarize,
)

__all__ = [
    "EXCLUDED_KEYS",
    "Group",
    "MetricRow",
    "csv_rows",
    "group_runs",
    "is_rl_return",
    "markdown_table",
    "metric_rows",
    "resolve_baseline",
    "resolve_key",
]

#: config keys (and everything below them) that never define a group: seeds (``seed`` is the W&B config's name),
#: loggers, the resumed checkpoint, the config file, the output folder
EXCLUDED_KEYS = ("seed_everything", "seed", "trainer.logger", "ckpt_path", "config", "trainer.default_root_dir")
_MISSING = "-"
CSV_COLUMNS = (
    "metric",
    "group",
    "value",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "paired_n",
    "paired_mean",
    "paired_ci_low",
    "paired_ci_high",
    "iqm",
    "iqm_ci_low",
    "iqm_ci_high",
    "per_seed",
)


def _below(key: str, parent: str) -> bool:
    return key.startswith(f"{parent}.") or key.startswith(f"{parent}[")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _display(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def _ends_with(key: str, suffix: str) -> bool:
    return key == suffix or key.endswith(f".{suffix}")


def resolve_key(name: str, keys: Sequence[str], what: str) -> str:
    """The one key of ``keys`` equal to ``name`` or ending with ``.name``.

    Raises:
        ValueError: none or several do, with the candidates listed.
    """
    if name in keys:
        return name
    matches = [key for key in keys if _ends_with(key, name)]
    if len(matches) != 1:
        found = f"several: {', '.join(matches)}" if matches else "none"
        raise ValueError(f"{what} {name!r}: expected one config key equal to it or ending with '.{name}', got {found}")
    return matches[0]


def _label_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other of ``keys`` ends with (never ``init_args…``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for start in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[start:])
            if parts[start] != "init_args" and not any(_ends_with(k, suffix) for k in keys if k != key):
                break
        names[key] = suffix
    return names


@dataclass
class Group:
    """The finished runs that share the values ``assignments`` (label name -> displayed value) of the grouping
    keys; ``primary`` names the assignments that split groups (module docstring)."""

    label: str
    assignments: dict[str, str]
    primary: tuple[str, ...]
    runs: list[RunRecord]


def _value_of(config: Mapping[str, Any], key: str) -> str:
    """A grouping key's displayed value in a run: its value, else its ``class_path`` below it, else the entries
    below it (``{running_update=per_batch}``), else ``-``."""
    if key in config:
        return _display(config[key])
    if f"{key}.class_path" in config:
        return _display(config[f"{key}.class_path"])
    below = {k[len(key) + 1 :]: v for k, v in config.items() if _below(k, key)}
    if below:
        return "{" + ", ".join(f"{k}={_display(v)}" for k, v in sorted(below.items())) + "}"
    return _MISSING


def _partition(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[int]:
    """Which group each run falls in when grouped by ``keys`` (groups numbered in order of first run)."""
    first: dict[tuple[str, ...], int] = {}
    return [first.setdefault(tuple(_value_of(run.config, k) for k in keys), len(first)) for run in runs]


def group_runs(runs: Sequence[RunRecord], ignore: Sequence[str] = ()) -> tuple[list[Group], dict[str, str]]:
    """Group ``runs`` by the keys whose values differ between them (module docstring), in order of first run.

    Returns:
        The groups, and the grouping keys with their label names (full key -> name).
    """
    all_keys = {key for run in runs for key in run.config}
    skipped = (*EXCLUDED_KEYS, *ignore)
    differing = sorted(
        key
        for key in all_keys
        if not any(key == e or _below(key, e) for e in skipped)
        and len({_canonical(run.config.get(key, _MISSING)) for run in runs}) > 1
    )
    keys = [
        key
        for key in differing
        if not any(_below(key, parent) for parent in differing)
        or len({_canonical(run.config[key]) for run in runs if key in run.config}) > 1  # differs where present
    ]
    names = _label_names(keys)
    split, primary = _partition(runs, keys), list(keys)
    for key in sorted(keys, key=lambda k: (-len(names[k]), k)):
        rest = [k for k in primary if k != key]
        if rest and _partition(runs, rest) == split:
            primary = rest
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = tuple(_value_of(run.config, key) for key in keys)
        if values not in groups:
            assignments = {names[key]: value for key, value in zip(keys, values, strict=True)}
            label = ", ".join(f"{name}={value}" for name, value in assignments.items()) or "all runs"
            groups[values] = Group(label, assignments, tuple(names[key] for key in primary), [])
        groups[values].runs.append(run)
    return list(groups.values()), names


def resolve_baseline(baseline: str, groups: Sequence[Group]) -> dict[str, str]:
    """The assignments ``baseline`` (``"norm=tdbn"``, several joined by ``","``) sets, checked against ``groups``.

    Each group's paired differences are taken to the group with these assignments that shares most of its other
    values (:func:`_baseline_of`).

    Raises:
        ValueError: a part is not ``name=value`` or matches no group, with the group labels listed.
    """
    labels = "; ".join(group.label for group in groups)
    wanted: dict[str, str] = {}
    for part in (p.strip() for p in baseline.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"baseline {baseline!r}: expected name=value parts like 'norm=tdbn', got {part!r}")
        wanted[name.strip()] = value.strip()
    if not wanted or not any(all(g.assignments.get(n) == v for n, v in wanted.items()) for g in groups):
        raise ValueError(f"baseline {baseline!r} matches no group; the groups are: {labels}")
    return wanted


def _baseline_of(group: Group, baseline: Mapping[str, str], groups: Sequence[Group]) -> Group | None:
    """The group ``group`` is paired with: among the groups with the ``baseline`` values, the one that shares the most
    of ``group``'s values of the other primary keys (the same T, the same variant); None when two share as many.

    So ``norm=bn`` pairs every variant with the one vanilla-BN group however the variants differ from it, and in a
    grid of norms x T, ``norm=tdbn`` pairs each group with tdBN at its own T.
    """
    candidates = [
        other for other in groups if all(other.assignments.get(name) == value for name, value in baseline.items())
    ]
    others = [name for name in group.primary if name not in baseline]

    def shared(other: Group) -> int:
        return sum(other.assignments.get(name) == group.assignments[name] for name in others)

    if not candidates:
        return None
    most = max(shared(other) for other in candidates)
    best = [other for other in candidates if shared(other) == most]
    return best[0] if len(best) == 1 else None


def is_rl_return(metric: str) -> bool:
    """Whether ``metric`` is an RL return (``rl/`` key containing ``return``), reported with its IQM."""
    return metric.startswith("rl/") and "return" in metric


@dataclass
class MetricRow:
    """One group's statistics of one metric's ``final`` or ``best`` values (``value``)."""

    metric: str
    group: str
    value: str
    summary: Summary
    per_seed: dict[tuple[str, int | None], float]
    paired: PairedDifference | None
    iqm: tuple[float, Interval | None] | None


def _per_seed(group: Group, metric: str, which: str, strata: str | None) -> dict[tuple[str, int | None], float]:
    """``(stratum, seed) -> value`` of the runs that have the metric; a pair seen twice is kept once, the last."""
    values = {}
    for run in group.runs:
        table = run.final if which == "final" else run.best
        if metric in table:
            stratum = _value_of(run.config, strata) if strata else ""
            values[(stratum, run.seed)] = table[metric]
    return values


def metric_rows(
    groups: Sequence[Group], metric: str, baseline: Mapping[str, str] | None = None, strata: str | None = None
) -> list[MetricRow]:
    """The final and best rows of ``metric`` for every group that logged it."""
    rows = []
    for which in ("final", "best"):
        for group in groups:
            values = _per_seed(group, metric, which, strata)
            tables = [run.final if which == "final" else run.best for run in group.runs]
            values_of_runs = [table[metric] for table in tables if metric in table]
            if not values_of_runs:
                continue
            reference = _baseline_of(group, baseline, groups) if baseline else None
            paired = None
            if reference is not None and reference is not group:
                paired = paired_difference(values, _per_seed(reference, metric, which, strata))
            iqm = None
            if is_rl_return(metric):
                by_stratum: dict[str, list[float]] = {}
                for (stratum, _), value in values.items():
                    by_stratum.setdefault(stratum, []).append(value)
                iqm = stratified_bootstrap_iqm(by_stratum)
            rows.append(MetricRow(metric, group.label, which, summarize(values_of_runs), values, paired, iqm))
    return rows


def _number(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


def _interval(interval: Interval | None) -> str:
    return "-" if interval is None else f"[{_number(interval[0])}, {_number(interval[1])}]"


def _spread(summary: Summary) -> str:
    return _number(summary.mean) if summary.n == 1 else f"{_number(summary.mean)} ± {_number(summary.std)}"


def _seeds(per_seed: Mapping[tuple[str, int | None], float], number: Callable[[float], str] = _number) -> str:
    return ", ".join(
        f"{stratum + ' ' if stratum else ''}{'?' if seed is None else seed}: {number(value)}"
        for (stratum, seed), value in per_seed.items()
    )


def markdown_table(rows: Sequence[MetricRow], baseline: str | None) -> str:
    """One metric's table: a line per group with its final and best statistics (rows of :func:`metric_rows`)."""
    finals = [row for row in rows if row.value == "final"]
    bests = {row.group: row for row in rows if row.value == "best"}
    rl = any(row.iqm is not None for row in finals)
    header = ["group", "n", "final mean ± std", "95% CI", "best mean ± std", "final per seed"]
    header += [f"Δ final vs {baseline} (95% CI)"] if baseline else []
    header += ["final IQM (95% CI)"] if rl else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in finals:
        best = bests.get(row.group)
        cells = [
            row.group,
            str(row.summary.n),
            _spread(row.summary),
            _interval(row.summary.interval),
            _spread(best.summary) if best else "-",
            _seeds(row.per_seed),
        ]
        if baseline:
            paired = row.paired
            cells.append(
                "-" if paired is None else f"{_number(paired.mean)} {_interval(paired.interval)} (n={paired.n})"
            )
        if rl:
            cells.append("-" if row.iqm is None else f"{_number(row.iqm[0])} {_interval(row.iqm[1])}")
        lines.append("| " + " | ".join(cells) + " |")
    direction = "min" if lower_is_better(rows[0].metric) else "max"
    return f"### {rows[0].metric}\n\nfinal: last value; best: {direction} over the run\n\n" + "\n".join(lines)


def csv_rows(rows: Sequence[MetricRow]) -> list[dict[str, Any]]:
    """One CSV record (:data:`CSV_COLUMNS`) per row of :func:`metric_rows`."""
    records = []
    for row in rows:
        interval = row.summary.interval or (math.nan, math.nan)
        paired = row.paired
        paired_interval = (paired.interval if paired else None) or (math.nan, math.nan)
        iqm, iqm_interval = row.iqm if row.iqm else (math.nan, None)
        iqm_interval = iqm_interval or (math.nan, math.nan)
        records.append(
            {
                "metric": row.metric,
                "group": row.group,
                "value": row.value,
                "n": row.summary.n,
                "mean": row.summary.mean,
                "std": row.summary.std,
                "ci_low": interval[0],
                "ci_high": interval[1],
                "paired_n": paired.n if paired else 0,
                "paired_mean": paired.mean if paired else math.nan,
                "paired_ci_low": paired_interval[0],
                "paired_ci_high": paired_interval[1],
                "iqm": iqm,
                "iqm_ci_low": iqm_interval[0],
                "iqm_ci_high": iqm_interval[1],
                "per_seed": _seeds(row.per_seed, repr),
            }
        )
    return records
