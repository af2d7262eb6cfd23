"""NIR export: exact round trip through a .nir file, snnTorch's import, clear errors, the NIRExport callback."""

from __future__ import annotations

from types import SimpleNamespace

import nir
import numpy as np
import pytest
import torch
from helpers import short_trainer
from lightning.pytorch import seed_everything
from snntorch.import_nir import import_from_nir
from torch import Tensor, nn

from spikenorm.callbacks.nir_export import NIRExport
from spikenorm.datamodules import DigitsDataModule
from spikenorm.export import from_nir, to_nir, write_nir
from spikenorm.fold import SignFlip, fold_model
from spikenorm.models import LayerSpec, SpikingMLP, SpikingVGG
from spikenorm.neurons import build_neuron, spiking_neurons
from spikenorm.norm import TimeMajorNorm
from spikenorm.synapse import TimeDistributed
from spikenorm.tasks import SpikingClassifier


def vgg(neuron: str, elementwise: bool, **neuron_kwargs) -> SpikingVGG:
    # per_layer shortcuts: an identity shortcut (negative gammas stay a SignFlip) and a projection one
    return SpikingVGG(
        [8, 8, "A", 16],
        in_channels=1,
        num_classes=5,
        input_size=8,
        layers=LayerSpec(
            norm="bn",
            membrane_norm="mpbn",
            membrane_norm_kwargs={"elementwise": elementwise},
            neuron=neuron,
            neuron_kwargs=neuron_kwargs,
            shortcuts="per_layer",
        ),
    )


# name: (model, input shape, NIR neuron type)
CASES = {
    "vgg_lif_per_channel": (lambda: vgg("lif", False, decay=0.25, threshold=0.5), (3, 6, 1, 8, 8), nir.LIF),
    "vgg_clif_per_element": (lambda: vgg("clif", True), (3, 6, 1, 8, 8), nir.CubaLIF),
    "mlp_if": (
        lambda: SpikingMLP(
            20,
            4,
            hidden=(24, 16),
            layers=LayerSpec(norm="bn", membrane_norm="mpbn", neuron="if", neuron_kwargs={"threshold": 0.5}),
        ),
        (4, 6, 20),
        nir.IF,
    ),
}


def prepared(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, Tensor]:
    """``model`` in eval mode with running statistics moved by data and random gammas (one sign per channel,
    both signs) and betas, and an input batch."""
    torch.manual_seed(seed)
    x = torch.randn(*shape) * 1.5 + 0.3
    with torch.no_grad():
        model.train()
        model(x)
        model(x)
        for m in model.modules():
            if isinstance(m, TimeMajorNorm) and m.affine:
                sign = torch.where(torch.rand(m.weight.shape[0]) < 0.5, -1.0, 1.0)
                m.weight.copy_(sign.reshape(-1, *([1] * (m.weight.ndim - 1))) * (torch.rand(m.weight.shape) + 0.2))
                m.bias.copy_(torch.randn(m.bias.shape) * 0.3)
    return model.eval(), torch.randn(*shape) * 1.5 + 0.3


