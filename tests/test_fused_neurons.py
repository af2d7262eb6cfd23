"""The fused multi-step neuron path (spikenorm.fused) against the eager loop, the reference.

Compilation dominates the cost, so every test uses the same small shape and the kernels (cached per
configuration inside spikenorm.fused) are shared across tests. On CPU the fused spikes are bit-identical to the
eager ones; on CUDA (Triton may contract ``a * b + c`` into an FMA, see spikenorm.fused) a neuron may first
disagree only where its membrane lies within rounding of the threshold (:func:`assert_spikes_agree`).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from spikenorm import fused
from spikenorm.neurons import CLIF, IF, LIF, SpikingNeuron, stateful
from spikenorm.norm import build_norm
from spikenorm.surrogate import CallableSurrogate, Sigmoid

pytestmark = pytest.mark.skipif(not fused.compile_available(), reason="torch.compile unavailable")

SHAPE = (4, 3, 5, 2, 2)  # [T, B, C, H, W]
CLASSES = {"if": IF, "lif": LIF, "clif": CLIF}


def threshold(kind: str, dtype: torch.dtype) -> float | torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if kind == "scalar":
        return 0.7
    if kind == "channel":
        return (0.4 + torch.rand(SHAPE[2], generator=gen)).to(dtype)
    return (0.4 + torch.rand(SHAPE[2:], generator=gen)).to(dtype)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` (``[T, B, C, H, W]``) stored with channels innermost, as convolution outputs in channels-last
    layout are: same values, strides of a ``[T, B, H, W, C]`` tensor."""
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def margins(neuron: SpikingNeuron, x: torch.Tensor) -> torch.Tensor:
    """``z_t = u_t - theta`` of every step of ``neuron``'s eager forward on ``x`` (what its surrogate receives)."""
    z = []
    handle = neuron.surrogate.register_forward_hook(lambda module, args, out: z.append(args[0].detach()))
    try:
        with torch.no_grad():
            neuron(x)
    finally:
        handle.remove()
    return torch.stack(z)


def assert_spikes_agree(eager: torch.Tensor, fast: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """Assert that the fused spikes ``fast`` agree with the ``eager`` ones (``[T, B, ...]``); return the mask of
    the neurons (``[B, ...]``) whose spikes agree at every step.

    On CPU they must be bit-identical. On CUDA a neuron may first disagree at a step where its eager margin
    ``z_t = u_t - theta`` (``z``, from :func:`margins`) is within rounding of zero, ``|z_t| <= 16 T eps (1 + max|z|)``
    (one rounding per step, accumulated over the ``T`` steps); after that its state differs and it is excluded."""
    if eager.device.type == "cpu":
        assert torch.equal(eager, fast)
        return torch.ones(eager.shape[1:], dtype=torch.bool)
    differ = eager != fast
    first = differ & (differ.cumsum(0) == 1)  # the step at which each disagreeing neuron first disagrees
    tol = 16 * eager.shape[0] * torch.finfo(z.dtype).eps * (1 + z.abs().max())
    assert (z[first].abs() <= tol).all(), f"spikes flipped away from the threshold: |z| = {z[first].abs().tolist()}"
    return ~differ.any(0)


def compare(
    eager: SpikingNeuron,
    dtype: torch.dtype,
    seed: int = 0,
    scale: float = 1.0,
    atol: float | None = None,
    layout: str = "contiguous",
    device: torch.device = torch.device("cpu"),
):
    """Run eager and a fused copy on the same input on ``device``; assert agreeing spikes
    (:func:`assert_spikes_agree`) and close input gradients (of the neurons whose spikes agree).

    ``layout="channels_last"`` stores the input (and the incoming gradient) channels innermost; the fused
    path must then return spikes and input gradient in that layout too."""
    eager.to(device).backend = "eager"
    fast = copy.deepcopy(eager)
    fast.backend = "fused"
    assert fused.unsupported_reason(fast, torch.zeros(SHAPE, dtype=dtype, device=device)) is None
    gen = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(SHAPE, generator=gen)).to(device, dtype)
    grad_out = torch.randn(SHAPE, generator=gen).to(device, dtype)
    if layout == "channels_last":
        x, grad_out = channels_last(x), channels_last(grad_out)
    xe, xf = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    assert xf.stride() == x.stride()
    se, sf = eager(xe), fast(xf)
    z = margins(eager, x) if device.type == "cuda" else None
    agree = assert_spikes_agree(se, sf, z)
    assert sf.stride() == x.stride()  # the fused path keeps the input's layout: no copy
    assert 0 < se.mean() < 1  # the case fires, but not everywhere
    (se * grad_out).sum().backward()
    (sf * grad_out).sum().backward()
    tol = atol if atol is not None else (1e-12 if dtype == torch.float64 else 1e-5)
    torch.testing.assert_close(xf.grad[:, agree], xe.grad[:, agree], rtol=0, atol=tol)
    assert xe.grad.abs().sum() > 0
    if layout == "channels_last":
        assert xf.grad.stride() == x.stride()
    with torch.no_grad():  # the spikes-only kernel
        assert_spikes_agree(se, fast(x), z)


