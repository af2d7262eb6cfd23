"""The example files run and learn: attach-to-your-own-model (snnTorch, SpikingJelly) and extending spikenorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import wandb
from helpers import EXAMPLES, load_example


# the snnTorch example (~20 s) is slow: the default suite runs the SpikingJelly example through the same attach
# path, and snnTorch models with every attached callback in tests/test_monitor_callbacks.py and
# tests/test_bn_recalibration_callback.py
@pytest.mark.parametrize("name", [pytest.param("snntorch_digits", marks=pytest.mark.slow), "spikingjelly_digits"])
def test_example_trains_and_logs_the_attached_callbacks(name, tmp_path, monkeypatch):
    wandb.teardown()
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the examples import their shared digits_task module
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    metrics = load_example(name, monkeypatch).main(["--max-epochs", "2"])
    wandb.finish()
    wandb.teardown()  # stops the W&B service, so every record of the offline run is on disk before it is read
    assert metrics["val/acc"] > 0.7  # 10 classes: chance is 0.1
    assert 0 < metrics["spikes/mean_rate"] < 1
    assert 0 < metrics["energy/uj"] < metrics["energy/ann_uj"]
    run = _offline_run(tmp_path)
    keys = set(run["summary"]).union(*(row.keys() for row in run["history"]))
    assert any(key.startswith("recalibration") for key in keys), (run["finished"], sorted(keys))


def _offline_run(root: Path) -> dict:
    from spikenorm.wandb_runs import read_offline_run

    runs = sorted(root.rglob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {root}, found {runs}"
    return read_offline_run(runs[0])


def test_extending_example_plugs_new_pieces_into_a_stock_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = load_example("extending", monkeypatch).main(["--max-epochs", "2"])  # its registrations end here
    assert metrics["val/acc"] > 0.7
    assert metrics["flipped_spikes_folded"] == 0
    assert metrics["nir_nodes"] > 5  # input, convs, neurons, pools, readout, output
    assert any(key.startswith("neurons/threshold/") for key in metrics)
