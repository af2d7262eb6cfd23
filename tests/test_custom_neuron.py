"""A neuron and a surrogate defined here, outside the library, get the fused kernels, NIR export, BN
re-calibration and firing-rate monitoring from what they declare (``linear_charge``, ``derivative``); a neuron
or surrogate that declares nothing runs eager and is refused with a reason naming the missing declaration.

Compilation costs seconds per kernel on CPU: the fused tests use one small shape and few configurations.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from helpers import eager_and_fused
from torch import Tensor, nn

from spikenorm import fused
from spikenorm.export import from_nir, to_nir
from spikenorm.fold import fold_model
from spikenorm.monitoring import FiringRateRecorder, recognised_neurons
from spikenorm.neurons import LIF, SpikingNeuron, State, spiking_neurons
from spikenorm.norm import build_norm
from spikenorm.recalibrate import recalibrate_bn
from spikenorm.recurrence import LinearCharge
from spikenorm.surrogate import CallableSurrogate, Sigmoid, Surrogate
from spikenorm.synapse import TimeDistributed

SHAPE = (5, 3, 4, 3)  # [T, B, C, L]
needs_compile = pytest.mark.skipif(not fused.compile_available(), reason="torch.compile unavailable")


class DecayInputLIF(SpikingNeuron):
    """SpikingJelly's ``LIFNode(decay_input=True)`` in decay form: ``h_t = b v_{t-1} + (1 - b) x_t``."""

    def __init__(self, decay: float = 0.75, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decay = decay

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay, input_scale=1 - self.decay)


class TwoStageLIF(SpikingNeuron):
    """Two synaptic stages: ``c1_t = a1 c1_{t-1} + x_t``, ``c2_t = a2 c2_{t-1} + c1_t``, ``h_t = b v_{t-1} + c2_t``."""

    state_names = ("v", "c1", "c2")

    def __init__(self, decay: float = 0.8, current_decays: tuple[float, float] = (0.6, 0.3), **kwargs) -> None:
        super().__init__(**kwargs)
        self.decay, self.current_decays = decay, current_decays

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay, current_decays=self.current_decays)


