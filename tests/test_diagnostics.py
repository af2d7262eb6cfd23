"""``spikenorm.diagnostics.diagnose`` and ``spikenorm.membrane`` against independent float64 computations.

Every expected value here is computed in the test from the definitions in the module docstrings (pooled
statistics with numpy reductions, BN outputs written out by hand, neurons simulated step by step), not by the code
under test; two checks are cross-checks and say so (``stat_w2`` against ``recalibrate_bn``'s ``stat_error``, the
online train pass against the multi-step one). The two-process checks are in ``test_diagnostics_distributed.py``.
"""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from peer_models import BUILDERS, data, library_reset
from torch import Tensor, nn

from spikenorm.diagnostics import diagnose, stepwise_forward
from spikenorm.membrane import BIN_WIDTH, QUANTILES, RANGE, MembraneRecorder
from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.recalibrate import recalibrate_bn

T, B, C = 4, 12, 5
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for these tiny float64 models: on a busy 2-core machine the default two threads spend 40x
    the compute waiting for each other (2 s instead of 0.05 s per diagnosis); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# independent reference computations
# ---------------------------------------------------------------------------------------------------------------
def w2(mean_a: Tensor, var_a: Tensor, mean_b: Tensor, var_b: Tensor) -> float:
    """Mean over features of W2(N(mean_a, var_a), N(mean_b, var_b)), written out."""
    per_feature = torch.sqrt((mean_a - mean_b) ** 2 + (torch.sqrt(var_a) - torch.sqrt(var_b)) ** 2)
    return float(per_feature.mean())


def pooled(rows: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Mean and variance per column of ``rows`` ``[N, C]`` (numpy, float64)."""
    array = rows.detach().numpy()
    return torch.from_numpy(array.mean(0)), torch.from_numpy(array.var(0, ddof=1 if unbiased else 0))


def channels_last(x: Tensor, channel_axis: int) -> Tensor:
    """``x`` as rows ``[N, C]``, one column per channel."""
    return x.movedim(channel_axis, -1).reshape(-1, x.shape[channel_axis])


def bn_by_hand(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``weight (x - mean) / sqrt(var + eps) + bias`` with the channels on the last axis."""
    return weight * (x - mean) / torch.sqrt(var + eps) + bias


def mean_kl(z_train: Tensor, z_eval: Tensor) -> float:
    """Mean over samples of KL(softmax(z_train) || softmax(z_eval)), float64."""
    p = torch.softmax(z_train.double(), -1)
    q = torch.softmax(z_eval.double(), -1)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class StepLoop(nn.Module):
    """Calls ``body`` once per time step on ``x[t]`` (snnTorch style) and stacks the float64 results."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.body(x_t).to(x.dtype) for x_t in x])


# ---------------------------------------------------------------------------------------------------------------
# 1. read-only
# ---------------------------------------------------------------------------------------------------------------
def ots_osr_net() -> nn.Module:
    """An OSR norm and an OTS neuron: both change buffers in every training-mode call."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(C, 6),
        build_norm("osr", 6),
        LIF(decay=0.5, threshold=0.5, ots=True, ots_eval="running"),
        nn.Linear(6, 3),
    ).double()


def ots_osr_data() -> list[Tensor]:
    g = seeded(4)
    return [torch.randn(T, B, C, generator=g, dtype=F64) * (1 + 0.5 * j) + 0.3 * j for j in range(3)]


READ_ONLY_MODELS = {
    **{name: (builder, lambda: data(3)) for name, builder in BUILDERS.items()},
    "ots_osr": (ots_osr_net, ots_osr_data),
}


def rng_consuming_forward(model: nn.Module, batch: Tensor) -> Tensor:
    """A forward that draws from the torch, numpy and python generators (diagnose must put them back)."""
    torch.rand(3)
    np.random.rand(3)
    random.random()
    return model(batch)


