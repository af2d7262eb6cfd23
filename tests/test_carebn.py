"""CaRe-BN: pooled batch statistics, the Ca-BN filter against a float64 reference, update scoping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikenorm.norm import CaReBN, build_norm, ca_bn_updates

T, B, F = 5, 32, 4


def drifting_batches(n=12):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(T, B, F, generator=g, dtype=torch.float64) * (1 + 0.2 * j) + 0.3 * j for j in range(n)]


def reference_filter(batches, momentum=0.8, count=255.0, prior="innovation", noise="batch"):
    """The update equations of methods.md 1.3 in plain numpy float64, with spikenorm's two corrections:
    ``debiased`` subtracts the observation noise from the innovation EMA, ``noise="prior"`` evaluates that
    noise at the prior variance instead of the batch's."""
    mean, var, p_mean, p_var = np.zeros(F), np.ones(F), np.zeros(F), np.zeros(F)
    gains = []
    for x in batches:
        x = x.numpy().reshape(-1, F)
        mb, vb = x.mean(0), x.var(0)
        dm, dv = mb - mean, vb - var
        p_mean = momentum * p_mean + (1 - momentum) * dm**2
        p_var = momentum * p_var + (1 - momentum) * dv**2
        s = vb if noise == "batch" else var
        r_mean, r_var = s / count, 2 * s**2 / count
        q_mean, q_var = p_mean, p_var
        if prior == "debiased":
            q_mean, q_var = np.maximum(p_mean - r_mean, 0), np.maximum(p_var - r_var, 0)
        km = q_mean / (q_mean + r_mean)
        kv = q_var / (q_var + r_var)
        mean, var = mean + km * dm, var + kv * dv
        gains.append((km, kv))
    return mean, var, gains


@pytest.mark.parametrize(
    "sample_count, prior, noise",
    [
        (255.0, "innovation", "batch"),
        (None, "innovation", "batch"),
        (255.0, "debiased", "batch"),
        (255.0, "debiased", "prior"),
        (None, "innovation", "prior"),
    ],
)
def test_ca_bn_update_matches_reference_and_gains_are_in_unit_interval(sample_count, prior, noise):
    layer = build_norm("carebn", F, sample_count=sample_count, prior=prior, noise=noise).double()
    data = drifting_batches()
    with ca_bn_updates(layer):
        gains = []
        for x in data:
            layer(x)
            gains.append(layer.last_gains)
    mean, var, ref_gains = reference_filter(data, count=sample_count or float(T * B), prior=prior, noise=noise)
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    for (km, kv), (rkm, rkv) in zip(gains, ref_gains):
        np.testing.assert_allclose(km.numpy(), rkm, rtol=1e-12)
        np.testing.assert_allclose(kv.numpy(), rkv, rtol=1e-12)
        assert bool(((km >= 0) & (km <= 1) & (kv >= 0) & (kv <= 1)).all())
    assert int(layer.num_batches_tracked) == len(data)


def test_training_forward_uses_statistics_pooled_over_batch_and_time():
    layer = build_norm("carebn", F).double()
    x = drifting_batches(1)[0] * 2 + 1
    y = layer(x).detach().numpy()
    flat = x.numpy().reshape(-1, F)
    expected = 0.25 * (x.numpy() - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) + 0.25
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_updates_only_when_asked_and_eval_uses_running_statistics():
    layer = build_norm("carebn", F).double()
    x = drifting_batches(1)[0] + 3
    layer(x)  # training forward outside the scope: statistics untouched
    assert torch.equal(layer.running_mean, torch.zeros(F, dtype=torch.float64))
    with ca_bn_updates(layer):
        layer(x)
    assert not layer.updates_enabled and int(layer.num_batches_tracked) == 1
    layer.eval()
    one = x[:, :1]
    torch.testing.assert_close(layer(one), layer(x)[:, :1])  # inference does not depend on the batch
    scale, shift = layer.inference_affine()
    torch.testing.assert_close(layer(one), one * scale + shift)


def test_initialisation_and_validation():
    layer = CaReBN(3, v_th=0.5)
    assert torch.all(layer.weight == 0.25) and torch.all(layer.bias == 0.25)
    assert torch.all(layer.running_var == 1) and torch.all(layer.p_mean == 0)
    with pytest.raises(ValueError, match="innovation_momentum"):
        CaReBN(3, innovation_momentum=1.0)
    with pytest.raises(ValueError, match="sample_count"):
        CaReBN(3, sample_count=0)
    with pytest.raises(ValueError, match="noise"):
        CaReBN(3, noise="observed")