class SquaredLeakIF(SpikingNeuron):
    """Declares nothing: its charge ``h_t = v_{t-1} - 0.1 v_{t-1}^2 + x_t`` is Python code only."""

    def charge(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        v = state["v"]
        return v - 0.1 * v * v + x, state


class FastSigmoid(Surrogate):
    """SuperSpike's fast sigmoid (Zenke & Ganguli, Neural Computation 2018): ``g(x) = 1 / (1 + k|x|)^2``."""

    def __init__(self, slope: float = 5.0) -> None:
        super().__init__()
        self.slope = slope

    def derivative(self, x: Tensor) -> Tensor:
        return 1 / (1 + self.slope * x.abs()) ** 2


class NoDerivative(Surrogate):
    """Declares no derivative."""


def compare(neuron: SpikingNeuron, dtype: torch.dtype, atol: float) -> None:
    """Eager and fused copies of ``neuron`` on one input: equal spikes, input gradients within ``atol``."""
    fast, x, grad_out = eager_and_fused(neuron, SHAPE, dtype, scale=2)
    assert fused.use_fused(fast, x, "fused"), fused.unsupported_reason(fast, x)
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    se, sf = neuron(xe), fast(xf)
    assert torch.equal(se, sf) and 0 < se.mean() < 1
    (se * grad_out).sum().backward()
    (sf * grad_out).sum().backward()
    assert xe.grad.abs().sum() > 0
    torch.testing.assert_close(xf.grad, xe.grad, rtol=0, atol=atol)


@needs_compile
def test_decay_input_lif_with_fast_sigmoid_runs_fused(monkeypatch):
    calls = []
    real = fused.fused_forward
    monkeypatch.setattr(fused, "fused_forward", lambda n, x, **kw: calls.append(type(n)) or real(n, x, **kw))
    neuron = DecayInputLIF(threshold=0.3, surrogate=FastSigmoid(4.0), reset_value=-0.1)
    compare(neuron.double(), torch.float64, atol=1e-12)
    compare(neuron.float(), torch.float32, atol=1e-5)
    assert calls == [DecayInputLIF, DecayInputLIF]


@needs_compile
def test_two_current_stages_run_fused_and_mean_what_they_declare():
    neuron = TwoStageLIF(threshold=0.4, reset="soft", surrogate=FastSigmoid(4.0)).double()
    compare(neuron, torch.float64, atol=1e-12)
    x = 2 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = c1 = c2 = torch.zeros(SHAPE[1:], dtype=torch.float64)
    expected = []
    for x_t in x:  # the declaration's equations, written out by hand
        c1 = 0.6 * c1 + x_t
        c2 = 0.3 * c2 + c1
        h = 0.8 * v + c2
        s = (h > 0.4).double()
        v = h - 0.4 * s
        expected.append(s)
    neuron.backend = "fused"
    assert torch.equal(neuron(x), torch.stack(expected))


def test_what_declares_nothing_runs_eager_with_a_reason():
    x = torch.randn(SHAPE)
    undeclared = SquaredLeakIF(threshold=0.5)
    reason = fused.unsupported_reason(undeclared, x)
    if fused.compile_available():
        assert "SquaredLeakIF declares no linear charge" in reason and "linear_charge()" in reason
    spikes = undeclared(x)  # the eager loop
    v, expected = torch.zeros(SHAPE[1:]), []
    for x_t in x:
        h = v - 0.1 * v * v + x_t
        expected.append((h > 0.5).float())
        v = h * (1 - expected[-1])
    assert torch.equal(spikes, torch.stack(expected))

    for surrogate in (NoDerivative(), CallableSurrogate(Sigmoid(4.0))):
        assert surrogate.kernel_key() is None and surrogate.kernel_derivative() is None
        if fused.compile_available():
            reason = fused.unsupported_reason(DecayInputLIF(surrogate=surrogate), x)
            assert f"surrogate {type(surrogate).__name__} supplies no kernel derivative" in reason
    assert FastSigmoid(2.0).kernel_key() == FastSigmoid(2.0).kernel_key() != FastSigmoid(3.0).kernel_key()
    learnable = FastSigmoid(2.0)
    learnable.slope = nn.Parameter(torch.tensor(2.0))  # state a key of plain values cannot capture
    assert learnable.kernel_key() is None


class HalvedInput:
    """A mixin with a charge of its own: halves the input before the neuron's declared charge."""

    def charge(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return super().charge(0.5 * x, state)


class MixedLIF(HalvedInput, LIF):
    """LIF's declaration no longer describes the charge that runs."""


class HalvedLIF(LIF):
    """Writes its charge and declares it: ``h_t = b v_{t-1} + x_t / 2``."""

    def charge(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.decay * state["v"] + 0.5 * x, state

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay, input_scale=0.5)


def test_a_charge_of_its_own_drops_an_inherited_declaration_also_from_a_mixin():
    x = torch.randn(SHAPE)
    mixed, declared = MixedLIF(threshold=0.4), HalvedLIF(threshold=0.4)
    assert mixed.linear_charge() == LIF().linear_charge()  # the class itself is left as written
    assert mixed.declared_charge() is None
    if fused.compile_available():
        assert "MixedLIF declares no linear charge" in fused.unsupported_reason(mixed, x)
    with pytest.raises(ValueError, match="MixedLIF declares no NIR mapping"):
        mixed.nir_node(np.ones(3), np.zeros(3), 1.0, {})
    assert torch.equal(mixed(x), LIF(threshold=0.4)(0.5 * x))  # the eager loop runs the mixin's charge
    assert declared.declared_charge() == LinearCharge(decay=0.5, input_scale=0.5)
    assert torch.equal(declared(x), mixed(x))


def test_stage_names_are_checked_for_every_path():
    class Unnamed(TwoStageLIF):
        state_names = ("v", "c1")

    with pytest.raises(ValueError, match="declares 2 current stages"):
        Unnamed().declared_charge()
    with pytest.raises(ValueError, match="declares 2 current stages"):
        Unnamed()(torch.randn(SHAPE))


def test_nir_export_and_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(
        TimeDistributed(nn.Linear(SHAPE[3], 8)),
        build_norm("bn", 8),
        DecayInputLIF(threshold=0.2),
        TimeDistributed(nn.Linear(8, 4)),
        DecayInputLIF(decay=0.5, threshold=0.1),
    )
    x = 2 * torch.randn(SHAPE[0], SHAPE[1], SHAPE[3])
    with torch.no_grad():
        model.train()(x)  # running statistics away from (0, 1)
    folded = fold_model(model.eval())
    graph = to_nir(folded, x[:, :1])
    lifs = [node for node in graph.nodes.values() if isinstance(node, nir.LIF)]
    assert len(lifs) == 2 and {node.metadata["spikenorm_neuron"] for node in lifs} == {"DecayInputLIF"}
    # decay_input: the input gain dt R / tau = 1 - b is the NIR LIF with R = 1
    assert np.allclose(lifs[0].tau, 4.0) and np.allclose(lifs[0].r, 1.0)
    rebuilt = from_nir(graph)
    with torch.no_grad():
        spikes = folded(x)
        assert torch.equal(rebuilt(x), spikes) and 0 < spikes.mean() < 1

    for neuron, match in (
        (TwoStageLIF(), "TwoStageLIF declares no NIR mapping for 2 current stages"),
        (SquaredLeakIF(), "SquaredLeakIF declares no NIR mapping"),
    ):
        net = nn.Sequential(TimeDistributed(nn.Linear(SHAPE[3], 8)), neuron)
        with pytest.raises(ValueError, match=f"cannot export node '1' to NIR: {match}.*override"):
            to_nir(net, x[:, :1])


def network(neuron_type: type[SpikingNeuron]) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        TimeDistributed(nn.Linear(SHAPE[3], 8)),
        build_norm("bn", 8),
        neuron_type(threshold=0.2),
        TimeDistributed(nn.Linear(8, 6)),
        build_norm("bn", 6),
        neuron_type(threshold=0.2),
    )


@pytest.mark.parametrize("neuron_type", [DecayInputLIF, SquaredLeakIF])
def test_recalibration_and_monitoring(neuron_type):
    model = network(neuron_type)
    batches = [2 * torch.randn(SHAPE[0], 4, SHAPE[3], generator=torch.Generator().manual_seed(i)) for i in range(3)]
    report = recalibrate_bn(model, batches)
    assert set(report.layers) == {"1", "4"}
    inputs = []  # exact mode: the second norm's statistics are those of its inputs under the recalibrated first
    hook = model[4].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        for batch in batches:
            model.eval()(batch)
    hook.remove()
    pooled = torch.cat(inputs).flatten(0, 1)
    torch.testing.assert_close(model[4].running_mean, pooled.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(model[4].running_var, pooled.var(0), rtol=0, atol=1e-5)

    assert list(recognised_neurons(model)) == ["2", "5"]
    spikes = {}
    hooks = [
        n.register_forward_hook(lambda m, args, out, name=name: spikes.setdefault(name, out))
        for name, n in spiking_neurons(model)
    ]
    with FiringRateRecorder(model) as recorder, torch.no_grad():
        model(batches[0])
    for handle in hooks:
        handle.remove()
    rates = recorder.layer_rates()
    assert rates.keys() == {"2", "5"} and 0 < rates["2"] < 1
    for name, s in spikes.items():
        assert rates[name] == pytest.approx(float(s.double().mean()), rel=1e-12)
