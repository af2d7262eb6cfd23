"""Tasks with the per-step norms (tebn, tab, bntt) saved by spikenorm 0.1.0 load with the same state-dict keys and
compute what that release computed (tests/release_0_1_0/record_outputs.py wrote both; the task is built as it
builds it, from the stored hyperparameters, after the task's upgrade of the options renamed since)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from spikenorm.tasks import SpikingClassifier

RELEASE = Path(__file__).parent / "release_0_1_0"


@pytest.mark.parametrize("t_in_layer_spec", [True, False], ids=["layers.time_steps", "task_time_steps_only"])
@pytest.mark.parametrize("norm", ["tebn", "tab", "bntt"])
def test_a_task_of_the_previous_release_loads_and_gives_its_outputs(norm, t_in_layer_spec):
    stored = torch.load(RELEASE / f"{norm}_task.pt", weights_only=False)
    arguments = {k: v for k, v in stored["hyper_parameters"].items() if not k.startswith("_")}
    arguments = copy.deepcopy(SpikingClassifier.upgrade_arguments(arguments))
    if not t_in_layer_spec:  # the norms are built without T and receive the task's
        del arguments["model"]["init_args"]["layers"]["time_steps"]
    task = SpikingClassifier(**arguments).eval()
    assert set(task.state_dict()) == set(stored["state_dict"])
    task.load_state_dict(stored["state_dict"])  # strict: same keys, same shapes
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16  # record_outputs.digits_input
    with torch.no_grad():
        output = task(x)
    expected = torch.load(RELEASE / "outputs.pt")[f"{norm}_task"]
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
