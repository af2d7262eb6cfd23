"""``spikenorm diagnose``: a checkpoint's norm health from the CLI, in this process (cheap).

One tiny quickstart fit through the CLI (module fixture: two training batches, no logger, no fold export) gives
the checkpoint the tests diagnose. What the CLI writes must be what :func:`spikenorm.diagnostics.diagnose` says
when called directly in Python on the same network and batches; the task and data come from the run
configuration the checkpoint stores, or from ``--config``; files are never overwritten unless asked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spikenorm.cli import diagnosis_paths, main
from spikenorm.datamodules import DigitsDataModule
from spikenorm.diagnostics import diagnose
from spikenorm.neurons import stateful
from spikenorm.run_dirs import RUN_CONFIG_KEY
from spikenorm.tasks import SpikingClassifier

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
#: the diagnosis runs on one validation batch of 16 images (cheap, and the same batch in Python): the batch size
#: given on the command line wins over the stored one (32)
SMALL = ["--num_batches", "1", "--data.init_args.batch_size", "16", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _cli_process(monkeypatch):
    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])  # LightningCLI warns when pytest's arguments are there too


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """quickstart.yaml, fitted for two batches through the CLI (no logger, no folding), and its recipe."""
    folder = tmp_path_factory.mktemp("diagnose")
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder),
    )
    config["trainer"]["callbacks"] = [
        c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("FoldNormalization")
    ]
    config["data"]["init_args"]["batch_size"] = 32
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("SPIKENORM_MALLOC", "default")
        patch.setattr(sys, "argv", ["spikenorm"])
        main(["fit", "--config", str(recipe)])
    return {"folder": folder, "recipe": recipe, "ckpt": folder / "checkpoints" / "last.ckpt"}


def _copy(ckpt: Path, folder: Path, drop_run_config: bool = False) -> Path:
    """The checkpoint copied into ``folder`` (each test writes its diagnosis files beside its own copy)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    if drop_run_config:
        del checkpoint[RUN_CONFIG_KEY]
    path = folder / "model.ckpt"
    torch.save(checkpoint, path)
    return path


def _expected(ckpt: Path, train_forward=None) -> dict:
    """``diagnose`` called directly: the checkpoint's network on the first validation batch of 16, encoded."""
    task = SpikingClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    data = DigitsDataModule(batch_size=16)
    data.setup("validate")
    x, _ = next(iter(data.val_dataloader()))
    return diagnose(task.model, [task.encode(x)], train_forward=train_forward)


def _same(written, expected, key: str = "diagnosis") -> None:
    """Equal up to float rounding (NaN equals NaN); ``seconds`` (wall time) is left out."""
    if isinstance(expected, dict):
        assert set(written) == set(expected), key
        for k in expected:
            if k != "seconds":
                _same(written[k], expected[k], f"{key}.{k}")
    elif isinstance(expected, list):
        assert len(written) == len(expected), key
        for i, (w, e) in enumerate(zip(written, expected)):
            _same(w, e, f"{key}[{i}]")
    elif isinstance(expected, float):
        assert written == pytest.approx(expected, rel=1e-6, abs=1e-9) or (
            math.isnan(written) and math.isnan(expected)
        ), key
    else:
        assert written == expected, key


def _tables(markdown: str) -> list[str]:
    """The table rows and the output line of ``NormDiagnosis.markdown()`` (the last line holds the wall time)."""
    return [line for line in markdown.splitlines() if line.startswith(("|", "Output"))]


def test_diagnose_rebuilds_from_the_stored_config_and_writes_what_diagnose_says(run, tmp_path, capsys):
    ckpt = _copy(run["ckpt"], tmp_path)
    main(["diagnose", "--ckpt_path", str(ckpt), *SMALL])
    printed = capsys.readouterr().out
    expected = _expected(ckpt)
    markdown = (tmp_path / "model.diagnosis.md").read_text()
    written = json.loads((tmp_path / "model.diagnosis.json").read_text())
    assert _tables(expected.markdown()) == _tables(markdown) == _tables(printed)
    assert any(line.startswith("| features.0.1 | TDBN |") for line in _tables(markdown))
    _same(written["diagnosis"], json.loads(expected.to_json()))
    source = written["source"]
    assert source["split"] == "val" and source["batches"] == 1 and source["samples"] == 16
    assert source["task"].endswith("SpikingClassifier") and source["training_mode"] == "bptt"
    assert str(tmp_path / "model.diagnosis.md") in printed


