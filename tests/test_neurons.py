"""Neuron dynamics against a hand-written reference loop, state handling, and input errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from spikenorm.neurons import CLIF, IF, LIF, available_neurons, build_neuron, stateful

T, B, C, H, W = 5, 3, 4, 2, 2


def reference(
    kind: str, x: np.ndarray, theta: np.ndarray, reset: str, reset_value: float, decay: float, current_decay: float
) -> np.ndarray:
    """Element-by-element float64 loop of the neuron equations, written independently of the library."""
    spikes = np.zeros_like(x)
    for idx in itertools.product(*(range(n) for n in x.shape[1:])):
        v = c = 0.0
        th = float(np.broadcast_to(theta, x.shape[2:])[idx[1:]])
        for t in range(x.shape[0]):
            inp = x[(t, *idx)]
            if kind == "if":
                h = v + inp
            elif kind == "lif":
                h = decay * v + inp
            else:
                c = current_decay * c + inp
                h = decay * v + c
            s = 1.0 if h > th else 0.0
            v = (h * (1 - s) + reset_value * s) if reset == "hard" else (h - th * s)
            spikes[(t, *idx)] = s
    return spikes


THRESHOLDS = {
    "scalar": lambda: torch.tensor(0.7),
    "per_channel": lambda: torch.linspace(0.3, 1.2, C),
    "per_element": lambda: torch.linspace(0.2, 1.5, C * H * W).reshape(C, H, W),
}


@pytest.mark.parametrize("kind", ["if", "lif", "clif"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("shape", list(THRESHOLDS))
def test_dynamics_match_reference_loop(kind, reset, shape, device):
    torch.manual_seed(0)
    x = torch.rand(T, B, C, H, W, dtype=torch.float64) * 1.2
    theta = THRESHOLDS[shape]().double()
    reset_value = -0.1 if reset == "hard" else 0.0
    kwargs = dict(threshold=theta, reset=reset, reset_value=reset_value)
    if kind == "lif":
        kwargs["decay"] = 0.6
    if kind == "clif":
        kwargs.update(decay=0.75, current_decay=0.5)
    neuron = build_neuron(kind, **kwargs).double().to(device)
    out = neuron(x.to(device)).cpu().numpy()
    theta_np = theta.numpy()
    if shape == "per_channel":
        theta_np = theta_np.reshape(C, 1, 1)
    expected = reference(
        kind, x.numpy(), theta_np, reset, reset_value, kwargs.get("decay", 1.0), kwargs.get("current_decay", 0.0)
    )
    np.testing.assert_array_equal(out, expected)
    assert 0 < expected.sum() < expected.size  # the case is non-trivial: some neurons fire, some do not


def test_tau_and_decay_are_equivalent_and_exclusive():
    assert LIF(tau=2.0).decay == pytest.approx(0.5)
    assert LIF(tau=4.0).decay == pytest.approx(0.75)
    with pytest.raises(ValueError, match="either decay or tau"):
        LIF(decay=0.5, tau=2.0)
    with pytest.raises(ValueError, match="decay must be in"):
        LIF(decay=1.5)


def test_clif_defaults_are_carebn_reference():
    n = CLIF()
    assert (n.decay, n.current_decay, float(n.threshold), n.reset) == (0.75, 0.5, 0.5, "hard")


def test_state_does_not_leak_across_calls(device):
    torch.manual_seed(1)
    neuron = LIF(decay=0.9, threshold=0.5).to(device)
    x = torch.rand(T, B, C).to(device)
    first = neuron(x)
    neuron(torch.rand(T, B, C).to(device) * 5)  # a different batch in between
    assert torch.equal(neuron(x), first)


def test_stateful_single_steps_equal_multi_step_and_scope_resets(device):
    torch.manual_seed(2)
    neuron = CLIF(threshold=0.4).to(device)
    x = torch.rand(T, B, C).to(device)
    multi = neuron(x)
    with stateful(neuron):
        steps = torch.cat([neuron(x[t : t + 1]) for t in range(T)])
    assert torch.equal(steps, multi)
    with stateful(neuron):  # re-entering starts from zero state again
        again = torch.cat([neuron(x[t : t + 1]) for t in range(T)])
    assert torch.equal(again, multi)
    assert neuron._carried_state is None


def test_explicit_step_api_equals_forward(device):
    torch.manual_seed(3)
    neuron = IF(threshold=0.8, reset="soft").to(device)
    x = torch.rand(T, B, C).to(device)
    state = neuron.init_state(x[0])
    outs = []
    for t in range(T):
        s, state = neuron.step(x[t], state)
        outs.append(s)
    assert torch.equal(torch.stack(outs), neuron(x))


def _input_grad_at_first_step(neuron, x):
    x = x.clone().requires_grad_(True)
    neuron(x)[-1].sum().backward()
    return x.grad[0]


def test_detach_membrane_cuts_temporal_gradient(device):
    torch.manual_seed(4)
    x = (torch.rand(T, B, C) * 0.6).to(device)
    connected = _input_grad_at_first_step(LIF(decay=0.9, threshold=1.0, surrogate="atan").to(device), x)
    cut = _input_grad_at_first_step(LIF(decay=0.9, threshold=1.0, surrogate="atan", detach_membrane=True).to(device), x)
    assert connected.abs().sum() > 0
    assert torch.count_nonzero(cut) == 0


def test_detach_reset_changes_only_the_gradient(device):
    torch.manual_seed(5)
    x = torch.rand(T, B, C).to(device)
    a = LIF(decay=0.9, threshold=0.5, surrogate="atan").to(device)
    b = LIF(decay=0.9, threshold=0.5, surrogate="atan", detach_reset=True).to(device)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(_input_grad_at_first_step(a, x), _input_grad_at_first_step(b, x))


def test_membrane_norm_hook_sees_membrane_and_reset_uses_raw_membrane(device):
    class Double(torch.nn.Module):
        def forward(self, h):
            return 2 * h

    x = torch.full((3, 1, 1), 0.3, device=device)
    neuron = IF(threshold=1.0, membrane_norm=Double()).to(device)
    # raw membrane 0.3, 0.6, 0.9 -> normalised 0.6, 1.2 (fires, hard reset of raw membrane to 0), 0.6
    assert neuron(x).flatten().tolist() == [0.0, 1.0, 0.0]


def test_bad_inputs_raise_clear_errors():
    neuron = LIF()
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        neuron(torch.rand(5))
    with pytest.raises(TypeError, match="floating-point"):
        neuron(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="per-channel"):
        LIF(threshold=torch.ones(3))(torch.rand(T, B, 4, 2, 2))
    with pytest.raises(ValueError, match="unknown neuron 'lifx'; available: clif, if, lif"):
        build_neuron("lifx")
    with pytest.raises(ValueError, match="unknown reset 'zero'; available: hard, soft"):
        LIF(reset="zero")
    with pytest.raises(ValueError, match="unknown backend 'jit'; available: auto, eager, fused"):
        LIF(backend="jit")
    with pytest.raises(ValueError, match="unknown ots_eval 'fixed'; available: dynamic, running"):
        LIF(ots=True, ots_eval="fixed")
    assert available_neurons() == ["clif", "if", "lif"]