def set_modes(model: nn.Module, mode: str) -> None:
    model.train()
    if mode == "mixed":  # every other module in eval, set one by one (not recursively)
        for i, module in enumerate(model.modules()):
            module.training = i % 2 == 0


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[tuple[Any, ...]]]:
    """The state dict and the non-persistent buffers (snnTorch's ``mem``); per module its flag, hook counts and
    instance attribute names (a probe left behind would show there)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state |= {f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()}
    modules = [
        (name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks), sorted(vars(m)))
        for name, m in model.named_modules()
    ]
    return state, modules


def rng_states() -> tuple:
    return torch.get_rng_state().clone(), np.random.get_state(), random.getstate()


def assert_rng_states_equal(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0]), "torch CPU generator changed"
    np_before, np_after = before[1], after[1]
    assert np_before[0] == np_after[0] and np_before[2:] == np_after[2:], "numpy generator changed"
    assert np.array_equal(np_before[1], np_after[1]), "numpy generator changed"
    assert before[2] == after[2], "python random generator changed"


@pytest.mark.parametrize("mode", ["train", "mixed"])
@pytest.mark.parametrize("name", sorted(READ_ONLY_MODELS))
def test_diagnose_changes_no_state_flag_or_generator(name, mode):
    builder, batches = READ_ONLY_MODELS[name]
    model = builder()
    set_modes(model, mode)
    with torch.no_grad():  # leave state behind (snnTorch's mem buffer), as a model used just before would
        model(batches()[0])
    before, flags = snapshot(model)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    generators = rng_states()

    diagnosis = diagnose(model, batches(), forward=rng_consuming_forward)

    assert_rng_states_equal(generators, rng_states())
    after, flags_after = snapshot(model)
    assert flags_after == flags
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype and after[key].shape == value.shape, key
        assert torch.equal(after[key], value), f"{name}: state_dict entry {key!r} changed"
    assert diagnosis.output.kl > 1e-4  # the train pass did run in training mode (OSR has no layer gap; OTS moves it)
    assert diagnosis.layers and diagnosis.neurons


def test_the_ots_osr_model_does_change_its_buffers_in_training():
    """The premise of the ``ots_osr`` read-only case: a plain training-mode forward moves OSR's running statistics
    and the OTS running threshold (so restoring them is not a no-op)."""
    model = ots_osr_net()
    before = copy.deepcopy(model.state_dict())
    model.train()
    with torch.no_grad():
        model(ots_osr_data()[0])
    after = model.state_dict()
    for key in ("1.running_mean", "1.running_var", "2.threshold_stabilizer.running_threshold"):
        assert not torch.equal(before[key], after[key]), key


def test_probes_and_backends_are_restored_after_an_error():
    neuron = LIF(decay=0.5, threshold=0.0, backend="auto")  # a threshold of 0 is refused at the first step
    model = nn.Sequential(nn.Linear(C, C), build_norm("bn", C), neuron).double()
    model.train()
    before, flags = snapshot(model)
    with pytest.raises(ValueError, match="positive threshold"):
        diagnose(model, ots_osr_data())
    after, flags_after = snapshot(model)
    assert flags_after == flags
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert neuron.membrane_probe is None and "membrane_probe" not in vars(neuron)
    assert neuron.backend == "auto"


# ---------------------------------------------------------------------------------------------------------------
# 2. statistics error
# ---------------------------------------------------------------------------------------------------------------
def _stat_batches(shape: tuple[int, ...], channel_axis: int, seed: int = 5) -> list[Tensor]:
    g = seeded(seed)
    view = [1] * len(shape)
    view[channel_axis] = shape[channel_axis]
    scale = torch.linspace(0.5, 2.0, shape[channel_axis], dtype=F64).reshape(view)
    shift = torch.linspace(-1.0, 1.5, shape[channel_axis], dtype=F64).reshape(view)
    return [torch.randn(*shape, generator=g, dtype=F64) * scale * (1 + 0.4 * j) + shift + 0.3 * j for j in range(3)]


# name -> (layer builder, one batch's shape, channel axis, whether the running variance is unbiased)
STAT_LAYERS = {
    "spikenorm_bn": (lambda: build_norm("bn", C), (T, B, C), 2, True),
    "spikenorm_bn_spatial": (lambda: build_norm("bn", C), (T, B, C, 3), 2, True),
    "spikenorm_bn_per_batch": (lambda: build_norm("bn", C, running_update="per_batch"), (T, B, C), 2, False),
    "osr": (lambda: build_norm("osr", C), (T, B, C), 2, False),
    "torch_bn1d": (lambda: nn.BatchNorm1d(C), (B, C), 1, True),
    "torch_bn2d": (lambda: nn.BatchNorm2d(C), (B, C, 2, 3), 1, True),
}


def _pooled_statistics(name: str) -> tuple[nn.Module, list[Tensor], Tensor, Tensor, int]:
    builder, shape, axis, unbiased = STAT_LAYERS[name]
    batches = _stat_batches(shape, axis)
    rows = torch.cat([channels_last(x, axis) for x in batches])
    mean, var = pooled(rows, unbiased)
    return builder().double(), batches, mean, var, rows.shape[0]


@pytest.mark.parametrize("name", sorted(STAT_LAYERS))
def test_statistics_error_of_a_shifted_running_mean(name):
    layer, batches, mean, var, samples = _pooled_statistics(name)
    delta = torch.tensor([0.5, -0.2, 0.0, 1.3, -0.7], dtype=F64)
    layer.running_mean.copy_(mean + delta)
    layer.running_var.copy_(var)

    d = diagnose(nn.Sequential(layer), batches).layers["0"]

    eps = layer.eps
    assert d.samples == samples
    assert d.mean_error == pytest.approx(float((delta.abs() / torch.sqrt(var + eps)).mean()), rel=1e-9)
    assert abs(d.log_var_ratio) < 1e-12
    assert d.stat_w2 == pytest.approx(float(delta.abs().mean()), rel=1e-9)


@pytest.mark.parametrize("name", sorted(STAT_LAYERS))
def test_statistics_error_of_a_stale_running_variance(name):
    layer, batches, mean, var, _ = _pooled_statistics(name)
    ratio = torch.tensor([0.25, 1.0, 4.0, 9.0, 0.5], dtype=F64)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var * ratio)

    d = diagnose(nn.Sequential(layer), batches).layers["0"]

    eps = layer.eps
    expected_log = torch.log((var * ratio + eps) / (var + eps)).abs().mean()
    assert d.log_var_ratio == pytest.approx(float(expected_log), rel=1e-9)
    assert d.stat_w2 == pytest.approx(float((torch.sqrt(var * ratio) - torch.sqrt(var)).abs().mean()), rel=1e-9)
    assert abs(d.mean_error) < 1e-12


FIRST_LAYER = {"spikenorm": "1.module", "snntorch": "bn1", "spikingjelly": "1"}


@pytest.mark.parametrize("library", sorted(BUILDERS))
def test_stat_w2_of_the_first_layer_is_the_stat_error_recalibration_reports(library):
    model = BUILDERS[library]()
    batches = data(3)
    diagnosis = diagnose(model, batches)
    report = recalibrate_bn(copy.deepcopy(model), batches)
    name = FIRST_LAYER[library]
    assert set(diagnosis.layers) == set(report.layers)
    assert diagnosis.layers[name].stat_w2 > 0.05
    assert diagnosis.layers[name].stat_w2 == pytest.approx(report.layers[name].stat_error, rel=1e-9)
    assert diagnosis.layers[name].samples == report.layers[name].samples


def _stepped_batches(seed: int = 6) -> list[Tensor]:
    """``[T, B, C]`` batches whose step ``t`` has mean ``0.5 t`` and scale ``1 + 0.3 t`` more than step 0."""
    g = seeded(seed)
    t = torch.arange(T, dtype=F64).reshape(T, 1, 1)
    return [torch.randn(T, B, C, generator=g, dtype=F64) * (1 + 0.3 * t) + 0.5 * t + 0.2 * j for j in range(3)]


def _step_statistics(batches: list[Tensor]) -> tuple[list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    steps = [pooled(torch.cat([x[t] for x in batches])) for t in range(T)]
    return steps, pooled(torch.cat([x.reshape(-1, C) for x in batches]))


@pytest.mark.parametrize("kind", ["spikenorm_bn", "torch_bn_per_step_call"])
def test_per_step_statistics_of_a_shared_running_estimate(kind):
    batches = _stepped_batches()
    if kind == "spikenorm_bn":
        layer = build_norm("bn", C).double()
        model, name = nn.Sequential(layer), "0"
    else:  # snnTorch style: one call per step, so each call is a step
        layer = nn.BatchNorm1d(C).double()
        model, name = StepLoop(layer), "body"
    running = (torch.linspace(-0.5, 1.0, C, dtype=F64), torch.linspace(0.5, 3.0, C, dtype=F64))
    layer.running_mean.copy_(running[0])
    layer.running_var.copy_(running[1])

    d = diagnose(model, batches).layers[name]

    steps, shared = _step_statistics(batches)
    assert len(d.step_shift) == len(d.step_stat_w2) == T
    for t, (mean_t, var_t) in enumerate(steps):
        assert d.step_shift[t] == pytest.approx(w2(mean_t, var_t, *shared), rel=1e-9), t
        assert d.step_stat_w2[t] == pytest.approx(w2(*running, mean_t, var_t), rel=1e-9), t
    assert d.step_shift[-1] > 0.5  # the steps do differ
    assert d.stat_w2 == pytest.approx(w2(*running, *shared), rel=1e-9)


def test_per_step_statistics_of_per_step_running_estimates():
    """BNTT keeps one running estimate per step: step ``t`` is compared with row ``t``, and the layer's statistics
    error is over every (step, channel)."""
    batches = _stepped_batches()
    layer = build_norm("bntt", C, time_steps=T).double()
    g = seeded(7)
    layer.running_mean.copy_(torch.randn(T, C, generator=g, dtype=F64))
    layer.running_var.copy_(torch.rand(T, C, generator=g, dtype=F64) * 2 + 0.2)

    d = diagnose(nn.Sequential(layer), batches).layers["0"]

    steps, shared = _step_statistics(batches)
    mean = torch.stack([s[0] for s in steps])
    var = torch.stack([s[1] for s in steps])
    for t, (mean_t, var_t) in enumerate(steps):
        assert d.step_stat_w2[t] == pytest.approx(
            w2(layer.running_mean[t], layer.running_var[t], mean_t, var_t), rel=1e-9
        )
        assert d.step_shift[t] == pytest.approx(w2(mean_t, var_t, *shared), rel=1e-9)
    assert d.stat_w2 == pytest.approx(w2(layer.running_mean, layer.running_var, mean, var), rel=1e-9)
    expected_error = ((layer.running_mean - mean).abs() / torch.sqrt(var + layer.eps)).mean()
    assert d.mean_error == pytest.approx(float(expected_error), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# 3. train/eval gap
# ---------------------------------------------------------------------------------------------------------------
def _affine_bn1d(features: int = 6) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(features).double()
    g = seeded(8)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(features, generator=g, dtype=F64) + 0.5)
        bn.bias.copy_(torch.randn(features, generator=g, dtype=F64))
    return bn


def _gap_batches(count: int, features: int = 6, batch: int = 16) -> list[Tensor]:
    g = seeded(9)
    return [torch.randn(batch, features, generator=g, dtype=F64) * (1 + 0.5 * j) + j for j in range(count)]


def test_no_gap_when_the_running_statistics_are_the_batch_statistics():
    """torch BN normalises with the biased batch variance in training: running_var = biased var gives no gap."""
    bn = _affine_bn1d()
    (x,) = _gap_batches(1)
    bn.running_mean.copy_(x.mean(0))
    bn.running_var.copy_(x.var(0, unbiased=False))

    d = diagnose(nn.Sequential(bn), [x])

    assert d.layers["0"].train_eval_gap < 1e-12
    assert d.output.output == "logits"
    assert d.output.top1_agreement == 1.0
    assert abs(d.output.kl) < 1e-14
    assert d.output.action_gap is None


def test_gap_of_the_unbiased_running_variance_of_the_same_batch():
    """The exact (unbiased) statistics of the very batch still leave the biased/unbiased gap."""
    bn = _affine_bn1d()
    (x,) = _gap_batches(1)
    mean, var_unbiased, var_biased = x.mean(0), x.var(0, unbiased=True), x.var(0, unbiased=False)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var_unbiased)

    d = diagnose(nn.Sequential(bn), [x])

    w, b = bn.weight.detach(), bn.bias.detach()
    y_train = bn_by_hand(x, mean, var_biased, w, b, bn.eps)
    y_eval = bn_by_hand(x, mean, var_unbiased, w, b, bn.eps)
    expected = float(torch.linalg.vector_norm(y_train - y_eval) / torch.linalg.vector_norm(y_eval))
    assert expected > 1e-3
    assert d.layers["0"].train_eval_gap == pytest.approx(expected, rel=1e-9)


def test_gap_and_output_agreement_over_several_batches():
    bn = _affine_bn1d()
    batches = _gap_batches(3)
    running = (torch.linspace(-0.5, 2.0, 6, dtype=F64), torch.linspace(0.3, 4.0, 6, dtype=F64))
    bn.running_mean.copy_(running[0])
    bn.running_var.copy_(running[1])

    d = diagnose(nn.Sequential(bn), batches)

    w, b = bn.weight.detach(), bn.bias.detach()
    trained = [bn_by_hand(x, x.mean(0), x.var(0, unbiased=False), w, b, bn.eps) for x in batches]
    evaluated = [bn_by_hand(x, *running, w, b, bn.eps) for x in batches]
    diff = sum(float((yt - ye).pow(2).sum()) for yt, ye in zip(trained, evaluated))
    norm = sum(float(ye.pow(2).sum()) for ye in evaluated)
    assert d.layers["0"].train_eval_gap == pytest.approx(math.sqrt(diff / norm), rel=1e-9)
    z_train, z_eval = torch.cat(trained), torch.cat(evaluated)
    agreement = float((z_train.argmax(-1) == z_eval.argmax(-1)).double().mean())
    assert 0.0 < agreement < 1.0
    assert d.output.top1_agreement == pytest.approx(agreement, rel=1e-12)
    assert d.output.kl == pytest.approx(mean_kl(z_train, z_eval), rel=1e-9)


def test_gap_of_time_major_bn_with_per_step_training_statistics():
    """spikenorm ``bn`` normalises each step with its own statistics in training; per-step logits ``[T, B, K]`` are
    averaged over time before the output comparison."""
    layer = build_norm("bn", C).double()
    g = seeded(10)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(C, generator=g, dtype=F64) + 0.5)
        layer.bias.copy_(torch.randn(C, generator=g, dtype=F64))
    running = (torch.linspace(0.0, 1.5, C, dtype=F64), torch.linspace(0.8, 2.5, C, dtype=F64))
    layer.running_mean.copy_(running[0])
    layer.running_var.copy_(running[1])
    batches = _stepped_batches()

    d = diagnose(nn.Sequential(layer), batches)

    w, b = layer.weight.detach(), layer.bias.detach()
    trained = [
        torch.stack([bn_by_hand(x[t], x[t].mean(0), x[t].var(0, unbiased=False), w, b, layer.eps) for t in range(T)])
        for x in batches
    ]
    evaluated = [bn_by_hand(x, *running, w, b, layer.eps) for x in batches]
    diff = sum(float((yt - ye).pow(2).sum()) for yt, ye in zip(trained, evaluated))
    norm = sum(float(ye.pow(2).sum()) for ye in evaluated)
    assert d.layers["0"].train_eval_gap == pytest.approx(math.sqrt(diff / norm), rel=1e-9)
    z_train = torch.cat([y.mean(0) for y in trained])
    z_eval = torch.cat([y.mean(0) for y in evaluated])
    agreement = float((z_train.argmax(-1) == z_eval.argmax(-1)).double().mean())
    assert d.output.top1_agreement == pytest.approx(agreement, rel=1e-12)
    assert d.output.kl == pytest.approx(mean_kl(z_train, z_eval), rel=1e-9)


def test_action_gap_is_the_mean_absolute_difference():
    torch.manual_seed(11)
    linear = nn.Linear(6, 3).double()
    bn = _affine_bn1d(3)
    running = (torch.tensor([0.2, -0.4, 1.0], dtype=F64), torch.tensor([0.5, 2.0, 1.2], dtype=F64))
    bn.running_mean.copy_(running[0])
    bn.running_var.copy_(running[1])
    actor = nn.Sequential(linear, bn, nn.Tanh())
    batches = _gap_batches(2)

    d = diagnose(actor, batches, output="actions")

    w, b = bn.weight.detach(), bn.bias.detach()
    total, count = 0.0, 0
    with torch.no_grad():
        for x in batches:
            z = linear(x)
            a_train = torch.tanh(bn_by_hand(z, z.mean(0), z.var(0, unbiased=False), w, b, bn.eps))
            a_eval = torch.tanh(bn_by_hand(z, *running, w, b, bn.eps))
            total += float((a_train - a_eval).abs().sum())
            count += a_train.numel()
    assert d.output.output == "actions"
    assert d.output.top1_agreement is None and d.output.kl is None
    assert d.output.action_gap == pytest.approx(total / count, rel=1e-9)
    assert d.output.action_gap > 1e-3


def test_osr_training_forward_has_no_gap():
    """OSR's training forward takes the value of its eval map (away from its fallback), so its gap is 0 where plain
    BN's is not (the OSR paper's argument)."""
    batches = _stepped_batches()
    rows = torch.cat([x.reshape(-1, C) for x in batches])
    gaps = {}
    for norm in ("osr", "bn"):
        layer = build_norm(norm, C).double()
        layer.running_mean.copy_(rows.mean(0))
        layer.running_var.copy_(rows.var(0))
        d = diagnose(nn.Sequential(layer), batches)
        gaps[norm] = (d.layers["0"].train_eval_gap, d.output)
    gap, out = gaps["osr"]
    assert gap == 0.0 and out.top1_agreement == 1.0 and out.kl == 0.0
    assert gaps["bn"][0] > 0.05


def test_gap_of_a_membrane_norm_called_at_every_step():
    """MPBN inside a LIF is called once per step. In the train pass it normalises ``h_t`` with the step's batch
    statistics (torch BN: biased variance), the spikes and resets follow from that, and each step's ``y_eval`` uses
    the running statistics as they were before the pass (every call's EMA update undone)."""
    neuron = LIF(decay=0.5, threshold=THETA, membrane_norm=build_norm("mpbn", MC)).double()
    mean_r, var_r, weight, bias, eps = _mpbn_parameters(neuron.membrane_norm)
    batches = membrane_batches(seed=15)

    d = diagnose(nn.Sequential(neuron), batches)

    diff = norm = 0.0
    z_train, z_eval = [], []
    for x in batches:
        v = torch.zeros_like(x[0])
        spikes = []
        for x_t in x:
            h = 0.5 * v + x_t
            u_train = weight * (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + eps) + bias
            u_eval = weight * (h - mean_r) / torch.sqrt(var_r + eps) + bias
            diff += float((u_train - u_eval).pow(2).sum())
            norm += float(u_eval.pow(2).sum())
            s = (u_train > THETA).double()
            spikes.append(s)
            v = h * (1 - s)
        z_train.append(torch.stack(spikes).mean(0))
        z_eval.append(simulate("spikenorm", x, (mean_r, var_r, weight, bias, eps))[1].mean(0))
    assert d.layers["0.membrane_norm"].train_eval_gap == pytest.approx(math.sqrt(diff / norm), rel=1e-9)
    z_train, z_eval = torch.cat(z_train), torch.cat(z_eval)
    assert d.output.top1_agreement == pytest.approx(float((z_train.argmax(-1) == z_eval.argmax(-1)).double().mean()))
    assert d.output.kl == pytest.approx(mean_kl(z_train, z_eval), rel=1e-9)
    assert d.output.kl > 1e-4


def test_stepwise_train_forward_is_the_multi_step_train_pass_and_changes_nothing():
    """Online training's forward (one step per call inside ``stateful``) normalises each step as the multi-step
    forward does for these layers (per-step batch statistics; OSR's eval value; OTS from step 1's membrane), so the
    train pass gives the same gaps; the scope's per-sequence updates (OSR commits when it closes) are undone."""
    torch.manual_seed(17)
    model = nn.Sequential(
        nn.Linear(C, 6),
        build_norm("bn", 6),
        LIF(decay=0.5, threshold=0.5, ots=True, ots_eval="running"),
        nn.Linear(6, 6),
        build_norm("osr", 6),
        LIF(decay=0.5, threshold=0.5),
        nn.Linear(6, 3),
    ).double()
    model.train()
    before, modules = snapshot(model)

    stepwise = diagnose(model, ots_osr_data(), train_forward=stepwise_forward)

    after, modules_after = snapshot(model)
    assert modules_after == modules
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model[4].sequence_moments.steps == 0 and not model[4]._in_sequence
    assert model[2]._carried_state is None and model[5]._carried_state is None
    multi_step = diagnose(model, ots_osr_data())
    for name in ("1", "4"):
        assert stepwise.layers[name].train_eval_gap == pytest.approx(multi_step.layers[name].train_eval_gap, rel=1e-9)
    assert stepwise.layers["1"].train_eval_gap > 0.05
    assert stepwise.output.kl == pytest.approx(multi_step.output.kl, rel=1e-9)
    assert stepwise.output.top1_agreement == multi_step.output.top1_agreement


def test_excluded_layers_are_neither_diagnosed_nor_put_in_training_mode():
    """``exclude`` names modules not to diagnose: they are absent from the diagnosis, and the train pass leaves them in
    eval mode (an excluded norm and an excluded OTS neuron alike)."""
    torch.manual_seed(16)
    model = nn.Sequential(
        nn.Linear(C, 6),
        build_norm("bn", 6),
        LIF(decay=0.5, threshold=0.5),
        nn.Linear(6, 6),
        build_norm("bn", 6),
        LIF(decay=0.5, threshold=0.5, ots=True, ots_eval="running"),
    ).double()
    seen: dict[str, list[bool]] = {"4": [], "5": []}
    for name in seen:
        model.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: seen[name].append(m.training))

    d = diagnose(model, ots_osr_data(), exclude=("4", "5"))

    assert set(d.layers) == {"1"} and set(d.neurons) == {"2"}
    assert seen["4"] and not any(seen["4"])
    assert seen["5"] and not any(seen["5"]), f"the excluded OTS neuron ran in training mode: {seen['5']}"