def spikes_by_layer(model: nn.Module, x: Tensor, prefix: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    """Output and every neuron's spikes, keyed by the neuron's name without ``prefix``, '.' as '_' (NIR names)."""
    spikes = {}

    def record(key: str):
        return lambda module, inputs, out: spikes.__setitem__(key, out)

    hooks = [
        n.register_forward_hook(record(name.removeprefix(prefix).replace(".", "_")))
        for name, n in spiking_neurons(model)
    ]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    return out, spikes


def assert_same_arrays(written: nir.NIRNode, read: nir.NIRNode) -> None:
    a, b = written.to_dict(), read.to_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key == "metadata":
            assert {k: np.asarray(v).tolist() for k, v in value.items()} == {
                k: np.asarray(v).tolist() for k, v in b[key].items()
            }
        else:
            assert np.array_equal(np.asarray(value), np.asarray(b[key])), key
            if isinstance(value, np.ndarray):
                assert value.dtype == b[key].dtype, key


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_through_a_file_is_spike_exact(name, tmp_path):
    build, shape, neuron_type = CASES[name]
    model, x = prepared(build(), shape)
    if name == "mlp_if":  # gamma = 0: constant decisions, folded to thresholds -inf (always) and +inf (never)
        norm = model.features[0][2].membrane_norm
        with torch.no_grad():
            norm.weight[:2] = 0.0
            norm.bias[:2] = torch.tensor([0.9, 0.1])
    folded = fold_model(model)
    graph = to_nir(folded, x[:, :1])
    path = write_nir(folded, x[:, :1], tmp_path / "net.nir")
    read = nir.read(path)

    assert (
        sorted(read.nodes) == sorted(graph.nodes) and [tuple(e) for e in read.edges] == graph.edges
    )  # HDF5 sorts names
    for key, node in graph.nodes.items():
        assert type(read.nodes[key]) is type(node)
        assert_same_arrays(node, read.nodes[key])
    assert float(read.metadata["dt"]) == 1.0

    neurons = {k: n for k, n in read.nodes.items() if isinstance(n, (nir.IF, nir.LIF, nir.CubaLIF))}
    assert {type(n) for n in neurons.values()} == {neuron_type} and len(neurons) == len(list(spiking_neurons(folded)))
    if name.startswith("vgg"):
        assert {nir.Conv2d, nir.AvgPool2d, nir.Flatten, nir.Scale, nir.Affine} <= {type(n) for n in read.nodes.values()}
        assert any(isinstance(m, SignFlip) for m in folded.modules())  # the identity-shortcut block keeps its sign
        theta = neurons["features_0_2"].v_threshold  # [8, 8, 8]: per channel, or per element
        assert theta.shape == (8, 8, 8) and np.unique(theta[:, 0, 0]).size > 1
        assert (np.unique(theta[0]).size > 1) == name.endswith("per_element")
        # residual sum: two edges into the neuron's input (through its sign Scale node)
        assert sum(dst == "features_3_neuron" for _, dst in read.edges) == 2
        assert sum(dst == "features_1_neuron_sign" for _, dst in read.edges) == 2

    if name == "mlp_if":
        theta = neurons["features_0_2"].v_threshold
        assert np.isneginf(theta[0]) and np.isposinf(theta[1]) and np.isfinite(theta[2:]).all()

    net = from_nir(read)
    expected, expected_spikes = spikes_by_layer(folded, x)
    out, spikes = spikes_by_layer(net, x, prefix="layers.")
    assert torch.equal(out, expected)
    assert spikes.keys() == expected_spikes.keys() and len(spikes) == len(neurons)
    for key, s in expected_spikes.items():
        assert torch.equal(spikes[key], s), key
    rate = torch.cat([s.flatten() for s in spikes.values()]).mean()
    assert 0.02 < rate < 0.98


class Conv1dNet(nn.Module):
    """Conv1d (stride, padding, dilation, no bias) -> LIF -> flatten -> Linear without bias -> IF."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.conv = TimeDistributed(nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=groups, bias=False))
        self.neuron1 = build_neuron("lif", decay=0.5, threshold=0.3)
        self.linear = nn.Linear(6 * 5, 7, bias=False)
        self.neuron2 = build_neuron("if", threshold=0.2, reset_value=-0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron2(self.linear(self.neuron1(self.conv(x)).flatten(2)))


def test_conv1d_and_bias_free_layers_round_trip(tmp_path):
    torch.manual_seed(0)
    net, x = Conv1dNet().eval(), torch.randn(5, 3, 4, 9)
    graph = nir.read(write_nir(net, x[:, :1], tmp_path / "conv1d.nir"))
    conv = graph.nodes["conv"]
    assert isinstance(conv, nir.Conv1d) and (conv.stride, conv.padding, conv.dilation) == (2, 2, 2)
    assert isinstance(graph.nodes["linear"], nir.Linear) and isinstance(graph.nodes["flatten"], nir.Flatten)
    assert np.array_equal(graph.nodes["neuron2"].v_reset, np.full(7, -0.1, dtype=np.float32))
    expected = net(x)
    assert torch.equal(from_nir(graph)(x), expected) and 0 < expected.mean() < 1
    with pytest.raises(ValueError, match="'conv'.*grouped convolution"):
        to_nir(Conv1dNet(groups=2).eval(), x)


class ResidualConvNet(nn.Module):
    """conv -> neuron -> avg pool -> conv + shortcut -> neuron, no norm layers, one threshold per layer."""

    def __init__(self, neuron: str, **kwargs) -> None:
        super().__init__()
        self.conv1 = TimeDistributed(nn.Conv2d(2, 6, 3, padding=1))
        self.neuron1 = build_neuron(neuron, **{**kwargs, "threshold": 0.4})
        self.pool = TimeDistributed(nn.AvgPool2d(2))
        self.conv2 = TimeDistributed(nn.Conv2d(6, 6, 3, padding=1))
        self.neuron2 = build_neuron(neuron, **{**kwargs, "threshold": 0.3})

    def forward(self, x: Tensor) -> Tensor:
        s = self.pool(self.neuron1(self.conv1(x)))
        return self.neuron2(self.conv2(s) + s)


SNNTORCH_CASES = {
    "mlp": (
        lambda neuron, kw: SpikingMLP(
            20, 4, hidden=(24, 16), layers=LayerSpec(norm="bn", neuron=neuron, neuron_kwargs=kw)
        ),
        (6, 5, 20),
    ),
    "residual_conv": (lambda neuron, kw: ResidualConvNet(neuron, **kw), (6, 4, 2, 8, 8)),
}


@pytest.mark.parametrize("neuron, kwargs", [("lif", {"decay": 0.25, "threshold": 0.5}), ("clif", {})])
@pytest.mark.parametrize("case", sorted(SNNTORCH_CASES))
def test_snntorch_import_gives_the_same_outputs(case, neuron, kwargs):
    """snnTorch reads NIR time in seconds with dt = 1e-4; LIF -> Leaky, CLIF -> Synaptic (reset to zero)."""
    build, shape = SNNTORCH_CASES[case]
    torch.manual_seed(0)
    model, x = prepared(build(neuron, kwargs), shape)  # no MPBN: one (scalar) threshold per layer after the fold
    folded = fold_model(model)
    graph = to_nir(folded, x[:, :1], dt=1e-4)
    imported = import_from_nir(graph)
    with torch.no_grad():
        steps = [imported(x_t)[0] for x_t in x]  # init_hidden neurons carry their state between calls
    expected = folded(x)
    assert torch.equal(torch.stack(steps), expected)
    assert torch.equal(from_nir(graph)(x), expected)  # the dt = 1e-4 parametrization reads back too
    if case == "residual_conv":
        assert 0 < expected.mean() < 1


def test_unfolded_and_unsupported_models_raise_naming_the_layer():
    model, x = prepared(CASES["mlp_if"][0](), (4, 2, 20))
    with pytest.raises(ValueError, match=r"norm layers.*features\.0\.1.*fold_model"):
        to_nir(model, x)
    maxpool = SpikingVGG([4, "M", 4], in_channels=1, num_classes=3, layers=LayerSpec(norm="bn")).eval()
    with pytest.raises(ValueError, match=r"'features\.1'.*MaxPool2d"):
        to_nir(fold_model(maxpool), torch.randn(2, 1, 1, 8, 8))
    soft = SpikingMLP(20, 4, hidden=(8,), layers=LayerSpec(norm="none", neuron_kwargs={"reset": "soft"}))
    with pytest.raises(ValueError, match=r"'features\.0\.2'.*soft reset"):
        to_nir(fold_model(soft), x)
    with pytest.raises(ValueError, match="dt must be"):
        to_nir(fold_model(soft), x, dt=0.0)
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        to_nir(fold_model(soft), torch.randn(20))


def test_from_nir_scales_the_input_gain_and_rejects_what_it_cannot_run():
    shape = np.ones(3)
    lif = nir.LIF(tau=2 * shape, r=4 * shape, v_leak=0 * shape, v_threshold=0.5 * shape)  # gain r dt/tau = 2
    graph = nir.NIRGraph.from_list(lif)
    with pytest.raises(ValueError, match="dt"):
        from_nir(graph)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    reference = build_neuron("lif", decay=0.5, threshold=0.5)
    assert torch.equal(from_nir(graph, dt=1.0).double()(x), reference.double()(2 * x))
    with pytest.raises(ValueError, match="'threshold' \\(Threshold\\): unsupported node type"):
        from_nir(nir.NIRGraph.from_list(nir.Threshold(shape)), dt=1.0)
    leaky = nir.LIF(tau=2 * shape, r=2 * shape, v_leak=shape, v_threshold=shape)
    with pytest.raises(ValueError, match="'lif'.*v_leak"):
        from_nir(nir.NIRGraph.from_list(leaky), dt=1.0)


def _task(model: nn.Module) -> SpikingClassifier:
    return SpikingClassifier(model, time_steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))


def test_nir_export_callback_writes_a_graph_that_runs_like_the_folded_model(tmp_path):
    seed_everything(0)
    net = SpikingMLP(
        64,
        10,
        hidden=(32,),
        layers=LayerSpec(norm="bn", membrane_norm="mpbn", neuron_kwargs={"decay": 0.25, "threshold": 0.5}),
    )
    default, chosen = NIRExport(), NIRExport(filename="digits", dirpath=str(tmp_path / "nir"))
    trainer = short_trainer(3, 1, [default, chosen], default_root_dir=tmp_path)
    task = _task(net)
    trainer.fit(task, DigitsDataModule(batch_size=32))
    assert default.saved_paths == [tmp_path / "model.nir"] and chosen.saved_paths == [tmp_path / "nir" / "digits.nir"]
    assert chosen.summary_line().endswith("digits.nir")
    x = torch.rand(3, 7, 1, 8, 8)
    expected = fold_model(task.model)(x)
    for path in default.saved_paths + chosen.saved_paths:
        graph = nir.read(path)
        assert isinstance(graph.nodes["flatten"], nir.Flatten)  # [1, 8, 8] -> [64]
        assert torch.equal(from_nir(graph)(x), expected)
    restored = NIRExport()
    restored.load_state_dict(chosen.state_dict())
    assert restored.saved_paths == chosen.saved_paths


def test_nir_export_callback_names_the_layer_it_cannot_export(tmp_path):
    task = _task(SpikingVGG([4, "M", 4], in_channels=1, num_classes=3, layers=LayerSpec(norm="bn")))
    trainer = SimpleNamespace(
        is_global_zero=True, fast_dev_run=False, checkpoint_callback=None, default_root_dir=tmp_path
    )
    callback = NIRExport()
    with pytest.raises(ValueError, match=r"NIRExport could not export SpikingVGG.*'features\.1'.*MaxPool2d"):
        callback.on_train_batch_start(trainer, task, (torch.rand(4, 1, 8, 8), torch.zeros(4)), 0)
    assert callback.saved_paths == []
