"""Mixed precision on CPU with ``torch.autocast("cpu", dtype=torch.bfloat16)``: fused == eager neurons, training
close to float32, spikes that differ from the float32 path only near the threshold, float32 norm statistics,
recalibration and fold checks under autocast (docs/guides/mixed-precision.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import eager_and_fused
from torch import nn

from spikenorm import fused
from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import CLIF, IF, LIF, SpikingNeuron, spiking_neurons
from spikenorm.norm import TimeMajorNorm, build_norm, ca_bn_updates
from spikenorm.recalibrate import recalibrate_bn

BF16 = torch.bfloat16
SHAPE = (4, 3, 5, 2, 2)  # [T, B, C, H, W], the shape of tests/test_fused_neurons.py
CLASSES = {"if": IF, "lif": LIF, "clif": CLIF}


def autocast(enabled: bool = True) -> torch.autocast:
    return torch.autocast("cpu", dtype=BF16, enabled=enabled)


def eval_mpbn(channels: int) -> TimeMajorNorm:
    """An eval-mode MPBN with non-trivial statistics and frozen parameters (what the fused kernels cover)."""
    norm = build_norm("mpbn", channels)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.running_mean.copy_(0.3 * torch.randn(norm.running_mean.shape, generator=gen))
        norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=gen))
        norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=gen))
    return norm.requires_grad_(False).eval()


def fused_matches_eager(neuron: SpikingNeuron, dtype: torch.dtype, calls: list, inference: bool = False) -> None:
    """Under autocast, the fused path (really taken) gives the eager spikes bit for bit in the input's dtype, those
    of a float32 input rounded to ``dtype`` (the membrane is float32), and close input gradients in ``dtype``."""
    fast, x, grad_out = eager_and_fused(neuron, SHAPE, dtype, scale=1.5)
    assert fused.unsupported_reason(fast, x) is None
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        se, sf = neuron(xe), fast(xf)
    assert calls == [type(neuron).__name__]  # the fused path ran, no eager fallback
    assert se.dtype == sf.dtype == dtype
    assert torch.equal(se, sf)
    assert torch.equal(se, neuron(x.float()).to(dtype))  # state and comparison in float32
    assert 0 < se.float().mean() < 1
    (se * grad_out).sum().backward()
    (sf * grad_out).sum().backward()
    assert xe.grad.dtype == xf.grad.dtype == dtype
    # both compute the gradient in float32 and round it once to the input's dtype: at most one rounding apart
    torch.testing.assert_close(xf.grad.float(), xe.grad.float(), rtol=2 * torch.finfo(dtype).eps, atol=1e-6)
    assert xe.grad.abs().sum() > 0
    if inference:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):  # the spikes-only kernel
            assert torch.equal(fast(x), se)
        assert calls == [type(neuron).__name__] * 2


CASES = [
    pytest.param("lif", "hard", True, id="lif-hard-mpbn"),
    pytest.param("if", "soft", False, id="if-soft"),
    pytest.param("clif", "hard", False, id="clif-hard"),
    *(
        pytest.param(kind, reset, mpbn, id=f"{kind}-{reset}{'-mpbn' if mpbn else ''}", marks=pytest.mark.slow)
        for kind in CLASSES
        for reset, mpbn in (("hard", False), ("soft", False), ("hard", True))
        if (kind, reset, mpbn) not in (("lif", "hard", True), ("if", "soft", False), ("clif", "hard", False))
    ),
]


@pytest.mark.parametrize(("kind", "reset", "mpbn"), CASES)
def test_fused_matches_eager_under_bf16_autocast(kind, reset, mpbn, count_fused):
    membrane_norm = eval_mpbn(SHAPE[2]) if mpbn else None
    neuron = CLASSES[kind](reset=reset, membrane_norm=membrane_norm, threshold=0.6)
    fused_matches_eager(neuron, BF16, count_fused, inference=mpbn)


@pytest.mark.slow
def test_fused_matches_eager_float16(count_fused):
    fused_matches_eager(LIF(decay=0.25, membrane_norm=eval_mpbn(SHAPE[2])), torch.float16, count_fused)


def test_fused_half_precision_is_no_fallback_reason():
    x = torch.zeros(SHAPE)
    for dtype in (torch.bfloat16, torch.float16):
        assert fused.unsupported_reason(LIF(membrane_norm=eval_mpbn(SHAPE[2])), x.to(dtype)) is None
        assert fused.use_fused(LIF(), x.to(dtype), "fused")
    assert "float16/bfloat16/float32/float64" in fused.unsupported_reason(LIF(), x.to(torch.int32))


# -- networks ------------------------------------------------------------------------------------------------
def vgg(membrane_norm: str | None = None, seed: int = 0) -> SpikingVGG:
    torch.manual_seed(seed)
    spec = LayerSpec(norm="tdbn", membrane_norm=membrane_norm, neuron="lif", neuron_kwargs={"decay": 0.5})
    return SpikingVGG([16, "A", 32, "A"], in_channels=3, num_classes=10, layers=spec)


def batch(seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(4, size, 3, 12, 12, generator=gen), torch.randint(0, 10, (size,), generator=gen)


def train(net: nn.Module, steps: int, bf16: bool) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        with autocast(bf16):
            loss = F.cross_entropy(net(x).mean(0), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_under_bf16_autocast_is_close_to_float32():
    """Three SGD steps of a SpikingVGG (tdBN, MPBN, LIF). The first loss differs only by the forward's rounding:
    bfloat16 rounds the conv inputs and outputs (unit roundoff 2^-8 = 0.4%, relative) and flips the spikes whose
    membrane lies within that of the threshold; the loss, a mean over 16 samples of a cross entropy of
    time-averaged logits, moves by a small fraction of it (measured: < 0.05%). The later steps add the parameter
    differences of bfloat16 gradients after lr 0.1 steps (measured: < 0.05%). The bound, 1% per step, is 2.5
    unit roundoffs: a norm or a membrane in bfloat16 would not fail it, but a loss off by a step would."""
    net32 = vgg("mpbn")
    net16 = copy.deepcopy(net32)
    fp32, bf16 = train(net32, 3, bf16=False), train(net16, 3, bf16=True)
    assert all(math.isfinite(loss) for loss in bf16)
    relative = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    print(f"\nloss fp32 {fp32}\nloss bf16 {bf16}\nrelative difference {relative}")
    assert max(relative) < 0.01
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net16.parameters())
    assert all(b.dtype == torch.float32 for name, b in net16.named_buffers() if "running" in name)


def _record_neurons(net: nn.Module, record: dict, force: dict | None = None) -> list:
    """Hooks recording each neuron's input and spikes; with ``force``, each neuron hands on the spikes ``force``
    holds for it instead of its own (teacher forcing), so every layer sees the same input spikes in both runs."""

    def hook(module, args, out, name):
        record[name] = (args[0].detach(), out.detach())
        return None if force is None else force[name].to(out.dtype)

    return [n.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name)) for name, n in spiking_neurons(net)]


def test_bf16_spikes_differ_from_float32_only_near_the_threshold():
    """Every layer of a SpikingVGG (training-mode tdBN, LIF) gets the float32 run's input spikes (teacher forcing),
    so its input current differs from the float32 one only by bfloat16 rounding (conv, norm): ``dx_t``. With the
    membrane in float32, the bfloat16 membrane of a neuron stays within ``B_t = sum_k decay^(t-k) |dx_k|`` of the
    float32 one until the neuron first fires differently; so that first disagreement lies where the float32
    membrane is within ``B_t`` of the threshold ("near-threshold"). Later steps of that neuron follow its own
    differing reset and are counted, not bounded."""
    net = vgg()
    x, _ = batch(7, size=32)
    ref, low = {}, {}
    handles = _record_neurons(net, ref)
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    handles = _record_neurons(net, low, force={name: spikes for name, (_, spikes) in ref.items()})
    with torch.no_grad(), autocast():
        net(x)
    for handle in handles:
        handle.remove()
    totals = {"neuron-steps": 0, "spikes": 0, "disagreements": 0, "first disagreements": 0, "near-threshold": 0}
    for name, neuron in spiking_neurons(net):
        (x32, s32), (x16, s16) = ref[name], low[name]
        assert x16.dtype == s16.dtype == BF16 and x32.dtype == s32.dtype == torch.float32
        theta, decay = float(neuron.threshold), neuron.decay
        v, bound, membranes, bounds, spikes = torch.zeros_like(x32[0]), torch.zeros_like(x32[0]), [], [], []
        for t in range(x32.shape[0]):  # the float32 LIF (hard reset to 0) and the rounding bound B_t
            h = decay * v + x32[t]
            bound = decay * bound + (x16[t].float() - x32[t]).abs()
            s = (h - theta > 0).float()
            v = h * (1 - s)
            membranes.append(h)
            bounds.append(bound)
            spikes.append(s)
        h, bound = torch.stack(membranes), torch.stack(bounds)
        assert torch.equal(torch.stack(spikes), s32)  # the recomputation is the neuron's float32 forward
        slack = 8 * x32.shape[0] * torch.finfo(torch.float32).eps * (1 + h.abs())  # float32 rounding of both runs
        near = (h - theta).abs() <= bound + slack
        differ = s16.float() != s32
        first = differ & (differ.cumsum(0) == 1)
        assert near[first].all(), f"{name}: a spike flipped away from the threshold: |h - theta| = {(h - theta)[first]}"
        for key, count in zip(totals, (s32.numel(), s32.sum(), differ.sum(), first.sum(), near.sum())):
            totals[key] += int(count)
    print("\nbf16 autocast vs float32 spikes (teacher-forced SpikingVGG):", totals)
    assert totals["disagreements"] < 0.01 * totals["neuron-steps"]
    assert 0 < totals["spikes"] < totals["neuron-steps"]


# -- norms ---------------------------------------------------------------------------------------------------
NORMS = [
    ("tdbn", {}),
    ("bn", {}),
    ("bntt", {"time_steps": 4}),
    ("tebn", {"time_steps": 4}),
    ("tab", {"time_steps": 4}),
    ("bn", {"running_update": "per_batch"}),
    ("osr", {}),
    ("carebn", {}),
    ("mpbn", {}),
    ("mpbn", {"feature_shape": (5, 3, 3)}),
]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    NORMS,
    ids=[
        f"{n}{'-elementwise' if k.get('feature_shape') else ''}{'-per_batch' if k.get('running_update') else ''}"
        for n, k in NORMS
    ],
)
def test_norm_statistics_are_float32_pooled_statistics_of_bf16_inputs(name, kwargs):
    """A norm fed bfloat16 under autocast keeps float32 buffers equal (to float32 rounding) to those of a float64
    copy fed the same values, and returns bfloat16 within one rounding of the float64 output."""
    layer = build_norm(name, 5, **kwargs).train()
    reference = copy.deepcopy(layer).double()
    gen = torch.Generator().manual_seed(1)
    x = (3.0 + 2.0 * torch.randn(4, 8, 5, 3, 3, generator=gen)).to(BF16).requires_grad_()
    for _ in range(2):  # two updates: the second starts from measured statistics
        with ca_bn_updates(layer), ca_bn_updates(reference), autocast():
            y = layer(x)
            expected = reference(x.detach().double())
    assert y.dtype == BF16
    bf16_rounding = torch.finfo(BF16).eps / 2
    torch.testing.assert_close(y.double(), expected, rtol=bf16_rounding + 1e-5, atol=1e-5)
    buffers = dict(reference.named_buffers())
    for key, buffer in layer.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, key
            torch.testing.assert_close(buffer.double(), buffers[key], rtol=1e-5, atol=1e-6, msg=key)
    assert layer.num_batches_tracked == reference.num_batches_tracked > 0
    y.float().sum().backward()
    assert x.grad.dtype == BF16 and torch.isfinite(x.grad).all()
    with torch.no_grad(), autocast():
        inference = layer.eval()(x)
    assert inference.dtype == BF16
    torch.testing.assert_close(inference.double(), reference.eval()(x.double()), rtol=bf16_rounding + 1e-5, atol=1e-5)


# -- recalibration and folding -------------------------------------------------------------------------------
def test_recalibrate_under_autocast_writes_float32_pooled_statistics():
    """Re-calibration under autocast measures what each layer sees in a bf16-mixed run; afterwards the eval-mode
    model under autocast feeds every layer bfloat16 inputs whose float64 pooled statistics are its running ones."""
    net = vgg()
    batches = [batch(seed, size=8)[0] for seed in range(3)]
    with autocast():
        recalibrate_bn(net, batches)
    norms = {name: m for name, m in net.named_modules() if isinstance(m, TimeMajorNorm)}
    seen: dict[str, list] = {name: [] for name in norms}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, name=name: seen[name].append(args[0]))
        for name, layer in norms.items()
    ]
    with torch.no_grad(), autocast():
        net.eval()
        for x in batches:
            net(x)
    for handle in handles:
        handle.remove()
    for name, norm in norms.items():
        assert all(x.dtype == BF16 for x in seen[name])
        pooled = torch.cat([x.double().transpose(1, 2).flatten(2) for x in seen[name]], dim=2)  # [T, C, B H W]
        pooled = pooled.transpose(0, 1).flatten(1)  # [C, T B H W]
        assert norm.running_mean.dtype == norm.running_var.dtype == torch.float32
        torch.testing.assert_close(norm.running_mean.double(), pooled.mean(1), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(norm.running_var.double(), pooled.var(1), rtol=1e-5, atol=1e-6, msg=name)


def test_fold_of_a_model_trained_under_autocast_is_exact():
    net = vgg("mpbn")
    train(net, 2, bf16=True)
    folded = fold_model(net)
    assert all(p.dtype == torch.float32 for p in folded.parameters())
    x, _ = batch(11)
    exact = check_equivalence(net, folded, x, dtype=torch.float64)
    assert exact.exact and exact.total_spikes > 0, str(exact)
    plain = check_equivalence(net, folded, x)
    with autocast():  # the check runs in full precision even when called from a bf16-mixed region
        inside = check_equivalence(net, folded, x)
    assert inside.flipped_spikes == plain.flipped_spikes and inside.max_abs_diff == plain.max_abs_diff
    assert torch.equal(inside.folded_output, plain.folded_output)
    assert inside.folded_output.dtype == torch.float32
