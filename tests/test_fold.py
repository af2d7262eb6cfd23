"""Folding: exact equivalence (zero flipped spikes) for every norm placement and gamma sign, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikenorm.fold import SignFlip, check_equivalence, fold_model, load_folded, membrane_threshold, save_folded
from spikenorm.models import SpikingMLP, SpikingResNet19, SpikingVGG
from spikenorm.norm import MPBN, TimeMajorNorm, build_norm

MPBN_NEURON = {"decay": 0.25, "threshold": 0.5}


def vgg(elementwise=False, norm="tdbn", cfg="small", shortcuts="none"):
    return SpikingVGG(cfg, in_channels=1, num_classes=5, input_size=8, norm=norm, membrane_norm="mpbn",
                      membrane_norm_kwargs={"elementwise": elementwise}, neuron_kwargs=MPBN_NEURON, surrogate="dspike",
                      shortcuts=shortcuts)


def resnet(elementwise=False, shortcuts="per_block"):
    return SpikingResNet19(num_classes=5, in_channels=2, width=0.0625, input_size=8, membrane_norm="mpbn",
                           membrane_norm_kwargs={"elementwise": elementwise}, neuron_kwargs=MPBN_NEURON,
                           shortcuts=shortcuts)


def mlp():
    return SpikingMLP(20, 4, hidden=(24, 16), norm="bn", membrane_norm="mpbn", neuron_kwargs=MPBN_NEURON)


MODELS = {"vgg": (vgg, (3, 12, 1, 8, 8)), "vgg_elementwise": (lambda: vgg(True), (3, 12, 1, 8, 8)),
          "resnet": (resnet, (2, 8, 2, 8, 8)), "resnet_elementwise": (lambda: resnet(True), (2, 8, 2, 8, 8)),
          "mlp": (mlp, (4, 16, 20)),
          "vgg_per_layer_shortcuts": (lambda: vgg(cfg=[8, 8, "A", 16, 16], shortcuts="per_layer"), (3, 12, 1, 8, 8)),
          "resnet_per_layer_shortcuts": (lambda: resnet(shortcuts="per_layer"), (2, 8, 2, 8, 8))}


def prepared(name: str, gamma: str, seed: int = 0, train_steps: int = 0):
    """A float64 model whose running statistics have seen data, with norm gammas set by ``gamma``."""
    build, shape = MODELS[name]
    torch.manual_seed(seed)
    model = build().double()
    x = torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3
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
    return model.eval(), torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.3


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
def test_fold_is_exact(name, gamma):
    assert_exact(*prepared(name, gamma))


@pytest.mark.parametrize("name", ["vgg", "resnet_elementwise", "mlp"])
def test_fold_is_exact_after_training(name):
    assert_exact(*prepared(name, "mixed", seed=3, train_steps=5))


def test_negative_channels_fold_into_weights_where_every_path_can_take_the_sign():
    folded, _ = assert_exact(*prepared("vgg", "mixed_channels"))
    assert not any(isinstance(m, SignFlip) for m in folded.modules())  # zero extra ops
    folded, _ = assert_exact(*prepared("resnet", "negative"))
    flips = {name for name, m in folded.named_modules() if isinstance(m, SignFlip)}
    # identity-shortcut blocks cannot negate the shortcut, projection blocks and plain layers can
    assert "blocks.0.neuron.membrane_norm" in flips and "blocks.3.neuron.membrane_norm" not in flips
    assert "stem.2.membrane_norm" not in flips


def test_nonzero_hard_reset_value_keeps_the_sign_in_the_neuron():
    model, x = prepared("vgg", "negative")
    for m in model.modules():
        if hasattr(m, "reset_value"):
            m.reset_value = -0.2
    folded, _ = assert_exact(model, x)
    assert any(isinstance(m, SignFlip) for m in folded.modules())


def test_zero_gamma_gives_a_constant_decision():
    model, x = prepared("mlp", "positive")
    norm = model.features[0][2].membrane_norm
    with torch.no_grad():
        norm.weight[:4] = 0.0
        norm.bias[:2] = 0.9  # above the 0.5 threshold: always fires
        norm.bias[2:4] = 0.1  # below: never fires
    folded, _ = assert_exact(model, x)
    theta = folded.get_submodule("features.0.2").threshold
    assert torch.isneginf(theta[:2]).all() and torch.isposinf(theta[2:4]).all()


def test_membrane_threshold_matches_closed_form():
    torch.manual_seed(0)
    norm = build_norm("mpbn", 6).double()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.copy_(torch.tensor([0.5, -1.2, 2.0, -0.3, 1.0, 0.7], dtype=torch.float64))
        norm.bias.normal_()
    theta = 0.5
    threshold, sign = membrane_threshold(norm, torch.tensor(theta))
    mu, var = norm.running_mean.numpy(), norm.running_var.numpy()
    gamma, beta = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    np.testing.assert_allclose(threshold.numpy(), mu + (theta - beta) * np.sqrt(var + 1e-5) / gamma, rtol=1e-12)
    np.testing.assert_array_equal(sign.numpy(), np.sign(gamma))


def test_post_conv_bn_alone_folds_into_weights():
    torch.manual_seed(0)
    model = SpikingVGG("small", in_channels=1, num_classes=5, norm="tdbn").double()
    x = torch.randn(2, 8, 1, 8, 8, dtype=torch.float64)
    model(x)
    model.eval()
    folded = fold_model(model)
    report = check_equivalence(model, folded, x)
    assert report.flipped_spikes == 0 and report.max_abs_diff < 1e-9
    assert folded.get_submodule("features.0.0").module.bias is not None  # the BN shift became a bias


def test_fold_errors_are_clear():
    model = SpikingVGG("small", in_channels=1, norm="bntt", norm_kwargs={"time_steps": 2})
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


def test_training_model_is_left_in_training_mode():
    model, x = prepared("mlp", "mixed")
    model.train()
    folded = fold_model(model)
    assert model.training and not folded.training
    check_equivalence(model, folded, x)
    assert model.training


def test_save_and_load_round_trip(tmp_path):
    model, x = prepared("resnet", "mixed")
    folded = fold_model(model)
    path = save_folded(folded, tmp_path / "folded.pt")
    loaded = load_folded(path)
    assert torch.equal(loaded(x), folded(x))
    with pytest.raises(ValueError, match="inference-only"):
        loaded.train()
