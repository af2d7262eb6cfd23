"""The norm before a neuron applied inside the fused kernels (``SpikingNeuron.forward_normalized``, the stages of
spikenorm's models) against the two layers run one after the other: spikes, input and parameter gradients, running
statistics; eval mode, layouts, hooks, ``torch.compile`` (the custom operator) and DDP (2 CPU processes, gloo).

The unfused reference is the norm's reference forward (``batch_statistics`` or the running statistics, then
``normalize`` and ``affine_transform``) followed by the neuron's eager loop: the fused forward performs the same
operations, so its spikes are bit-identical; gradients agree to float64 round-off (the kernels differentiate through
the batch statistics in closed form, autograd through ``var_mean``)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from spikenorm import fused
from spikenorm.models.layers import SpikingStage
from spikenorm.neurons import LIF
from spikenorm.norm import build_norm

pytestmark = pytest.mark.skipif(not fused.compile_available(), reason="torch.compile unavailable")

SHAPE = (3, 4, 5, 2, 3)  # [T, B, C, H, W]


def _input(dtype: torch.dtype = torch.float64, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return (x * torch.linspace(0.5, 2.0, shape[2], dtype=torch.float64).reshape(1, 1, -1, *[1] * (len(shape) - 3))).to(
        dtype
    )


def _norm(name: str, dtype: torch.dtype, **kwargs: object) -> torch.nn.Module:
    """A norm with non-trivial affine parameters (tdBN with alpha != 1, so its gain is exercised); a half-precision
    ``dtype`` keeps the layer in float32, as under autocast."""
    if name == "tdbn":
        kwargs.setdefault("alpha", 0.7)
    norm = build_norm(name, SHAPE[2], **kwargs).to(_module_dtype(dtype))
    if norm.affine:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=g))
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=g))
    return norm


def _module_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _reference(norm: torch.nn.Module, neuron: LIF, x: torch.Tensor) -> torch.Tensor:
    """The norm's reference forward (not torch's batch_norm) and the neuron's eager loop."""
    mean, var = norm.batch_statistics(x) if norm.training else norm.running_statistics(x)
    return neuron(norm.affine_transform(norm.normalize(x, mean, var)).to(x.dtype))


def _run_pair(name: str, dtype: torch.dtype, train: bool, x: torch.Tensor, **kwargs: object) -> dict:
    """Spikes, gradients and running statistics of the reference and of the fused call on the same input."""
    norm_ref = _norm(name, dtype, **kwargs).train(train)
    norm_fused = copy.deepcopy(norm_ref)
    neuron_ref = LIF(decay=0.6, threshold=0.8, backend="eager").to(_module_dtype(dtype))
    neuron_fused = LIF(decay=0.6, threshold=0.8, backend="fused").to(_module_dtype(dtype))
    assert fused.input_norm_unsupported_reason(norm_fused, x) is None
    out = {}
    for key, norm, run in (
        ("ref", norm_ref, lambda n, v: _reference(n, neuron_ref, v)),
        ("fused", norm_fused, lambda n, v: neuron_fused.forward_normalized(n, v)),
    ):
        leaf = x.detach().clone().requires_grad_(True)
        spikes = run(norm, leaf)
        weights = torch.linspace(-1.0, 2.0, spikes.numel(), dtype=torch.float64).reshape(spikes.shape)
        (spikes.double() * weights).sum().backward()
        out[key] = {
            "spikes": spikes.detach(),
            "grad": leaf.grad,
            "weight": None if norm.weight is None else norm.weight.grad,
            "bias": None if norm.bias is None else norm.bias.grad,
            "stats": (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked)),
        }
    return out


