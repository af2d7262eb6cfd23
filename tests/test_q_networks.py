"""Q-networks for discrete control: the DSQN of the CaRe-BN reference code (``discrete_control/dsqn_carebn.py``)
against explicit float64 loops of its equations (forward, gradients, Ca-BN, Re-BN) and the ANN baseline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from spikenorm.fold import check_equivalence, fold_model, load_folded, save_folded
from spikenorm.models import DSQN_LAYERS, MLPQNetwork, SpikingQNetwork
from spikenorm.neurons import CLIF, spiking_neurons
from spikenorm.norm import CaReBN, NoNorm, TimeMajorNorm
from spikenorm.norm.carebn import ca_bn_updates
from spikenorm.recalibrate import recalibrate_bn
from spikenorm.surrogate import Rectangle
from spikenorm.time_steps import bind_time_steps

T, EPS, VTH, VDECAY = 5, 1e-5, 0.5, 0.75


# --- the reference code's equations, written out in float64 --------------------------------------------


class RectSpike(torch.autograd.Function):
    """``s = 1[v > 0.5]``; backward ``ds/dv = 1[|v - 0.5| < 0.5]`` (the reference's ``SG = "rect"``)."""

    @staticmethod
    def forward(ctx, v: Tensor) -> Tensor:
        ctx.save_for_backward(v)
        return (v > VTH).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (v,) = ctx.saved_tensors
        return grad * ((v - VTH).abs() < 0.5).to(grad.dtype)


def running_merge(steps: list[Tensor], start: int = 0, mean=None, var=None) -> tuple[Tensor, Tensor]:
    """The reference's per-step Chan merge (``batch_norm_update`` with n1 = start + t, n2 = 1), with autograd."""
    mean = torch.zeros(steps[0].shape[1:], dtype=steps[0].dtype) if mean is None else mean
    var = torch.zeros_like(mean) if var is None else var
    for t, x in enumerate(steps):
        n1, n2 = float(start + t), 1.0
        mu_t = x.mean(0)
        var_t = ((x - mu_t) ** 2).mean(0)
        var = n1 / (n1 + n2) * var + n2 / (n1 + n2) * var_t + n1 * n2 / (n1 + n2) ** 2 * (mean - mu_t) ** 2
        mean = n1 / (n1 + n2) * mean + n2 / (n1 + n2) * mu_t
    return mean, var


class RefState:
    """One BN layer of the reference: running (moving) statistics, innovation variances, Re-BN accumulators."""

    def __init__(self, width: int) -> None:
        z = torch.zeros(width, dtype=torch.float64)
        self.mean, self.var, self.p_mean, self.p_var = z.clone(), z + 1, z.clone(), z.clone()
        self.temp_mean, self.temp_var = z.clone(), z.clone()

    def ca_bn(self, mu_b: Tensor, var_b: Tensor) -> None:
        """The reference's ``update=True`` branch: P updated before K, R at the batch variance over 255."""
        mu_b, var_b = mu_b.detach(), var_b.detach()
        d_mean, d_var = mu_b - self.mean, var_b - self.var
        r_mean, r_var = var_b / 255, 2 * var_b**2 / 255
        self.p_mean = 0.8 * self.p_mean + 0.2 * d_mean**2
        self.p_var = 0.8 * self.p_var + 0.2 * d_var**2
        self.mean = self.mean + self.p_mean / (self.p_mean + r_mean) * d_mean
        self.var = self.var + self.p_var / (self.p_var + r_var) * d_var


def reference_q(
    params: dict[str, Tensor], obs: Tensor, states: list[RefState], mode: str, recal: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Q-values and last-layer spikes of the reference network; ``mode``: "batch" (training statistics), "update"
    (training statistics plus a Ca-BN update), "running" (inference) or "recal" (Re-BN batch ``recal[0]`` of
    ``recal[1]``)."""
    inputs = [obs] * T  # direct encoding: the observation at every step
    for layer, state in enumerate(states):
        w, gamma, beta = params[f"w{layer}"], params[f"gamma{layer}"], params[f"beta{layer}"]
        xs = [x @ w.T for x in inputs]
        if mode in ("batch", "update"):
            mean, var = running_merge(xs)
            if mode == "update":
                state.ca_bn(mean, var)
        elif mode == "running":
            mean, var = state.mean, state.var
        else:
            k, total = recal
            with torch.no_grad():
                if k == 0:
                    state.temp_mean, state.temp_var = torch.zeros_like(state.mean), torch.zeros_like(state.var)
                state.temp_mean, state.temp_var = running_merge(xs, k * T, state.temp_mean, state.temp_var)
                if k == total - 1:
                    state.mean, state.var = state.temp_mean.clone(), state.temp_var.clone()
            mean, var = state.temp_mean, state.temp_var
        c = v = s = torch.zeros_like(xs[0])
        spikes = []
        for x in xs:
            y = gamma * (x - mean) / torch.sqrt(var + EPS) + beta
            c = c * 0.0 + y
            v = v * (1 - s) * VDECAY + c
            s = RectSpike.apply(v)
            spikes.append(s)
        inputs = spikes
    count = torch.stack(inputs).sum(0)
    return count @ params["w_out"].T + params["b_out"], torch.stack(inputs)


def reference_params(net: SpikingQNetwork) -> dict[str, Tensor]:
    """Leaf float64 copies of the network's parameters under the reference's names."""
    params = {}
    for i, block in enumerate(net.snn):
        params[f"w{i}"] = block[0].weight
        params[f"gamma{i}"] = block[1].weight
        params[f"beta{i}"] = block[1].bias
    params["w_out"], params["b_out"] = net.head.weight, net.head.bias
    return {k: p.detach().clone().double().requires_grad_(True) for k, p in params.items()}


def network_grads(net: SpikingQNetwork) -> dict[str, Tensor]:
    grads = {}
    for i, block in enumerate(net.snn):
        grads[f"w{i}"], grads[f"gamma{i}"], grads[f"beta{i}"] = (
            block[0].weight.grad,
            block[1].weight.grad,
            block[1].bias.grad,
        )
    grads["w_out"], grads["b_out"] = net.head.weight.grad, net.head.bias.grad
    return grads


def small_dsqn(obs_dim: int = 12, hidden=(32, 24), seed: int = 0, **kwargs) -> SpikingQNetwork:
    torch.manual_seed(seed)
    return SpikingQNetwork(obs_dim, 4, hidden=hidden, **kwargs).double()


def assert_close(actual: Tensor, expected: Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# --- (1) forward and backward against the reference -------------------------------------------------------


@pytest.mark.parametrize("mode", ["update", "running"])
def test_dsqn_forward_and_gradients_match_the_reference_loop(mode):
    net = small_dsqn()
    states = [RefState(n.num_features) for n in net.norm_layers()]
    if mode == "running":  # non-trivial inference statistics, in both
        gen = torch.Generator().manual_seed(1)
        for norm, state in zip(net.norm_layers(), states):
            state.mean = torch.rand(norm.num_features, generator=gen, dtype=torch.float64) - 0.5
            state.var = torch.rand(norm.num_features, generator=gen, dtype=torch.float64) * 4 + 0.5
            norm.running_mean.copy_(state.mean)
            norm.running_var.copy_(state.var)
    params = reference_params(net)
    obs = torch.randn(64, 12, dtype=torch.float64) * 2 + 0.3
    weights = torch.randn(64, 4, dtype=torch.float64)

    net.train(mode == "update")
    with ca_bn_updates(net):
        q = net(obs)
        spikes = net.output_spikes(obs) if mode == "running" else None
    q_ref, spikes_ref = reference_q(params, obs, states, mode)
    assert_close(q, q_ref, 1e-12)
    assert 0.05 < float(spikes_ref.detach().mean()) < 0.95  # the comparison is not vacuous
    if spikes is not None:
        assert torch.equal(spikes, spikes_ref)
    (q * weights).sum().backward()
    (q_ref * weights).sum().backward()
    grads = network_grads(net)
    for name, p in params.items():
        assert float(p.grad.abs().max()) > 0, name
        assert_close(grads[name], p.grad, 1e-10)
    if mode == "update":  # the one Ca-BN update of this forward
        for norm, state in zip(net.norm_layers(), states):
            assert_close(norm.running_mean, state.mean, 1e-12)
            assert_close(norm.running_var, state.var, 1e-12)


def test_dsqn_default_layers_are_the_reference_neuron_and_norm():
    net = SpikingQNetwork(128, 6)
    assert (net.obs_dim, net.num_actions, net.time_steps) == (128, 6, 5)
    neurons = [n for _, n in spiking_neurons(net)]
    assert len(neurons) == 2 and all(isinstance(n, CLIF) for n in neurons)
    assert all(n.current_decay == 0 and n.decay == 0.75 and float(n.threshold) == 0.5 for n in neurons)
    assert all(n.reset == "hard" and not n.detach_reset for n in neurons)
    assert all(isinstance(n.surrogate, Rectangle) and n.surrogate.width == 1 for n in neurons)
    norms = net.norm_layers()
    assert norms == [m for m in net.modules() if isinstance(m, TimeMajorNorm)]
    assert all(isinstance(n, CaReBN) and n.num_features == 128 for n in norms)
    assert all(torch.all(n.weight == 0.25) and torch.all(n.bias == 0.25) for n in norms)
    assert all(torch.all(n.running_mean == 0) and torch.all(n.running_var == 1) for n in norms)
    assert all(block[0].bias is None for block in net.snn)
    assert (net.head.in_features, net.head.out_features) == (128, 6) and net.head.bias is not None
    assert "time_steps=5" in repr(net)


# --- (2) the discrete Ca-BN over successive updates --------------------------------------------------------


def test_discrete_ca_bn_matches_the_reference_over_successive_updates():
    net = small_dsqn(obs_dim=16, hidden=(32, 32)).train()
    states = [RefState(n.num_features) for n in net.norm_layers()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(2)
    for step in range(20):  # drifting inputs: the mean and scale move every update
        obs = torch.randn(128, 16, generator=gen, dtype=torch.float64) * (1 + 0.1 * step) + 0.05 * step
        params = reference_params(net)
        with ca_bn_updates(net):
            q = net(obs)
        q_ref, _ = reference_q(params, obs, states, "update")
        assert_close(q, q_ref, 1e-12)
        optimizer.zero_grad()
        q.pow(2).mean().backward()
        optimizer.step()
    for norm, state in zip(net.norm_layers(), states):
        assert_close(norm.running_mean, state.mean, 1e-12)
        assert_close(norm.running_var, state.var, 1e-12)
        assert_close(norm.p_mean, state.p_mean, 1e-12)
        assert_close(norm.p_var, state.p_var, 1e-12)
        assert float((norm.running_mean - 0).abs().max()) > 0.1  # the statistics really moved


# --- Re-BN: recalibrate_bn(mode="single_pass") against the reference's re-calibration ------------------


@pytest.mark.parametrize("time_steps", [None, T])
def test_single_pass_recalibration_is_the_reference_re_bn(time_steps):
    net = small_dsqn()
    states = [RefState(n.num_features) for n in net.norm_layers()]
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 12, generator=gen, dtype=torch.float64) * 2 + 0.5 for _ in range(5)]
    params = reference_params(net)
    with torch.no_grad():
        for k, obs in enumerate(batches):
            reference_q(params, obs, states, "recal", (k, len(batches)))
    recalibrate_bn(net, batches, mode="single_pass", time_steps=time_steps)
    for norm, state in zip(net.norm_layers(), states):
        assert_close(norm.running_mean, state.mean, 1e-12)
        assert_close(norm.running_var, state.var, 1e-12)  # biased, as the reference
    # the default mode ("exact", layer by layer on final upstream statistics) differs from the reference
    exact = small_dsqn()
    recalibrate_bn(exact, batches)
    last = exact.norm_layers()[-1]
    assert not torch.allclose(last.running_var, states[-1].var, rtol=1e-6, atol=1e-6)


# --- (3) the ANN baseline, inputs and errors --------------------------------------------------------------


def test_mlp_q_network_shapes_and_inputs():
    torch.manual_seed(0)
    net = MLPQNetwork(128, 6)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 128), (128, 128), (128, 6)]
    ram = torch.randint(0, 256, (7, 128), dtype=torch.uint8)
    assert net(ram).shape == (7, 6) and net(ram).dtype == torch.float32
    assert torch.equal(net(ram), net(ram.float()))
    scaled = MLPQNetwork(128, 6, hidden=(16,), input_scale=1 / 255)
    assert torch.allclose(scaled(ram), scaled.net(ram.float() / 255))
    assert "input_scale" in repr(scaled) and "num_actions=6" in repr(net)


def test_spiking_q_network_takes_uint8_and_scales_input():
    net = small_dsqn(obs_dim=128, hidden=(16,), input_scale=1 / 255).eval()
    ram = torch.randint(0, 256, (5, 128), dtype=torch.uint8)
    q = net(ram)
    assert q.shape == (5, 4) and q.dtype == torch.float64
    assert torch.equal(q, net(ram.double()))
    assert torch.equal(net.output_spikes(ram), net.snn((ram.double() / 255).expand(T, 5, 128)))
    assert net.output_spikes(ram).shape == (T, 5, 16)
    assert torch.equal(net(ram[:1]), q[:1])  # eval: batch-independent, no state carried between calls


def test_q_networks_refuse_bad_inputs_and_settings():
    net, mlp = SpikingQNetwork(6, 3, hidden=(8,)), MLPQNetwork(6, 3, hidden=(8,))
    for model in (net, mlp):
        with pytest.raises(ValueError, match=r"\[B, 6\].*unsqueeze"):
            model(torch.randn(6))
        with pytest.raises(ValueError, match=r"\[B, 6\]"):
            model(torch.randn(4, 7))
        with pytest.raises(ValueError, match="encodes time itself"):
            model(torch.randn(T, 4, 6))
    with pytest.raises(ValueError, match="T=5"):
        net.receive_time_steps(4)
    net.receive_time_steps(5)
    assert bind_time_steps(net, 5) is not None
    with pytest.raises(ValueError, match="T=5"):
        bind_time_steps(net, 4)
    with pytest.raises(ValueError, match="layers.time_steps=4"):
        SpikingQNetwork(6, 3, layers=replace(DSQN_LAYERS, time_steps=4))
    with pytest.raises(ValueError, match="binary_weights"):
        SpikingQNetwork(6, 3, layers=replace(DSQN_LAYERS, binary_weights=True))
    with pytest.raises(ValueError, match="shortcuts"):
        SpikingQNetwork(6, 3, layers=replace(DSQN_LAYERS, shortcuts="per_layer"))
    with pytest.raises(ValueError, match="time_steps"):
        SpikingQNetwork(6, 3, time_steps=0)
    with pytest.raises(ValueError, match="input_scale"):
        SpikingQNetwork(6, 3, input_scale=0.0)
    with pytest.raises(ValueError, match="input_scale"):
        MLPQNetwork(6, 3, input_scale=float("nan"))
    with pytest.raises(ValueError, match=">= 1"):
        SpikingQNetwork(6, 0)
    with pytest.raises(ValueError, match="hidden"):
        MLPQNetwork(6, 3, hidden=())
    with pytest.raises(TypeError, match="LayerSpec"):
        SpikingQNetwork(6, 3, layers={"norm": "bn"})


def test_spiking_q_network_folds_exactly(tmp_path):
    net = small_dsqn().float()
    for norm in net.norm_layers():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    net.eval()
    folded = fold_model(net)
    assert not any(isinstance(m, TimeMajorNorm) for m in folded.modules())
    report = check_equivalence(net, folded, torch.randn(32, 12) * 2, dtype=torch.float64)
    assert report.max_abs_diff < 1e-9
    assert all(layer.flipped == 0 for layer in report.layers.values())
    ram = torch.randint(0, 256, (3, 12), dtype=torch.uint8)  # the cast survives a folded file
    assert torch.equal(load_folded(save_folded(folded, tmp_path / "q.pt"))(ram), folded(ram))


# --- (4) every norm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "bn", "tdbn", "carebn"])
def test_every_norm_trains(norm):
    torch.manual_seed(0)
    net = SpikingQNetwork(6, 3, hidden=(16, 16), layers=replace(DSQN_LAYERS, norm=norm)).train()
    if norm == "none":
        assert all(isinstance(n, NoNorm) for n in net.norm_layers())
        assert all(block[0].bias is not None for block in net.snn)
    q = net(torch.randn(32, 6))
    assert q.shape == (32, 3)
    (q * torch.randn(32, 3)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    net.eval()
    assert net(torch.randn(2, 6)).shape == (2, 3)
