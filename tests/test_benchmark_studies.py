"""The benchmark studies (benchmarks/studies/*.yaml, run by `spikenorm study`): each expands to the grid the former
hand-written runner ran, with the settings of the recipe it stands for. That a study's runs reproduce the former
runners' per-seed numbers bit for bit was checked once, by running both (the closing note of issue 28)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spikenorm.studies.study_files import expand_runs, load_study

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


STUDIES = Path(__file__).resolve().parents[1] / "benchmarks" / "studies"
#: the rl_returns study's cells -> the recipes' row keys (recipes/td3_<row>_<env>.yaml)
STUDY_ROWS = {
    "ANN": "ann",
    "pop-SAN (no BN)": "popsan",
    "tdBN": "tdbn",
    "TEBN": "tebn",
    "TAB": "tab",
    "CaRe-BN": "carebn",
}


def _rebn(config: dict) -> list[dict]:
    """The Re-BN callbacks' arguments of a config, without ``unusable`` (the recipes' warning option)."""
    callbacks = config["trainer"]["callbacks"] or []
    return [
        {k: v for k, v in c["init_args"].items() if k != "unusable"}
        for c in callbacks
        if c["class_path"].endswith("ReplayRecalibration")
    ]


def test_rl_returns_study_runs_each_recipe_row_at_the_cpu_budget():
    """Every run of the study is its row's 1M-step recipe but for the budget, the env seed and the checkpoints."""
    runs = expand_runs(load_study(STUDIES / "rl_returns.yaml"))
    assert len(runs) == 6 * 2 * 3 and len({run.folder for run in runs}) == len(runs)
    for run in runs:
        init = run.config["model"]["init_args"]
        env = init["env_name"].rsplit("-v", 1)[0].lower()
        recipe = yaml.safe_load((RECIPES / f"td3_{STUDY_ROWS[run.variant]}_{env}.yaml").read_text())
        row = recipe["model"]["init_args"]
        assert init["env_name"] == row["env_name"]
        assert init.get("actor", "spiking") == row.get("actor", "spiking")
        assert (init["actor_layers"] or {}).get("norm", "none") == (row["actor_layers"] or {}).get("norm", "none")
        assert _rebn(run.config) == _rebn(recipe)
        budget = (init["total_env_steps"], init["warmup_steps"], init["eval_every"], init["eval_episodes"])
        assert budget == (10_000, 2_500, 2_500, 10) and init["seed"] == run.seed == run.config["seed_everything"]


@pytest.mark.parametrize(
    ("name", "runs", "later"),
    [("osr_digits", 20, 0), ("mpbn_digits", 15, 0), ("bw_ablation", 50, 20), ("bw_ablation_narrow", 50, 20)],
)
def test_digits_benchmark_studies_expand_to_the_old_grids(name, runs, later):
    """The digits studies: one run per old table row (x T for the ablations) and seed; the distilled students run
    after the full-precision T=2 teacher of their seed, whose best checkpoint they load."""
    plans = expand_runs(load_study(STUDIES / f"{name}.yaml"))
    assert len(plans) == runs and sum(plan.wave > 0 for plan in plans) == later
    for plan in plans:
        assert plan.config["seed_everything"] == plan.seed
        if plan.wave:
            assert plan.needs == {"full precision, T=2": ("full_precision_T=2", plan.seed)}


def test_every_row_has_its_recipes_at_the_papers_budget():
    """``recipes/td3_<row>_<env>.yaml`` is the row's 1M-step run (after 25k warm-up steps) on the paper's settings."""
    for row in STUDY_ROWS.values():
        for env in ("inverteddoublependulum", "hopper"):
            init = yaml.safe_load((RECIPES / f"td3_{row}_{env}.yaml").read_text())["model"]["init_args"]
            assert (init["total_env_steps"], init["warmup_steps"], init["eval_every"]) == (1_025_000, 25_000, 5000)