@pytest.mark.parametrize(
    "name, kwargs, train",
    [
        ("tdbn", {}, True),
        ("bn", {}, True),
        ("tdbn", {}, False),
        pytest.param("tdbn", {"affine": False}, True, marks=pytest.mark.slow),
        pytest.param("bn", {"running_update": "per_batch"}, True, marks=pytest.mark.slow),
        pytest.param("bn", {}, False, marks=pytest.mark.slow),
    ],
)
def test_fused_norm_matches_the_two_layers_float64(name, kwargs, train, count_fused):
    out = _run_pair(name, torch.float64, train, _input(), **kwargs)
    ref, got = out["ref"], out["fused"]
    assert count_fused
    assert 0.05 < ref["spikes"].mean() < 0.95  # spikes and silences both: the comparison means something
    assert torch.equal(got["spikes"], ref["spikes"])
    torch.testing.assert_close(got["grad"], ref["grad"], rtol=0, atol=1e-12)
    assert ref["grad"].abs().max() > 1e-3
    if ref["weight"] is not None:
        torch.testing.assert_close(got["weight"], ref["weight"], rtol=0, atol=1e-12)
        torch.testing.assert_close(got["bias"], ref["bias"], rtol=0, atol=1e-12)
    for a, b in zip(got["stats"], ref["stats"]):  # the same batch_statistics call: identical running statistics
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert got["stats"][2] == int(train)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.slow)])
def test_fused_norm_spikes_bit_identical_in_low_precision(dtype, count_fused):
    """float32 and bfloat16 (a conv output under autocast; statistics and membrane in float32): the same spikes bit
    for bit, input gradients within the dtype's rounding."""
    out = _run_pair("tdbn", dtype, True, _input(dtype, (4, 8, 5, 4, 4)))
    assert count_fused
    assert torch.equal(out["fused"]["spikes"], out["ref"]["spikes"])
    assert out["fused"]["spikes"].dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    scale = out["ref"]["grad"].float().abs().max()
    torch.testing.assert_close(out["fused"]["grad"].float(), out["ref"]["grad"].float(), rtol=0, atol=tol * scale)


def test_fused_norm_in_a_model_stage_keeps_channels_last_layout(count_fused):
    """A conv -> tdbn -> LIF stage: channels-last conv output fused without a copy; outputs and gradients as the
    stage run layer by layer (the default unfused tdBN: torch's batch_norm), up to rounding, in float64."""
    conv = torch.nn.Conv2d(2, SHAPE[2], 3, padding=1).double().to(memory_format=torch.channels_last)
    x = _input(torch.float64, (3, 4, 2, 4, 4)).requires_grad_(True)

    def stage(backend: str) -> SpikingStage:
        from spikenorm.synapse import TimeDistributed

        neuron = LIF(decay=0.6, threshold=0.8, backend=backend).double()
        return SpikingStage(TimeDistributed(copy.deepcopy(conv)), _norm("tdbn", torch.float64), neuron)

    results = []
    for backend in ("eager", "fused"):
        net = stage(backend)
        out = net(x)
        (out * torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        results.append((out.detach(), x.grad.clone(), net[0].module.weight.grad.clone(), net[1].running_var.clone()))
        x.grad = None
    assert count_fused
    (eager_out, eager_gx, eager_gw, eager_var), (fused_out, fused_gx, fused_gw, fused_var) = results
    assert torch.equal(fused_out, eager_out)
    assert fused_out.permute(0, 1, 3, 4, 2).is_contiguous()  # the conv's channels-last layout, kept (no copy)
    torch.testing.assert_close(fused_gx, eager_gx, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused_gw, eager_gw, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused_var, eager_var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("feature_shape", [None, pytest.param(SHAPE[2:], marks=pytest.mark.slow)])
def test_training_mpbn_inside_the_kernels_matches_the_eager_loop(feature_shape, count_fused):
    """MPBN in training as the neuron's membrane norm (per-step batch statistics of the membrane, computed inside
    the kernels; channel-wise and element-wise): spikes, input and gamma/beta gradients, and the T running updates
    per forward of the eager loop, which calls the layer at every step."""
    x = _input()
    norm = build_norm("mpbn", SHAPE[2], feature_shape=feature_shape).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        norm.bias.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(3))
    eager = LIF(decay=0.6, threshold=0.5, membrane_norm=norm, backend="eager").double()
    fast = copy.deepcopy(eager)
    fast.backend = "fused"
    assert fused.unsupported_reason(fast, x) is None
    results = []
    for neuron in (eager, fast):
        leaf = x.clone().requires_grad_(True)
        spikes = neuron(leaf)
        (spikes * torch.linspace(-1, 2, spikes.numel(), dtype=torch.float64).reshape(spikes.shape)).sum().backward()
        m = neuron.membrane_norm
        results.append((spikes.detach(), leaf.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var))
    assert count_fused == ["LIF"]
    (se, *eager_rest), (sf, *fused_rest) = results
    assert 0.05 < se.mean() < 0.95
    assert torch.equal(sf, se)
    for got, want in zip(fused_rest, eager_rest):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert int(fast.membrane_norm.num_batches_tracked) == SHAPE[0]  # one running update per step, as the loop makes


def _tdbn_and_mpbn_lif(call: str, monkeypatch: pytest.MonkeyPatch, grad: bool) -> tuple[list, list[str]]:
    """tdBN (training) inside the kernels of a LIF with MPBN (training) as its membrane norm, every parameter
    taking a gradient, run with the kernels called as ``call`` says (``"default"``: as ``fused_forward`` chooses;
    ``"operator"``: always through the custom operator, what ``torch.compile`` uses). Returns the results and the
    ways the kernels were called."""
    monkeypatch.undo()
    calls: list[str] = []
    apply, operator = fused._EagerNeuron.apply, fused._neuron_op
    monkeypatch.setattr(fused._EagerNeuron, "apply", lambda *a: calls.append("function") or apply(*a))
    monkeypatch.setattr(fused, "_neuron_op", lambda *a: calls.append("operator") or operator(*a))
    if call == "operator":
        monkeypatch.setattr(fused, "_call_neuron", lambda x, tensors, config: fused._neuron_op(x, tensors, config))
    norm = _norm("tdbn", torch.float64)
    mpbn = build_norm("mpbn", SHAPE[2]).double()
    with torch.no_grad():
        mpbn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        mpbn.bias.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(3))
    neuron = LIF(decay=0.6, threshold=0.5, membrane_norm=mpbn, backend="fused").double()
    leaf = _input().requires_grad_(True)
    with torch.set_grad_enabled(grad):
        spikes = neuron.forward_normalized(norm, leaf)
    stats = [norm.running_mean, norm.running_var, mpbn.running_mean, mpbn.running_var]
    if not grad:
        return [spikes, spikes.grad_fn, *stats], calls
    (spikes * torch.linspace(-1, 2, spikes.numel(), dtype=torch.float64).reshape(spikes.shape)).sum().backward()
    return [spikes, leaf.grad, norm.weight.grad, norm.bias.grad, mpbn.weight.grad, mpbn.bias.grad, *stats], calls


