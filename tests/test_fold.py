"""Folding: exact equivalence (zero flipped spikes) for every norm placement and gamma sign, clear errors."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch

from spikenorm.fold import (
    SignFlip,
    UnsafeFoldedFileError,
    check_equivalence,
    fold_model,
    load_folded,
    membrane_threshold,
    save_folded,
)
from spikenorm.models import LayerSpec, PopSANActor, SpikingMLP, SpikingResNet19, SpikingVGG
from spikenorm.neurons import LIF
from spikenorm.norm import MPBN, TimeMajorNorm, build_norm
from spikenorm.synapse import TimeDistributed

MPBN_NEURON = {"decay": 0.25, "threshold": 0.5}


def vgg(elementwise=False, norm="tdbn", cfg="small", shortcuts="none", num_classes=5):
    return SpikingVGG(
        cfg,
        in_channels=1,
        num_classes=num_classes,
        input_size=8,
        layers=LayerSpec(
            norm=norm,
            membrane_norm="mpbn",
            membrane_norm_kwargs={"elementwise": elementwise},
            neuron_kwargs=MPBN_NEURON,
            surrogate="dspike",
            shortcuts=shortcuts,
        ),
    )


def resnet(elementwise=False, shortcuts="per_block"):
    return SpikingResNet19(
        num_classes=5,
        in_channels=2,
        width=0.0625,
        input_size=8,
        layers=LayerSpec(
            membrane_norm="mpbn",
            membrane_norm_kwargs={"elementwise": elementwise},
            neuron_kwargs=MPBN_NEURON,
            shortcuts=shortcuts,
        ),
    )


def mlp():
    return SpikingMLP(
        20, 4, hidden=(24, 16), layers=LayerSpec(norm="bn", membrane_norm="mpbn", neuron_kwargs=MPBN_NEURON)
    )


MODELS = {
    "vgg": (vgg, (3, 12, 1, 8, 8)),
    "vgg_elementwise": (lambda: vgg(True), (3, 12, 1, 8, 8)),
    "resnet": (resnet, (2, 8, 2, 8, 8)),
    "resnet_elementwise": (lambda: resnet(True), (2, 8, 2, 8, 8)),
    "mlp": (mlp, (4, 16, 20)),
    "vgg_per_layer_shortcuts": (lambda: vgg(cfg=[8, 8, "A", 16, 16], shortcuts="per_layer"), (3, 12, 1, 8, 8)),
    "resnet_per_layer_shortcuts": (lambda: resnet(shortcuts="per_layer"), (2, 8, 2, 8, 8)),
}


def prepared(name: str, gamma: str, seed: int = 0, train_steps: int = 0, device: torch.device | str = "cpu"):
    """A float64 model on ``device`` whose running statistics have seen data, with norm gammas set by ``gamma``,
    and an input for it."""
    build, shape = MODELS[name]
    torch.manual_seed(seed)
    model = build().double().to(device)
    x = (torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(max(train_steps, 2)):  # training-mode forwards move the running statistics
        loss = model(x).mean(0).logsumexp(-1).mean()
        if train_steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TimeMajorNorm) and m.affine:
                magnitude = torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.2
                if gamma == "negative":
                    sign = -torch.ones_like(magnitude)
                elif gamma == "mixed_channels":  # one sign per channel
                    sign = torch.where(torch.rand(m.weight.shape[0], generator=g) < 0.5, -1.0, 1.0).double()
                    sign = sign.reshape(-1, *([1] * (m.weight.ndim - 1))).expand_as(magnitude)
                elif gamma == "mixed":
                    sign = torch.where(torch.rand(m.weight.shape, generator=g) < 0.5, -1.0, 1.0).double()
                else:
                    sign = torch.ones_like(magnitude)
                m.weight.copy_(sign * magnitude)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * 0.3)
    return model.eval(), (torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3).to(device)


def assert_exact(model, x):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_model(model)
    report = check_equivalence(model, folded, x)
    assert report.flipped_spikes == 0, str(report)
    assert report.total_spikes > 0 and report.max_abs_diff < 1e-9
    assert not any(isinstance(m, (TimeMajorNorm)) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # source untouched
    assert any(isinstance(n, MPBN) for n in model.modules())
    return folded, report


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("gamma", ["positive", "negative", "mixed_channels", "mixed"])
def test_fold_is_exact(name, gamma, device):
    assert_exact(*prepared(name, gamma, device=device))


@pytest.mark.parametrize("name", ["vgg", "resnet_elementwise", "mlp"])
def test_fold_is_exact_after_training(name, device):
    assert_exact(*prepared(name, "mixed", seed=3, train_steps=5, device=device))


def test_negative_channels_fold_into_weights_where_every_path_can_take_the_sign(device):
    folded, _ = assert_exact(*prepared("vgg", "mixed_channels", device=device))
    assert not any(isinstance(m, SignFlip) for m in folded.modules())  # zero extra ops
    folded, _ = assert_exact(*prepared("resnet", "negative", device=device))
    flips = {name for name, m in folded.named_modules() if isinstance(m, SignFlip)}
    # identity-shortcut blocks cannot negate the shortcut, projection blocks and plain layers can
    assert "blocks.0.neuron.membrane_norm" in flips and "blocks.3.neuron.membrane_norm" not in flips
    assert "stem.2.membrane_norm" not in flips


def test_nonzero_hard_reset_value_keeps_the_sign_in_the_neuron(device):
    model, x = prepared("vgg", "negative", device=device)
    for m in model.modules():
        if hasattr(m, "reset_value"):
            m.reset_value = -0.2
    folded, _ = assert_exact(model, x)
    assert any(isinstance(m, SignFlip) for m in folded.modules())


def test_zero_gamma_gives_a_constant_decision(device):
    model, x = prepared("mlp", "positive", device=device)
    norm = model.features[0][2].membrane_norm
    with torch.no_grad():
        norm.weight[:4] = 0.0
        norm.bias[:2] = 0.9  # above the 0.5 threshold: always fires
        norm.bias[2:4] = 0.1  # below: never fires
    folded, _ = assert_exact(model, x)
    theta = folded.get_submodule("features.0.2").threshold
    assert torch.isneginf(theta[:2]).all() and torch.isposinf(theta[2:4]).all()


def test_an_ots_running_threshold_folds_before_the_membrane_norm_of_its_neuron(device):
    """OTS compares the normalised membrane with its running threshold: that threshold is what MPBN folds back."""
    torch.manual_seed(0)
    neuron = LIF(threshold=0.5, ots=True, ots_eval="running", membrane_norm=build_norm("mpbn", 6))
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), neuron, torch.nn.Linear(6, 3)).double().to(device)
    model(torch.randn(4, 16, 4, dtype=torch.float64, device=device))
    with torch.no_grad():
        neuron.membrane_norm.weight.uniform_(-1, 1)  # both signs: SignFlips and negated weights
        neuron.threshold_stabilizer.running_threshold.fill_(0.2)
    model.eval()
    folded, _ = assert_exact(model, torch.randn(4, 32, 4, dtype=torch.float64, device=device))
    assert folded.get_submodule("1").threshold_stabilizer is None


def test_membrane_threshold_matches_closed_form(device):
    torch.manual_seed(0)
    norm = build_norm("mpbn", 6).double()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.copy_(torch.tensor([0.5, -1.2, 2.0, -0.3, 1.0, 0.7], dtype=torch.float64))
        norm.bias.normal_()
    theta = 0.5
    threshold, sign = membrane_threshold(norm.to(device), torch.tensor(theta, device=device))
    threshold, sign = threshold.cpu(), sign.cpu()
    norm.cpu()
    mu, var = norm.running_mean.numpy(), norm.running_var.numpy()
    gamma, beta = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    np.testing.assert_allclose(threshold.numpy(), mu + (theta - beta) * np.sqrt(var + 1e-5) / gamma, rtol=1e-12)
    np.testing.assert_array_equal(sign.numpy(), np.sign(gamma))


def test_post_conv_bn_alone_folds_into_weights(device):
    torch.manual_seed(0)
    model = SpikingVGG("small", in_channels=1, num_classes=5, layers=LayerSpec(norm="tdbn")).double().to(device)
    x = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64).to(device)
    model(x)
    model.eval()
    folded = fold_model(model)
    report = check_equivalence(model, folded, x)
    assert report.flipped_spikes == 0 and report.max_abs_diff < 1e-9
    assert folded.get_submodule("features.0.0").module.bias is not None  # the BN shift became a bias


def test_fold_errors_are_clear():
    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": 2}))
    with pytest.raises(ValueError, match=r"cannot fold norm layer 'features.0.1' \(BNTT\)"):
        fold_model(model)
    folded = fold_model(SpikingVGG("small", in_channels=1))
    with pytest.raises(ValueError, match="inference-only"):
        folded.train()
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TypeError, match="could not trace Branchy"):
        fold_model(Branchy())
    standalone = torch.nn.Sequential(torch.nn.Linear(3, 4), build_norm("mpbn", 4))
    with pytest.raises(ValueError, match="must be a neuron's membrane_norm"):
        fold_model(standalone)


def test_models_of_other_libraries_are_refused_naming_the_layers_that_do_not_fold():
    """snnTorch and SpikingJelly networks (and torch BatchNorm): refused before tracing, their layer types named."""
    from peer_models import snntorch_net, spikingjelly_net

    with pytest.raises(
        ValueError,
        match=r"folds spikenorm layers only.*SnnTorchNet holds layers it cannot fold: "
        r"BatchNorm2d \(torch BatchNorm: 'bn1'\); Leaky \(snntorch neuron: 'lif1', 'lif2'\)",
    ):
        fold_model(snntorch_net())
    with pytest.raises(
        ValueError,
        match=r"Sequential holds layers it cannot fold: Conv2d \(spikingjelly layer: '0'\); "
        r"BatchNorm2d \(spikingjelly BatchNorm: '1'\); LIFNode \(spikingjelly neuron: '2', '6'\);",
    ):
        fold_model(spikingjelly_net())
    with pytest.raises(ValueError, match=r"BatchNorm1d \(torch BatchNorm: '1.module'\).*build_norm\('bn', C\)"):
        fold_model(
            torch.nn.Sequential(TimeDistributed(torch.nn.Linear(3, 4)), TimeDistributed(torch.nn.BatchNorm1d(4)), LIF())
        )


def test_training_model_is_left_in_training_mode():
    model, x = prepared("mlp", "mixed")
    model.train()
    folded = fold_model(model)
    assert model.training and not folded.training
    check_equivalence(model, folded, x)
    assert model.training


@pytest.mark.parametrize("name", ["resnet", "vgg_elementwise", "mlp"])
def test_save_and_load_round_trip(tmp_path, name):
    model, x = prepared(name, "mixed")  # mixed gamma signs: SignFlips and negated weights in the folded model
    folded = fold_model(model)
    path = save_folded(folded, tmp_path / "folded.pt")
    loaded = load_folded(path)
    assert type(loaded).__name__ == type(folded).__name__
    assert torch.equal(loaded(x), folded(x))
    report = check_equivalence(folded, loaded, x)  # the same neuron layers, spike for spike
    assert report.flipped_spikes == 0 and report.max_abs_diff == 0.0
    assert [n for n, _ in loaded.named_modules()] == [n for n, _ in folded.named_modules()]
    with pytest.raises(ValueError, match="inference-only"):
        loaded.train()

    def nodes(gm):  # fx-wrapped calls (the input checks) stay marked, so the loaded model traces as the folded one
        return [(n.op, n.target, n.args, n.meta.get("is_wrapped")) for n in gm.graph.nodes]

    assert str(nodes(loaded)) == str(nodes(folded))
    buffer = save_folded(folded, io.BytesIO())  # file objects work as for torch.save
    buffer.seek(0)
    assert torch.equal(load_folded(buffer)(x), folded(x))


def test_files_naming_the_synapses_old_modules_still_load(tmp_path):
    """Files written before TimeDistributed and TraceSynapse moved to spikenorm.synapse name their old modules."""
    model, x = prepared("vgg_elementwise", "mixed")
    folded = fold_model(model)
    payload = torch.load(save_folded(folded, tmp_path / "folded.pt"), weights_only=True)
    old = payload["spec"].replace(
        '"spikenorm.synapse", "class": "TimeDistributed"', '"spikenorm.models.layers", "class": "TimeDistributed"'
    )
    assert old != payload["spec"]
    torch.save({**payload, "spec": old}, tmp_path / "old.pt")
    assert torch.equal(load_folded(tmp_path / "old.pt")(x), folded(x))


def test_every_kind_of_foldable_model_round_trips(tmp_path):
    """Trace synapses, IF and CLIF neurons, binary layers, folded OTS thresholds, the RL actor's encoders."""
    torch.manual_seed(0)
    models = [
        (
            SpikingVGG(
                "small",
                in_channels=1,
                num_classes=5,
                input_size=8,
                layers=LayerSpec(neuron="if", trace=True, shortcuts="per_layer"),
            ),
            torch.rand(2, 3, 1, 8, 8),
        ),
        (
            SpikingVGG(
                "small", in_channels=1, num_classes=5, layers=LayerSpec(norm="none", neuron="clif", binary_weights=True)
            ),
            torch.rand(2, 3, 1, 8, 8),
        ),
        (
            SpikingMLP(
                20, 4, hidden=(24, 16), layers=LayerSpec(norm="osr", neuron_kwargs={"ots": True, "ots_eval": "running"})
            ),
            torch.randn(2, 3, 20),
        ),
        (PopSANActor(3, 2, 1.0, hidden=(8, 8)), torch.randn(4, 3)),
    ]
    for model, x in models:
        folded = fold_model(model.eval())
        assert torch.equal(load_folded(save_folded(folded, tmp_path / "folded.pt"))(x), folded(x))