@pytest.mark.parametrize("theta_kind", ["scalar", "channel", "element"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("kind", ["if", "lif", "clif"])
def test_fused_matches_eager_float64(kind, reset, detach_reset, theta_kind, count_fused, device):
    neuron = CLASSES[kind](threshold=threshold(theta_kind, torch.float64), reset=reset, detach_reset=detach_reset)
    compare(neuron.double(), torch.float64, device=device)
    assert count_fused  # the fused path really ran


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_fused_matches_eager_float32(reset, detach_reset, count_fused, device):
    compare(
        LIF(decay=0.75, threshold=threshold("channel", torch.float32), reset=reset, detach_reset=detach_reset),
        torch.float32,
        device=device,
    )
    assert count_fused


@pytest.mark.parametrize(
    "name, kwargs", [("rectangle", {}), ("atan", {}), ("triangle", {"width": 0.8}), ("dspike", {"b": 3.0})]
)
def test_fused_surrogates(name, kwargs, count_fused, device):
    compare(
        LIF(threshold=0.6, surrogate=name, surrogate_kwargs=kwargs, reset_value=-0.1).double(),
        torch.float64,
        device=device,
    )
    assert count_fused


@pytest.mark.parametrize("feature_shape", [None, SHAPE[2:]])
@pytest.mark.parametrize("affine", [True, False])
def test_fused_with_eval_mpbn(feature_shape, affine, count_fused, device):
    """Eval-mode MPBN in the loop: u_t = (h_t - mu) rstd gamma + beta feeds the comparison, spikes identical."""
    norm = build_norm("mpbn", SHAPE[2], feature_shape=feature_shape, affine=affine)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.running_mean.copy_(0.3 * torch.randn(norm.running_mean.shape, generator=gen))
        norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=gen))
        if affine:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
            norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=gen))
            norm.requires_grad_(False)  # gradients w.r.t. norm parameters are not covered (see below)
    neuron = LIF(decay=0.25, threshold=0.5, membrane_norm=norm.eval())
    compare(neuron, torch.float32, device=device)
    compare(neuron.double(), torch.float64, device=device)
    compare(neuron, torch.float64, layout="channels_last", device=device)
    assert count_fused


@pytest.mark.parametrize("theta_kind", ["channel", "element"])
@pytest.mark.parametrize("kind", ["if", "clif"])
def test_fused_keeps_channels_last_layout(kind, theta_kind, count_fused, device):
    """Inputs with channels innermost (convolutions in channels-last layout) run without a copy; per-channel
    and per-element thresholds are laid out the same way (a mismatch would fire the wrong neurons)."""
    for dtype in (torch.float64, torch.float32):
        neuron = CLASSES[kind](threshold=threshold(theta_kind, dtype)).to(dtype)
        compare(neuron, dtype, layout="channels_last", device=device)
    assert count_fused


def _assert_eager_fallback(neuron: SpikingNeuron, x: torch.Tensor, calls: list, train: bool = True):
    neuron.backend = "eager"
    fast = copy.deepcopy(neuron)
    fast.backend = "fused"
    assert fused.unsupported_reason(fast, x) is not None
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    se, sf = neuron(xe), fast(xf)
    assert torch.equal(se, sf)
    se.sum().backward()
    sf.sum().backward()
    assert torch.equal(xe.grad, xf.grad)
    assert not calls
    for a, b in zip(neuron.buffers(), fast.buffers()):  # e.g. running statistics updated the same way
        assert torch.equal(a, b)


