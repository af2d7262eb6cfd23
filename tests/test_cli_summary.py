"""The end-of-fit summary says where each number comes from (issue 25, rows 7, 8 and 13).

Before, it printed the test accuracy of the best checkpoint next to folded-model numbers of the final weights,
and a bf16 test accuracy next to a float64 fold check, without saying so; a norm that does not fold stopped the
quickstart at setup.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from helpers import offline_wandb

from spikenorm.cli import summary

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def test_the_folded_line_names_the_precision_of_the_check():
    metrics = {
        "test/acc": 0.9361,
        "test/acc_folded": 0.9333,
        "test/flipped_spikes_folded": 0,
        "test/max_abs_diff_folded": 0,
    }
    text = summary(metrics, [], [], "tested         best.ckpt (precision bf16-mixed, not compiled)", "float64")
    assert "tested         best.ckpt (precision bf16-mixed, not compiled)" in text
    assert "0 flipped spikes, max |output difference| 0 (the same weights, both models run in float64)" in text


def test_quickstart_with_a_norm_that_does_not_fold_is_one_flag_and_the_summary_says_how_it_ran(
    tmp_path, monkeypatch, capsys
):
    """Through the CLI, in this process (the recipe's loggers write under ``tmp_path``)."""
    import wandb

    from spikenorm.cli import main

    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # LightningCLI warns when pytest's arguments are there too
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=3, limit_val_batches=1, limit_test_batches=2)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    norm, precision = "--model.init_args.model.init_args.layers.norm=tebn", "--trainer.precision=bf16-mixed"
    with offline_wandb(tmp_path):
        try:
            main(["fit", "--config", "recipe.yaml", norm, precision])
        finally:
            wandb.finish()
    out = capsys.readouterr().out
    assert "folded model   not foldable: " in out and "tebn" in out.lower()
    tested = next(line for line in out.splitlines() if line.strip().startswith("tested"))
    assert "checkpoints/epoch=0-step=3.ckpt" in tested and "(precision bf16-mixed, not compiled)" in tested
    assert not list(tmp_path.rglob("folded_model.pt*"))
