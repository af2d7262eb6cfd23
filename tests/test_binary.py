"""Binary-weight layers (the inferred XNOR-Net/IR-Net-style binarizer of SEI-BWSNN): values, STE gradients,
model surgery, packed 1-bit export and the fold guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikenorm.binary import BinaryConv2d, BinaryLayer, BinaryLinear, SignSTE, binarize_model, binarize_weight
from spikenorm.binary_packing import PACKED_FORMAT_KEY, load_packed, model_size, pack_binary, save_packed
from spikenorm.fold import fold_model
from spikenorm.models import LayerSpec, SpikingMLP, SpikingVGG
from spikenorm.synapse import TimeDistributed, TraceSynapse


def np_sign(w: np.ndarray) -> np.ndarray:
    return np.where(w >= 0, 1.0, -1.0)


def np_binary(w: np.ndarray) -> np.ndarray:
    """``alpha_i * sign(W_ij)`` in float64, ``alpha_i = mean_j |W_ij|``."""
    rows = w.reshape(w.shape[0], -1)
    alpha = np.abs(rows).mean(axis=1, keepdims=True)
    return (alpha * np_sign(rows)).reshape(w.shape)


def np_grad(w: np.ndarray, g: np.ndarray, clip: float, alpha_grad: bool) -> np.ndarray:
    """Closed-form dL/dW of ``W_b = alpha * sign(W)`` given ``g = dL/dW_b`` (see binarize_weight)."""
    rows, g_rows = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
    s = np_sign(rows)
    n = rows.shape[1]
    alpha = np.abs(rows).mean(axis=1, keepdims=True)
    grad = alpha * g_rows * (np.abs(rows) <= clip)
    if alpha_grad:
        grad = grad + s * (g_rows * s).sum(axis=1, keepdims=True) / n
    return grad.reshape(w.shape)


def awkward_weight(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Weights with |W| > 1 (clip mask matters), exact zeros (sign(0) = +1), -0.0 and entries exactly at 1."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * 1.2
    flat = w.view(-1)
    flat[::7] = 0.0
    flat[3::11] = -0.0
    flat[5::13] = 1.0
    flat[6::13] = -1.0
    assert (w.abs() > 1).any() and (w == 0).any()
    return w


# ------------------------------------------------------------------------------------------------ forward


def test_sign_ste_outputs_exactly_plus_minus_one() -> None:
    w = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    assert SignSTE.apply(w, 1.0).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


def test_binary_linear_forward_uses_alpha_sign() -> None:
    torch.manual_seed(0)
    layer = BinaryLinear(12, 5)
    with torch.no_grad():
        layer.weight[0, :4] = 0.0
    x = torch.randn(7, 12)
    w64 = layer.weight.detach().double().numpy()
    expected = F.linear(x.double(), torch.from_numpy(np_binary(w64)), layer.bias.detach().double())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-6)

    wb = layer.binary_weight()
    assert not wb.requires_grad
    for i, row in enumerate(wb):
        magnitudes = row.abs().unique()
        assert magnitudes.numel() == 1  # exactly {-alpha_i, +alpha_i}
        assert abs(magnitudes.item() - np.abs(w64[i]).mean()) < 1e-6
        assert torch.equal(torch.sign(row), torch.from_numpy(np_sign(w64[i])).float())
    assert len({round(r.abs().max().item(), 7) for r in wb}) == 5  # alpha is per output channel, not global


def test_binary_conv2d_forward_uses_alpha_sign() -> None:
    torch.manual_seed(1)
    layer = BinaryConv2d(3, 4, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 3, 9, 9)
    w64 = layer.weight.detach().double().numpy()
    expected = F.conv2d(x.double(), torch.from_numpy(np_binary(w64)), layer.bias.detach().double(), stride=2, padding=1)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    wb = layer.binary_weight()
    for i in range(4):
        assert wb[i].abs().unique().numel() == 1
        assert abs(wb[i].abs().max().item() - np.abs(w64[i]).mean()) < 1e-6
    assert "clip=1.0" in repr(layer)


def test_from_float_copies_parameters_and_config() -> None:
    conv = nn.Conv2d(2, 6, (3, 1), stride=(1, 2), padding=(1, 0), dilation=1, groups=2, bias=False).double()
    b = BinaryConv2d.from_float(conv, clip=0.5, alpha_grad=False)
    assert torch.equal(b.weight, conv.weight) and b.bias is None and b.weight.dtype == torch.float64
    assert (b.kernel_size, b.stride, b.padding, b.groups, b.clip, b.alpha_grad) == (
        (3, 1),
        (1, 2),
        (1, 0),
        2,
        0.5,
        False,
    )
    assert b.weight.data_ptr() != conv.weight.data_ptr()
    lin = nn.Linear(4, 3)
    bl = BinaryLinear.from_float(lin)
    assert torch.equal(bl.weight, lin.weight) and torch.equal(bl.bias, lin.bias)
    with pytest.raises(TypeError, match="nn.Linear"):
        BinaryLinear.from_float(conv)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("alpha_grad", [False, True])
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_ste_gradient_matches_closed_form(alpha_grad: bool, clip: float) -> None:
    w = awkward_weight((6, 3, 3, 3)).requires_grad_(True)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (binarize_weight(w, clip=clip, alpha_grad=alpha_grad) * g).sum().backward()
    expected = np_grad(w.detach().numpy(), g.numpy(), clip, alpha_grad)
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-12, atol=1e-14)
    other = np_grad(w.detach().numpy(), g.numpy(), clip, not alpha_grad)
    assert not np.allclose(w.grad.numpy(), other)  # the two modes really differ


@pytest.mark.parametrize("alpha_grad", [False, True])
def test_layer_weight_gradient_matches_closed_form(alpha_grad: bool) -> None:
    layer = BinaryLinear(10, 4, alpha_grad=alpha_grad).double()
    with torch.no_grad():
        layer.weight.copy_(awkward_weight((4, 10), seed=2))
    x = torch.randn(5, 10, dtype=torch.float64)
    r = torch.randn(5, 4, dtype=torch.float64)
    (layer(x) * r).sum().backward()
    wb = layer.binary_weight().requires_grad_(True)  # g = dL/dW_b through the same linear map
    (F.linear(x, wb, layer.bias.detach()) * r).sum().backward()
    expected = np_grad(layer.weight.detach().numpy(), wb.grad.numpy(), 1.0, alpha_grad)
    np.testing.assert_allclose(layer.weight.grad.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_sgd_step_updates_latent_weights() -> None:
    torch.manual_seed(0)
    model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    names = binarize_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    layer = model.get_submodule(names[0])
    before = layer.weight.detach().clone()
    model(torch.rand(2, 4, 1, 8, 8)).mean(0).logsumexp(-1).mean().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt.step()
    assert isinstance(layer.weight, nn.Parameter) and not torch.equal(layer.weight.detach(), before)
    assert not torch.equal(layer.weight.detach().abs(), torch.ones_like(before))  # still latent, not ±1


def test_trace_synapse_trains_a_binary_layer() -> None:
    torch.manual_seed(0)
    model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3, layers=LayerSpec(trace=True))
    names = binarize_model(model)
    assert names == ["features.1.0.layer.module", "features.3.0.layer.module"]
    model(torch.rand(2, 4, 1, 8, 8)).sum().backward()
    assert all(model.get_submodule(n).weight.grad is not None for n in names)


# ------------------------------------------------------------------------------------------------ surgery


def test_binarize_vgg_inside_wrappers_keeps_first_and_last() -> None:
    model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    assert binarize_model(model, clip=0.7) == ["features.1.0.module", "features.3.0.module"]
    assert isinstance(model.features[1][0], TimeDistributed)
    assert isinstance(model.features[1][0].module, BinaryConv2d) and model.features[1][0].module.clip == 0.7
    assert isinstance(model.features[3][0].module, BinaryConv2d)
    assert type(model.features[0][0].module) is nn.Conv2d and type(model.classifier) is nn.Linear
    assert model(torch.rand(2, 3, 1, 8, 8)).shape == (2, 3, 3)
    # a second call leaves binary layers alone
    assert binarize_model(model) == []


def test_binarize_trace_wrapped_and_mlp() -> None:
    traced = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3, layers=LayerSpec(trace=True))
    assert binarize_model(traced, keep_first_last=False) == [
        "classifier.layer",
        "features.0.0.module",
        "features.1.0.layer.module",
        "features.3.0.layer.module",
    ]
    assert isinstance(traced.classifier, TraceSynapse) and isinstance(traced.classifier.layer, BinaryLinear)
    mlp = SpikingMLP(64, 10, hidden=(32, 32))
    assert binarize_model(mlp) == ["features.1.0"]
    assert isinstance(mlp.features[1][0], BinaryLinear) and type(mlp.features[0][0]) is nn.Linear
    assert type(mlp.classifier) is nn.Linear


def test_binarize_include_exclude_patterns() -> None:
    model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    assert binarize_model(model, include=["features.*"], exclude=["features.3.*"], keep_first_last=False) == [
        "features.0.0.module",
        "features.1.0.module",
    ]
    assert type(model.features[3][0].module) is nn.Conv2d and type(model.classifier) is nn.Linear
    mlp = SpikingMLP(64, 10, hidden=(32, 32))
    assert binarize_model(mlp, include=["classifier"], keep_first_last=False) == ["classifier"]
    assert isinstance(mlp.classifier, BinaryLinear)


def test_binarize_errors_when_nothing_matches() -> None:
    model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    with pytest.raises(ValueError, match=r"matched no layer.*features\.0\.0\.module.*classifier"):
        binarize_model(model, include=["nope*"])
    with pytest.raises(ValueError, match="matched no layer"):
        binarize_model(model, include=["classifier"])  # the last layer is kept full precision
    with pytest.raises(ValueError, match="matched no layer"):
        binarize_model(SpikingMLP(8, 2, hidden=(4,)))  # only a first and a last layer
    with pytest.raises(ValueError, match="from_float"):
        binarize_model(nn.Linear(3, 2))
    assert not any(isinstance(m, BinaryLayer) for m in model.modules())


def test_shared_module_replaced_everywhere() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.ReLU(), shared, nn.Linear(4, 2))
    assert binarize_model(model) == ["1"]
    assert model[1] is model[3] and isinstance(model[3], BinaryLinear)


# ------------------------------------------------------------------------------------------------ packing


def built(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "vgg":
        model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    elif kind == "vgg_trace":
        model = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3, layers=LayerSpec(trace=True))
    else:
        model = SpikingMLP(64, 10, hidden=(32, 32, 32))
    binarize_model(model)
    return model


INPUTS = {"vgg": (2, 4, 1, 8, 8), "vgg_trace": (2, 4, 1, 8, 8), "mlp": (2, 4, 64)}


@pytest.mark.parametrize("kind", ["vgg", "vgg_trace", "mlp"])
def test_packed_round_trip_is_bit_exact(kind: str, tmp_path) -> None:
    model = built(kind, seed=0)
    x = torch.rand(*INPUTS[kind]) * 3
    with torch.no_grad():
        for _ in range(30):  # training forwards bring the running statistics close to the data's
            model(x)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryLayer):
                m.weight.view(-1)[::5] = 0.0  # sign(0) = +1 must survive packing
    expected = model(x)
    assert expected.std(dim=1).min() > 0  # spikes reach the readout: the outputs depend on the binary weights

    packed = pack_binary(model)
    binaries = {n: m for n, m in model.named_modules() if isinstance(m, BinaryLayer)}
    assert binaries
    for name, layer in binaries.items():
        w = layer.weight.detach()
        assert f"{name}.weight" not in packed
        assert packed[f"{name}.weight_bits"].dtype == torch.uint8
        assert np.array_equal(packed[f"{name}.weight_bits"].numpy(), np.packbits((w >= 0).numpy().reshape(-1)))
        assert packed[f"{name}.weight_shape"].tolist() == list(w.shape)
        alpha = packed[f"{name}.alpha"]
        assert alpha.dtype == torch.float32 and alpha.shape == (w.shape[0],)
        assert torch.equal(alpha, layer.binary_weight().reshape(w.shape[0], -1).abs().amax(1))  # what forward uses
    assert all(torch.equal(packed[k], v) for k, v in model.state_dict().items() if k in packed)

    path = save_packed(model, tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)[PACKED_FORMAT_KEY] == 1
    fresh = built(kind, seed=123)
    assert not torch.equal(fresh.eval()(x), expected)
    load_packed(fresh, path)
    fresh.eval()
    for name, layer in binaries.items():
        loaded = fresh.get_submodule(name)
        assert loaded.deployed and torch.equal(loaded.weight.abs(), torch.ones_like(loaded.weight))
        assert torch.equal(loaded.alpha, packed[f"{name}.alpha"])
        assert torch.equal(loaded.binary_weight(), layer.binary_weight())
    assert torch.equal(fresh(x), expected)
    repacked = pack_binary(fresh)  # packing the unpacked model gives the same bits and alphas
    assert repacked.keys() == packed.keys() and all(torch.equal(repacked[k], packed[k]) for k in packed)

    # the comparison can fail: a perturbed alpha changes the outputs
    bad = dict(packed)
    name = next(iter(binaries))
    bad[f"{name}.alpha"] = packed[f"{name}.alpha"] * 1.5
    other = built(kind, seed=7).eval()
    load_packed(other, bad)
    assert not torch.equal(other(x), expected)


def test_deployed_state_survives_state_dict_round_trip() -> None:
    model = built("vgg", seed=0)
    deployed = built("vgg", seed=1)
    load_packed(deployed, pack_binary(model))
    assert any(k.endswith(".alpha") for k in deployed.state_dict())
    again = built("vgg", seed=2)
    again.load_state_dict(deployed.state_dict())  # strict: the alpha buffers are created on load
    x = torch.rand(2, 4, 1, 8, 8)
    assert torch.equal(again.eval()(x), deployed.eval()(x))
    deployed.load_state_dict(model.state_dict())  # a training-state checkpoint clears alpha
    assert not any(m.deployed for m in deployed.modules() if isinstance(m, BinaryLayer))


def test_load_packed_errors() -> None:
    packed = pack_binary(built("vgg", seed=0))
    torch.manual_seed(0)
    differently = SpikingVGG(cfg=[8, 8, "A", 16], in_channels=1, num_classes=3)
    binarize_model(differently, keep_first_last=False)
    with pytest.raises(ValueError, match=r"binary layers differ.*model only \['classifier', 'features.0.0.module'\]"):
        load_packed(differently, packed)
    wider = SpikingVGG(cfg=[8, 12, "A", 16], in_channels=1, num_classes=3)
    binarize_model(wider)
    with pytest.raises(ValueError, match=r"features.1.0.module.*shape \(8, 8, 3, 3\).*\(12, 8, 3, 3\)"):
        load_packed(wider, packed)
    plain = built("vgg", seed=0)
    missing = {k: v for k, v in packed.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match=r"missing \['classifier.bias'\]"):
        load_packed(plain, missing)
    with pytest.raises(ValueError, match="format version"):
        load_packed(plain, {**packed, PACKED_FORMAT_KEY: 99})
    untouched = built("vgg", seed=0)
    assert all(not m.deployed for m in untouched.modules() if isinstance(m, BinaryLayer))


def test_model_size() -> None:
    small = nn.Sequential(BinaryLinear(16, 4, bias=True))
    size = model_size(small)
    assert size.full_precision_bytes == (64 + 4) * 4
    assert size.packed_bytes == 8 + 4 * 4 + 4 * 4  # bits + alpha + bias
    assert size.binary_weights == 64 and size.ratio == pytest.approx(40 / 272)

    mlp = SpikingMLP(256, 10, hidden=(512, 512))
    binarize_model(mlp, keep_first_last=False)
    size = model_size(mlp)
    print(f"model_size(SpikingMLP 256-512-512-10, all binary): {size}")
    assert size.ratio < 0.1
    load_packed(mlp, pack_binary(mlp))  # the stored alpha is counted once, not as a float32 entry as well
    assert model_size(mlp) == size


# ------------------------------------------------------------------------------------------------ fold guard


def test_fold_refuses_binary_layers() -> None:
    model = SpikingVGG(cfg=[8, 8, "A"], in_channels=1, num_classes=3, layers=LayerSpec(norm="tdbn"))
    assert binarize_model(model) == ["features.1.0.module"]
    with pytest.raises(
        ValueError, match=r"features\.1\.0.*binary-weight layer.*folding into binary weights is not supported"
    ):
        fold_model(model)
    mlp = SpikingMLP(16, 3, hidden=(8, 8))  # a bare (unwrapped) binary layer is traced through by fx
    binarize_model(mlp)
    with pytest.raises(ValueError, match=r"features\.1\.0.*binary-weight layer"):
        fold_model(mlp)
    fp = SpikingVGG(cfg=[8, 8, "A"], in_channels=1, num_classes=3, layers=LayerSpec(norm="tdbn"))
    fold_model(fp)  # the guard leaves full-precision models alone


def test_fold_traces_binary_layers_without_norms() -> None:
    torch.manual_seed(0)
    mlp = SpikingMLP(16, 3, hidden=(8, 8), layers=LayerSpec(norm="none"))
    binarize_model(mlp, keep_first_last=False)
    x = torch.rand(2, 4, 16)
    assert torch.equal(fold_model(mlp)(x), mlp.eval()(x))
