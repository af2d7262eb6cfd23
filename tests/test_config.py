"""spikenorm.config: recorded constructor arguments, rebuilding, flat keys and differences."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from spikenorm.config import (
    RecordsInit,
    UnrecordableError,
    describe,
    differences,
    flatten,
    instantiate,
    with_defaults,
    without_defaults,
)
from spikenorm.models import LayerSpec, SpikingMLP, SpikingVGG
from spikenorm.surrogate import Sigmoid


class Base(RecordsInit, nn.Module):
    def __init__(self, width: int = 4, **extra) -> None:
        super().__init__()
        self.width = width


class Child(Base):
    def __init__(self, depth: int, sizes: tuple[int, ...] = (1, 2), inner: nn.Module | None = None) -> None:
        super().__init__(width=depth * 2, note="from child")
        self.inner = inner


def test_only_the_outermost_init_records_with_defaults_filled_in():
    config = describe(Child(3, inner=Base(5, colour="red")))
    assert config == {
        "class_path": f"{__name__}.Child",
        "init_args": {
            "depth": 3,
            "sizes": [1, 2],
            "inner": {"class_path": f"{__name__}.Base", "init_args": {"width": 5, "colour": "red"}},
        },
    }
    rebuilt = instantiate(config)
    assert type(rebuilt) is Child and rebuilt.width == 6 and rebuilt.inner.width == 5
    assert describe(rebuilt) == config


def test_a_spikenorm_model_rebuilds_to_the_same_network():
    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm_kwargs={"eps": 1e-4}, surrogate=Sigmoid(3.0)))
    rebuilt = instantiate(describe(model))
    assert describe(rebuilt) == describe(model)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_unrecordable_arguments_and_objects_say_why():
    with pytest.raises(UnrecordableError, match=r"Child argument 'inner'.*Linear.*does not record"):
        describe(Child(1, inner=nn.Linear(2, 2)))
    with pytest.raises(UnrecordableError, match="functools.partial"):
        describe(lambda params: torch.optim.Adam(params))


def test_a_partial_of_a_class_lists_every_argument_and_rebuilds_as_a_factory():
    config = describe(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0))
    assert config == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1, "momentum": 0.9, "dampening": 0}}
    complete = with_defaults(config)
    assert complete["init_args"]["lr"] == 0.1 and complete["init_args"]["nesterov"] is False  # defaults filled in
    assert without_defaults(complete) == {
        "class_path": "torch.optim.sgd.SGD",
        "init_args": {"lr": 0.1, "momentum": 0.9},
    }  # dampening=0 is the default
    factory = instantiate(config, partial=True)
    optimizer = factory([nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_flatten_and_differences():
    old = describe(SpikingMLP(64, 10, hidden=(32,)))
    new = describe(SpikingMLP(64, 10, hidden=(32, 16), layers=LayerSpec(neuron="if", neuron_kwargs={"threshold": 0.5})))
    flat = flatten(old, "model")
    assert flat["model.class_path"] == "spikenorm.models.mlp.SpikingMLP" and flat["model.hidden"] == [32]
    assert flat["model.layers.norm"] == "tdbn" and flat["model.layers.time_steps"] is None
    assert differences(old, new, "model") == [
        "model.hidden: [32] -> [32, 16]",
        "model.layers.neuron: 'lif' -> 'if'",
        "model.layers.neuron_kwargs.threshold: 1.0 -> 0.5",  # the neuron's default threshold, filled in
    ]
    assert differences(old, old, "model") == []
    layers = old["init_args"]["layers"]
    older = {**old, "init_args": {**old["init_args"], "layers": {k: v for k, v in layers.items() if k != "trace"}}}
    assert differences(older, old, "model") == []  # a layer field added since: the old config means its default
    assert (
        differences(old, {**old, "init_args": {**old["init_args"], "layers": {**layers, "norm_kwargs": None}}}, "model")
        == []
    )


def test_a_dataclass_argument_round_trips_through_its_fields():
    spec = LayerSpec(norm="bntt", time_steps=3, neuron_kwargs={"decay": 0.5}, shortcuts="per_layer")
    model = SpikingVGG([8, 8, "A", 16], in_channels=1, num_classes=3, layers=spec)
    config = describe(model)
    assert config["init_args"]["layers"]["norm"] == "bntt" and "class_path" not in config["init_args"]["layers"]
    assert flatten(config, "model")["model.layers.neuron_kwargs.decay"] == 0.5
    rebuilt = instantiate(config)
    assert rebuilt.features[1].neuron.decay == 0.5 and describe(rebuilt) == config
    # the YAML form: only the fields that differ from the defaults; the others are the dataclass's defaults
    short = {
        "class_path": config["class_path"],
        "init_args": {
            "cfg": [8, 8, "A", 16],
            "in_channels": 1,
            "num_classes": 3,
            "layers": {"norm": "bntt", "time_steps": 3, "neuron_kwargs": {"decay": 0.5}, "shortcuts": "per_layer"},
        },
    }
    assert describe(instantiate(short)) == config
    assert differences(short, config, "model") == []
    assert differences({**short, "init_args": {**short["init_args"], "layers": {"norm": "tdbn"}}}, config, "model") == [
        "model.layers.neuron_kwargs.decay: None -> 0.5",
        "model.layers.norm: 'tdbn' -> 'bntt'",
        "model.layers.shortcuts: None -> 'per_layer'",
        "model.layers.time_steps: None -> 3",
    ]


def test_a_partial_spec_keeps_the_parameters_default_and_flat_fields_of_old_configs_are_grouped():
    from spikenorm.neurons import CLIF, spiking_neurons
    from spikenorm.norm import VanillaBN
    from spikenorm.surrogate import Rectangle

    actor = {
        "class_path": "spikenorm.models.PopSANActor",
        "init_args": {"obs_dim": 3, "act_dim": 1, "max_action": 1.0, "layers": {"norm": "bn"}},
    }
    built = instantiate(actor)  # the other fields stay POPSAN_LAYERS' (CLIF, rectangle), not LayerSpec()'s
    assert all(isinstance(n, CLIF) and isinstance(n.surrogate, Rectangle) for _, n in spiking_neurons(built))
    assert all(isinstance(n, VanillaBN) for n in built.norm_layers())
    # a checkpoint written before LayerSpec stored the layer options as flat model arguments
    old = {
        "class_path": "spikenorm.models.SpikingMLP",
        "init_args": {"in_features": 6, "num_classes": 2, "hidden": [5], "norm": "bn", "neuron": "if"},
    }
    assert describe(instantiate(old)) == describe(
        SpikingMLP(6, 2, hidden=[5], layers=LayerSpec(norm="bn", neuron="if"))
    )


def test_options_the_library_fills_in_compare_equal_to_the_same_values_given():
    """Issue 25, row 9: ``surrogate_kwargs={}`` builds Sigmoid(alpha=4.0), so it equals an explicit alpha of 4.0;
    another alpha, or a neuron threshold other than the neuron's default, still differs."""
    explicit = describe(SpikingVGG("small", 1, 10, layers=LayerSpec(surrogate_kwargs={"alpha": 4.0})))
    library = describe(SpikingVGG("small", 1, 10, layers=LayerSpec()))
    assert differences(explicit, library, "model") == []
    other = describe(SpikingVGG("small", 1, 10, layers=LayerSpec(surrogate_kwargs={"alpha": 2.0})))
    assert differences(explicit, other, "model") == ["model.layers.surrogate_kwargs.alpha: 4.0 -> 2.0"]
    threshold = describe(SpikingVGG("small", 1, 10, layers=LayerSpec(neuron_kwargs={"threshold": 0.5})))
    assert differences(library, threshold, "model") == ["model.layers.neuron_kwargs.threshold: 1.0 -> 0.5"]
    spelled_out = describe(SpikingVGG("small", 1, 10, layers=LayerSpec(neuron_kwargs={"threshold": 1.0})))
    assert differences(library, spelled_out, "model") == []


