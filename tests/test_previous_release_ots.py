"""OTS as spikenorm 0.1.0 stored it (the flags ``ots``, ``ots_eval``, ``ots_momentum`` and the buffer
``<neuron>.ots_running_threshold`` on the neuron) loads into the threshold-stabiliser plug-in and computes what that
release computed (``tests/release_0_1_0``, written by ``record_outputs.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from spikenorm.neurons import LIF, spiking_neurons
from spikenorm.tasks import SpikingClassifier
from spikenorm.threshold_stabilizers import OnlineThresholdStabilizer

RELEASE = Path(__file__).parent / "release_0_1_0"


def digits_input() -> torch.Tensor:
    """The fixed input of ``record_outputs.py``."""
    return torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16


def test_the_quickstart_osr_checkpoint_gives_the_outputs_of_the_previous_release():
    task = SpikingClassifier.load_from_checkpoint(RELEASE / "quickstart_osr.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        out = task(digits_input())
    assert torch.equal(out, torch.load(RELEASE / "outputs.pt")["quickstart_osr"])
    stored = torch.load(RELEASE / "quickstart_osr.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    neurons = list(spiking_neurons(task))
    assert neurons
    for name, neuron in neurons:  # the config's ots kwargs built the stabiliser; the old buffer filled it
        stabilizer = neuron.threshold_stabilizer
        assert isinstance(stabilizer, OnlineThresholdStabilizer) and stabilizer.eval_mode == "running"
        assert torch.equal(stabilizer.running_threshold, stored[f"{name}.ots_running_threshold"])
    assert any(float(n.threshold_stabilizer.running_threshold) != 1.0 for _, n in neurons)  # not the initial value


def test_a_state_dict_of_the_previous_release_loads_and_the_new_one_names_the_stabiliser():
    neuron = LIF(threshold=0.5, ots=True, ots_eval="running")
    old = {"threshold": torch.tensor(0.5), "ots_running_threshold": torch.tensor(0.75)}
    neuron.load_state_dict(old)
    assert float(neuron.threshold_stabilizer.running_threshold) == 0.75
    assert set(neuron.state_dict()) == {"threshold", "threshold_stabilizer.running_threshold"}
    plain = LIF(threshold=0.5)  # without OTS the old key stays unexpected, as any unknown key
    result = plain.load_state_dict(old, strict=False)
    assert result.unexpected_keys == ["ots_running_threshold"]


def old_neuron_state(ots: bool) -> dict:
    """What pickling a 0.1.0 LIF(threshold=0.5) with OTS (or one folded, with ``ots=False`` and no buffer) stored."""
    current = LIF(threshold=0.5)
    state = {k: v for k, v in vars(current).items() if k not in ("backend", "threshold_stabilizer")}  # none in 0.1.0
    state["_modules"] = dict(current._modules)
    state["_buffers"] = {**current._buffers, **({"ots_running_threshold": torch.tensor(0.75)} if ots else {})}
    return {**state, "ots": ots, "ots_eval": "running", "ots_momentum": 0.1}


def test_a_neuron_pickled_by_the_previous_release_unpickles_with_its_stabiliser():
    """The state of a 0.1.0 neuron fed to ``__setstate__``, as unpickling (and ``copy``) does."""
    neuron = LIF.__new__(LIF)
    neuron.__setstate__(old_neuron_state(ots=True))
    stabilizer = neuron.threshold_stabilizer
    assert isinstance(stabilizer, OnlineThresholdStabilizer)
    assert (stabilizer.eval_mode, stabilizer.momentum, float(stabilizer.running_threshold)) == ("running", 0.1, 0.75)
    assert neuron.backend == "eager" and not hasattr(neuron, "ots") and "ots_running_threshold" not in neuron._buffers
    neuron.eval()
    x = torch.rand(4, 2, 3)
    assert torch.equal(neuron(x), LIF(threshold=0.75)(x))  # eval, "running": the running threshold, fixed

    folded = LIF.__new__(LIF)
    folded.__setstate__(old_neuron_state(ots=False))
    assert folded.threshold_stabilizer is None and not hasattr(folded, "ots")
    assert torch.equal(folded(x), LIF(threshold=0.5)(x))