# ---------------------------------------------------------------------------------------------------------------
# 4. membrane
# ---------------------------------------------------------------------------------------------------------------
THETA = 0.5
MT, MB, MC = 6, 32, 8  # steps, batch, neurons (0.05 * samples is never an integer: see _assert_quantiles)


def membrane_batches(seed: int = 12) -> list[Tensor]:
    """Input currents: neuron 0 never fires, neuron 1 fires at every step, the others in between."""
    g = seeded(seed)
    batches = []
    for j in range(2):
        x = torch.randn(MT, MB, MC, generator=g, dtype=F64) * 0.5 + 0.3 + 0.1 * j
        x[..., 0] = -1.0 + 0.05 * torch.randn(MT, MB, generator=g, dtype=F64)
        x[..., 1] = 2.0
        batches.append(x)
    return batches


def simulate(library: str, x: Tensor, norm: tuple[Tensor, Tensor, Tensor, Tensor, float] | None = None):
    """The pre-firing membrane relative to the threshold and the spikes, ``[T, B, C]`` each, in float64.

    spikenorm LIF (decay 0.5, hard reset to 0): ``h_t = 0.5 v + x_t``, ``u_t = N(h_t)``, ``s_t = 1[u_t > theta_t]``,
    ``v_t = h_t (1 - s_t)``; ``theta_t = theta`` but with OTS (eval, ``"dynamic"``)
    ``theta_t = mu_t + sigma_t (theta - mu_1) / sigma_1`` from the mean and unbiased std of ``u_t`` over the whole
    batch. snnTorch Leaky (beta 0.5, subtract reset, delayed): ``m_t = 0.5 m + x_t - s_{t-1} theta``,
    ``s_t = 1[m_t > theta]``. SpikingJelly LIFNode (tau 2, decay_input, hard reset to 0): ``H_t = v + (x_t - v) / 2``,
    ``s_t = 1[H_t >= theta]``, ``v_t = H_t (1 - s_t)``.
    """
    v = torch.zeros_like(x[0])
    s = torch.zeros_like(x[0])
    reference = None
    relative, spikes = [], []
    for x_t in x:
        theta = THETA
        if library.startswith("spikenorm"):
            h = 0.5 * v + x_t
            u = h
            if norm is not None:
                mean, var, weight, bias, eps = norm
                u = weight * (h - mean) / torch.sqrt(var + eps) + bias
            if library == "spikenorm_ots":
                moments = (u.mean(), u.flatten().std(correction=1))
                reference = moments if reference is None else reference
                theta = moments[0] + moments[1] * (THETA - reference[0]) / reference[1]
            s = (u > theta).double()
            v = h * (1 - s)
        elif library == "snntorch":
            u = v = 0.5 * v + x_t - s * THETA
            s = (u > THETA).double()
        else:
            u = v + (x_t - v) / 2.0
            s = (u >= THETA).double()
            v = u * (1 - s)
        relative.append((u - theta) / theta)
        spikes.append(s)
    return torch.stack(relative), torch.stack(spikes)