def test_eager_calls_equal_the_operator_bit_for_bit(monkeypatch):
    """Outside torch.compile the kernels are called without the custom operator (through ``_EagerNeuron`` when a
    gradient is wanted, directly when not): the same spikes, gradients (input, tdBN's and MPBN's weight and bias) and
    running statistics, bit for bit, as through the operator; without a gradient nothing is recorded."""
    want, via = _tdbn_and_mpbn_lif("operator", monkeypatch, grad=True)
    got, calls = _tdbn_and_mpbn_lif("default", monkeypatch, grad=True)
    assert via == ["operator"] and calls == ["function"]
    assert 0.05 < want[0].mean() < 0.95 and all(g.abs().max() > 1e-3 for g in want[1:6])
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    got, calls = _tdbn_and_mpbn_lif("default", monkeypatch, grad=False)
    assert calls == [] and got[1] is None
    assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[2:], want[6:]))


def test_training_and_evaluation_calls_share_one_compilation():
    """Dynamo specialises a compiled kernel on the grad mode and each input's requires_grad: the eager calls pass
    detached inputs under no_grad, so evaluation (under no_grad, or with a gradient-free input) runs the kernel the
    training step compiled instead of compiling it again."""
    from torch._dynamo.utils import counters

    neuron = LIF(decay=0.37, threshold=0.41, backend="fused").double()  # a configuration no other test compiles
    x = _input()
    before = counters["stats"]["unique_graphs"]
    neuron(x.clone().requires_grad_(True)).sum().backward()
    trained = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        neuron(x.clone().requires_grad_(True))
    neuron(x)
    assert trained - before == 2  # the forward and the backward kernel
    assert counters["stats"]["unique_graphs"] == trained


