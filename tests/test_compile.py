"""torch.compile of whole spikenorm models and the tasks' ``compile`` option (docs/guides/compile.md).

Compiling on CPU costs seconds per graph, so the models are tiny and each test resets dynamo's caches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from helpers import quiet_trainer, short_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.models import LayerSpec, SpikingMLP, SpikingResNet19, SpikingTransformer, SpikingVGG
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.tasks import OnlineTraining, SpikingClassifier
from spikenorm.tasks.compilation import compile_network, compile_options

T = 4

# the four model families at test size, each with the input it takes; ``layers`` varies
MODELS: dict[str, tuple[Callable[[LayerSpec], nn.Module], tuple[int, ...]]] = {
    "vgg": (lambda layers: SpikingVGG([8, "A", 16], in_channels=3, num_classes=10, layers=layers), (3, 8, 8)),
    "resnet19": (lambda layers: SpikingResNet19(10, in_channels=3, width=1 / 16, layers=layers), (3, 8, 8)),
    "mlp": (lambda layers: SpikingMLP(12, 10, hidden=(16, 16), layers=layers), (12,)),
    "transformer": (
        lambda layers: SpikingTransformer(
            3, 10, input_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2, layers=layers
        ),
        (3, 8, 8),
    ),
}

# the layer configurations every model must compile as one graph (train and eval)
COMMON_LAYERS = {
    "none": LayerSpec(norm="none"),
    "bn": LayerSpec(norm="bn"),
    "tdbn": LayerSpec(norm="tdbn"),
    "bntt": LayerSpec(norm="bntt", time_steps=T),
    "mpbn": LayerSpec(norm="tdbn", membrane_norm="mpbn"),
    "osr": LayerSpec(norm="osr", neuron_kwargs={"ots": True}),
    "carebn": LayerSpec(norm="carebn", neuron="clif"),
    "if": LayerSpec(neuron="if"),
    "binary": LayerSpec(binary_weights=True),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def build(name: str, layers: LayerSpec = LayerSpec(), batch: int = 4, steps: int = T) -> tuple[nn.Module, torch.Tensor]:
    make, sample = MODELS[name]
    torch.manual_seed(0)
    return make(layers), torch.rand(steps, batch, *sample) * 2


def graph_count(model: nn.Module, x: torch.Tensor) -> int:
    return torch._dynamo.explain(model)(x).graph_count


@pytest.mark.parametrize("name", list(MODELS))
def test_models_compile_to_one_graph_in_training(name):
    """Training is where graphs broke (tdBN's gain, read through ``super()`` in a property)."""
    model, x = build(name)
    assert graph_count(model.train(), x) == 1


# tdbn is every model's default (above); these are the other paths through norms and neurons
DEFAULT_SUITE_LAYERS = ["mpbn", "bntt", "osr", "carebn", "binary"]


@pytest.mark.parametrize("layers", DEFAULT_SUITE_LAYERS)
def test_layer_configurations_compile_to_one_graph_in_training(layers):
    model, x = build("mlp", COMMON_LAYERS[layers])
    assert graph_count(model.train(), x) == 1


@pytest.mark.slow
@pytest.mark.parametrize("layers", list(COMMON_LAYERS))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_and_layer_configuration_compiles_to_one_graph(name, layers):
    model, x = build(name, COMMON_LAYERS[layers])
    for training in (True, False):
        model.train(training)
        assert graph_count(model, x) == 1


@pytest.mark.slow
@pytest.mark.parametrize("shortcuts", ["per_layer", "none"])
def test_resnet_shortcut_layouts_compile_to_one_graph(shortcuts):
    model, x = build("resnet19", LayerSpec(shortcuts=shortcuts, binary_weights=True))
    for training in (True, False):
        model.train(training)
        assert graph_count(model, x) == 1


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One SGD step; the loss and the gradients it used."""
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x).mean(0), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    return loss.detach(), grads


def assert_compiled_matches_eager(name: str, layers: LayerSpec, backend: str = "inductor") -> None:
    """Compiled (fullgraph) train steps match eager in loss and gradients; eval outputs are equal."""
    eager, x = build(name, layers)
    compiled = copy.deepcopy(eager)
    compile_network(compiled, {"fullgraph": True, "dynamic": False, "backend": backend})
    y = torch.arange(x.shape[1]) % 10
    for _ in range(2):
        loss, grads = train_step(eager, x, y)
        loss_c, grads_c = train_step(compiled, x, y)
        assert torch.isfinite(loss_c)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads.keys()
        for key in grads:
            torch.testing.assert_close(grads_c[key], grads[key], rtol=1e-4, atol=1e-5, msg=key)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        # inductor reorders float sums (conv, mean) inside a graph: logits agree to rounding, spikes exactly
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
        with FiringRateRecorder(eager) as eager_rates:
            eager(x)
        with FiringRateRecorder(compiled) as compiled_rates:
            compiled(x)
    assert compiled_rates.layer_rates() == eager_rates.layer_rates()


def test_traced_mlp_trains_and_evaluates_like_eager():
    """The graph dynamo and AOTAutograd trace (forward and backward), run without inductor's code generation."""
    assert_compiled_matches_eager("mlp", LayerSpec(norm="tdbn", membrane_norm="mpbn"), backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_models_train_and_evaluate_like_eager(name):
    """Inductor: C++ kernels on CPU, tens of seconds per model."""
    assert_compiled_matches_eager(name, LayerSpec())


def test_plain_compile_of_a_tdbn_vgg_trains_on_a_smaller_last_batch_then_evaluates():
    """The issue's repro, a plain ``torch.compile(model)`` of a tdBN VGG, crashed inductor at its first
    backward; then a smaller last batch (dynamo recompiles with a symbolic batch size), then eval."""
    model, x = build("vgg", LayerSpec(norm="tdbn", neuron="lif"), batch=6, steps=2)
    compiled = torch.compile(model)
    for batch in (6, 3):
        out = compiled(x[:, :batch])
        out.sum().backward()
        assert out.shape == (2, batch, 10) and torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x[:, :3]), model.forward(x[:, :3]), rtol=1e-5, atol=1e-5)


