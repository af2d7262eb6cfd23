"""TEBN and TAB against independent float64 references written from their equations: training and inference maps,
gradients, running statistics, online (single-step) mode, refusals, re-calibration, bf16 autocast, models; and the
``T`` that BNTT, TEBN and TAB receive from the task when built without it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spikenorm.fold import fold_model
from spikenorm.models import LayerSpec, SpikingMLP, SpikingResNet19, SpikingTransformer, SpikingVGG
from spikenorm.neurons import LIF, stateful
from spikenorm.norm import BNTT, TAB, TEBN, StepIndexedNorm, accumulate_over_steps, available_norms, build_norm
from spikenorm.recalibrate import recalibrate_bn

T, B, C, H, W = 4, 5, 3, 2, 3
EPS, MOM = 1e-5, 0.1


def data(seed: int, shape=(T, B, C, H, W), device: torch.device | str = "cpu") -> torch.Tensor:
    """Steps and channels with different scales and offsets, so pooled, per-step and accumulated statistics differ."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(shape[0], 1, shape[2], *([1] * (len(shape) - 3)), generator=g, dtype=torch.float64) * 2.5 + 0.5
    shift = torch.rand(scale.shape, generator=g, dtype=torch.float64) * 4 - 2
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(device)


def randomised(name: str, device: torch.device | str = "cpu", seed: int = 0, **kwargs) -> nn.Module:
    """A float64 ``tebn``/``tab`` layer with random gamma (one negative channel), beta and per-step scale."""
    layer = build_norm(name, C, time_steps=T, **kwargs).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=g, dtype=torch.float64) + 0.5))
        layer.weight[..., 1] *= -1
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=torch.float64))
        step = layer.scale if name == "tebn" else layer.p
        step.copy_(torch.rand(T, generator=g, dtype=torch.float64) + 0.5)
    return layer.to(device)


def channel_view(a: torch.Tensor, ndim: int) -> torch.Tensor:
    """[C] -> broadcast against one step [B, C, *spatial]."""
    return a.reshape(a.shape[0], *([1] * (ndim - 3)))


def channel_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(d for d in range(x.ndim) if d != 2)


# -- independent references (explicit loops over steps, torch.var_mean on the pooled samples) -----------------------
def tebn_reference(x, gamma, beta, scale, mean=None, var=None):
    """``y_t = scale_t (gamma (x_t - mu) / sqrt(var + eps) + beta)``, ``mu, var`` pooled over (T, B, *spatial)."""
    if mean is None:
        var, mean = torch.var_mean(x, dim=channel_dims(x), correction=0)
    out = []
    for t in range(x.shape[0]):
        x_hat = (x[t] - channel_view(mean, x.ndim)) / torch.sqrt(channel_view(var, x.ndim) + EPS)
        out.append(scale[t] * (channel_view(gamma, x.ndim) * x_hat + channel_view(beta, x.ndim)))
    return torch.stack(out)


