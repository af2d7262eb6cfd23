"""Configs and checkpoints written by spikenorm 0.1.0 (tests/release_0_1_0, made by its make_fixtures.sh at commit
97576f0) load into the same networks and give the same outputs (outputs.pt, by its record_outputs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from spikenorm.cli import main
from spikenorm.tasks import Distillation, OnlineTraining, SpikingClassifier

RELEASE = Path(__file__).parent / "release_0_1_0"
sys.path.insert(0, str(RELEASE))
from record_outputs import digits_input  # noqa: E402  (the fixed input the outputs were recorded on)

OUTPUTS = torch.load(RELEASE / "outputs.pt")
CLASSIFIERS = ("quickstart", "quickstart_osr", "quickstart_bw", "quickstart_mpbn")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_classifier_checkpoint_gives_the_outputs_of_its_release(name: str) -> None:
    task = SpikingClassifier.load_from_checkpoint(RELEASE / f"{name}.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        assert torch.equal(task(digits_input()), OUTPUTS[name])
    assert isinstance(task.online, OnlineTraining) == (name == "quickstart_osr")  # training_mode: online
    assert isinstance(task.distillation, Distillation) == (name == "quickstart_bw")  # teacher, kd_weight, ...
    if name == "quickstart_bw":
        assert (task.distillation.weight, task.distillation.temperature, task.distillation.epochs) == (0.5, 4.0, 10)
        assert bool(task.teacher_trained)  # the teacher's trained weights came from the checkpoint


def test_a_td3_checkpoint_gives_the_actions_of_its_release() -> None:
    pytest.importorskip("torchrl")
    from spikenorm.tasks import SpikingTD3

    task = SpikingTD3.load_from_checkpoint(RELEASE / "quickstart_rl.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        actions = task.actor(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(actions, OUTPUTS["quickstart_rl_actor"])


@pytest.mark.parametrize("norm", ["tebn", "tab", "bntt"])
def test_a_python_built_task_of_the_release_loads_its_state(norm: str) -> None:
    stored = torch.load(RELEASE / f"{norm}_task.pt", weights_only=True)
    arguments = {k: v for k, v in stored["hyper_parameters"].items() if not k.startswith("_")}
    task = SpikingClassifier(**SpikingClassifier.upgrade_arguments(arguments)).eval()
    task.load_state_dict(stored["state_dict"])
    with torch.no_grad():
        assert torch.equal(task(digits_input()), OUTPUTS[f"{norm}_task"])


@pytest.mark.parametrize(
    ("recipe", "part", "expected"),
    [
        ("quickstart_osr", "online", {"update": "batch"}),
        ("quickstart_bw", "distillation", {"epochs": 10, "lr": 0.005, "weight": 0.5, "temperature": 4.0}),
    ],
)
def test_a_config_file_of_the_release_parses_into_the_parts(recipe, part, expected, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["spikenorm"])
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RELEASE / f"{recipe}.yaml"), "--print_config"])
    task = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert not {"training_mode", "online_update", "teacher", "kd_weight", "teacher_epochs"} & task.keys()
    given = task[part] if part == "online" else task[part]["init_args"]
    assert {key: given[key] for key in expected} == expected


def test_the_cli_tests_a_checkpoint_of_the_release_by_itself(tmp_path, monkeypatch, capsys) -> None:
    """``spikenorm test --ckpt_path`` rebuilds the task from the configuration the 0.1.0 checkpoint stores (flat
    distillation flags there) and tests it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["spikenorm"])
    ckpt = RELEASE / "quickstart_bw.ckpt"
    main(["test", "--ckpt_path", str(ckpt), "--trainer.logger=false", "--trainer.limit_test_batches=1"])
    assert "test/acc" in capsys.readouterr().out
