"""Study files: read a ``spikenorm study`` file, check it, and expand it into the runs it asks for.

A study file names a base recipe, the overrides every run gets, named cells (variants), axes (a grid: the cross
product of every axis' values, crossed with the cells) and seeds. Each cell x axis values x seed is one run
(:class:`RunPlan`): its own folder ``<output>/<cell slug>/seed_<s>/`` and its own complete configuration, the base
recipe with, in this order, the study's ``overrides``, the cell's, the axis values, ``seed_everything: <s>`` and
the study's loggers (:func:`study_loggers`) applied. Override keys are dotted paths into the recipe
(``trainer.max_epochs``, ``trainer.callbacks[2].init_args.unfoldable``: ``[i]`` indexes a list); a value replaces
what is there (a mapping is not merged into the old one).

Placeholders in override values (:func:`fill_placeholders`): ``{seed}``; ``{run_dir:<cell>}`` and
``{best_checkpoint:<cell>}``, the folder and the best checkpoint of the named cell's run with the same seed and
axis values. A run that needs another run's best checkpoint runs in a later wave than that run
(:attr:`RunPlan.wave`). See docs/reference/study-files.md for every key.
"""

from __future__ import annotations

import itertools
import os
import re
from argparse import ArgumentError
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EXECUTOR_NAMES",
    "ExecutorOptions",
    "RunPlan",
    "Study",
    "StudyFileError",
    "expand_runs",
    "fill_placeholders",
    "placeholder_keys",
    "flatten",
    "check_configs",
    "load_study",
    "set_key",
    "study_loggers",
]

#: the keys a study file may hold
STUDY_KEYS = (
    "name",
    "base",
    "output",
    "seeds",
    "overrides",
    "cells",
    "axes",
    "metrics",
    "baseline",
    "strata",
    "executor",
)
#: the keys of its ``executor`` entry
EXECUTOR_KEYS = ("name", "workers", "threads", "slurm")
#: ``executor.name``: joblib threads each running one ``spikenorm fit`` process, or submitit's executors
EXECUTOR_NAMES = ("local", "slurm", "submitit-local", "debug")
#: the name of the one cell of a study without ``cells`` and ``axes``
DEFAULT_CELL = "base"
#: ``executor.slurm`` entries used when the study file does not set them (submitit's own time default is 5 min)
SLURM_DEFAULTS = {"timeout_min": 240}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PLACEHOLDER = re.compile(r"\{(seed|run_dir:[^{}]+|best_checkpoint:[^{}]+)\}")
_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_KEY = re.compile(r"[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*)*")
_CSV_LOGGER = "spikenorm.loggers.CSVLogger"


