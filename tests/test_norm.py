"""Norm layers: training output and running statistics against numpy float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikenorm.norm import BNTT, TDBN, NoNorm, VanillaBN, available_norms, build_norm

T, B, C, H, W = 4, 6, 3, 5, 5
EPS, MOM = 1e-5, 0.1


def sample(seed: int, shape=(T, B, C, H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # channels and steps with different scales and offsets, so pooled and per-step statistics differ
    scale = rng.uniform(0.5, 3.0, size=(shape[0], 1, shape[2]) + (1,) * (len(shape) - 3))
    shift = rng.uniform(-2.0, 2.0, size=scale.shape)
    return rng.standard_normal(shape) * scale + shift


def randomise_affine(layer, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g, dtype=layer.weight.dtype) + 0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=layer.bias.dtype))
    return layer


def channel(a: np.ndarray, ndim: int) -> np.ndarray:
    """[C] -> broadcastable against [T, B, C, *spatial]; [T, C] -> [T, 1, C, *spatial]."""
    spatial = (1,) * (ndim - 3)
    return a.reshape((a.shape[0],) + spatial) if a.ndim == 1 else a.reshape((a.shape[0], 1, a.shape[1]) + spatial)


@pytest.mark.parametrize("shape", [(T, B, C, H, W), (T, B, C)])
def test_vanilla_bn_per_step_stats_and_mean_running_update(shape, device):
    x = sample(0, shape)
    layer = randomise_affine(VanillaBN(C, eps=EPS, momentum=MOM).double(), 1).to(device)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    layer.cpu()
    axes = (1,) + tuple(range(3, x.ndim))
    n = np.prod([x.shape[a] for a in axes])
    mu_t = x.mean(axis=axes)  # [T, C]
    var_t = x.var(axis=axes)
    g, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = channel(g, x.ndim) * (x - channel(mu_t, x.ndim)) / np.sqrt(channel(var_t, x.ndim) + EPS) + channel(
        b, x.ndim
    )
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean.numpy(), (1 - MOM) * 0 + MOM * mu_t.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        layer.running_var.numpy(), (1 - MOM) * 1 + MOM * (var_t * n / (n - 1)).mean(0), rtol=1e-12
    )


@pytest.mark.parametrize("shape", [(T, B, C, H, W), (T, B, C)])
def test_tdbn_pooled_stats_with_threshold_scaling(shape, device):
    x = sample(2, shape)
    alpha, v_th = 0.7, 0.5
    layer = randomise_affine(TDBN(C, alpha=alpha, v_th=v_th, eps=EPS, momentum=MOM).double(), 3).to(device)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    layer.cpu()
    axes = (0, 1) + tuple(range(3, x.ndim))
    n = np.prod([x.shape[a] for a in axes])
    mu, var = x.mean(axis=axes), x.var(axis=axes)
    g, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = channel(g, x.ndim) * alpha * v_th * (x - channel(mu, x.ndim)) / np.sqrt(
        channel(var, x.ndim) + EPS
    ) + channel(b, x.ndim)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean.numpy(), MOM * mu, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), (1 - MOM) + MOM * var * n / (n - 1), rtol=1e-12)
    np.testing.assert_allclose(layer.effective_weight.detach().numpy(), g * alpha * v_th)


@pytest.mark.parametrize("bias", [False, True])
def test_bntt_per_step_stats_and_per_step_affine(bias, device):
    x = sample(4)
    layer = randomise_affine(BNTT(C, time_steps=T, bias=bias, eps=EPS, momentum=MOM).double(), 5).to(device)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    layer.cpu()
    axes = (1, 3, 4)
    n = B * H * W
    mu_t, var_t = x.mean(axis=axes), x.var(axis=axes)
    g = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy() if bias else np.zeros_like(g)
    expected = channel(g, 5) * (x - channel(mu_t, 5)) / np.sqrt(channel(var_t, 5) + EPS) + channel(b, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean.numpy(), MOM * mu_t, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), (1 - MOM) + MOM * var_t * n / (n - 1), rtol=1e-12)
    assert layer.weight.shape == (T, C)


def test_bntt_refuses_one_value_per_channel_and_step_in_training():
    """A batch of 1 without spatial axes has zero variance per step: the output would be beta everywhere."""
    layer = BNTT(C, time_steps=T, bias=True)
    before = layer.running_mean.clone()
    with pytest.raises(
        ValueError,
        match=r"needs more than 1 value per channel per step.*shape \(4, 1, 3\).*"
        r"batch size >= 2 in training.*drop_last=True",
    ):
        layer(torch.randn(T, 1, C))
    assert torch.equal(layer.running_mean, before) and int(layer.num_batches_tracked) == 0  # nothing updated
    elementwise = BNTT(C, time_steps=T, feature_shape=(C, H, W))  # statistics per element: over the batch only
    with pytest.raises(ValueError, match="more than 1 value per feature per step"):
        elementwise(torch.randn(T, 1, C, H, W))
    layer.eval()
    assert layer(torch.randn(T, 1, C)).shape == (T, 1, C)  # running statistics: a batch of 1 is fine


def test_per_step_bn_refuses_one_value_per_channel_and_step_in_training():
    """``bn`` also normalizes each step over the batch: the same zero-variance input is refused."""
    layer = build_norm("bn", C)
    with pytest.raises(ValueError, match=r"bn normalizes each time step.*shape \(4, 1, 3\)"):
        layer(torch.randn(T, 1, C))
    assert int(layer.num_batches_tracked) == 0
    assert layer(torch.randn(T, 1, C, H, W)).shape == (T, 1, C, H, W)  # H x W values per channel and step


def test_bntt_batch_of_one_with_spatial_axes_trains(device):
    """As torch's batch norm: with H x W positions per channel, one sample gives H * W > 1 values."""
    x = sample(7, (T, 1, C, H, W))
    layer = BNTT(C, time_steps=T).double().to(device)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    mu_t, var_t = x.mean(axis=(1, 3, 4)), x.var(axis=(1, 3, 4))
    np.testing.assert_allclose(y, (x - channel(mu_t, 5)) / np.sqrt(channel(var_t, 5) + EPS), rtol=1e-10, atol=1e-10)
    assert np.abs(y).max() > 0.5