def test_the_online_train_pass_runs_one_step_at_a_time(run, tmp_path):
    """``online`` training (here set on the command line: a task option, the network is the same): the train
    pass runs the network step by step inside ``stateful``, as online training does."""

    def per_step(model, x):
        with stateful(model):
            return torch.cat([model(x[t : t + 1]) for t in range(x.shape[0])])

    ckpt = _copy(run["ckpt"], tmp_path)
    main(["diagnose", "--ckpt_path", str(ckpt), *SMALL, "--model.init_args.online", "{update: batch}"])
    written = json.loads((tmp_path / "model.diagnosis.json").read_text())
    assert written["source"]["training_mode"] == "online"
    online = json.loads(_expected(ckpt, train_forward=per_step).to_json())
    _same(written["diagnosis"], online)
    bptt = json.loads(_expected(ckpt).to_json())
    assert [layer["train_eval_gap"] for layer in online["layers"].values()] != [
        layer["train_eval_gap"] for layer in bptt["layers"].values()
    ]


def test_without_a_stored_config_it_asks_for_one_and_takes_it(run, tmp_path, capsys):
    ckpt = _copy(run["ckpt"], tmp_path, drop_run_config=True)
    with pytest.raises(
        ValueError, match=r"stores no run configuration .* pass the config it was trained with.*--config"
    ):
        main(["diagnose", "--ckpt_path", str(ckpt), *SMALL])
    assert not list(tmp_path.glob("*.diagnosis*"))
    main(["diagnose", "--ckpt_path", str(ckpt), "--config", str(run["recipe"]), *SMALL])
    written = json.loads((tmp_path / "model.diagnosis.json").read_text())
    _same(written["diagnosis"], json.loads(_expected(ckpt).to_json()))


def test_existing_files_are_kept_unless_overwrite(run, tmp_path):
    ckpt = _copy(run["ckpt"], tmp_path)
    mine = "# my notes\n"
    (tmp_path / "model.diagnosis.md").write_text(mine)
    main(["diagnose", "--ckpt_path", str(ckpt), *SMALL])
    assert (tmp_path / "model.diagnosis.md").read_text() == mine
    assert not (tmp_path / "model.diagnosis.json").exists()  # the pair takes the first free name: -1
    assert "| features.0.1 | TDBN |" in (tmp_path / "model.diagnosis-1.md").read_text()
    assert json.loads((tmp_path / "model.diagnosis-1.json").read_text())["source"]["split"] == "val"
    assert diagnosis_paths(ckpt) == (tmp_path / "model.diagnosis-2.md", tmp_path / "model.diagnosis-2.json")
    (tmp_path / "model.diagnosis-2.json").write_text("{}")  # either file taken: the next pair
    assert diagnosis_paths(ckpt)[0].name == "model.diagnosis-3.md"
    assert diagnosis_paths(ckpt, overwrite=True) == (tmp_path / "model.diagnosis.md", tmp_path / "model.diagnosis.json")


def test_a_td3_checkpoint_is_diagnosed_on_the_newest_states_of_its_replay_buffer(tmp_path, capsys):
    """The actor on the newest ``num_batches * batch_size`` replay states, in the order they were written (the
    buffer has wrapped around: its write position is not its end); ``output="actions"``."""
    pytest.importorskip("torchrl")
    from spikenorm.tasks import SpikingTD3

    options = {"env_name": "Pendulum-v1", "total_env_steps": 100, "warmup_steps": 10, "batch_size": 8}
    options.update(buffer_size=40, hidden=[16, 16], time_steps=2)
    task = SpikingTD3(**options)
    rollout = task.env.rollout(50, break_when_any_done=False)  # random actions: 50 states into 40 rows
    task.replay_buffer.extend(rollout)
    checkpoint = {"state_dict": task.state_dict(), "optimizer_states": []}
    task.on_save_checkpoint(checkpoint)  # a full checkpoint: the replay buffer included
    checkpoint[RUN_CONFIG_KEY] = {
        "model.class_path": "spikenorm.tasks.SpikingTD3",
        **{f"model.init_args.{key}": value for key, value in options.items()},
        "data": None,
    }
    torch.save(checkpoint, tmp_path / "td3.ckpt")
    main(["diagnose", "--ckpt_path", str(tmp_path / "td3.ckpt"), "--num_batches", "2", "--device", "cpu"])
    written = json.loads((tmp_path / "td3.diagnosis.json").read_text())
    newest = rollout["observation"][-16:].float()
    expected = diagnose(task.actor, list(newest.reshape(2, 8, -1)), output="actions")
    _same(written["diagnosis"], json.loads(expected.to_json()))
    assert written["source"]["split"] == "replay" and written["source"]["samples"] == 16
    assert "mean absolute action difference" in capsys.readouterr().out
