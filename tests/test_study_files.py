"""Study files (spikenorm.studies.study_files): what is refused before anything runs, how cells x axes x seeds
expand into runs with their folders, names and composed configs, placeholders and waves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from spikenorm.studies.study_files import (
    StudyFileError,
    axis_labels,
    check_configs,
    expand_runs,
    flatten,
    load_study,
    placeholder_keys,
    set_key,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
NORM = "model.init_args.model.init_args.layers.norm"
RECIPE = {
    "seed_everything": 7,
    "trainer": {
        "max_epochs": 20,
        "logger": [
            {"class_path": "spikenorm.loggers.WandbLogger", "init_args": {"project": "p", "name": "quickstart"}},
            {"class_path": "spikenorm.loggers.CSVLogger", "init_args": {"save_dir": "logs", "name": "quickstart"}},
        ],
        "callbacks": [{"class_path": "a.B", "init_args": {"x": 1}}],
    },
    "model": {"init_args": {"time_steps": 4, "model": {"init_args": {"layers": {"norm": "tdbn"}}}}},
}


def _study(folder: Path, recipe: dict | None = None, **entries) -> Path:
    """A study file (and its base recipe) in ``folder``."""
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE if recipe is None else recipe))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": "recipe.yaml", **entries}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"sedes": 3}, "unknown key(s) ['sedes'] in the file; allowed: name, base, output, seeds"),
        ({"executor": {"name": "local", "worker": 2}}, "unknown key(s) ['worker'] in executor; allowed: name, workers"),
        ({"executor": {"name": "ray"}}, "executor.name must be one of local, slurm, submitit-local, debug"),
        ({"seeds": [0, 1, 0]}, "seeds lists a seed twice"),
        ({"seeds": 0}, "seeds must be a positive integer"),
        ({"axes": {NORM: []}}, f"axis '{NORM}' must list at least one value"),
        ({"cells": {"a": [1]}}, "cell 'a' must be a mapping"),
        ({"metrics": [1]}, "metrics must be a list of metric keys"),
        ({"name": "a b"}, "name must be letters, digits"),
    ],
)
def test_a_study_file_with_a_wrong_key_or_value_is_refused_naming_it(tmp_path, entries, message):
    with pytest.raises(StudyFileError) as raised:
        load_study(_study(tmp_path, **entries))
    assert message in str(raised.value) and str(tmp_path / "study.yaml") in str(raised.value)


def test_a_missing_base_recipe_is_named(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: s\nbase: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="base recipe .*nowhere.yaml does not exist"):
        load_study(path)


def test_defaults_output_relative_to_the_working_folder_and_base_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    study = load_study(_study(tmp_path / "sub"))
    assert study.base == tmp_path / "sub" / "recipe.yaml"
    assert study.output == tmp_path / "studies" / "s"  # the tests run in tmp_path
    assert study.seeds == (0,) and study.executor.name == "local" and study.executor.threads == 1
    assert study.executor.slurm == {"timeout_min": 240}
    assert load_study(_study(tmp_path, seeds=3, output="o")).seeds == (0, 1, 2)
    assert load_study(_study(tmp_path, output="o"), output="p").output == tmp_path / "p"


def test_cells_times_axes_times_seeds_give_named_runs_with_composed_configs(tmp_path):
    path = _study(
        tmp_path,
        seeds=[3, 5],
        overrides={"trainer.max_epochs": 2, "model.init_args.time_steps": 1, "trainer.callbacks[0].init_args.x": 2},
        cells={"plain": {}, "T8 + KD": {"model.init_args.time_steps": 8, "model.init_args.kd": {"w": 0.5}}},
        axes={NORM: ["tdbn", "tebn"]},
    )
    study = load_study(path)
    runs = expand_runs(study)
    assert [(r.cell, r.slug, r.seed) for r in runs[:3]] == [
        ("plain, norm=tdbn", "plain_norm=tdbn", 3),
        ("plain, norm=tdbn", "plain_norm=tdbn", 5),
        ("plain, norm=tebn", "plain_norm=tebn", 3),
    ]
    assert len(runs) == 8 and {r.cell for r in runs[4:]} == {"T8 + KD, norm=tdbn", "T8 + KD, norm=tebn"}
    run = next(r for r in runs if r.cell == "T8 + KD, norm=tebn" and r.seed == 5)
    assert run.folder == study.output / "T8_KD_norm=tebn" / "seed_5"
    config = run.config
    assert config["seed_everything"] == 5 and config["trainer"]["max_epochs"] == 2
    assert config["model"]["init_args"]["time_steps"] == 8  # the cell's override wins over the study's
    assert config["model"]["init_args"]["kd"] == {"w": 0.5}  # a new key
    assert config["model"]["init_args"]["model"]["init_args"]["layers"]["norm"] == "tebn"
    assert config["trainer"]["callbacks"] == [{"class_path": "a.B", "init_args": {"x": 2}}]
    csv, wandb = config["trainer"]["logger"]  # the CSV logger first: its folder is the run folder
    assert csv["init_args"] == {"save_dir": str(study.output), "name": "T8_KD_norm=tebn", "version": "seed_5"}
    assert wandb["init_args"] == {
        "project": "p",
        "name": "T8 + KD, norm=tebn seed 5",
        "group": "s",
        "job_type": "T8 + KD, norm=tebn",
        "save_dir": str(run.folder),
    }
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text()) == RECIPE  # nothing written back


def test_a_recipe_without_loggers_gets_the_csv_logger_and_one_cell_is_named_base(tmp_path):
    recipe = {"trainer": {"logger": False}, "model": {}}
    runs = expand_runs(load_study(_study(tmp_path, recipe)))
    assert [(r.cell, r.slug) for r in runs] == [("base", "base")]
    assert runs[0].config["trainer"]["logger"] == [
        {
            "class_path": "spikenorm.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path / "studies" / "s"), "name": "base", "version": "seed_0"},
        }
    ]


def test_override_keys_that_do_not_fit_the_recipe_are_refused(tmp_path):
    for key, message in [
        ("trainer.callbacks[3].init_args.x", "trainer.callbacks has 1 entries, so there is no [3]"),
        ("trainer.max_epochs.n", "trainer.max_epochs is not a mapping (it is 20)"),
        ("trainer..max_epochs", "malformed key"),
        ("trainer.callbacks.x", "trainer.callbacks is not a mapping"),
    ]:
        with pytest.raises(StudyFileError, match=f"overrides: {re.escape(key)}: {re.escape(message)}"):
            expand_runs(load_study(_study(tmp_path, overrides={key: 1})))


def test_set_key_and_flatten_are_inverse_on_leaves():
    config = {"a": {"b": [1, {"c": 2}]}, "d": []}
    set_key(config, "a.b[1].c", 3)
    set_key(config, "a.e.f", 4)  # new keys make their mappings
    assert flatten(config) == {"a.b[0]": 1, "a.b[1].c": 3, "a.e.f": 4, "d": []}


def test_axis_labels_are_the_shortest_unambiguous_suffixes():
    assert axis_labels(["model.x.norm", "data.norm", "model.time_steps"]) == {
        "model.x.norm": "x.norm",
        "data.norm": "data.norm",
        "model.time_steps": "time_steps",
    }


def test_placeholders_fill_seeds_and_run_folders_and_order_waves(tmp_path):
    path = _study(
        tmp_path,
        seeds=2,
        cells={
            "student": {"model.init_args.teacher": "{best_checkpoint:teacher}", "model.init_args.seed": "{seed}"},
            "teacher": {"model.init_args.note": "after {run_dir:other}/x, seed {seed}"},
            "other": {},
        },
        axes={"model.init_args.time_steps": [1, 2]},
    )
    runs = expand_runs(load_study(path))
    assert [r.wave for r in runs] == [0] * 8 + [1] * 4  # the students after the teachers
    student = next(r for r in runs if r.cell == "student, time_steps=2" and r.seed == 1)
    assert student.needs == {"teacher": ("teacher_time_steps=2", 1)}
    assert student.config["model"]["init_args"]["teacher"] == "{best_checkpoint:teacher}"  # filled when it ran
    assert student.config["model"]["init_args"]["seed"] == 1  # a whole placeholder keeps the value's type
    teacher = next(r for r in runs if r.cell == "teacher, time_steps=1" and r.seed == 0)
    other = tmp_path / "studies" / "s" / "other_time_steps=1" / "seed_0"
    assert teacher.config["model"]["init_args"]["note"] == f"after {other}/x, seed 0"


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"a": {"model.init_args.k": "{best_checkpoint:b}"}}, r"\{best_checkpoint:b\} names no cell; cells: a"),
        ({"a": {"model.init_args.k": "{run_dir:a}"}}, r"\{run_dir:a\} names the run's own cell"),
        (
            {"a": {"model.k": "{best_checkpoint:b}"}, "b": {"model.k": "{best_checkpoint:a}"}},
            "in a circle: a seed 0 -> b seed 0 -> a seed 0",
        ),
        ({"x y": {}, "x_y": {}}, "would share the folder 'x_y'"),
    ],
)
def test_placeholders_naming_no_cell_or_a_circle_are_refused(tmp_path, cells, message):
    with pytest.raises(StudyFileError, match=message):
        expand_runs(load_study(_study(tmp_path, cells=cells)))


def test_every_composed_config_is_parsed_by_the_cli_parser_before_anything_runs(tmp_path):
    """The quickstart recipe with good overrides parses; an option the task does not take, or a value of the wrong
    type, is refused naming the run and the option, and nothing is built or written."""
    good = {"axes": {NORM: ["tdbn", "tebn"]}, "seeds": 2, "overrides": {"trainer.max_epochs": 1}}
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"name": "q", "base": str(QUICKSTART), **good}))
    study = load_study(path)
    check_configs(study, expand_runs(study))
    for override, message in [
        ({"model.init_args.tyme_steps": 2}, "Option 'tyme_steps' is not accepted"),
        ({"trainer.max_epochs": "many"}, "trainer.max_epochs"),
    ]:
        path.write_text(yaml.safe_dump({"name": "q", "base": str(QUICKSTART), "overrides": override}))
        study = load_study(path)
        with pytest.raises(StudyFileError, match=f"base seed 0: the composed config does not parse: (.|\n)*{message}"):
            check_configs(study, expand_runs(study))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"]


def test_keys_whose_values_hold_placeholders_are_left_out_of_the_grouping(tmp_path):
    """The end table must not split groups by values that differ per run by construction: the env seed that follows
    the run's seed, a teacher checkpoint path (below a mapping given as a value)."""
    distillation = {"class_path": "spikenorm.tasks.Distillation", "init_args": {"checkpoint": "{best_checkpoint:t}"}}
    path = _study(
        tmp_path,
        overrides={"model.init_args.time_steps": 2, "data.init_args.seed": "{seed}"},
        cells={"t": {}, "student": {"model.init_args.distillation": distillation}},
    )
    assert placeholder_keys(load_study(path)) == [
        "data.init_args.seed",
        "model.init_args.distillation.init_args.checkpoint",
    ]
