"""OSR, OTS, presynaptic traces and online training against independent references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import LayerSpec, SpikingMLP, SpikingVGG
from spikenorm.neurons import LIF, stateful
from spikenorm.norm import OSR, build_norm
from spikenorm.synapse import TraceSynapse
from spikenorm.tasks import tet_loss
from spikenorm.tasks.online import online_backward

T, B, C, H, W = 4, 6, 3, 3, 3


def osr_layer(seed=0, device: torch.device | str = "cpu", **kw) -> OSR:
    """An OSR layer (float64, on ``device``) with random running statistics and a negative gamma channel."""
    torch.manual_seed(seed)
    layer = build_norm("osr", C, fallback_ratio=None, **kw).double()
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        layer.weight.uniform_(0.5, 1.5).mul_(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
        layer.bias.normal_()
    return layer.to(device)


def data(seed=1, shape=(T, B, C, H, W), device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 1.7 + 0.4).to(device)


@pytest.mark.parametrize("gamma_grad", ["paper", "code"])
def test_osr_training_forward_is_the_eval_transform_bit_for_bit(gamma_grad, device):
    layer = osr_layer(gamma_grad=gamma_grad, device=device)
    before = copy.deepcopy(layer).eval()
    x = data(device=device)
    assert torch.equal(layer(x), before(x))


def test_osr_fallback_normalises_extreme_steps_with_batch_statistics(device):
    layer = osr_layer(device=device)
    layer.fallback_ratio = 20.0
    x = data(device=device)
    x[2] *= 100.0  # step 2's std is far from the running one
    y = layer(x).detach()
    mean = x[2].mean(dim=(0, 2, 3), keepdim=True)
    var = x[2].var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gamma, beta = layer.weight.detach().reshape(C, 1, 1), layer.bias.detach().reshape(C, 1, 1)
    torch.testing.assert_close(y[2], gamma * (x[2] - mean) / torch.sqrt(var + layer.eps) + beta, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma_grad", ["paper", "code"])
def test_osr_gradients_match_equations_10_to_12(gamma_grad, device):
    layer = osr_layer(gamma_grad=gamma_grad, device=device)
    mu_hat, var_hat = layer.running_mean.cpu().numpy().copy(), layer.running_var.cpu().numpy().copy()
    gamma = layer.weight.detach().cpu().numpy().copy()
    x = data(device=device).requires_grad_(True)
    dy = data(seed=9, device=device)
    (layer(x) * dy).sum().backward()

    xn, dyn, eps = x.detach().cpu().numpy(), dy.cpu().numpy(), layer.eps
    dx = np.zeros_like(xn)
    dgamma = np.zeros(C)
    dbeta = np.zeros(C)
    for t in range(T):
        for c in range(C):
            v, g = xn[t, :, c], dyn[t, :, c]
            mu, var = v.mean(), v.var()
            sigma, sigma_hat = np.sqrt(var + eps), np.sqrt(var_hat[c] + eps)
            x_hat = (v - mu) / sigma
            r, d = sigma / sigma_hat, (mu - mu_hat[c]) / sigma_hat
            upstream = g * gamma[c] * r  # Eq. 10: BN backward of dL/dx_hat = dL/dy * gamma * r
            dx[t, :, c] = (upstream - upstream.mean() - x_hat * (upstream * x_hat).mean()) / sigma
            dgamma[c] += (g * (x_hat * (r if gamma_grad == "paper" else 1.0) + d)).sum()  # Eq. 11 (or code)
            dbeta[c] += g.sum()  # Eq. 12
    np.testing.assert_allclose(x.grad.cpu().numpy(), dx, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.weight.grad.cpu().numpy(), dgamma, rtol=1e-9)
    np.testing.assert_allclose(layer.bias.grad.cpu().numpy(), dbeta, rtol=1e-9)


def _fallback_layer_and_data(device, **kw):
    """An OSR layer with the safeguard at 20 and data whose step 2 is 100x too wide for the running statistics."""
    layer = osr_layer(device=device, **kw)
    layer.fallback_ratio = 20.0
    x = data(device=device)
    x[2] *= 100.0
    return layer, x


def test_osr_fallback_grad_exact_is_plain_batch_norm_autograd_on_the_fallback_step(device):
    layer, x = _fallback_layer_and_data(device, fallback_grad="exact")
    dy = torch.zeros_like(x)
    dy[2] = data(seed=9, shape=x[2].shape, device=device)  # only the fallback step carries a loss
    x = x.requires_grad_(True)
    (layer(x) * dy).sum().backward()

    # independent reference: torch autograd through plain batch norm of step 2 with a fresh gamma, beta
    step = x.detach()[2].clone().requires_grad_(True)
    gamma = layer.weight.detach().clone().requires_grad_(True)
    beta = layer.bias.detach().clone().requires_grad_(True)
    mean = step.mean(dim=(0, 2, 3), keepdim=True)
    var = step.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = gamma.reshape(C, 1, 1) * (step - mean) / torch.sqrt(var + layer.eps) + beta.reshape(C, 1, 1)
    (y * dy[2]).sum().backward()
    torch.testing.assert_close(x.grad[2], step.grad, rtol=1e-10, atol=1e-12)
    assert x.grad[[0, 1, 3]].abs().max() == 0  # per-step statistics: no coupling between steps
    torch.testing.assert_close(layer.weight.grad, gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, beta.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma_grad", ["paper", "code"])
def test_osr_fallback_grad_code_keeps_the_renormalised_gradient(gamma_grad, device):
    """The reference code's backward on every step, fallback or not: grad_x = (gamma / sigma_hat) (g - mean g -
    x_hat mean(g x_hat)), grad_gamma = sum g (x_hat r + d) (paper) or sum g (x_hat + d) (code), in float64."""
    layer, x = _fallback_layer_and_data(device, gamma_grad=gamma_grad, fallback_grad="code")
    exact_twin = copy.deepcopy(layer)
    exact_twin.fallback_grad = "exact"
    mu_hat, var_hat = layer.running_mean.cpu().numpy().copy(), layer.running_var.cpu().numpy().copy()
    gamma = layer.weight.detach().cpu().numpy().copy()
    dy = data(seed=9, device=device)
    x = x.requires_grad_(True)
    y = layer(x)
    (y * dy).sum().backward()
    x_exact = x.detach().clone().requires_grad_(True)
    y_exact = exact_twin(x_exact)
    (y_exact * dy).sum().backward()
    assert torch.equal(y, y_exact)  # the option changes the gradient only

    xn, dyn, eps = x.detach().cpu().numpy(), dy.cpu().numpy(), layer.eps
    dx, dgamma = np.zeros_like(xn), np.zeros(C)
    fell_back = []
    for t in range(T):
        ratio = np.sqrt(xn[t].var(axis=(0, 2, 3)) + eps) / np.sqrt(var_hat + eps)
        fell_back.append(bool(np.any(np.maximum(ratio, 1 / ratio) > 20.0)))
        for c in range(C):
            v, g = xn[t, :, c], dyn[t, :, c]
            mu, sigma, sigma_hat = v.mean(), np.sqrt(v.var() + eps), np.sqrt(var_hat[c] + eps)
            x_hat = (v - mu) / sigma
            r, d = sigma / sigma_hat, (mu - mu_hat[c]) / sigma_hat
            dx[t, :, c] = gamma[c] / sigma_hat * (g - g.mean() - x_hat * (g * x_hat).mean())
            dgamma[c] += (g * (x_hat * (r if gamma_grad == "paper" else 1.0) + d)).sum()
    assert fell_back == [False, False, True, False]
    np.testing.assert_allclose(x.grad.cpu().numpy(), dx, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(layer.weight.grad.cpu().numpy(), dgamma, rtol=1e-9)
    np.testing.assert_allclose(layer.bias.grad.cpu().numpy(), dyn.sum(axis=(0, 1, 3, 4)), rtol=1e-9)
    # on the fallback step the code's input gradient is r times the exact (plain BN) one, elsewhere equal
    r = np.sqrt(xn[2].var(axis=(0, 2, 3)) + eps) / np.sqrt(var_hat + eps)
    np.testing.assert_allclose(dx[2], x_exact.grad[2].cpu().numpy() * r.reshape(C, 1, 1), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(x.grad[[0, 1, 3]], x_exact.grad[[0, 1, 3]], rtol=1e-12, atol=1e-12)


def test_osr_fallback_grad_is_validated():
    with pytest.raises(ValueError, match="unknown fallback_grad 'paper'; available: exact, code"):
        build_norm("osr", C, fallback_grad="paper")


def test_osr_all_time_statistics_pool_all_samples_and_update_once(device):
    x = data(device=device)
    pooled_mean = x.mean(dim=(0, 1, 3, 4))
    pooled_var = x.var(dim=(0, 1, 3, 4), unbiased=False)
    for online in (False, True):
        layer = osr_layer(device=device)
        start_mean, start_var = layer.running_mean.clone(), layer.running_var.clone()
        if online:
            with stateful(layer):
                for t in range(T):
                    layer(x[t : t + 1])
                mean, var = layer.sequence_statistics()  # the all-time statistics (Eq. 15)
                torch.testing.assert_close(mean, pooled_mean, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(var, pooled_var, rtol=1e-12, atol=1e-12)
                assert int(layer.num_batches_tracked) == 0  # committed when the sequence closes
        else:
            layer(x)
        assert int(layer.num_batches_tracked) == 1
        torch.testing.assert_close(layer.running_mean, 0.9 * start_mean + 0.1 * pooled_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, 0.9 * start_var + 0.1 * pooled_var, rtol=1e-12, atol=1e-12)


def test_ots_keeps_the_standardised_threshold_quantile_constant(device):
    neuron = LIF(tau=2.0, threshold=1.0, reset="soft", detach_reset=True, ots=True).double().to(device)
    thresholds, membranes = [], []

    def spy(stabilizer, inputs, output):
        thresholds.append(float(output[0]))
        membranes.append(inputs[0].detach().clone())

    neuron.threshold_stabilizer.register_forward_hook(spy)
    neuron(data(shape=(T, 32, 8), device=device).abs())
    assert thresholds[0] == pytest.approx(1.0)  # theta_1 = theta_0
    quantiles = [(th - float(u.mean())) / float(u.std()) for th, u in zip(thresholds, membranes)]
    assert np.allclose(quantiles, quantiles[0], rtol=1e-10)
    assert len(set(np.round(thresholds, 8))) == T  # the thresholds themselves do move


def test_ots_running_threshold_is_batch_independent_and_folds_exactly(device):
    torch.manual_seed(0)
    model = SpikingMLP(
        12,
        3,
        hidden=(16,),
        layers=LayerSpec(
            norm="osr",
            norm_kwargs={"fallback_ratio": None},
            neuron_kwargs={"tau": 2.0, "reset": "soft", "detach_reset": True, "ots": True, "ots_eval": "running"},
        ),
    ).to(device, torch.float64)
    for _ in range(5):
        model(data(shape=(T, 32, 12), device=device).abs())
    model.eval()
    x = data(seed=5, shape=(T, 8, 12), device=device)
    single = torch.cat([model(x[:, i : i + 1]) for i in range(8)], dim=1)
    torch.testing.assert_close(single, model(x))  # batch size 1 gives the same answers
    report = check_equivalence(model, fold_model(model), x)
    assert report.flipped_spikes == 0 and report.max_abs_diff < 1e-9
    model.features[0][2].threshold_stabilizer.eval_mode = "dynamic"
    with pytest.raises(ValueError, match="ots_eval='dynamic'"):
        fold_model(model)


def test_osr_folds_into_weights_exactly(device):
    torch.manual_seed(0)
    model = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=4,
        layers=LayerSpec(norm="osr", neuron_kwargs={"tau": 2.0, "reset": "soft", "detach_reset": True}),
    ).to(device, torch.float64)
    model(data(shape=(T, 8, 1, 8, 8), device=device))
    model.eval()
    report = check_equivalence(model, fold_model(model), data(seed=3, shape=(T, 8, 1, 8, 8), device=device))
    assert report.flipped_spikes == 0 and report.total_spikes > 0


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm,ots,trace", [("osr", True, False), ("bn", False, False), ("none", False, True)])
def test_online_and_bptt_gradients_agree_when_the_temporal_path_is_detached(norm, ots, trace, device):
    torch.manual_seed(0)
    neuron = {"tau": 2.0, "reset": "soft", "detach_reset": True, "detach_membrane": True, "ots": ots}
    kwargs = {"fallback_ratio": None} if norm == "osr" else {}
    bptt = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=5,
        layers=LayerSpec(norm=norm, norm_kwargs=kwargs, neuron_kwargs=neuron, trace=trace),
    ).to(device, torch.float64)
    online = copy.deepcopy(bptt)
    x, y = data(shape=(T, 8, 1, 8, 8), device=device), torch.arange(8, device=device) % 5
    tet_loss(bptt(x), y).backward()  # tet is the mean over steps of per-step losses
    loss, logits = online_backward(online, x, lambda out: tet_loss(out, y) / T)
    reference, got = _grads(bptt), _grads(online)
    assert reference.keys() == got.keys() and reference
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-9, atol=1e-12, msg=k)
    if norm == "osr":
        for (name, a), b in zip(bptt.named_buffers(), online.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_trace_synapse_value_and_weight_gradient(device):
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3).to(device, torch.float64)
    synapse = TraceSynapse(layer, decay=0.5)
    spikes = (torch.rand(T, 4, 5, dtype=torch.float64) > 0.5).to(device, torch.float64).requires_grad_(True)
    out = synapse(spikes)
    torch.testing.assert_close(out, layer(spikes), rtol=0, atol=0)
    delta = torch.randn_like(out)
    (out * delta).sum().backward()
    trace = torch.zeros(4, 5, dtype=torch.float64, device=device)
    expected = torch.zeros(3, 5, dtype=torch.float64, device=device)
    for t in range(T):
        trace = 0.5 * trace + spikes[t].detach()
        expected += delta[t].T @ trace
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spikes.grad, delta @ layer.weight.detach(), rtol=1e-12, atol=1e-12)


def test_online_training_memory_does_not_keep_step_graphs():
    """Saved activations of earlier steps are freed by each step's backward."""
    model = SpikingVGG("small", in_channels=1, num_classes=5, layers=LayerSpec(norm="osr"))
    x, y = torch.randn(8, 4, 1, 8, 8), torch.arange(4)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    peaks = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):

        def step_loss(out):
            peaks.append(sum(saved))
            saved.clear()
            return tet_loss(out, y) / 8

        online_backward(model, x, step_loss)
    # the first step starts from zero state; every later step saves exactly as much: nothing accumulates
    assert len(set(peaks[1:])) == 1 and abs(peaks[0] - peaks[1]) < 0.01 * peaks[1]
