"""RL models: the population-coded spiking actor of CaRe-BN (methods.md 1.2) and the ANN critics."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import POPSAN_LAYERS, DDPGCritic, PopSANActor, PopulationDecoder, PopulationEncoder, TwinQCritic
from spikenorm.models.rl import regular_spike_train
from spikenorm.neurons import CLIF, LIF, spiking_neurons
from spikenorm.norm import TDBN, CaReBN, NoNorm, TimeMajorNorm
from spikenorm.surrogate import Rectangle

OBS, ACT = 5, 3


def small_actor(**kwargs) -> PopSANActor:
    kwargs.setdefault("max_action", 2.0)
    kwargs.setdefault("hidden", (32, 32))
    return PopSANActor(OBS, ACT, **kwargs)


def reference_spikes(act: list[float], time_steps: int, threshold: float = 0.999) -> list[list[float]]:
    """Hand-written regular spike generator, one element at a time."""
    out = []
    for a in act:
        v, train = 0.0, []
        for _ in range(time_steps):
            v += a
            s = 1.0 if v > threshold else 0.0
            v -= threshold * s
            train.append(s)
        out.append(train)
    return out


# --- encoder -----------------------------------------------------------------------------------------


def test_regular_spike_train_matches_hand_loop():
    assert regular_spike_train(torch.tensor([[0.5]], dtype=torch.float64), 5)[:, 0, 0].tolist() == [0, 1, 0, 1, 0]
    assert regular_spike_train(torch.tensor([[1.0]]), 5)[:, 0, 0].tolist() == [1] * 5
    assert regular_spike_train(torch.tensor([[0.0]]), 5).sum() == 0
    torch.manual_seed(0)
    act = torch.rand(1, 200, dtype=torch.float64)
    for T in (1, 5, 8):
        spikes = regular_spike_train(act, T)
        assert spikes.shape == (T, 1, 200)
        expected = torch.tensor(reference_spikes(act[0].tolist(), T), dtype=torch.float64).T
        assert torch.equal(spikes[:, 0], expected)
        # away from the ties, the count is the floor of the accumulated input over the threshold
        ratio = T * act[0] / 0.999
        clear = (ratio - ratio.round()).abs() > 1e-6
        assert torch.equal(spikes[:, 0].sum(0)[clear], ratio.floor()[clear])


def test_regular_spike_train_gradient_is_straight_through():
    act = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    T, theta = 5, 0.999
    spikes = regular_spike_train(act, T, theta)
    for t in range(T):
        (grad,) = torch.autograd.grad(spikes[t].sum(), act, retain_graph=True)
        # ds_t/dv_t = 1; the reset is not detached (reference code), so ds_t/da = sum_{k<t+1} (1-theta)^k
        expected = sum((1 - theta) ** k for k in range(t + 1))
        assert torch.allclose(grad, torch.full_like(grad, expected))
        assert grad.min() == pytest.approx(1.0, rel=2e-3)


def test_encoder_receptive_fields_and_initialisation():
    enc = PopulationEncoder(OBS, pop_dim=4, mean_range=(-1, 1), std=0.3, time_steps=6)
    assert enc.mean.shape == enc.std.shape == (OBS, 4)
    assert isinstance(enc.mean, torch.nn.Parameter) and isinstance(enc.std, torch.nn.Parameter)
    assert torch.allclose(enc.mean[2], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    assert torch.allclose(enc.std, torch.full((OBS, 4), 0.3))
    default = PopulationEncoder(OBS)
    assert default.pop_dim == 10 and default.time_steps == 5
    assert torch.allclose(default.std, torch.full((OBS, 10), math.sqrt(0.05)))
    torch.manual_seed(1)
    obs = torch.randn(7, OBS) * 2
    act = enc.activation(obs)
    o = torch.tanh(obs)
    for i in range(OBS):
        for j in range(4):
            expected = torch.exp(-0.5 * (o[:, i] - enc.mean[i, j]) ** 2 / enc.std[i, j] ** 2)
            assert torch.allclose(act[:, i * 4 + j], expected)
    spikes = enc(obs)
    assert spikes.shape == (6, 7, OBS * 4)
    assert torch.equal(spikes, regular_spike_train(act, 6))


def test_gradient_reaches_encoder_means_and_stds():
    torch.manual_seed(0)
    actor = small_actor()
    actor.train()
    actor(torch.randn(16, OBS)).pow(2).sum().backward()
    for p in (actor.encoder.mean, actor.encoder.std):
        assert p.grad is not None and p.grad.abs().sum() > 0


# --- decoder -----------------------------------------------------------------------------------------


def test_decoder_is_a_weighted_sum_of_rates_per_action():
    dec = PopulationDecoder(ACT, pop_dim=4)
    spikes = (torch.rand(5, 2, ACT * 4) > 0.5).float()
    out = dec(spikes)
    assert out.shape == (2, ACT)
    rate = spikes.mean(0).reshape(2, ACT, 4)
    w, b = dec.decoder.weight[:, 0, :], dec.decoder.bias  # [ACT, 4], [ACT]
    assert torch.allclose(out, (rate * w).sum(-1) + b, atol=1e-6)
    with pytest.raises(ValueError, match=r"C=12"):
        dec(torch.rand(5, 2, 10))


# --- actor -------------------------------------------------------------------------------------------


def test_actor_shapes_bounds_and_defaults():
    torch.manual_seed(0)
    actor = PopSANActor(OBS, ACT, max_action=[0.5, 1.0, 3.0])
    assert actor.max_action.tolist() == [0.5, 1.0, 3.0] and "max_action" in dict(actor.named_buffers())
    assert actor.encoder.time_steps == 5 and actor.pop_dim == 10
    neurons = [n for _, n in spiking_neurons(actor)]
    assert len(neurons) == 3 and all(isinstance(n, CLIF) for n in neurons)
    assert all(float(n.threshold) == 0.5 and n.decay == 0.75 and n.current_decay == 0.5 for n in neurons)
    assert all(n.reset == "hard" and isinstance(n.surrogate, Rectangle) and n.surrogate.width == 1 for n in neurons)
    for mode in (True, False):
        actor.train(mode)
        act = actor(torch.randn(64, OBS) * 5)
        assert act.shape == (64, ACT)
        assert (act.abs() <= actor.max_action).all()
    assert actor(torch.randn(1, OBS)).shape == (1, ACT)


def test_actor_has_three_norm_layers_of_the_right_widths():
    actor = PopSANActor(OBS, ACT, max_action=1.0)  # default hidden (256, 256), pop_dim 10
    norms = [m for m in actor.modules() if isinstance(m, TimeMajorNorm)]
    assert len(norms) == 3 and norms == actor.norm_layers()
    assert all(isinstance(n, CaReBN) for n in norms)
    assert [n.num_features for n in norms] == [256, 256, ACT * 10]
    assert all(torch.allclose(n.weight, torch.full_like(n.weight, 0.25)) for n in norms)  # gamma = v_th / 2
    assert all(torch.allclose(n.bias, torch.full_like(n.bias, 0.25)) for n in norms)
    linears = [m for m in actor.snn.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(layer.in_features, layer.out_features) for layer in linears]
    assert shapes == [(OBS * 10, 256), (256, 256), (256, ACT * 10)]
    assert all(layer.bias is None for layer in linears)  # cancelled by the norm


@pytest.mark.parametrize("norm", ["carebn", "bn", "tdbn", "tebn", "tab", "none"])
@pytest.mark.parametrize("neuron", ["clif", "lif"])
def test_actor_every_parameter_gets_a_gradient_in_train_mode(norm, neuron):
    torch.manual_seed(0)
    actor = small_actor(layers=replace(POPSAN_LAYERS, norm=norm, neuron=neuron)).train()
    obs = torch.randn(32, OBS)
    weights = torch.randn(32, ACT)
    (actor(obs) * weights).sum().backward()
    for name, p in actor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_actor_norm_and_neuron_options():
    lif = small_actor(layers=replace(POPSAN_LAYERS, norm="tdbn", neuron="lif"))
    neurons = [n for _, n in spiking_neurons(lif)]
    assert all(isinstance(n, LIF) and n.decay == 0.75 and float(n.threshold) == 0.5 for n in neurons)
    assert all(isinstance(n, TDBN) and n.v_th == 0.5 for n in lif.norm_layers())
    custom = small_actor(
        layers=replace(POPSAN_LAYERS, norm_kwargs={"innovation_momentum": 0.5}, neuron_kwargs={"threshold": 0.8})
    )
    assert all(n.innovation_momentum == 0.5 for n in custom.norm_layers())
    assert all(torch.allclose(n.weight, torch.full_like(n.weight, 0.4)) for n in custom.norm_layers())
    plain = small_actor(layers=replace(POPSAN_LAYERS, norm="none"))
    assert all(isinstance(n, NoNorm) for n in plain.norm_layers())
    assert all(m.bias is not None for m in plain.snn.modules() if isinstance(m, torch.nn.Linear))
    bntt = small_actor(layers=replace(POPSAN_LAYERS, norm="bntt"), time_steps=4)
    assert bntt(torch.randn(3, OBS)).shape == (3, ACT)


def test_carebn_inference_is_batch_independent():
    torch.manual_seed(0)
    actor = small_actor(max_action=[1.0, 2.0, 0.5]).double()
    for norm in actor.norm_layers():  # non-trivial inference statistics
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    actor.eval()
    obs = torch.randn(16, OBS, dtype=torch.float64)
    with torch.no_grad():
        batch = actor(obs)
        singles = torch.cat([actor(obs[i : i + 1]) for i in range(16)])
        again = actor(obs)
    assert torch.allclose(batch, singles, atol=1e-12)
    assert torch.equal(batch, again)  # no neuron state carried between calls


def test_carebn_train_forward_leaves_running_stats_alone():
    actor = small_actor().train()
    before = [n.running_mean.clone() for n in actor.norm_layers()]
    actor(torch.randn(8, OBS))
    assert all(torch.equal(b, n.running_mean) for b, n in zip(before, actor.norm_layers()))


def test_actor_folds_exactly_for_deployment():
    torch.manual_seed(0)
    actor = small_actor()
    for norm in actor.norm_layers():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    actor.eval()
    folded = fold_model(actor)
    assert not any(isinstance(m, TimeMajorNorm) for m in folded.modules())
    report = check_equivalence(actor, folded, torch.randn(32, OBS), dtype=torch.float64)
    assert report.max_abs_diff < 1e-9
    assert all(layer.flipped == 0 for layer in report.layers.values())


def test_actor_bad_input_raises():
    actor = small_actor()
    with pytest.raises(ValueError, match=r"\[B, 5\].*unsqueeze"):
        actor(torch.randn(OBS))
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        actor(torch.randn(4, OBS + 1))
    with pytest.raises(ValueError, match=r"encodes time itself"):
        actor(torch.randn(5, 4, OBS))
    with pytest.raises(TypeError, match="floating"):
        actor(torch.ones(4, OBS, dtype=torch.long))
    with pytest.raises(ValueError, match="max_action"):
        PopSANActor(OBS, ACT, max_action=[1.0, 2.0])
    with pytest.raises(ValueError, match="max_action"):
        PopSANActor(OBS, ACT, max_action=-1.0)
    with pytest.raises(ValueError, match="available"):
        PopSANActor(OBS, ACT, max_action=1.0, layers=replace(POPSAN_LAYERS, norm="nope"))


# --- critics -----------------------------------------------------------------------------------------


def test_twin_q_critic():
    torch.manual_seed(0)
    critic = TwinQCritic(OBS, ACT)
    obs, action = torch.randn(9, OBS), torch.randn(9, ACT)
    q1, q2 = critic(obs, action)
    assert q1.shape == q2.shape == (9, 1)
    assert not torch.allclose(q1, q2)  # independent networks
    assert torch.equal(critic.q1(obs, action), q1)
    linears = [m for m in critic.q1_net if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(OBS + ACT, 256), (256, 256), (256, 1)]
    assert not set(map(id, critic.q1_net.parameters())) & set(map(id, critic.q2_net.parameters()))
    with pytest.raises(ValueError, match="action"):
        critic(obs, torch.randn(9, ACT + 1))
    with pytest.raises(ValueError, match="same batch"):
        critic(obs, torch.randn(8, ACT))


def test_ddpg_critic():
    critic = DDPGCritic(OBS, ACT)
    assert (critic.l1.in_features, critic.l1.out_features) == (OBS, 400)
    assert (critic.l2.in_features, critic.l2.out_features) == (400 + ACT, 300)
    assert (critic.l3.in_features, critic.l3.out_features) == (300, 1)
    obs, action = torch.randn(4, OBS), torch.randn(4, ACT)
    q = critic(obs, action)
    assert q.shape == (4, 1) and torch.equal(critic.q1(obs, action), q)
    q.sum().backward()
    assert all(p.grad is not None for p in critic.parameters())
    with pytest.raises(ValueError, match=r"obs of shape \[B, 5\]"):
        critic(torch.randn(4, OBS, 1), action)
