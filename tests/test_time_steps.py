"""T has one home: the task. Tasks built from objects give their T to every layer that needs it, refuse a network
built for another T, and refuse data of another T at setup (spikenorm.time_steps, tasks' give_time_steps)."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import seed_everything

from spikenorm.datamodules import EventDigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.norm.base import StepIndexedNorm
from spikenorm.tasks import SpikingClassifier, SpikingTD3
from spikenorm.time_steps import bind_time_steps

T = 3


def vgg(layers: LayerSpec, in_channels: int = 1) -> SpikingVGG:
    return SpikingVGG([8, "A", 8], in_channels=in_channels, num_classes=10, layers=layers)


def step_norms(module: torch.nn.Module) -> list[StepIndexedNorm]:
    return [m for m in module.modules() if isinstance(m, StepIndexedNorm)]


@pytest.mark.parametrize("norm", ["tebn", "tab", "bntt"])
def test_a_classifier_built_from_objects_gives_its_T_to_every_layer(norm: str) -> None:
    seed_everything(0)
    unbound = vgg(LayerSpec(norm=norm))  # no T anywhere but in the task
    seed_everything(0)
    reference = vgg(LayerSpec(norm=norm, time_steps=T))
    task = SpikingClassifier(unbound, time_steps=T)
    norms = step_norms(task.model)
    assert len(norms) == 2 and all(n.time_steps == T for n in norms)
    assert task.model.time_steps == T  # the model refuses input of another T, as if built with layers.time_steps
    assert task.hparams.model["init_args"]["layers"]["time_steps"] == T  # recorded: a checkpoint rebuilds it so
    got, want = task.model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    x = torch.rand(4, 1, 8, 8)
    task.eval()
    reference.eval()
    assert torch.equal(task(x), reference(x.unsqueeze(0).expand(T, *x.shape)))
    with pytest.raises(ValueError, match="T=3"):
        task.model(torch.rand(T + 1, 4, 1, 8, 8))


def test_a_network_built_for_another_T_is_refused_when_the_task_is_built() -> None:
    with pytest.raises(ValueError, match=r"T=4.*T=3|T=3.*T=4"):
        SpikingClassifier(vgg(LayerSpec(norm="tebn", time_steps=4)), time_steps=T)
    with pytest.raises(ValueError, match="one home"):
        SpikingClassifier(vgg(LayerSpec(norm="tdbn", time_steps=4)), time_steps=T)


def test_an_evaluation_T_is_accepted_besides_the_training_T() -> None:
    task = SpikingClassifier(vgg(LayerSpec(norm="tdbn", time_steps=T)), time_steps=T, eval_time_steps=5).eval()
    assert task(torch.rand(2, 1, 8, 8)).shape == (5, 2, 10)


def test_bind_time_steps_names_the_layers_that_hold_T() -> None:
    network = vgg(LayerSpec(norm="tebn"))
    bound = bind_time_steps(network, T)
    assert "" in bound and len(bound) == 3  # the two TEBN layers and the model itself
    with pytest.raises(ValueError, match="time_steps must be a positive int"):
        bind_time_steps(network, 0)


@pytest.mark.parametrize("norm", ["bntt", "tebn", "carebn"])
def test_a_td3_task_gives_its_T_to_every_layer_of_its_actor(norm: str) -> None:
    pytest.importorskip("torchrl")
    layers = LayerSpec(norm=norm, neuron="clif", surrogate="rectangle")  # T only in the task
    task = SpikingTD3("Pendulum-v1", total_env_steps=200, warmup_steps=100, actor_layers=layers, time_steps=T)
    assert task.actor.time_steps == T and task.actor.encoder.time_steps == T
    assert all(n.time_steps == T for n in step_norms(task.actor))
    assert task.actor.output_spikes(torch.rand(2, 3)).shape[0] == T


def test_event_frames_of_another_T_are_refused_at_setup(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPIKENORM_CACHE", str(tmp_path))
    task = SpikingClassifier(vgg(LayerSpec(), in_channels=2), time_steps=4, encoding="frames")
    data = EventDigitsDataModule(time_bins=6, batch_size=8)
    trained = []
    task.on_train_batch_start = lambda *args: trained.append(1)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="6 frames per training sample, but the task's time_steps is 4"):
        quiet_trainer(max_steps=1, default_root_dir=tmp_path).fit(task, data)
    assert not trained
    with pytest.raises(ValueError, match="evaluation sample, but the task's eval_time_steps is 4"):
        task = SpikingClassifier(vgg(LayerSpec(), in_channels=2), time_steps=6, eval_time_steps=4, encoding="frames")
        quiet_trainer(default_root_dir=tmp_path).validate(task, data, verbose=False)
