"""``spikenorm compare`` on run folders: hand-written CSV run folders with fixed numbers (fast), real
``spikenorm fit`` runs with their offline W&B runs (slow)."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import spikenorm_cli
from scipy import stats

from spikenorm.run_status import RunStatus, write_run_status
from spikenorm.studies.compare import compare, compare_command
from spikenorm.studies.run_records import find_runs, read_wandb_run

NORM = ("model", "init_args", "model", "init_args", "layers", "norm")
# test/acc per norm and seed, and the val/acc curve of each run (steps 10, 20, 30)
TEST_ACC = {"tdbn": [0.80, 0.84, 0.82], "tebn": [0.86, 0.85, 0.90], "bn": [0.70, 0.72, 0.75]}


def _config(norm: str, seed: int, **extra) -> dict:
    config = {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": 3,
            "logger": [{"class_path": "spikenorm.loggers.CSVLogger", "init_args": {"save_dir": f"logs{seed}"}}],
        },
        "model": {"class_path": "spikenorm.tasks.SpikingClassifier", "init_args": {"time_steps": 4, "model": {}}},
        "ckpt_path": None,
    }
    node = config["model"]["init_args"]["model"]
    node.update({"class_path": "spikenorm.models.SpikingVGG", "init_args": {"layers": {"norm": norm, "tau": 2.0}}})
    for key, value in extra.items():
        target = config
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return config


def _run(folder: Path, config: dict, rows: list[dict], status: str | None = "finished", **run_status) -> Path:
    """A CSV run folder as the spikenorm CLI leaves it: config.yaml, metrics.csv, run.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    columns = sorted({key for row in rows for key in row})
    with (folder / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if status is not None:
        write_run_status(folder, RunStatus(status, started="2026-01-01T00:00:00+00:00", **run_status))
    return folder


def _classification_rows(acc: float, seed: int) -> list[dict]:
    val = [acc - 0.1, acc + 0.05 + 0.01 * seed, acc]  # best val/acc is the middle one
    rows = [{"epoch": i, "step": 10 * (i + 1), "val/acc": v, "val/loss": 1.0 - v} for i, v in enumerate(val)]
    return [*rows, {"epoch": 3, "step": 30, "test/acc": acc, "test/loss": 1.0 - acc}]


@pytest.fixture
def norm_runs(tmp_path: Path) -> Path:
    """3 norms x 3 seeds, finished, in a study-like layout ``runs/<norm>/seed_<s>/``."""
    for norm, accs in TEST_ACC.items():
        for seed, acc in enumerate(accs):
            _run(tmp_path / "runs" / norm / f"seed_{seed}", _config(norm, seed), _classification_rows(acc, seed))
    return tmp_path / "runs"


def test_table_values_match_numpy(norm_runs: Path, tmp_path: Path):
    result = compare([norm_runs], baseline="norm=tdbn", output=tmp_path / "out", print_table=False)
    assert [g.label for g in result.groups] == ["norm=bn", "norm=tdbn", "norm=tebn"]
    assert result.grouping_keys == {".".join(NORM): "norm"}
    assert result.metrics == ["test/acc", "test/loss"]  # default: the test/ metrics
    rows = {(row.group, row.value): row for row in result.rows["test/acc"]}
    for norm, accs in TEST_ACC.items():
        final = rows[(f"norm={norm}", "final")]
        assert final.summary.n == 3
        assert final.summary.mean == pytest.approx(np.mean(accs), abs=1e-12)
        assert final.summary.std == pytest.approx(np.std(accs, ddof=1), abs=1e-12)
        assert final.summary.interval[0] <= final.summary.mean <= final.summary.interval[1]
        assert final.per_seed == {("", s): a for s, a in enumerate(accs)}
        differences = np.subtract(accs, TEST_ACC["tdbn"])
        if norm == "tdbn":
            assert final.paired is None
        else:
            assert final.paired.n == 3 and final.paired.mean == pytest.approx(differences.mean(), abs=1e-12)
    # best: the maximum of an accuracy, the minimum of a loss; test/ is logged once, so best == final
    assert rows[("norm=bn", "best")].summary.mean == pytest.approx(np.mean(TEST_ACC["bn"]), abs=1e-12)
    loss_best = {(r.group, r.value): r for r in result.rows["test/loss"]}[("norm=tebn", "best")]
    assert loss_best.summary.mean == pytest.approx(1 - np.mean(TEST_ACC["tebn"]), abs=1e-12)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["compare.csv", "compare.md", "curves_test_acc.png", "curves_test_loss.png"]
    records = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert len(records) == 3 * 2 * 2  # groups x metrics x final/best
    tebn = next(r for r in records if r["group"] == "norm=tebn" and r["metric"] == "test/acc" and r["value"] == "final")
    assert float(tebn["mean"]) == pytest.approx(np.mean(TEST_ACC["tebn"]), abs=1e-12)
    assert float(tebn["paired_mean"]) == pytest.approx(np.mean(np.subtract(TEST_ACC["tebn"], TEST_ACC["tdbn"])))
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| norm=tebn | 3 | 0.87 ± 0.02646 |" in markdown
    # a rerun into the same folder replaces its own files
    compare([norm_runs], output=tmp_path / "out", plots=False, print_table=False)


def test_best_value_of_a_curve_and_the_first_config_of_a_resumed_run(tmp_path: Path):
    folder = _run(tmp_path / "run", _config("tdbn", 0), _classification_rows(0.8, 0))
    (folder / "config-1.yaml").write_text(yaml.safe_dump(_config("tebn", 0)))  # the resume's own config
    (run,) = find_runs([tmp_path])
    assert run.config["model.init_args.model.init_args.layers.norm"] == "tdbn" and run.seed == 0
    assert run.histories["val/acc"] == [(10.0, 0.8 - 0.1), (20.0, 0.8 + 0.05), (30.0, 0.8)]
    assert run.best["val/acc"] == 0.8 + 0.05 and run.final["val/acc"] == 0.8
    assert run.best["val/loss"] == pytest.approx(1 - 0.85) and run.final["val/loss"] == pytest.approx(0.2)


def test_labels_are_the_shortest_unambiguous_suffixes(tmp_path: Path):
    layers = "model.init_args.model.init_args.layers"
    for norm in ("tdbn", "tebn"):
        for steps in (1, 2):
            for seed in (0, 1):
                # two grouping keys end with "time_steps"; the layers' one follows from the norm (as the task sets
                # it for tebn only); the logger's save_dir and the seed differ too but never define groups
                derived = {f"{layers}.time_steps": None if norm == "tdbn" else steps}
                config = _config(norm, seed, **{"model.init_args.time_steps": steps}, **derived)
                acc = 0.5 + 0.1 * steps + 0.01 * seed + (0.02 if norm == "tebn" else 0.0)
                _run(tmp_path / f"{norm}_{steps}_{seed}", config, _classification_rows(acc, seed))
    result = compare([tmp_path], metrics=["test/acc"], baseline="norm=tdbn", print_table=False)
    assert result.grouping_keys == {
        f"{layers}.norm": "norm",
        f"{layers}.time_steps": "layers.time_steps",
        "model.init_args.time_steps": "model.init_args.time_steps",
    }
    labels = [group.label for group in result.groups]
    assert labels == [
        "norm=tdbn, layers.time_steps=null, model.init_args.time_steps=1",
        "norm=tdbn, layers.time_steps=null, model.init_args.time_steps=2",
        "norm=tebn, layers.time_steps=1, model.init_args.time_steps=1",
        "norm=tebn, layers.time_steps=2, model.init_args.time_steps=2",
    ]
    assert result.groups[0].primary == ("norm", "model.init_args.time_steps")
    # each tebn group is paired with the tdbn group of its own time steps: +0.02 for every seed
    rows = {row.group: row for row in result.rows["test/acc"] if row.value == "final"}
    for label in labels[2:]:
        assert rows[label].paired.n == 2 and rows[label].paired.mean == pytest.approx(0.02, abs=1e-12)
    assert all(rows[label].paired is None for label in labels[:2])


def test_unfinished_runs_are_listed_apart(norm_runs: Path):
    rows = _classification_rows(0.10, 5)
    _run(norm_runs / "tdbn" / "seed_5", _config("tdbn", 5), rows, "crashed", error="RuntimeError: loss is nan")
    _run(norm_runs / "tdbn" / "seed_6", _config("tdbn", 6), rows, "running")
    _run(norm_runs / "tdbn" / "seed_7", _config("tdbn", 7), rows, "interrupted")
    _run(norm_runs / "tdbn" / "seed_8", _config("tdbn", 8), rows, status=None)  # no run.json
    result = compare(norm_runs, metrics=["test/acc"], print_table=False)  # one path alone
    assert sorted((run.path.name, run.status) for run in result.apart) == [
        ("seed_5", "crashed"),
        ("seed_6", "running"),
        ("seed_7", "interrupted"),
        ("seed_8", "unknown"),
    ]
    tdbn = next(r for r in result.rows["test/acc"] if r.group == "norm=tdbn" and r.value == "final")
    assert tdbn.summary.n == 3 and tdbn.summary.mean == pytest.approx(np.mean(TEST_ACC["tdbn"]), abs=1e-12)
    markdown = result.markdown()
    assert "### Runs not averaged in" in markdown and "| crashed | RuntimeError: loss is nan |" in markdown


def test_rl_returns_get_an_iqm_with_strata(tmp_path: Path):
    returns = {("tdbn", "Hopper"): [10.0, 12.0, 30.0], ("tdbn", "Ant"): [100.0, 90.0, 95.0]}
    returns |= {("tebn", env): [r + 1.0 for r in values] for (_, env), values in returns.items()}
    for (norm, env), values in returns.items():
        for seed, value in enumerate(values):
            rows = [
                {"step": 5, "rl/env_steps": 1000, "train/actor_loss": 1.0},
                {"step": 2000, "rl/eval_return": value / 2},
                {"step": 4000, "rl/eval_return": value},
            ]
            _run(tmp_path / norm / env / str(seed), _config(norm, seed, **{"model.init_args.env_name": env}), rows)
    result = compare([tmp_path], strata="env_name", baseline="norm=tdbn", print_table=False)
    assert result.metrics == ["rl/eval_return"] and result.strata == "model.init_args.env_name"
    assert [group.label for group in result.groups] == ["norm=tdbn", "norm=tebn"]  # strata do not split groups
    (run,) = [r for r in result.runs if r.path == tmp_path / "tdbn" / "Ant" / "0"]
    assert run.histories["rl/eval_return"] == [(2000.0, 50.0), (4000.0, 100.0)]
    assert run.histories["train/actor_loss"] == [(5.0, 1.0)]
    tebn = next(r for r in result.rows["rl/eval_return"] if r.group == "norm=tebn" and r.value == "final")
    pooled = [r + 1.0 for env in ("Hopper", "Ant") for r in returns[("tdbn", env)]]
    assert tebn.iqm[0] == pytest.approx(stats.trim_mean(pooled, 0.25))
    assert tebn.iqm[1][0] <= tebn.iqm[0] <= tebn.iqm[1][1]
    assert tebn.paired.n == 6 and tebn.paired.mean == pytest.approx(1.0)  # paired by (env, seed)
    assert "final IQM (95% CI)" in result.markdown()


def test_clear_errors(norm_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no runs found: looked under .*empty for CSV run folders"):
        compare([tmp_path / "empty"], print_table=False)
    with pytest.raises(ValueError, match=r"the groups are: norm=bn; norm=tdbn; norm=tebn"):
        compare([norm_runs], baseline="norm=mpbn", print_table=False)
    with pytest.raises(ValueError, match=r"no finished run logged val/accuracy; the metrics logged are: test/acc, "):
        compare([norm_runs], metrics=["val/accuracy"], print_table=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "compare.md").write_text("my notes\n")
    with pytest.raises(FileExistsError, match="compare.md, not written by spikenorm compare"):
        compare([norm_runs], output=tmp_path / "taken", print_table=False)
    assert (tmp_path / "taken" / "compare.md").read_text() == "my notes\n"
    with pytest.raises(SystemExit) as exit_info:
        compare_command([str(norm_runs), "--metrics", "test/acc,val/nothing"])
    assert exit_info.value.code == 2 and "no finished run logged val/nothing" in capsys.readouterr().err


def test_command_prints_the_tables(norm_runs: Path, capsys: pytest.CaptureFixture):
    compare_command([str(norm_runs), "--metrics", "test/acc", "--baseline", "norm=tdbn", "--output", "out"])
    printed = capsys.readouterr().out
    assert "### test/acc" in printed and "Δ final vs norm=tdbn (95% CI)" in printed
    assert "written        out/compare.md" in printed


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_hand_launched_runs_with_their_wandb_runs(tmp_path: Path):
    """Two quickstart fits launched by hand with different norms: compare finds 2 runs (each logged to CSV and to
    W&B, counted once) in 2 groups labelled norm=...; the W&B runs alone give the same groups and values; and the same
    two runs launched by `spikenorm study` give the same table."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]

    def fit(norm: str) -> None:
        folder = tmp_path / norm
        folder.mkdir()
        # one torch thread, as a study runs each run by default (another thread count rounds differently)
        spikenorm_cli(folder, "fit", "--config", str(recipe), *short, "--model.model.layers.norm", norm, **ONE_THREAD)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fit, ["tdbn", "bn"]))
    result = compare([tmp_path], print_table=False)
    assert sorted(group.label for group in result.groups) == ["norm=bn", "norm=tdbn"]
    assert len(result.runs) == 2 and all(run.status == "finished" and run.wandb_path for run in result.runs)
    wandb_runs = sorted(tmp_path.glob("*/logs/wandb/offline-run-*"))
    assert len(wandb_runs) == 2
    from_wandb = compare(wandb_runs, print_table=False)
    assert sorted(group.label for group in from_wandb.groups) == ["norm=bn", "norm=tdbn"]
    for run in result.runs:
        twin = read_wandb_run(run.wandb_path)
        assert twin.final["test/acc"] == run.final["test/acc"]
        assert twin.seed == run.seed == 0

    # the same two runs as a study: the same table (groups, n, statistics, per-seed values), study-launched or not
    study = {
        "name": "hand_vs_study",
        "base": str(recipe),
        "seeds": [0],
        "overrides": dict(zip([a.removeprefix("--") for a in short[::2]], map(int, short[1::2]))),
        "axes": {"model.init_args.model.init_args.layers.norm": ["tdbn", "bn"]},
        "executor": {"workers": 2},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    spikenorm_cli(tmp_path, "study", "study.yaml", "--output", str(tmp_path / "study_runs"))
    from_study = compare([tmp_path / "study_runs"], print_table=False)

    def table(comparison) -> str:  # compared as text: a one-run group's std is nan, and nan != nan
        rows = [row for rows in comparison.rows.values() for row in rows]
        return repr(sorted(((row.metric, row.group, row.value), (row.summary, row.per_seed)) for row in rows))

    assert from_study.metrics == result.metrics and table(from_study) == table(result)


def test_variants_that_are_not_a_grid_pair_with_the_one_baseline_and_keys_below_a_key_still_split(tmp_path):
    """The OSR study's shape: vanilla BN (``norm_kwargs.running_update`` set), OSR (``norm_kwargs: {}``), OSR + OTS.
    Every variant pairs with the one vanilla-BN group, and two runs that differ only below ``norm_kwargs`` are two
    groups (their values are shown), not one."""
    variants = {
        "bn_batch": ("bn", {"norm_kwargs": {"running_update": "per_batch"}}, 0.0),
        "bn_step": ("bn", {"norm_kwargs": {"running_update": "per_step"}}, 0.01),
        "osr": ("osr", {"norm_kwargs": {}}, 0.02),
        "ots": ("osr", {"norm_kwargs": {}, "neuron_kwargs": {"ots": True}}, 0.05),
    }
    for name, (norm, layers, offset) in variants.items():
        for seed in range(2):
            config = _config(norm, seed)
            config["model"]["init_args"]["model"]["init_args"]["layers"].update(layers)
            _run(tmp_path / name / f"s{seed}", config, _classification_rows(0.8 + 0.01 * seed + offset, seed))
    comparison = compare(
        [tmp_path], metrics=["test/acc"], baseline="norm=bn, running_update=per_batch", plots=False, print_table=False
    )
    paired = {row.group: row.paired for row in comparison.rows["test/acc"] if row.value == "final"}
    assert len(paired) == 4
    markers = ("per_batch}", "per_step}", "ots=-, norm=osr", "ots=true")
    by_variant = {marker: paired[next(group for group in paired if marker in group)] for marker in markers}
    assert by_variant["per_batch}"] is None  # the baseline itself
    for marker, difference in (("per_step}", 0.01), ("ots=-, norm=osr", 0.02), ("ots=true", 0.05)):
        assert by_variant[marker].mean == pytest.approx(difference) and by_variant[marker].n == 2
