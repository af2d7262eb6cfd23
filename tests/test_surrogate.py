"""Surrogate spike functions: Heaviside forward, closed-form backward, snnTorch adapter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikenorm.neurons import LIF
from spikenorm.surrogate import CallableSurrogate, available_surrogates, build_surrogate

X = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)


def closed_form(name: str, x: np.ndarray, p: float) -> np.ndarray:
    """Independent numpy closed forms of each surrogate derivative."""
    if name == "rectangle":
        return (np.abs(x) < p / 2) / p
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-p * x))
        return p * s * (1 - s)
    if name == "atan":
        return (p / 2) / (1 + (np.pi / 2 * p * x) ** 2)
    if name == "triangle":
        return np.maximum(0.0, 1 - np.abs(x) / p) / p
    if name == "dspike":
        return (np.abs(x) < 0.5) * p / np.cosh(p * x) ** 2 / (2 * np.tanh(p / 2))
    raise AssertionError(name)


PARAMS = {
    "rectangle": ("width", 0.8),
    "sigmoid": ("alpha", 4.0),
    "atan": ("alpha", 2.0),
    "triangle": ("width", 0.7),
    "dspike": ("b", 3.0),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_forward_is_heaviside_and_backward_is_closed_form(name):
    key, value = PARAMS[name]
    surrogate = build_surrogate(name, **{key: value})
    x = X.clone().requires_grad_(True)
    out = surrogate(x)
    np.testing.assert_array_equal(out.detach().numpy(), (X.numpy() > 0).astype(float))
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), closed_form(name, X.numpy(), value), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_surrogate_integrates_to_one(name):
    key, value = PARAMS[name]
    grid = torch.linspace(-40, 40, 800_001, dtype=torch.float64)
    g = build_surrogate(name, **{key: value}).derivative(grid)
    # atan has heavy tails: its mass on [-L, L] is (2/pi) atan(pi alpha L / 2), the others are inside
    expected = 2 / math.pi * math.atan(math.pi * value * 40 / 2) if name == "atan" else 1.0
    assert float(torch.trapezoid(g, grid)) == pytest.approx(expected, abs=5e-4)  # trapezoid error at the window edges


def test_dspike_mpbn_constants():
    d = build_surrogate("dspike")
    assert float(d.derivative(torch.tensor(0.0))) == pytest.approx(3 / (2 * math.tanh(1.5)))
    assert float(d.derivative(torch.tensor(0.4999))) == pytest.approx(0.30, abs=0.01)
    assert float(d.derivative(torch.tensor(0.6))) == 0.0


def test_snntorch_surrogate_adapter_keeps_its_gradient():
    snn_surrogate = pytest.importorskip("snntorch.surrogate")
    fn = snn_surrogate.atan(alpha=2.0)
    adapted = build_surrogate(fn)
    assert isinstance(adapted, CallableSurrogate)
    x = X.clone().float().requires_grad_(True)
    adapted(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), closed_form("atan", X.numpy(), 2.0), rtol=1e-5)
    # and it plugs into a neuron
    y = LIF(surrogate=fn)(torch.rand(3, 2, 4))
    assert y.shape == (3, 2, 4)


def test_unknown_surrogate_lists_choices():
    with pytest.raises(ValueError, match="available: atan, dspike, rectangle, sigmoid, triangle"):
        build_surrogate("erf")
    assert available_surrogates() == ["atan", "dspike", "rectangle", "sigmoid", "triangle"]
    with pytest.raises(ValueError, match="must be > 0"):
        build_surrogate("sigmoid", alpha=0.0)