def _mpbn_parameters(mpbn: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    g = seeded(13)
    with torch.no_grad():
        mpbn.running_mean.copy_(torch.randn(MC, generator=g, dtype=F64) * 0.2)
        mpbn.running_var.copy_(torch.rand(MC, generator=g, dtype=F64) + 0.5)
        mpbn.weight.copy_(torch.rand(MC, generator=g, dtype=F64) * 0.5 + 0.75)
        mpbn.bias.copy_(torch.randn(MC, generator=g, dtype=F64) * 0.1)
    return (mpbn.running_mean.clone(), mpbn.running_var.clone(), mpbn.weight.detach().clone(),
            mpbn.bias.detach().clone(), mpbn.eps)  # fmt: skip


def membrane_model(kind: str) -> tuple[nn.Module, str, str, tuple | None]:
    """(model, name of its neuron, the library whose equations it follows, MPBN parameters or None)."""
    if kind == "spikenorm":
        return nn.Sequential(LIF(decay=0.5, threshold=THETA)).double(), "0", "spikenorm", None
    if kind == "spikenorm_ots":  # eval mode, "dynamic": each step's threshold from the batch's membrane
        neuron = LIF(decay=0.5, threshold=THETA, ots=True, ots_eval="dynamic")
        return nn.Sequential(neuron).double(), "0", "spikenorm_ots", None
    if kind == "spikenorm_mpbn":
        neuron = LIF(decay=0.5, threshold=THETA, membrane_norm=build_norm("mpbn", MC)).double()
        return nn.Sequential(neuron), "0", "spikenorm", _mpbn_parameters(neuron.membrane_norm)
    if kind == "snntorch":
        import snntorch as snn

        return StepLoop(snn.Leaky(beta=0.5, threshold=THETA, init_hidden=True)).double(), "body", "snntorch", None
    from spikingjelly.activation_based import neuron, surrogate

    mode = kind[-1]
    lif = neuron.LIFNode(tau=2.0, v_threshold=THETA, surrogate_function=surrogate.Sigmoid(), step_mode=mode)
    if mode == "m":
        return nn.Sequential(lif).double(), "0", "spikingjelly", None
    return StepLoop(lif).double(), "body", "spikingjelly", None


def _plain_outputs(model: nn.Module, library: str, batches: list[Tensor]) -> list[Tensor]:
    outputs = []
    with torch.no_grad():
        for x in batches:
            library_reset(library, model)
            outputs.append(model(x))
    library_reset(library, model)
    return outputs


def _assert_quantiles(measured: dict[str, float], values: Tensor, where: str) -> None:
    """Histogram quantiles are the inverse CDF read to one bin: within BIN_WIDTH of numpy's ``inverted_cdf``
    quantile (the smallest value whose CDF reaches q), clamped to the histogram's range."""
    for q in QUANTILES:
        exact = float(np.clip(np.quantile(values.numpy(), q, method="inverted_cdf"), -RANGE, RANGE))
        got = measured[f"q{round(q * 100):02d}"]
        assert abs(got - exact) <= BIN_WIDTH + 1e-9, f"{where} q={q}: got {got}, expected {exact}"


MEMBRANE_KINDS = ["spikenorm", "spikenorm_mpbn", "spikenorm_ots", "snntorch", "spikingjelly_m", "spikingjelly_s"]


@pytest.mark.parametrize("kind", MEMBRANE_KINDS)
def test_membrane_against_a_float64_simulation(kind):
    model, name, library, norm = membrane_model(kind)
    model.eval()
    batches = membrane_batches()
    simulated = [simulate(library, x, norm) for x in batches]
    relative = torch.cat([r for r, _ in simulated], dim=1)  # [T, all samples, C]
    spikes = torch.cat([s for _, s in simulated], dim=1)

    # the simulation is the neuron: same spikes as the model's own forward
    plain = _plain_outputs(model, library, batches)
    assert torch.equal(torch.cat(plain, dim=1).double(), spikes)

    diagnosis = diagnose(model, batches)
    d = diagnosis.neurons[name]

    near = relative.abs() <= 0.1
    assert d.near_threshold == float(near.sum()) / near.numel()
    assert 0.01 < d.near_threshold < 0.5
    assert d.step_near_threshold == [float(near[t].sum()) / near[t].numel() for t in range(MT)]
    _assert_quantiles(d.quantiles, relative.flatten(), f"{kind} all steps")
    assert len(d.step_quantiles) == MT
    for t in range(MT):
        _assert_quantiles(d.step_quantiles[t], relative[t].flatten(), f"{kind} step {t}")
    assert d.firing_rate == pytest.approx(float(spikes.mean()), rel=1e-12)
    fired = spikes.reshape(-1, MC).sum(0)
    observations = spikes.shape[0] * spikes.shape[1]
    assert d.never_firing == float((fired == 0).double().mean())
    assert d.always_firing == float((fired == observations).double().mean())
    assert d.never_firing >= 1 / MC and d.always_firing >= 1 / MC
    histogram = diagnosis.histograms[name]
    assert histogram.shape == (MT, round(2 * RANGE / BIN_WIDTH))
    assert torch.equal(histogram.sum(1), torch.full((MT,), float(relative[0].numel()), dtype=F64))


@pytest.mark.parametrize("kind", MEMBRANE_KINDS)
def test_recording_the_membrane_changes_no_spike(kind):
    model, name, library, _ = membrane_model(kind)
    model.eval()
    batches = membrane_batches(seed=14)
    plain = _plain_outputs(model, library, batches)
    neuron = dict(model.named_modules())[name]
    recorded = []
    with torch.no_grad(), MembraneRecorder({name: neuron}) as recorder:
        for x in batches:
            recorder.new_sequence()
            library_reset(library, model)
            recorded.append(model(x))
    library_reset(library, model)
    for p, r in zip(plain, recorded):
        assert torch.equal(p, r)
    assert recorder.histograms()[name].sum() == MT * MB * MC * len(batches)
    assert _plain_outputs(model, library, batches)[0].equal(plain[0])  # the probe is gone afterwards


def test_near_sets_the_band_and_the_log_keys_carry_the_values():
    model, name, library, _ = membrane_model("spikenorm")
    batches = membrane_batches()
    relative = torch.cat([simulate(library, x)[0] for x in batches], dim=1)

    d = diagnose(model, batches, near=0.25)

    assert d.neurons[name].near_threshold == float((relative.abs() <= 0.25).sum()) / relative.numel()
    keys = d.scalars(per_step=True)
    assert keys[f"diagnostics/near_threshold/{name}"] == d.neurons[name].near_threshold
    assert keys[f"diagnostics/near_threshold/{name}/t{MT - 1}"] == d.neurons[name].step_near_threshold[-1]
    assert keys[f"diagnostics/membrane_median/{name}"] == d.neurons[name].quantiles["q50"]
    assert keys["diagnostics/output_top1_agreement"] == 1.0  # no norm, nothing changes in the train pass
    two_layers = diagnose(_small_net(), ots_osr_data())
    keys = two_layers.scalars()
    assert keys["diagnostics/stat_w2/1"] == two_layers.layers["1"].stat_w2
    assert keys["diagnostics/train_eval_gap"] == two_layers.layers["1"].train_eval_gap  # the mean over one layer
    assert json.loads(two_layers.to_json()) == two_layers.to_dict()


# ---------------------------------------------------------------------------------------------------------------
# 5. errors
# ---------------------------------------------------------------------------------------------------------------
def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(C, C), build_norm("bn", C), LIF(threshold=0.5)).double()


