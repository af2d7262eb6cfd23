"""A threshold stabiliser defined here, outside the library, runs in a model, folds or is refused, exports or is
refused, and is kept off the fused kernels, from what it declares (``forward``, ``fixed_threshold``); one that
declares no fixed threshold is refused by folding and export with a reason naming the missing declaration."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from spikenorm import fused
from spikenorm.export import to_nir
from spikenorm.fold import check_equivalence, fold_model, load_folded, save_folded
from spikenorm.neurons import LIF, State
from spikenorm.threshold_stabilizers import ThresholdStabilizer

T, B, F = 5, 4, 6


class ScheduledThreshold(ThresholdStabilizer):
    """``theta_t = theta * scales[t]``, a fixed schedule over the steps (its last value from then on)."""

    def __init__(self, scales: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.get_default_dtype()))

    def forward(self, u: Tensor, threshold: Tensor, state: State) -> tuple[Tensor, State]:
        step = int(state.get("schedule_step", torch.tensor(0)))
        scale = self.scales[min(step, len(self.scales) - 1)]
        return threshold * scale, {**state, "schedule_step": torch.tensor(step + 1)}

    def fixed_threshold(self, threshold: Tensor) -> Tensor:
        if not bool((self.scales == self.scales[0]).all()):
            raise ValueError("its threshold changes from step to step")
        return threshold * self.scales[0]


class NoisyThreshold(ThresholdStabilizer):
    """Declares only ``forward``: ``theta_t = theta + 0.1 * mean(u_t)``."""

    def forward(self, u: Tensor, threshold: Tensor, state: State) -> tuple[Tensor, State]:
        return threshold + 0.1 * u.mean(), state


def network(stabilizer: ThresholdStabilizer, **neuron: object) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, F), LIF(threshold=0.5, threshold_stabilizer=stabilizer, **neuron)).eval()


def reference_spikes(x: Tensor, thresholds: Sequence[float], decay: float = 0.5) -> Tensor:
    """LIF with hard reset to 0 and the threshold of each step given."""
    v, spikes = torch.zeros_like(x[0]), []
    for x_t, theta in zip(x, thresholds):
        h = decay * v + x_t
        s = (h > theta).to(x.dtype)
        v = h * (1 - s)
        spikes.append(s)
    return torch.stack(spikes)


def test_it_runs_in_a_model_with_the_thresholds_it_computes():
    model = network(ScheduledThreshold([1.0, 2.0, 0.5]))
    x = torch.rand(T, B, 3) * 2
    with torch.no_grad():
        expected = reference_spikes(model[0](x), [0.5, 1.0, 0.25, 0.25, 0.25])
        assert torch.equal(model(x), expected)
        assert expected.sum() > 0


def test_the_fused_kernels_refuse_it_with_its_declared_reason_and_run_eager():
    model = network(ScheduledThreshold([1.0, 2.0, 0.5]), backend="fused")
    neuron, x = model[1], torch.rand(T, B, F)
    if fused.compile_available():
        assert "ScheduledThreshold sets the threshold of every step" in fused.unsupported_reason(neuron, x)
    assert not fused.use_fused(neuron, x, "fused")
    with torch.no_grad():
        assert torch.equal(neuron(x), reference_spikes(x, [0.5, 1.0, 0.25, 0.25, 0.25]))


def test_a_fixed_threshold_folds_exports_and_saves(tmp_path):
    model = network(ScheduledThreshold([2.0, 2.0]))
    x = torch.rand(T, B, 3) * 2
    folded = fold_model(model)
    neuron = folded.get_submodule("1")
    assert neuron.threshold_stabilizer is None and float(neuron.threshold) == 1.0
    report = check_equivalence(model, folded, x)
    assert report.exact and report.total_spikes > 0
    assert isinstance(model[1].threshold_stabilizer, ScheduledThreshold)  # the trained model is left as it was
    assert torch.equal(load_folded(save_folded(folded, tmp_path / "folded.pt"))(x), folded(x))
    graph = to_nir(model, x[:, :1])
    assert (graph.nodes["_1"].v_threshold == 1.0).all()


@pytest.mark.parametrize(
    "stabilizer, reason",
    [
        (ScheduledThreshold([1.0, 2.0]), "its threshold changes from step to step"),
        (
            NoisyThreshold(),
            r"NoisyThreshold declares no fixed inference threshold; define NoisyThreshold.fixed_threshold",
        ),
    ],
)
def test_no_fixed_threshold_is_refused_by_folding_and_export(stabilizer, reason):
    model = network(stabilizer)
    x = torch.rand(T, B, 3)
    with torch.no_grad():
        model(x)  # it runs
    name = type(stabilizer).__name__
    with pytest.raises(ValueError, match=rf"cannot fold the threshold of neuron '1' \({name}\): {reason}"):
        fold_model(model)
    with pytest.raises(ValueError, match=reason):
        to_nir(model, x[:, :1])