def tab_window_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Mean, biased variance [T, C] of the concatenated window x[0..t] for every t, and its sample counts."""
    means, variances, counts = [], [], []
    for t in range(x.shape[0]):
        window = x[: t + 1]
        var, mean = torch.var_mean(window, dim=channel_dims(window), correction=0)
        means.append(mean)
        variances.append(var)
        counts.append(window.numel() // x.shape[2])
    return torch.stack(means), torch.stack(variances), counts


def tab_reference(x, gamma, beta, p, mean=None, var=None):
    """``y_t = p_t^2 (gamma_t (x_t - mu_<=t) / sqrt(var_<=t + eps) + beta_t)``."""
    if mean is None:
        mean, var, _ = tab_window_statistics(x)
    out = []
    for t in range(x.shape[0]):
        x_hat = (x[t] - channel_view(mean[t], x.ndim)) / torch.sqrt(channel_view(var[t], x.ndim) + EPS)
        out.append(p[t] ** 2 * (channel_view(gamma[t], x.ndim) * x_hat + channel_view(beta[t], x.ndim)))
    return torch.stack(out)


def leaf_parameters(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone().requires_grad_() for name, p in layer.named_parameters()}


def reference_output(name: str, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    if name == "tebn":
        return tebn_reference(x, params["weight"], params["bias"], params["scale"])
    return tab_reference(x, params["weight"], params["bias"], params["p"])


# -- training forward, gradients, running statistics -----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(T, B, C, H, W), (T, B, C)], ids=["conv", "linear"])
@pytest.mark.parametrize("name", ["tebn", "tab"])
@pytest.mark.parametrize("fused", [True, False], ids=["fast_path", "reference_path"])
def test_training_forward_and_gradients_match_the_float64_reference(name, shape, fused, device):
    layer = randomised(name, device)
    if not fused:  # TEBN's F.batch_norm path off: the op-by-op path that DDP and half precision take
        layer.uses_torch_batch_norm = lambda x: False
    params = leaf_parameters(layer)
    x = data(1, shape, device).requires_grad_()
    upstream = data(2, shape, device)
    y = layer(x)
    (y * upstream).sum().backward()

    xr = x.detach().cpu().clone().requires_grad_()
    expected = reference_output(name, xr, params)
    (expected * upstream.cpu()).sum().backward()
    torch.testing.assert_close(y.detach().cpu(), expected.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-9, atol=1e-10)
    for key, param in layer.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), params[key].grad, rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", ["tebn", "tab"])
def test_running_statistics_after_two_batches_then_inference(name, device):
    layer = randomised(name, device)
    batches = [data(seed, device=device) for seed in (3, 4)]
    n = B * H * W  # samples per channel and step
    if name == "tebn":
        running_mean, running_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    else:
        running_mean, running_var = torch.zeros(T, C, dtype=torch.float64), torch.ones(T, C, dtype=torch.float64)
    for x in batches:
        layer(x)
        x = x.cpu()
        if name == "tebn":
            var, mean = torch.var_mean(x, dim=channel_dims(x), correction=0)
            var_u = var * (T * n) / (T * n - 1)
        else:
            mean, var, counts = tab_window_statistics(x)
            assert counts == [(t + 1) * n for t in range(T)]
            counts = torch.tensor(counts, dtype=torch.float64)[:, None]
            var_u = var * counts / (counts - 1)
        running_mean = (1 - MOM) * running_mean + MOM * mean
        running_var = (1 - MOM) * running_var + MOM * var_u
    torch.testing.assert_close(layer.running_mean.cpu(), running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var.cpu(), running_var, rtol=1e-12, atol=1e-12)
    assert int(layer.num_batches_tracked) == 2
    assert layer.running_mean.shape == ((C,) if name == "tebn" else (T, C))

    layer.eval()
    x = data(5, device=device)
    params = {key: p.detach().cpu() for key, p in layer.named_parameters()}
    reference = tebn_reference if name == "tebn" else tab_reference
    step = params["scale"] if name == "tebn" else params["p"]
    expected = reference(x.cpu(), params["weight"], params["bias"], step, running_mean, running_var)
    torch.testing.assert_close(layer(x).cpu(), expected, rtol=1e-10, atol=1e-10)
    assert int(layer.num_batches_tracked) == 2  # inference leaves the running statistics alone


def test_accumulated_statistics_equal_the_concatenated_windows_and_avoid_cancellation():
    x = data(6)
    mean_t, var_t = x.mean(dim=(1, 3, 4)), x.var(dim=(1, 3, 4), unbiased=False)
    mean, var = accumulate_over_steps(mean_t, var_t)
    expected_mean, expected_var, _ = tab_window_statistics(x)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, expected_var, rtol=1e-12, atol=1e-12)
    # float32 moments with a large common offset: E[x^2] - E[x]^2 cancels, the Welford merge does not
    mean32, var32 = (mean_t + 1e4).float(), var_t.float()
    exact_mean, exact_var = accumulate_over_steps(mean32.double(), var32.double())  # same inputs, float64 arithmetic
    mean, var = accumulate_over_steps(mean32, var32)
    torch.testing.assert_close(mean.double(), exact_mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), exact_var, rtol=1e-5, atol=0)
    steps = torch.arange(1, T + 1, dtype=torch.float32)[:, None]
    naive = (var32 + mean32**2).cumsum(0) / steps - (mean32.cumsum(0) / steps) ** 2
    assert (naive.double() - exact_var).abs().max() > 100 * (var.double() - exact_var).abs().max()


# -- refusals ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tebn", "tab"])
def test_time_steps_checked_and_input_steps_checked(name):
    assert name in available_norms()
    with pytest.raises(ValueError, match=r"time_steps must be a positive int, got 0"):
        build_norm(name, C, time_steps=0)
    layer = build_norm(name, C, time_steps=T)
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(ValueError, match=r"built for T=4 steps but got input \[T, B, C, \.\.\.\] with T=3"):
            layer(torch.randn(3, B, C))
        with pytest.raises(ValueError, match="T=1.*only inside spikenorm.neurons.stateful"):
            layer(torch.randn(1, B, C))
    layer.eval()
    with stateful(layer), pytest.raises(ValueError, match="has already seen 4 and the call adds 1"):
        for t in range(T + 1):
            layer(torch.randn(1, B, C))


def test_tab_refuses_one_value_per_channel_at_the_first_step():
    layer = build_norm("tab", C, time_steps=T)
    with pytest.raises(ValueError, match=r"TAB normalizes each time step.*shape \(4, 1, 3\)"):
        layer(torch.randn(T, 1, C))
    assert int(layer.num_batches_tracked) == 0
    assert layer(torch.randn(T, 1, C, H, W)).shape == (T, 1, C, H, W)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tebn", r"\(TEBN\): its inference map y_t = scale_t \(gamma x_hat_t \+ beta\) multiplies each time step"),
        ("tab", r"\(TAB\): step t is normalised with its own accumulated running statistics"),
    ],
)
def test_fold_refuses_with_the_reason(name, reason):
    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm=name, time_steps=2))
    assert TEBN.fold_target == TAB.fold_target == "unfoldable"
    with pytest.raises(ValueError, match=rf"cannot fold norm layer 'features.0.1' {reason}"):
        fold_model(model)


# -- online (single-step) mode -----------------------------------------------------------------------------------------
def test_tab_online_training_equals_the_multi_step_values_and_running_update(device):
    multi, online = randomised("tab", device), randomised("tab", device)
    x = data(7, device=device)
    expected = multi(x)
    with stateful(online):
        steps = [online(x[t : t + 1]) for t in range(T)]
        assert int(online.num_batches_tracked) == 0  # committed when the sequence closes
    torch.testing.assert_close(torch.cat(steps), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(online.running_mean, multi.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(online.running_var, multi.running_var, rtol=1e-12, atol=1e-12)
    assert int(online.num_batches_tracked) == 1
    online.eval()
    multi.eval()
    with stateful(online):  # inference step by step uses row t of the running statistics and parameters
        steps = [online(x[t : t + 1]) for t in range(T)]
    torch.testing.assert_close(torch.cat(steps), multi(x), rtol=1e-12, atol=1e-12)


def test_tab_online_gradient_treats_earlier_steps_as_constants(device):
    """Each step's loss is back-propagated at once; x_t's gradient flows through its own step's moments only."""
    layer = randomised("tab", device)
    params = leaf_parameters(layer)
    x = data(8, device=device).requires_grad_()
    upstream = data(9, device=device)
    with stateful(layer):
        for t in range(T):
            (layer(x[t : t + 1]) * upstream[t : t + 1]).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    for t in range(T):
        window = torch.cat([xr[:t].detach(), xr[t : t + 1]])  # earlier steps constant
        y_t = reference_output("tab", window, params)[t]
        (y_t * upstream[t].cpu()).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-9, atol=1e-10)
    for key, param in layer.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), params[key].grad, rtol=1e-9, atol=1e-10, msg=key)