@pytest.mark.parametrize("name", ["bn", "tdbn", "bntt"])
def test_eval_uses_running_statistics(name, device):
    kwargs = {"time_steps": T} if name == "bntt" else {}
    layer = randomise_affine(build_norm(name, C, **kwargs).double(), 6).to(device)
    for seed in range(3):  # a few training batches move the running estimate
        layer(torch.from_numpy(sample(seed)).to(device))
    layer.eval()
    x = sample(10)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    layer.cpu()
    mean, var = layer.running_mean.numpy(), layer.running_var.numpy()
    gain = (layer.effective_weight if name == "tdbn" else layer.weight).detach().numpy()
    b = layer.bias.detach().numpy() if layer.bias is not None else 0.0
    b = channel(np.broadcast_to(b, mean.shape).copy(), 5)
    expected = channel(gain, 5) * (x - channel(mean, 5)) / np.sqrt(channel(var, 5) + EPS) + b
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    assert int(layer.num_batches_tracked) == 3


def test_gradient_flows_through_batch_statistics(device):
    torch.manual_seed(0)
    x = torch.randn(T, B, C, dtype=torch.float64).to(device).requires_grad_(True)
    layer = TDBN(C).double().to(device)
    # the sum of a normalised (affine-free) channel is constant, so its gradient must vanish exactly
    with torch.no_grad():
        layer.weight.fill_(1.0)
    layer(x).sum().backward()
    assert x.grad.abs().max() < 1e-10
    assert torch.autograd.gradcheck(lambda z: TDBN(C).double().to(device)(z), (x.detach().requires_grad_(),))


def test_registry_and_errors():
    assert {"bn", "bntt", "mpbn", "none", "osr", "tdbn"} <= set(available_norms())
    assert available_norms() == sorted(available_norms())
    with pytest.raises(ValueError, match=f"unknown norm 'mpbnx'; available: {', '.join(available_norms())}"):
        build_norm("mpbnx", 4)
    with pytest.raises(ValueError, match=r"BNTT keeps parameters for each time step, so it needs time_steps"):
        build_norm("bntt", 4)(torch.randn(T, B, 4))
    with pytest.raises(ValueError, match=r"\[T, B, C, \.\.\.\] with C=3"):
        build_norm("tdbn", 3)(torch.randn(B, 3, H, W))  # time axis missing
    with pytest.raises(ValueError, match="rank >= 3"):
        build_norm("bn", 3)(torch.randn(B, 3))
    with pytest.raises(ValueError, match="built for T=4 steps but got input"):
        build_norm("bntt", 3, time_steps=4)(torch.randn(5, B, 3))
    x = torch.randn(T, B, 3)
    assert build_norm("none", 3)(x) is x
    assert isinstance(build_norm("none", 3), NoNorm)


