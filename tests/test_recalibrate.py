"""Re-BN / exact recalibration against pooled numpy statistics; the Chan merge against direct pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.norm.stats import PooledMoments
from spikenorm.recalibrate import recalibrate_bn

T, B, F = 5, 16, 6


def actor_like(norm: str, device: torch.device | str = "cpu") -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, F),
        build_norm(norm, F),
        LIF(decay=0.75, threshold=0.5),
        nn.Linear(F, F),
        build_norm(norm, F),
        LIF(decay=0.75, threshold=0.5),
    ).to(device, torch.float64)


def batches(m=6, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(T, B, 4, generator=g, dtype=torch.float64) * (1 + j) + j).to(device) for j in range(m)]


def test_chan_merge_equals_direct_pooling(device):
    data = [np.random.default_rng(i).normal(i, 1 + i, size=(3 + i, 7)) for i in range(5)]
    moments = PooledMoments()
    for d in data:
        moments.add(torch.from_numpy(d).to(device), dims=(0,))
    pooled = np.concatenate(data)
    np.testing.assert_allclose(moments.mean.cpu().numpy(), pooled.mean(0), rtol=1e-13)
    np.testing.assert_allclose(moments.variance(unbiased=False).cpu().numpy(), pooled.var(0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance(unbiased=True).cpu().numpy(), pooled.var(0, ddof=1), rtol=1e-12)


def _inputs_of(model, layer, data):
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    with torch.no_grad():
        for x in data:
            model(x)
    handle.remove()
    return torch.cat([c.reshape(-1, F) for c in captured]).cpu().numpy()


@pytest.mark.parametrize("norm", ["carebn", "tdbn", "bn"])
def test_exact_mode_gives_pooled_statistics_of_every_layer(norm, device):
    model = actor_like(norm, device)
    model.train()
    data = batches(device=device)
    report = recalibrate_bn(model, data)
    assert model.training and all(m.training for m in model.modules())  # flags restored
    model.eval()
    for index in (1, 4):
        layer = model[index]
        x = _inputs_of(model, layer, data)  # with upstream layers on their final statistics
        ddof = 1 if layer.running_var_unbiased else 0
        np.testing.assert_allclose(layer.running_mean.cpu().numpy(), x.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_var.cpu().numpy(), x.var(0, ddof=ddof), rtol=1e-10)
    assert set(report.layers) == {"1", "4"} and report.layers["1"].samples == len(data) * T * B
    assert report.layers["1"].stat_error > 0


def test_statistics_equal_those_of_the_concatenated_data(device):
    model = actor_like("carebn", device)
    data = batches(device=device)
    recalibrate_bn(model, data)
    concatenated = torch.cat(data, dim=1)  # one batch holding every sample
    x = model[0](concatenated).reshape(-1, F).detach().cpu().numpy()
    np.testing.assert_allclose(model[1].running_mean.cpu().numpy(), x.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model[1].running_var.cpu().numpy(), x.var(0), rtol=1e-10)


def test_single_pass_matches_exact_on_the_first_layer_only(device):
    exact, single = actor_like("carebn", device), actor_like("carebn", device)
    data = batches(device=device)
    recalibrate_bn(exact, data, mode="exact")
    recalibrate_bn(single, data, mode="single_pass")
    torch.testing.assert_close(single[1].running_mean, exact[1].running_mean, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(single[4].running_mean, exact[4].running_mean)


def test_errors():
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(actor_like("tdbn"), [])
    with pytest.raises(ValueError, match="no BN layer"):
        recalibrate_bn(nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(ValueError, match="unknown recalibration mode 'fast'; available: exact, single_pass"):
        recalibrate_bn(actor_like("tdbn"), batches(), mode="fast")


def test_float32_moments_are_accurate_to_float32_precision(device):
    """Centred float32 sums against numpy float64 pooling, on data whose mean is 300 standard deviations."""
    rng = np.random.default_rng(0)
    data = [rng.normal(3.0 + 0.01 * i, 0.01, size=(4, 8, 3, 5, 5)) for i in range(4)]
    moments = PooledMoments()
    for d in data:
        moments.add(torch.from_numpy(d).float().to(device), dims=(0, 1, 3, 4))
    pooled = np.concatenate([np.moveaxis(d.astype(np.float32).astype(np.float64), 2, -1).reshape(-1, 3) for d in data])
    np.testing.assert_allclose(moments.mean.cpu().numpy(), pooled.mean(0), rtol=1e-7)
    np.testing.assert_allclose(moments.variance(unbiased=False).cpu().numpy(), pooled.var(0), rtol=2e-6)