def test_tebn_online_training_is_refused_and_inference_runs_step_by_step(device):
    layer = randomised("tebn", device)
    layer(data(10, device=device))  # a training batch: non-trivial running statistics
    x = data(11, device=device)
    before = layer.running_mean.clone()
    with pytest.raises(
        ValueError,
        match=r"TEBN normalises every step with statistics pooled over all T=4 steps.*"
        r"norm='tab'",
    ):
        with stateful(layer):
            layer(x[:1])
    assert torch.equal(layer.running_mean, before)
    layer.eval()
    with stateful(layer):
        steps = [layer(x[t : t + 1]) for t in range(T)]
    torch.testing.assert_close(torch.cat(steps), layer(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(steps[0], steps[1] * layer.scale[0] / layer.scale[1])  # different scales per step


def test_tab_in_an_online_trained_model_updates_once_per_sequence():
    from spikenorm.tasks.online import online_backward

    torch.manual_seed(0)
    model = SpikingMLP(C * H * W, 4, hidden=(6,), layers=LayerSpec(norm="tab", time_steps=T)).double()
    _, logits = online_backward(model, data(12, shape=(T, B, C, H, W)), lambda out: out.square().mean())
    assert logits.shape == (T, B, 4)
    norms = [m for m in model.modules() if isinstance(m, TAB)]
    assert norms and all(int(m.num_batches_tracked) == 1 for m in norms)
    assert all(m.p.grad is not None and m.p.grad.abs().sum() > 0 for m in norms)


# -- recalibration -----------------------------------------------------------------------------------------------------
F = 4


def network(name: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, F),
        build_norm(name, F, time_steps=T),
        LIF(decay=0.75, threshold=0.5),
        nn.Linear(F, F),
        build_norm(name, F, time_steps=T),
        LIF(decay=0.75, threshold=0.5),
    ).double()


def inputs_of(model: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """What ``layer`` sees in eval mode over all batches, concatenated along the batch: [T, M B, F]."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model.eval()
        for x in batches:
            model(x)
    handle.remove()
    return torch.cat(seen, dim=1)


@pytest.mark.parametrize("name", ["tebn", "tab"])
def test_recalibration_writes_what_each_layer_sees_at_inference(name):
    model = network(name)
    g = torch.Generator().manual_seed(13)
    batches = [torch.randn(T, 6, 3, generator=g, dtype=torch.float64) * (1 + j) + j for j in range(4)]
    model.train()
    model(batches[0])  # running statistics away from their initial values
    for layer in (model[1], model[4]):
        with torch.no_grad():
            (layer.scale if name == "tebn" else layer.p).uniform_(0.6, 1.4)
    report = recalibrate_bn(model, batches)
    assert set(report.layers) == {"1", "4"}
    for layer in (model[1], model[4]):
        x = inputs_of(model, layer, batches)  # upstream layers on their final statistics
        if name == "tebn":
            var, mean = torch.var_mean(x, dim=(0, 1), correction=1)
        else:
            pooled = [torch.var_mean(x[: t + 1], dim=(0, 1), correction=1) for t in range(T)]
            var, mean = torch.stack([v for v, _ in pooled]), torch.stack([m for _, m in pooled])
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-10, atol=1e-12)


# -- mixed precision ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tebn", "tab"])
def test_bf16_autocast_keeps_float32_statistics_and_the_input_dtype(name):
    layer = build_norm(name, C, time_steps=T)
    reference = copy.deepcopy(layer).double()
    x = data(14).to(torch.bfloat16).requires_grad_()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        expected = reference(x.detach().double())
    assert y.dtype == torch.bfloat16
    rounding = torch.finfo(torch.bfloat16).eps / 2
    torch.testing.assert_close(y.double(), expected, rtol=rounding + 1e-5, atol=1e-5)
    for key, buffer in layer.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, key
            torch.testing.assert_close(buffer.double(), dict(reference.named_buffers())[key], rtol=1e-5, atol=1e-6)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.eval()(x).dtype == torch.bfloat16


# -- models ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tebn", "tab"])
def test_every_model_takes_the_norm_through_the_layer_spec(name):
    torch.manual_seed(0)
    layers = LayerSpec(norm=name, time_steps=2)
    models = [
        (SpikingMLP(16, 3, hidden=(8,), layers=layers), torch.rand(2, 3, 1, 4, 4)),
        (SpikingResNet19(num_classes=3, in_channels=1, width=0.125, layers=layers), torch.rand(2, 3, 1, 8, 8)),
        (
            SpikingTransformer(
                input_size=8,
                patch_size=2,
                in_channels=1,
                num_classes=3,
                embed_dim=8,
                depth=1,
                num_heads=2,
                layers=layers,
            ),
            torch.rand(2, 3, 1, 8, 8),
        ),
    ]
    cls = TEBN if name == "tebn" else TAB
    for model, x in models:
        norms = [m for m in model.modules() if isinstance(m, cls)]
        assert norms and all(m.time_steps == 2 for m in norms), type(model).__name__
        out = model(x)
        assert out.shape == (2, 3, 3)
        out.square().sum().backward()
        assert all(p.grad is not None for p in model.parameters()), type(model).__name__


def test_recalibration_refuses_step_by_step_calls_of_a_per_step_layer():
    model = network("tab")
    before = model[1].running_mean.clone()

    def online(net, x):
        with stateful(net):
            for t in range(T):
                net(x[t : t + 1])

    with pytest.raises(ValueError, match=r"TAB keeps statistics for each of T=4 steps but was called on 1 step"):
        recalibrate_bn(model, [torch.randn(T, 6, 3, dtype=torch.float64)], forward=online)
    assert torch.equal(model[1].running_mean, before)


# -- T received from the task (time_steps=None at construction) --------------------------------------------------------
STEP_INDEXED = [("bntt", {}), ("bntt", {"bias": True}), ("bntt", {"affine": False}), ("tebn", {}), ("tab", {})]


def tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in layer.state_dict().items()}


@pytest.mark.parametrize(("name", "kwargs"), STEP_INDEXED, ids=lambda v: str(v))
def test_a_norm_given_t_later_equals_one_built_with_it(name, kwargs):
    built = build_norm(name, C, time_steps=T, **kwargs).double()
    late = build_norm(name, C, **kwargs).double()  # moved before it knows T: the rows it receives follow
    assert isinstance(late, StepIndexedNorm) and late.time_steps is None
    assert list(late.state_dict()) == list(built.state_dict())
    assert [key for key, _ in late.named_parameters()] == [key for key, _ in built.named_parameters()]
    late.receive_time_steps(T)
    assert late.time_steps == T and repr(late) == repr(built)
    for key, expected in tensors(built).items():
        got = tensors(late)[key]
        assert got.dtype == expected.dtype and got.device == expected.device, key
        assert torch.equal(got, expected), key
    for (key, expected), (_, got) in zip(built.named_parameters(), late.named_parameters()):
        assert got.requires_grad == expected.requires_grad, key
    for mode in ("train", "eval"):
        getattr(built, mode)()
        getattr(late, mode)()
        x = data(20).requires_grad_()
        y_built, y_late = built(x), late(x)
        assert torch.equal(y_late, y_built), mode
        (y_late.sum() + y_built.sum()).backward()
        for (key, expected), (_, got) in zip(built.named_parameters(), late.named_parameters()):
            assert torch.equal(got.grad, expected.grad), key
    assert all(torch.equal(tensors(late)[key], value) for key, value in tensors(built).items())
    late.load_state_dict(built.state_dict())  # a checkpoint of a layer built with T loads into it


def test_receiving_t_keeps_frozen_parameters_frozen_and_adds_rows_of_the_initial_values():
    layer = build_norm("tab", C)
    layer.p.requires_grad_(False)
    layer.receive_time_steps(T)
    assert not layer.p.requires_grad and layer.weight.requires_grad
    assert layer.p.shape == (T,) and layer.weight.shape == layer.running_var.shape == (T, C)
    assert torch.equal(layer.running_var, torch.ones(T, C)) and torch.equal(layer.bias, torch.zeros(T, C))


@pytest.mark.parametrize("name", ["bntt", "tebn", "tab"])
def test_the_same_t_is_accepted_and_another_refused(name):
    layer = build_norm(name, C, time_steps=T)
    parameters = list(layer.parameters())
    layer.receive_time_steps(T)
    assert all(a is b for a, b in zip(parameters, layer.parameters()))  # nothing reallocated
    cls = {"bntt": "BNTT", "tebn": "TEBN", "tab": "TAB"}[name]
    with pytest.raises(ValueError, match=rf"{cls} was built for T=4 steps, not the T=3 it was given"):
        layer.receive_time_steps(3)
    late = build_norm(name, C)
    late.receive_time_steps(T)
    with pytest.raises(ValueError, match=r"built for T=4 steps, not the T=2"):
        late.receive_time_steps(2)
    with pytest.raises(ValueError, match="time_steps must be a positive int, got 0"):
        build_norm(name, C).receive_time_steps(0)


@pytest.mark.parametrize("name", ["bntt", "tebn", "tab"])
def test_a_forward_without_t_is_refused(name):
    layer = build_norm(name, C)
    cls = {"bntt": "BNTT", "tebn": "TEBN", "tab": "TAB"}[name]
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(
            ValueError,
            match=rf"{cls} keeps parameters for each time step, so it needs time_steps: give it to the task "
            r"\(time_steps\) or in LayerSpec\(time_steps=\.\.\.\)",
        ):
            layer(torch.randn(T, B, C))
    assert int(layer.num_batches_tracked) == 0


def test_bntt_needs_all_t_steps_in_every_call_also_inside_a_stateful_scope():
    layer = build_norm("bntt", C, time_steps=T)
    x = data(21).float()
    for mode in (layer.train, layer.eval):
        mode()
        with stateful(layer):
            assert layer(x).shape == x.shape and layer(x).shape == x.shape  # every call covers steps 0..T-1
            with pytest.raises(ValueError, match=r"BNTT was built for T=4 steps but got input .* with T=1 \(shape"):
                layer(x[:1])
    with pytest.raises(ValueError, match=r"with T=1 \(shape \(1, 5, 3, 2, 3\)\)$"):  # no step-by-step hint
        layer(x[:1])
    assert isinstance(layer, BNTT) and not layer.in_sequence