# -- the task option -----------------------------------------------------------------------------------------------
def test_compile_option_is_checked_at_construction():
    model = SpikingMLP(12, 10, hidden=(8,))
    assert compile_options(True, "x") == {"dynamic": False}
    assert compile_options({"mode": "max-autotune", "dynamic": None}, "x") == {"mode": "max-autotune", "dynamic": None}
    assert compile_options(False, "x") is None
    with pytest.raises(ValueError, match="takes no argument.*'fulgraph'.*available: fullgraph"):
        SpikingClassifier(model, compile={"fulgraph": True})
    with pytest.raises(ValueError, match="Unrecognized mode"):
        SpikingClassifier(model, compile={"mode": "fastest"})
    with pytest.raises(TypeError, match="bool or a dict"):
        SpikingClassifier(model, compile="yes")


def test_compiled_network_still_runs_hooks_added_after_a_forward_without_them():
    """dynamo ignores hooks added after a first compilation unless told otherwise; firing rates rely on them."""
    model, x = build("mlp", LayerSpec(norm="bn"))
    model.eval()
    with torch.no_grad(), FiringRateRecorder(model) as eager:
        model(x)
    compile_network(model, {"backend": "eager", "dynamic": False})
    with torch.no_grad():
        model(x)  # compiled without hooks first (e.g. predict)
        with FiringRateRecorder(model) as compiled:
            model(x)
    assert compiled.layer_rates() == eager.layer_rates()
    assert eager.mean_rate() > 0


def digits(samples: int = 20) -> DataLoader:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(samples, 12), torch.arange(samples) % 3)
    return DataLoader(data, batch_size=8)  # 8, 8, 4: the last batch is smaller


def task(training_mode: str = "bptt", compile: bool | dict = True) -> SpikingClassifier:
    torch.manual_seed(0)
    model = SpikingMLP(12, 3, hidden=(8,), layers=LayerSpec(norm="osr" if training_mode == "online" else "tdbn"))
    online = OnlineTraining() if training_mode == "online" else None
    return SpikingClassifier(model, time_steps=2, online=online, compile=compile)


@pytest.mark.parametrize("training_mode", ["bptt", "online"])
def test_task_compile_option_fits_and_matches_eager(training_mode):
    results = {}
    for compiled in (False, True):
        classifier = task(training_mode, compile={"backend": "aot_eager"} if compiled else False)
        trainer = short_trainer(3, 3, max_epochs=1)
        trainer.fit(classifier, digits(), digits())
        assert (classifier.model._compiled_call_impl is not None) == compiled
        results[compiled] = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert results[True].keys() == results[False].keys()
    for key, value in results[False].items():
        assert results[True][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert "val/firing_rate" in results[True]


def test_checkpoint_of_a_compiled_run_loads_without_compile_and_back(tmp_path):
    classifier = task(compile={"backend": "aot_eager"})
    trainer = short_trainer(2, 1, max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(classifier, digits(), digits())
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in saved)
    assert saved.keys() == task(compile=False).state_dict().keys()

    plain = SpikingClassifier.load_from_checkpoint(path, compile=False)
    quiet_trainer().validate(plain, digits(), verbose=False)
    assert plain.model._compiled_call_impl is None
    for key, value in plain.state_dict().items():
        assert torch.equal(value, saved[key]), key

    path_plain = tmp_path / "plain.ckpt"
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(task(compile=False), digits(), digits())
    trainer.save_checkpoint(path_plain)
    recompiled = SpikingClassifier.load_from_checkpoint(path_plain, compile={"backend": "aot_eager"})
    quiet_trainer().validate(recompiled, digits(), verbose=False)
    assert recompiled.model._compiled_call_impl is not None