def test_fallback_for_unsupported_cases(count_fused, device):
    x = torch.randn(SHAPE).to(device)
    _assert_eager_fallback(LIF(ots=True).to(device), x, count_fused)
    training_norm = build_norm("tdbn", SHAPE[2])  # training mode, no per-step running update it could be handed
    _assert_eager_fallback(LIF(membrane_norm=training_norm).to(device), x, count_fused)
    _assert_eager_fallback(LIF(detach_membrane=True).to(device), x, count_fused)
    _assert_eager_fallback(LIF(surrogate=CallableSurrogate(Sigmoid(4.0))).to(device), x, count_fused)
    norm = build_norm("mpbn", SHAPE[2]).eval()  # eval mode, but its parameters want gradients
    _assert_eager_fallback(LIF(membrane_norm=norm).to(device), x, count_fused)
    _assert_eager_fallback(LIF(membrane_norm=build_norm("tdbn", SHAPE[2]).eval()).to(device), x, count_fused)

    assert "[T, B, ...] tensor" in fused.unsupported_reason(LIF().to(device), x.to(torch.complex64))

    class MyLIF(LIF):  # a charge of its own: the inherited LinearCharge no longer describes it
        def charge(self, x, state):
            return super().charge(x, state)

    assert "MyLIF declares no linear charge" in fused.unsupported_reason(MyLIF().to(device), x)
    _assert_eager_fallback(MyLIF().to(device), x, count_fused)


def test_stateful_scope_uses_eager(count_fused, device):
    neuron, fast = LIF().to(device), LIF(backend="fused").to(device)
    x = torch.randn(SHAPE).to(device)
    outs = []
    for n in (neuron, fast):
        with stateful(n):
            outs.append(torch.cat([n(x[t : t + 1]) for t in range(SHAPE[0])]))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], neuron(x))
    assert not count_fused


def test_backend_selection(count_fused):
    x = torch.randn(SHAPE)
    assert LIF().backend == "auto"
    LIF()(x)
    LIF(backend="eager")(x)
    assert not count_fused  # auto: small inputs stay eager
    assert not fused.use_fused(LIF(), x, "auto")
    cpu_min = fused.AUTO_MIN_NUMEL["cpu"]
    large, below = torch.empty(4, cpu_min // 4), torch.empty(4, cpu_min // 4 - 1)
    assert fused.use_fused(LIF(), large, "auto")
    assert not fused.use_fused(LIF(), below, "auto")
    assert not fused.use_fused(LIF(), large, "eager")
    assert fused.use_fused(LIF(), x, "fused")
    assert not fused.use_fused(LIF(), torch.empty(large.shape, device="meta"), "auto")  # device not listed
    assert "backend='fused'" in repr(LIF(backend="fused"))
    assert "backend='eager'" in repr(LIF(backend="eager"))
    assert "backend" not in repr(LIF())
    with pytest.raises(ValueError, match="backend"):
        LIF(backend="triton")


def test_compile_failure_falls_back(monkeypatch, device):
    """A failing compilation warns once and runs the same ops uncompiled: identical spikes and gradients."""

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler")

        return run

    monkeypatch.setattr(fused.torch, "compile", broken_compile)
    neuron = LIF(decay=0.3, threshold=0.55).to(device)  # a configuration no other test compiles
    fast = LIF(decay=0.3, threshold=0.55, backend="fused").to(device)
    x = torch.randn(SHAPE).to(device)
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        sf = fast(xf)
    se = neuron(xe)
    assert torch.equal(se, sf)
    se.sum().backward()
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        sf.sum().backward()
    torch.testing.assert_close(xf.grad, xe.grad, rtol=0, atol=1e-6)
    assert "compilation failed" in fused.unsupported_reason(fast, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fast(x), se)  # now the eager loop, silently

    def this_configuration(key: tuple) -> bool:  # keys are (part, config, ...)
        return isinstance(key[1], fused._Config) and key[1].charge.decay == 0.3

    for key in list(filter(this_configuration, fused._CACHE)):  # leave no broken entries behind
        fused._CACHE.pop(key)
    fused._BROKEN.difference_update(set(filter(this_configuration, fused._BROKEN)))