def test_fold_targets_declared():
    assert (VanillaBN.fold_target, TDBN.fold_target, BNTT.fold_target, NoNorm.fold_target) == (
        "weights",
        "weights",
        "unfoldable",
        "identity",
    )


@pytest.mark.parametrize("elementwise", [False, True])
def test_mpbn_inside_a_neuron_matches_per_step_reference(elementwise, device):
    """MPBN normalises each step's membrane with that step's batch statistics (per channel, or per neuron)
    and receives one EMA update per step, as the reference code's per-step BatchNorm2d calls do."""
    from spikenorm.neurons import LIF

    x = sample(7)
    shape = (C, H, W) if elementwise else None
    norm = randomise_affine(build_norm("mpbn", C, feature_shape=shape).double(), 8)
    neuron = LIF(decay=0.25, threshold=0.5, membrane_norm=norm).double().to(device)
    spikes = neuron(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    norm.cpu()

    axes = (0,) if elementwise else (0, 2, 3)  # of one step [B, C, H, W]
    g = norm.weight.detach().numpy().reshape((C, H, W) if elementwise else (C, 1, 1))
    b = norm.bias.detach().numpy().reshape(g.shape)
    n = B if elementwise else B * H * W
    m_prev = np.zeros(x.shape[1:])
    run_mean, run_var = np.zeros(g.shape), np.ones(g.shape)
    for t in range(T):
        m = 0.25 * m_prev + x[t]
        mu, var = m.mean(axis=axes, keepdims=True)[0], m.var(axis=axes, keepdims=True)[0]
        u = g * (m - mu) / np.sqrt(var + EPS) + b
        s = (u > 0.5).astype(float)
        np.testing.assert_array_equal(spikes[t], s)
        m_prev = m * (1 - s)
        run_mean = (1 - MOM) * run_mean + MOM * mu
        run_var = (1 - MOM) * run_var + MOM * var * n / (n - 1)
    np.testing.assert_allclose(norm.running_mean.numpy().reshape(g.shape), run_mean, rtol=1e-10)
    np.testing.assert_allclose(norm.running_var.numpy().reshape(g.shape), run_var, rtol=1e-10)
    assert int(norm.num_batches_tracked) == T


def test_soft_reset_with_membrane_norm_is_refused():
    from spikenorm.neurons import LIF

    with pytest.raises(ValueError, match="soft reset with a membrane norm"):
        LIF(reset="soft", membrane_norm=build_norm("mpbn", 3))


@pytest.mark.parametrize("name, steps", [("tdbn", 3), ("bn", 1), ("mpbn", 1)])
def test_torch_batch_norm_path_equals_the_reference_ops(name, steps, monkeypatch, device):
    """The fused F.batch_norm training path gives the reference path's outputs, gradients and running stats."""
    from spikenorm.norm.base import TimeMajorNorm

    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        layer = build_norm(name, 4).double().train().to(device)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
        assert layer.uses_torch_batch_norm(torch.zeros(steps, 2, 4, 3, 3, dtype=torch.float64, device=device))
        if not fused:
            monkeypatch.setattr(type(layer), "uses_torch_batch_norm", TimeMajorNorm.uses_torch_batch_norm)
        x = (torch.randn(steps, 5, 4, 3, 3, dtype=torch.float64) * 2 + 1).to(device).requires_grad_(True)
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)).sum().backward()
        results.append(
            (
                y.detach(),
                x.grad,
                layer.weight.grad,
                layer.running_mean.clone(),
                layer.running_var.clone(),
                int(layer.num_batches_tracked),
            )
        )
        monkeypatch.undo()
    for a, b in zip(*results):
        if isinstance(a, int):
            assert a == b == 1
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