class _Payload:
    """Unpickling it calls ``open(marker, "w")``, which creates the marker file: stands for any code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    disguised = {"format": "spikenorm.folded", "version": 1, "spec": _Payload(marker)}  # looks like a safe file
    for i, content in enumerate([_Payload(marker), disguised]):
        path = tmp_path / f"evil{i}.pt"
        torch.save(content, path)
        with pytest.raises(UnsafeFoldedFileError, match=r"load_folded\(path, trusted=True\)"):
            load_folded(path)
        assert not marker.exists()


def test_pickle_files_load_only_when_trusted(tmp_path):
    model, x = prepared("mlp", "mixed")
    folded = fold_model(model)
    path = save_folded(folded, tmp_path / "folded.pt", pickle=True)
    with pytest.raises(UnsafeFoldedFileError, match="trusted=True"):
        load_folded(path)
    assert torch.equal(load_folded(path, trusted=True)(x), folded(x))
    safe = save_folded(folded, tmp_path / "safe.pt")
    assert torch.equal(load_folded(safe, trusted=True)(x), folded(x))  # a safe file loads the safe way anyway


def _tamper_function(spec, marker):
    next(n for n in spec["graph"] if n["op"] == "call_function")["target"] = "builtins.open"
    spec["graph"][-2]["args"] = {"tuple": [marker, "w"]}


def _tamper_method(spec, marker):
    next(n for n in spec["graph"] if n["op"] == "call_method")["target"] = "numpy"


def _tamper_input_name(spec, marker):  # fx writes input names into the forward's signature
    spec["graph"][0]["target"] = f"x=open({marker!r}, 'w')"


def _tamper_module_path(spec, marker):  # and module paths into its body
    next(n for n in spec["graph"] if n["op"] == "call_module")["target"] = f'features")or(open({marker!r}, "w")'


def _tamper_class(spec, marker):
    spec["modules"]["children"][0][1].update(module="subprocess", **{"class": "Popen"})


def _tamper_value(spec, marker):
    spec["graph"][1]["args"] = {"tuple": [{"node": "x"}, {"callable": "os.system"}]}


def _tamper_dunder_path(spec, marker):  # fx walks a target with getattr/setattr: __class__ reaches nn.Module
    next(n for n in spec["graph"] if n["op"] == "call_module")["target"] = "0.__class__.extra_repr"


def _tamper_foreign_target(spec, marker):  # a well-formed path that is not part of the stored model
    next(n for n in spec["graph"] if n["op"] == "call_module")["target"] = "features.99"


def _tamper_class_alias(spec, marker):  # an allowed module's import of another class is not that module's class
    spec["modules"]["children"][0][1].update(module="spikenorm.fold", **{"class": "fx.GraphModule"})


def _tamper_keyword_argument(spec, marker):  # a Python keyword as an argument name breaks the generated code
    next(n for n in spec["graph"] if n["op"] == "call_function")["kwargs"] = {"dict": {"lambda": 1}}


@pytest.mark.parametrize(
    "tamper, message",
    [
        (_tamper_function, "calls 'builtins.open'"),
        (_tamper_method, "calls the method 'numpy'"),
        (_tamper_input_name, "invalid input name"),
        (_tamper_module_path, "invalid module path"),
        (_tamper_class, "subprocess.Popen"),
        (_tamper_value, "invalid value"),
        (_tamper_dunder_path, "invalid module path"),
        (_tamper_foreign_target, "which is not a module"),
        (_tamper_class_alias, "spikenorm.fold.fx.GraphModule"),
        (_tamper_keyword_argument, "keyword arguments"),
    ],
)
def test_a_crafted_safe_file_can_name_nothing_outside_the_allowlists(tmp_path, tamper, message):
    model, x = prepared("mlp", "positive")
    path = save_folded(fold_model(model), tmp_path / "folded.pt")
    payload = torch.load(path, weights_only=True)
    spec = json.loads(payload["spec"])
    tamper(spec, str(tmp_path / "marker"))
    payload["spec"] = json.dumps(spec)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_folded(path)(x)
    assert not (tmp_path / "marker").exists()


class _CustomLIF(LIF):
    """A user's neuron class: kept as a graph leaf by the fold, but not a class the safe format rebuilds."""


def test_save_names_what_the_safe_format_cannot_hold(tmp_path):
    class Sine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, x):
            return torch.sin(self.linear(x))

    with pytest.raises(ValueError, match=r"node 'sin' calls 'torch.sin', which is not among .*pickle=True"):
        save_folded(fold_model(Sine()), tmp_path / "f.pt")
    custom = torch.nn.Sequential(torch.nn.Linear(3, 3), _CustomLIF())
    with pytest.raises(ValueError, match=r"module '1' is a test_fold._CustomLIF; the safe format rebuilds only"):
        save_folded(fold_model(custom), tmp_path / "f.pt")
    x = torch.randn(2, 4, 3)
    assert torch.equal(
        load_folded(save_folded(fold_model(custom), tmp_path / "f.pt", pickle=True), trusted=True)(x),
        fold_model(custom)(x),
    )
    with pytest.raises(TypeError, match="output of fold_model"):
        save_folded(torch.nn.Linear(2, 2), tmp_path / "f.pt")