def test_fused_kernels_refuse_double_backward():
    """A gradient with a graph (gradient penalties) is refused by name, never returned without one: a later
    backward through it would silently miss the neuron's second-order terms."""
    x = _input().requires_grad_(True)
    spikes = LIF(threshold=0.5, backend="fused").double()(x)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(spikes.sum(), x, create_graph=True)


def test_hooked_or_uncovered_norms_run_unfused(count_fused):
    x = _input()
    neuron = LIF(backend="fused").double()
    norm = _norm("tdbn", torch.float64)
    seen = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert "forward hooks" in fused.input_norm_unsupported_reason(norm, x)
    neuron.forward_normalized(norm, x)
    handle.remove()
    assert seen == [x.shape]  # the hook ran: the norm ran as a layer
    tebn = build_norm("tebn", SHAPE[2], time_steps=SHAPE[0]).double()
    assert "overrides forward" in fused.input_norm_unsupported_reason(tebn, x)
    assert "another dtype" in fused.input_norm_unsupported_reason(_norm("tdbn", torch.float32), x)
    count_fused.clear()
    LIF(backend="eager").double().forward_normalized(norm, x)  # an eager neuron never fuses
    assert not count_fused


def test_compiled_model_calls_the_fused_operator():
    """Under torch.compile the neuron (with its norm) is one custom-operator node of the graph, not a traced time
    loop, and the compiled model computes what the eager one does."""
    torch._dynamo.reset()
    ops: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        ops.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    norm, neuron = _norm("tdbn", torch.float64), LIF(decay=0.6, threshold=0.8, backend="fused").double()
    net = SpikingStage(norm, neuron)
    x = _input()
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    out = compiled(x)
    assert any("spikenorm.fused_neuron" in op for op in ops), ops
    assert torch.equal(out, LIF(decay=0.6, threshold=0.8, backend="fused").double().forward_normalized(eager[0], x))


T, B, C = SHAPE[0], SHAPE[1], SHAPE[2]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x = _input(torch.float64, (T, 2 * B, C, 2, 3))[:, rank * B : (rank + 1) * B].clone().requires_grad_(True)
        norm = _norm("tdbn", torch.float64)
        neuron = LIF(decay=0.6, threshold=0.8, backend="fused").double()
        assert fused.input_norm_unsupported_reason(norm, x) is None
        membrane = LIF(membrane_norm=build_norm("mpbn", C).double(), backend="fused").double()
        assert "DDP" in fused.unsupported_reason(membrane, x)  # per-step statistics would need an all-reduce per step
        spikes = neuron.forward_normalized(norm, x)
        weights = torch.linspace(-1.0, 2.0, 2 * spikes.numel(), dtype=torch.float64).reshape(T, 2 * B, C, 2, 3)
        (spikes * weights[:, rank * B : (rank + 1) * B]).sum().backward()
        torch.save(
            {
                "spikes": spikes,
                "grad": x.grad,
                "weight": norm.weight.grad,
                "stats": (norm.running_mean, norm.running_var),
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_fused_norm_under_ddp_equals_one_process_on_the_concatenated_batch(tmp_path):
    """Two processes: the statistics are pooled by the all-reduce and their gradient flows back through it (the
    kernels leave that share to autograd there); spikes, input gradients, the sum of the weight gradients and the
    running statistics equal the unfused layers on the concatenated batch in one process."""
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x = _input(torch.float64, (T, 2 * B, C, 2, 3)).requires_grad_(True)
    norm = _norm("tdbn", torch.float64)
    spikes = _reference(norm, LIF(decay=0.6, threshold=0.8, backend="eager").double(), x)
    (spikes * torch.linspace(-1.0, 2.0, spikes.numel(), dtype=torch.float64).reshape(spikes.shape)).sum().backward()
    for r, got in enumerate(ranks):
        part = slice(r * B, (r + 1) * B)
        assert torch.equal(got["spikes"], spikes[:, part].detach())
        torch.testing.assert_close(got["grad"], x.grad[:, part], rtol=0, atol=1e-12)
        torch.testing.assert_close(got["stats"][0], norm.running_mean, rtol=0, atol=1e-14)
        torch.testing.assert_close(got["stats"][1], norm.running_var, rtol=0, atol=1e-14)
    torch.testing.assert_close(ranks[0]["weight"] + ranks[1]["weight"], norm.weight.grad, rtol=0, atol=1e-12)
