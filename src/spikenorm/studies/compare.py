"""``spikenorm compare``: tabulate any set of runs, grouped by the configuration keys that differ between them.

:func:`compare` finds the runs under the given folders (:func:`spikenorm.studies.run_records.find_runs`), groups
the finished ones (:func:`spikenorm.studies.tables.group_runs`), and reports per metric and group the final and
best values' mean, standard deviation, 95% bootstrap interval, the values per seed, the per-seed paired difference
to a baseline group, and for RL returns the interquartile mean with a stratified bootstrap interval
(:mod:`spikenorm.studies.statistics`). Runs that are not ``finished`` (crashed, interrupted, running, or of
unknown status) are listed apart and never averaged in. With ``output`` it writes ``compare.md``, ``compare.csv``
and a ``curves_<metric>.png`` per metric (:mod:`spikenorm.studies.curves`).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spikenorm.studies.curves import curve_file_name, learning_curves
from spikenorm.studies.run_records import RunRecord, describe_search, find_runs
from spikenorm.studies.tables import (
    CSV_COLUMNS,
    Group,
    MetricRow,
    csv_rows,
    group_runs,
    is_rl_return,
    markdown_table,
    metric_rows,
    resolve_baseline,
    resolve_key,
)

__all__ = ["COMPARE", "Comparison", "compare", "compare_command", "compare_parser"]

#: the subcommand's name: ``spikenorm compare ...``
COMPARE = "compare"
MARKDOWN_FILE = "compare.md"
CSV_FILE = "compare.csv"
#: the first line of a written ``compare.md``: the files that compare wrote there, which a later call may replace
_MARKER = "<!-- spikenorm compare wrote:"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class Comparison:
    """What :func:`compare` found and computed; :meth:`markdown` renders it."""

    runs: list[RunRecord]
    groups: list[Group]
    grouping_keys: dict[str, str]
    metrics: list[str]
    rows: dict[str, list[MetricRow]]
    baseline: str | None = None
    strata: str | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def apart(self) -> list[RunRecord]:
        """The runs that are not finished, listed apart."""
        return [run for run in self.runs if run.status != "finished"]

    def markdown(self) -> str:
        """The tables: a header (runs, grouping keys, definitions), one table per metric, the runs listed apart."""
        finished = len(self.runs) - len(self.apart)
        lines = [f"## Comparison of {finished} finished runs ({len(self.apart)} listed apart)", ""]
        if self.grouping_keys:
            keys = ", ".join(f"`{key}` ({name})" for key, name in self.grouping_keys.items())
            lines += [f"Groups differ in {keys}.", ""]
        if self.strata:
            lines += [f"IQM strata: `{self.strata}`.", ""]
        notes = ["n: finished runs; mean ± sample std (ddof 1); 95% CI: percentile bootstrap of the mean"]
        if self.baseline:
            notes.append(f"Δ: mean per-seed paired difference to {self.baseline} with its bootstrap CI")
        if any(is_rl_return(metric) for metric in self.metrics):
            notes.append("IQM: mean of the middle 50% of runs, stratified bootstrap CI (Agarwal et al. 2021)")
        lines += ["; ".join(notes) + ".", ""]
        if not self.groups:
            lines += ["No finished run to tabulate.", ""]
        for metric in self.metrics:
            if self.rows[metric]:
                lines += [markdown_table(self.rows[metric], self.baseline), ""]
        if self.apart:
            lines += ["### Runs not averaged in", "", "| run | status | error |", "|---|---|---|"]
            lines += [f"| {_shown(run.path)} | {run.status} | {run.error or '-'} |" for run in self.apart]
            lines.append("")
        return "\n".join(lines)

    def csv_records(self) -> list[dict[str, object]]:
        """One record per group x metric x final/best (:data:`spikenorm.studies.tables.CSV_COLUMNS`)."""
        return [record for metric in self.metrics for record in csv_rows(self.rows[metric])]


def _default_metrics(available: Sequence[str]) -> list[str]:
    """Every ``test/`` metric and RL return; every metric when there are none."""
    chosen = [metric for metric in available if metric.startswith("test/") or is_rl_return(metric)]
    return chosen or list(available)


def _previous_output(folder: Path) -> set[str]:
    """The file names a previous :func:`compare` wrote into ``folder`` (named on its ``compare.md``'s first line)."""
    markdown = folder / MARKDOWN_FILE
    if not markdown.is_file():
        return set()
    first = markdown.read_text(encoding="utf-8").partition("\n")[0]
    if not first.startswith(_MARKER):
        return set()
    return set(first.removeprefix(_MARKER).removesuffix("-->").split())


def _write(comparison: Comparison, folder: Path, plots: bool) -> list[Path]:
    """Write ``compare.md``, ``compare.csv`` and the curves into ``folder``, over nothing but its own output."""
    figures = {}
    if plots:
        for metric in comparison.metrics:
            figure = learning_curves(comparison.groups, metric)
            if figure is not None:
                figures[curve_file_name(metric)] = figure
    names = [MARKDOWN_FILE, CSV_FILE, *figures]
    ours = _previous_output(folder)
    taken = [name for name in names if (folder / name).exists() and name not in ours]
    if taken:
        raise FileExistsError(
            f"{folder} already holds {', '.join(taken)}, not written by spikenorm compare: choose another --output"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / CSV_FILE).open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(comparison.csv_records())
    for name, figure in figures.items():
        figure.savefig(folder / name, dpi=120)
    header = f"{_MARKER} {' '.join(names)} -->\n"
    (folder / MARKDOWN_FILE).write_text(header + comparison.markdown(), encoding="utf-8")
    return [folder / name for name in names]


def compare(
    paths: Sequence[str | os.PathLike[str]],
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    strata: str | None = None,
    output: str | os.PathLike[str] | None = None,
    plots: bool = True,
    print_table: bool = True,
    ignore: Sequence[str] = (),
) -> Comparison:
    """Tabulate the runs at or under ``paths``.

    Args:
        paths: run folders, or folders searched recursively for them (one path alone is accepted too).
        metrics: the metrics to report; default every ``test/`` metric and RL return (``rl/…return…``), or every
            metric when the runs logged none of those.
        baseline: the group the paired differences are taken to, as ``name=value`` parts of its label
            (``"norm=tdbn"``); a group is compared with the group that has these values and most of its own other ones.
        strata: a config key (or its unambiguous dotted suffix, e.g. ``env_name``) whose values are the tasks
            of the IQM's stratified bootstrap; it does not split groups. Default: one stratum.
        output: a folder to write ``compare.md``, ``compare.csv`` and ``curves_<metric>.png`` into; files there
            are replaced only when a previous ``compare`` wrote them.
        plots: write the learning curves (with ``output``).
        print_table: print the markdown tables.
        ignore: more config keys (full dotted keys) that do not split groups.

    Returns:
        The :class:`Comparison`.

    Raises:
        ValueError: no runs found (where it looked is said), an unknown metric (the logged ones are listed), a
            baseline that matches no group (the labels are listed), a strata key that is not in the configs.
        FileNotFoundError: a path does not exist.
        FileExistsError: ``output`` holds a file of that name that ``compare`` did not write.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    runs = find_runs(paths)
    if not runs:
        raise ValueError(f"no runs found: {describe_search(paths)}")
    finished = [run for run in runs if run.status == "finished"]
    strata_key = None
    if strata is not None:
        strata_key = resolve_key(strata, sorted({key for run in finished for key in run.config}), "strata")
    groups, grouping_keys = group_runs(finished, ignore=[*ignore, *([strata_key] if strata_key else [])])
    available = sorted({metric for run in finished for metric in run.final})
    chosen = list(metrics) if metrics else _default_metrics(available)
    unknown = [metric for metric in chosen if metric not in available]
    if finished and unknown:
        raise ValueError(f"no finished run logged {', '.join(unknown)}; the metrics logged are: {', '.join(available)}")
    wanted = resolve_baseline(baseline, groups) if baseline and groups else None
    comparison = Comparison(
        runs=runs,
        groups=groups,
        grouping_keys=grouping_keys,
        metrics=chosen if finished else [],
        rows={metric: metric_rows(groups, metric, wanted, strata_key) for metric in chosen} if finished else {},
        baseline=baseline,
        strata=strata_key,
    )
    if output is not None:
        comparison.written = _write(comparison, Path(output), plots)
    if print_table:
        print(comparison.markdown())
    return comparison


def compare_parser() -> argparse.ArgumentParser:
    """The argument parser of ``spikenorm compare``."""
    parser = argparse.ArgumentParser(
        prog=f"spikenorm {COMPARE}",
        description="Tabulate runs (CSV run folders, offline W&B runs) grouped by the config keys that differ.",
    )
    parser.add_argument("paths", nargs="+", help="run folders, or folders searched recursively for runs")
    parser.add_argument(
        "--metrics",
        action="append",
        help="metrics to report, comma-separated or repeated (default: every test/ metric and RL return)",
    )
    parser.add_argument("--baseline", help="the group to take paired differences to, e.g. norm=tdbn")
    parser.add_argument("--strata", help="config key whose values are the tasks of the IQM stratified bootstrap")
    parser.add_argument("--ignore", action="append", default=[], help="config key that does not split groups")
    parser.add_argument("--output", help="folder for compare.md, compare.csv and the learning curves")
    parser.add_argument("--no-plots", action="store_true", help="write no learning curves")
    return parser


def compare_command(argv: Sequence[str]) -> Comparison:
    """Run ``spikenorm compare <argv>``: print the tables and the files written; a bad argument exits with its
    message (status 2)."""
    parser = compare_parser()
    options = parser.parse_args(list(argv))
    metrics = [m.strip() for value in options.metrics or [] for m in value.split(",") if m.strip()] or None
    try:
        result = compare(
            options.paths,
            metrics=metrics,
            baseline=options.baseline,
            strata=options.strata,
            output=options.output,
            plots=not options.no_plots,
            ignore=options.ignore,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))
    if result.written:
        print("written        " + "\n               ".join(_shown(path) for path in result.written))
    return result