def test_errors_name_the_problem():
    x = torch.randn(T, B, C, dtype=F64)
    with pytest.raises(ValueError, match="diagnose needs at least one batch"):
        diagnose(_small_net(), [])
    with pytest.raises(ValueError, match="diagnose was asked for num_batches=3"):
        diagnose(_small_net(), [x], num_batches=3)
    with pytest.raises(ValueError, match="unknown output 'probabilities'; available: logits, actions"):
        diagnose(_small_net(), [x], output="probabilities")
    with pytest.raises(ValueError, match="nothing to diagnose"):
        diagnose(nn.Sequential(nn.Linear(C, C), nn.ReLU()).double(), [x])
    with pytest.raises(ValueError, match=r"looks batch-major \[B, T, ...]"):
        diagnose(_small_net(), [torch.randn(B, T, C, dtype=F64)], time_steps=T)
    with pytest.raises(ValueError, match=r"never called layer 'spare' \(VanillaBN\)"):
        diagnose(WithSpareNorm(), [x])


class WithSpareNorm(nn.Module):
    """A network holding a norm its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _small_net()
        self.spare = build_norm("bn", C).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def test_a_tuple_batch_without_forward_is_refused_before_the_model_runs():
    model = _small_net()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    x = torch.randn(T, B, C, dtype=F64)
    with pytest.raises(TypeError, match=r"batch 0 is a tuple \(Tensor\[4, 12, 5\], int\)"):
        diagnose(model, [(x, 3)])
    assert calls == []
    d = diagnose(model, [(x, 3)], forward=lambda m, batch: m(batch[0]))  # the same batch with a forward is fine
    assert set(d.layers) == {"1"} and set(d.neurons) == {"2"}