class StudyFileError(ValueError):
    """A study file that cannot be run as written; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ExecutorOptions:
    """Where the runs run: ``name`` (:data:`EXECUTOR_NAMES`), ``workers`` (local: runs at a time; None: the cores
    this process may use // ``threads``), ``threads`` (torch threads per run) and ``slurm`` (submitit parameters:
    ``timeout_min``, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``, ``nodes``, ``tasks_per_node`` as submitit's
    shared ones, any other SLURM option of submitit's ``SlurmExecutor``, e.g. ``partition``, ``array_parallelism``,
    ``setup``)."""

    name: str = "local"
    workers: int | None = None
    threads: int = 1
    slurm: Mapping[str, Any] = field(default_factory=lambda: dict(SLURM_DEFAULTS))


@dataclass(frozen=True)
class Study:
    """A checked study file (see the module docstring); paths are absolute."""

    name: str
    path: Path
    base: Path
    output: Path
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any]
    cells: Mapping[str, Mapping[str, Any]]
    axes: Mapping[str, Sequence[Any]]
    metrics: tuple[str, ...] | None
    baseline: str | None
    strata: str | None
    executor: ExecutorOptions


@dataclass
class RunPlan:
    """One run of a study: the cell (``cell``: its display name, also the W&B ``job_type``; ``slug``: its folder
    name), the named cell it comes from (``variant``; None without ``cells``), its seed, folder and configuration.

    ``config`` has every placeholder filled but ``{best_checkpoint:<cell>}``; ``needs`` maps each such cell name to
    the run (its ``(slug, seed)``) whose best checkpoint fills it; ``wave`` is 0 for a run that needs none, else one
    more than the latest wave it needs."""

    cell: str
    slug: str
    variant: str | None
    seed: int
    folder: Path
    config: dict[str, Any]
    needs: dict[str, tuple[str, int]] = field(default_factory=dict)
    wave: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.slug, self.seed

    @property
    def label(self) -> str:
        return f"{self.cell} seed {self.seed}"


def _fail(path: Path, message: str) -> StudyFileError:
    return StudyFileError(f"study file {path}: {message}")


def _check_keys(path: Path, given: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown} in {where}; allowed: {', '.join(allowed)}")


def _positive_int(path: Path, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, f"{what} must be a positive integer, got {value!r}")
    return value


def _mapping(path: Path, value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(path, f"{what} must be a mapping with string keys, got {value!r}")
    return dict(value)


def _seeds(path: Path, value: Any) -> tuple[int, ...]:
    if value is None:
        return (0,)
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(_positive_int(path, value, "seeds")))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise _fail(path, f"seeds lists a seed twice: {value}")
        return tuple(value)
    raise _fail(path, f"seeds must be a count n (seeds 0..n-1) or a non-empty list of integers, got {value!r}")


def _executor(path: Path, value: Any) -> ExecutorOptions:
    entry = _mapping(path, value, "executor")
    _check_keys(path, entry, EXECUTOR_KEYS, "executor")
    name = entry.get("name", "local")
    if name not in EXECUTOR_NAMES:
        raise _fail(path, f"executor.name must be one of {', '.join(EXECUTOR_NAMES)}, got {name!r}")
    workers = entry.get("workers")
    if workers is not None:
        _positive_int(path, workers, "executor.workers")
    threads = _positive_int(path, entry.get("threads", 1), "executor.threads")
    slurm = {**SLURM_DEFAULTS, **_mapping(path, entry.get("slurm"), "executor.slurm")}
    return ExecutorOptions(name=name, workers=workers, threads=threads, slurm=slurm)


def load_study(path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> Study:
    """Read and check the study file at ``path``; ``output`` (else the file's ``output``, else
    ``studies/<name>``) is taken relative to the current directory, ``base`` relative to the study file.

    Raises:
        FileNotFoundError: no study file, or no base recipe where ``base`` points.
        StudyFileError: an unknown key (the allowed ones are listed), a value of the wrong kind, an axis without
            values, a metric list that is not a list of strings.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"spikenorm study: no study file at {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise _fail(path, f"not valid YAML: {error}") from error
    raw = _mapping(path, raw, "the file")
    _check_keys(path, raw, STUDY_KEYS, "the file")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(path, f"name must be letters, digits, '-', '_' or '.', got {name!r}")
    if not isinstance(raw.get("base"), str):
        raise _fail(path, "base must name the recipe every run starts from (a path relative to the study file)")
    base = (path.parent / raw["base"]).resolve()
    if not base.is_file():
        raise FileNotFoundError(f"study file {path}: base recipe {base} does not exist")
    cells = _mapping(path, raw.get("cells"), "cells")
    cells = {cell: _mapping(path, overrides, f"cell {cell!r}") for cell, overrides in cells.items()}
    axes = _mapping(path, raw.get("axes"), "axes")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"axis {key!r} must list at least one value, got {values!r}")
    metrics = raw.get("metrics")
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise _fail(path, f"metrics must be a list of metric keys (e.g. [test/acc]), got {metrics!r}")
    for key in ("baseline", "strata", "output"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _fail(path, f"{key} must be a string, got {raw[key]!r}")
    return Study(
        name=name,
        path=path,
        base=base,
        output=Path(output or raw.get("output") or Path("studies") / name).resolve(),
        seeds=_seeds(path, raw.get("seeds")),
        overrides=_mapping(path, raw.get("overrides"), "overrides"),
        cells=cells,
        axes=axes,
        metrics=tuple(metrics) if metrics else None,
        baseline=raw.get("baseline"),
        strata=raw.get("strata"),
        executor=_executor(path, raw.get("executor")),
    )


# -- configuration keys ------------------------------------------------------------------------------------------


def key_parts(key: str) -> list[str | int]:
    """``"a.b[2].c"`` -> ``["a", "b", 2, "c"]``.

    Raises:
        ValueError: an empty key or a malformed one (``a..b``, ``a[x]``, ``.a``).
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key}: malformed key, expected dotted names, each optionally followed by [index]")
    return [name if name else int(index) for name, index in _KEY_PART.findall(key)]


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` (``[i]`` indexes a list) of ``config`` to ``value``, creating missing mappings.

    Raises:
        ValueError: a list index out of range, an index into something that is not a list, or a key into a value
            that is not a mapping (what is there is named).
    """
    parts = key_parts(key)
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = key_string(parts[:depth]) or "the config"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ValueError(f"{key}: {where} is not a list (it is {node!r}), so [{part}] does not index it")
            if part >= len(node):
                raise ValueError(f"{key}: {where} has {len(node)} entries, so there is no [{part}]")
        elif not isinstance(node, dict):
            raise ValueError(f"{key}: {where} is not a mapping (it is {node!r}), so it has no key {part!r}")
        if last:
            node[part] = value
        else:
            if isinstance(part, str) and node.get(part) is None and isinstance(parts[depth + 1], str):
                node[part] = {}  # a new key
            node = node[part]


def key_string(parts: Sequence[str | int]) -> str:
    """The inverse of :func:`key_parts`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a config as ``{"trainer.callbacks[0].init_args.monitor": "val/acc", ...}`` (empty mappings and
    lists are leaves)."""
    if isinstance(config, Mapping) and config:
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(config, list) and config:
        flat = {}
        for i, value in enumerate(config):
            flat.update(flatten(value, f"{prefix}[{i}]"))
        return flat
    return {prefix: config}


# -- placeholders --------------------------------------------------------------------------------------------


def placeholder_keys(study: Study) -> list[str]:
    """The dotted config keys whose override value (in ``overrides`` or a cell, or below a mapping given as a value)
    holds a placeholder: their values differ from run to run by construction (a seed, another run's checkpoint), so
    the study's table does not group by them (``compare(..., ignore=...)``)."""
    keys: set[str] = set()

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                walk(f"{key}.{sub}", inner)
        elif isinstance(value, str) and _PLACEHOLDER.search(value):
            keys.add(key)

    for overrides in (study.overrides, *study.cells.values()):
        for key, value in overrides.items():
            walk(key, value)
    return sorted(keys)


def fill_placeholders(value: Any, fill: Callable[[str], Any | None]) -> Any:
    """``value`` with each placeholder whose ``fill(name)`` is not None replaced; a string that is one placeholder
    and nothing else takes the filled value itself (``"{seed}"`` -> ``3``), otherwise its text."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and (filled := fill(whole.group(1))) is not None:
            return filled
        return _PLACEHOLDER.sub(lambda m: str(f) if (f := fill(m.group(1))) is not None else m.group(0), value)
    if isinstance(value, Mapping):
        return {k: fill_placeholders(v, fill) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, fill) for v in value]
    return value


# -- loggers -------------------------------------------------------------------------------------------------


def _is_wandb(class_path: str) -> bool:
    return class_path.rsplit(".", 1)[-1] == "WandbLogger"


def _is_csv(class_path: str) -> bool:
    return class_path.rsplit(".", 1)[-1] == "CSVLogger"


def study_loggers(
    loggers: Any, study: str, cell: str, slug: str, seed: int, output: Path, folder: Path
) -> list[dict[str, Any]]:
    """A run's ``trainer.logger`` entries: the recipe's, with each W&B logger given ``group=<study>``,
    ``job_type=<cell>``, ``name="<cell> seed <s>"`` and ``save_dir=<run folder>``, and each other logger
    ``save_dir=<output>``, ``name=<cell slug>``, ``version=seed_<s>``, so that its log folder is the run folder. A
    CSV logger is added where the recipe has none (``false``, Lightning's default, or only W&B), and put first:
    Lightning puts checkpoints and the spikenorm CLI puts ``config.yaml`` and ``run.json`` in the first logger's
    folder, and ``spikenorm compare`` reads ``metrics.csv``."""
    if loggers in (None, True, False):
        entries = []
    else:
        entries = [dict(e) for e in (loggers if isinstance(loggers, list) else [loggers])]
    if not any(_is_csv(str(e.get("class_path", ""))) for e in entries):
        entries.insert(0, {"class_path": _CSV_LOGGER, "init_args": {}})
    first_csv = next(i for i, e in enumerate(entries) if _is_csv(str(e.get("class_path", ""))))
    entries.insert(0, entries.pop(first_csv))
    for entry in entries:
        init_args = dict(entry.get("init_args") or {})
        if _is_wandb(str(entry.get("class_path", ""))):
            init_args.update(group=study, job_type=cell, name=f"{cell} seed {seed}", save_dir=str(folder))
        else:
            init_args.update(save_dir=str(output), name=slug, version=f"seed_{seed}")
        entry["init_args"] = init_args
    return entries


# -- expansion -----------------------------------------------------------------------------------------------


def slugify(name: str) -> str:
    """A folder name for a cell: runs of characters other than letters, digits, ``.``, ``=``, ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", name).strip("_") or "cell"


def axis_labels(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (``...layers.norm`` -> ``norm``)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def _value_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip().removesuffix("...").strip()


def _apply(config: dict[str, Any], overrides: Mapping[str, Any], path: Path, where: str) -> None:
    for key, value in overrides.items():
        try:
            set_key(config, key, value)
        except ValueError as error:
            raise _fail(path, f"{where}: {error}") from error


def expand_runs(study: Study) -> list[RunPlan]:
    """Every run of ``study``, ordered by wave, cell and seed (see the module docstring).

    Raises:
        StudyFileError: a malformed override key or one that does not fit the recipe (a list index out of range,
            a key below a value that is not a mapping), a placeholder naming a cell that does not exist or the run's
            own cell, runs that need each other in a circle, two cells with one folder name.
    """
    base = yaml.safe_load(study.base.read_text(encoding="utf-8"))
    if not isinstance(base, dict):
        raise _fail(study.path, f"base recipe {study.base} is not a mapping of config keys")
    variants: list[str | None] = list(study.cells) or [None]
    labels = axis_labels(list(study.axes))
    combos = list(itertools.product(*study.axes.values()))
    plans: dict[tuple[str | None, tuple[Any, ...], int], RunPlan] = {}
    slugs: dict[str, str] = {}
    for variant, combo in itertools.product(variants, combos):
        axis_values = tuple(zip(study.axes, combo))
        parts = ([variant] if variant is not None else []) + [f"{labels[k]}={_value_text(v)}" for k, v in axis_values]
        cell = ", ".join(parts) or DEFAULT_CELL
        slug = slugify(cell)
        if slugs.setdefault(slug.lower(), cell) != cell:
            raise _fail(study.path, f"cells {slugs[slug.lower()]!r} and {cell!r} would share the folder {slug!r}")
        for seed in study.seeds:
            config = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
            _apply(config, study.overrides, study.path, "overrides")
            if variant is not None:
                _apply(config, study.cells[variant], study.path, f"cell {variant!r}")
            _apply(config, dict(axis_values), study.path, "axes")
            config["seed_everything"] = seed
            folder = study.output / slug / f"seed_{seed}"
            trainer = config.setdefault("trainer", {})
            if not isinstance(trainer, dict):
                raise _fail(study.path, f"trainer must be a mapping in {study.base}")
            trainer["logger"] = study_loggers(trainer.get("logger"), study.name, cell, slug, seed, study.output, folder)
            plans[(variant, combo, seed)] = RunPlan(cell, slug, variant, seed, folder, config)
    for (variant, combo, seed), plan in plans.items():

        def fill(name: str, plan: RunPlan = plan, combo: tuple[Any, ...] = combo, seed: int = seed) -> Any:
            if name == "seed":
                return seed
            kind, cell = name.split(":", 1)
            if cell not in study.cells:
                raise _fail(study.path, f"{plan.label}: {{{name}}} names no cell; cells: {', '.join(study.cells)}")
            if cell == plan.variant:
                raise _fail(study.path, f"{plan.label}: {{{name}}} names the run's own cell")
            other = plans[(cell, combo, seed)]
            if kind == "run_dir":
                return str(other.folder)
            plan.needs[cell] = other.key
            return None  # filled when that run has finished

        plan.config = fill_placeholders(plan.config, fill)
    by_key = {plan.key: plan for plan in plans.values()}
    for plan in plans.values():
        plan.wave = _wave(plan, by_key, study.path, ())
    return sorted(plans.values(), key=lambda p: p.wave)


def _wave(plan: RunPlan, plans: Mapping[tuple[str, int], RunPlan], path: Path, chain: tuple[str, ...]) -> int:
    if plan.label in chain:
        raise _fail(path, f"runs need each other's checkpoints in a circle: {' -> '.join((*chain, plan.label))}")
    return max((1 + _wave(plans[key], plans, path, (*chain, plan.label)) for key in plan.needs.values()), default=0)


# -- checking the composed configurations ------------------------------------------------------------------------


def _stand_in(plan: RunPlan, plans: Mapping[tuple[str, int], RunPlan]) -> dict[str, Any]:
    """``plan.config`` with each best checkpoint it needs replaced by a path of that run's (for parsing only)."""
    paths = {cell: str(plans[key].folder / "checkpoints" / "best.ckpt") for cell, key in plan.needs.items()}
    return fill_placeholders(plan.config, lambda name: paths.get(name.split(":", 1)[-1]))


def _shape(config: Mapping[str, Any]) -> str:
    """What decides whether a config parses, less what differs between the seeds of a cell (seed, logger names
    and folders), as text: runs of one shape are parsed once."""
    config = dict(config)
    config.pop("seed_everything", None)
    trainer = dict(config.get("trainer") or {})
    trainer["logger"] = [(e["class_path"], sorted(e.get("init_args") or {})) for e in trainer.get("logger") or []]
    config["trainer"] = trainer
    return yaml.safe_dump(config, sort_keys=True)


def _config_parser() -> Any:
    """The parser ``spikenorm fit`` reads its config with (jsonargparse's, raising instead of exiting)."""
    from jsonargparse import Namespace

    from spikenorm.cli import CONFIG_LOADER, SpikenormCLI

    class ParserOnly(SpikenormCLI):
        """The CLI's parser, links included; it parses, seeds, builds and runs nothing."""

        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.config = Namespace()

        def _parse_ckpt_path(self) -> None: ...

        def _set_seed(self) -> None: ...

        def _add_instantiators(self) -> None: ...

        def before_instantiate_classes(self) -> None: ...

        def instantiate_classes(self) -> None: ...

    kwargs = {"exit_on_error": False, "parser_mode": CONFIG_LOADER}
    return ParserOnly(args=[], run=False, save_config_callback=None, parser_kwargs=kwargs).parser


def check_configs(study: Study, plans: Sequence[RunPlan]) -> None:
    """Parse every run's composed configuration with the ``spikenorm fit`` parser, without building anything
    (the CLI's links and checks included), once per distinct configuration up to seed and logger names.

    Raises:
        StudyFileError: a configuration the CLI refuses (an unknown key or option, a value of the wrong type, a
            disagreeing ``time_bins``), with the run and the parser's message.
    """
    from spikenorm.cli import check_kept_steps  # the CLI imports every task: only when checking

    parser = _config_parser()
    by_key = {plan.key: plan for plan in plans}
    seen = set()
    for plan in plans:
        config = _stand_in(plan, by_key)
        shape = _shape(config)
        if shape in seen:
            continue
        seen.add(shape)
        try:
            check_kept_steps(parser.parse_args(["--config", yaml.safe_dump(config)]))
        except (ArgumentError, ValueError, TypeError) as error:
            raise _fail(study.path, f"{plan.label}: the composed config does not parse: {error}") from error