def test_a_checkpoint_loads_into_the_identical_network_built_with_library_defaults(tmp_path):
    """Issue 25, row 9: the quickstart's network (``surrogate_kwargs: {alpha: 4.0}``) loads into
    ``SpikingVGG(..., layers=LayerSpec(norm="tdbn"))``, whose surrogate is the same Sigmoid(alpha=4.0)."""
    from spikenorm.tasks import SpikingClassifier

    trained = SpikingClassifier(
        SpikingVGG("small", 1, 10, layers=LayerSpec(norm="tdbn", surrogate_kwargs={"alpha": 4.0})), time_steps=2
    )
    path = tmp_path / "task.ckpt"
    torch.save(
        {
            "state_dict": trained.state_dict(),
            "hyper_parameters": dict(trained.hparams),
            "pytorch-lightning_version": "2.6.0",
            **_network_entry(trained),
        },
        path,
    )
    same = SpikingVGG("small", 1, 10, layers=LayerSpec(norm="tdbn"))
    loaded = SpikingClassifier.load_from_checkpoint(path, model=same, weights_only=True)
    assert loaded.model.features[0][2].surrogate.alpha == 4.0
    with pytest.raises(ValueError, match=r"surrogate_kwargs.alpha: 4.0 -> 2.0"):
        SpikingClassifier.load_from_checkpoint(
            path, model=SpikingVGG("small", 1, 10, layers=LayerSpec(surrogate_kwargs={"alpha": 2.0}))
        )


def _network_entry(task) -> dict:
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    return checkpoint
