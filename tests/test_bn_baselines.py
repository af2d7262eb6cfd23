"""``bn`` with ``running_update="per_batch"``: the OSR paper's vanilla-BN baseline (``BN_type: old`` of its code).

One EMA update per sequence from ``mean_t(mu_t)`` and ``mean_t(biased var_t)``, multi-step and online, checked
against float64 numpy references.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import stateful
from spikenorm.norm import build_norm
from spikenorm.tasks import tet_loss
from spikenorm.tasks.online import online_backward

T, B, C, H, W = 4, 6, 3, 5, 5
MOM = 0.1


def sample(seed: int, shape=(T, B, C, H, W)) -> np.ndarray:
    """Steps and channels with different offsets and scales, so the between-step spread of mu_t is large."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, size=(shape[0], 1, shape[2]) + (1,) * (len(shape) - 3))
    shift = rng.uniform(-2.0, 2.0, size=scale.shape)
    return rng.standard_normal(shape) * scale + shift


def step_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step mean and biased variance ``[T, C]`` over batch and space."""
    axes = (1,) + tuple(range(3, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def per_batch_layer(device, **kw):
    return build_norm("bn", C, running_update="per_batch", **kw).double().to(device)


@pytest.mark.parametrize("shape", [(T, B, C, H, W), (T, B, C)])
def test_one_multi_step_batch_gives_the_acceptance_formulas(shape, device):
    x = sample(0, shape)
    layer = per_batch_layer(device)
    y = layer(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    mu_t, var_t = step_moments(x)
    assert int(layer.num_batches_tracked) == 1
    np.testing.assert_allclose(layer.running_mean.cpu().numpy(), MOM * mu_t.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.running_var.cpu().numpy(), (1 - MOM) + MOM * var_t.mean(0), rtol=1e-12)
    # no between-step term: the pooled variance over (T, B, H, W) would be larger
    pooled = x.var(axis=(0, 1) + tuple(range(3, x.ndim)))
    assert np.all(pooled - var_t.mean(0) > 0.1)
    # the forward is per-step batch norm, as with the default running update
    spatial = (1,) * (x.ndim - 3)
    expected = (x - mu_t.reshape(T, 1, C, *spatial)) / np.sqrt(var_t.reshape(T, 1, C, *spatial) + layer.eps)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_two_batches_compose_the_ema(device):
    layer = per_batch_layer(device)
    mean, var = np.zeros(C), np.ones(C)
    for seed in (1, 2):
        x = sample(seed)
        layer(torch.from_numpy(x).to(device))
        mu_t, var_t = step_moments(x)
        mean, var = (1 - MOM) * mean + MOM * mu_t.mean(0), (1 - MOM) * var + MOM * var_t.mean(0)
    assert int(layer.num_batches_tracked) == 2
    np.testing.assert_allclose(layer.running_mean.cpu().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.cpu().numpy(), var, rtol=1e-12)


def test_online_scope_commits_once_and_equals_the_multi_step_update(device):
    x = torch.from_numpy(sample(3)).to(device)
    multi_step = per_batch_layer(device)
    multi_step(x)
    online = per_batch_layer(device)
    with stateful(online):
        outputs = [online(x[t : t + 1]) for t in range(T)]
        assert int(online.num_batches_tracked) == 0  # accumulated, committed when the scope closes
        assert torch.equal(online.running_mean, torch.zeros(C, dtype=torch.float64, device=device))
    assert int(online.num_batches_tracked) == 1
    torch.testing.assert_close(online.running_mean, multi_step.running_mean, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(online.running_var, multi_step.running_var, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(torch.cat(outputs), per_batch_layer(device)(x), rtol=1e-12, atol=1e-12)
    # the default makes one update per call: T updates per batch online
    per_call = build_norm("bn", C).double().to(device)
    with stateful(per_call):
        for t in range(T):
            per_call(x[t : t + 1])
    assert int(per_call.num_batches_tracked) == T


def test_online_scope_that_fails_discards_its_steps(device):
    layer = per_batch_layer(device)
    x = torch.from_numpy(sample(4)).to(device)
    with pytest.raises(RuntimeError, match="interrupted"):
        with stateful(layer):
            layer(x[:1])
            raise RuntimeError("interrupted")
    with stateful(layer):
        layer(x[1:2])
    mu_t, var_t = step_moments(sample(4)[1:2])
    assert int(layer.num_batches_tracked) == 1
    np.testing.assert_allclose(layer.running_mean.cpu().numpy(), MOM * mu_t[0], rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.cpu().numpy(), (1 - MOM) + MOM * var_t[0], rtol=1e-12)


def test_online_model_gradients_and_buffers_equal_bptt_with_detached_temporal_path(device):
    """A whole network: online training (one stateful scope per batch) leaves the same running statistics as a
    multi-step forward of the batch, and the same gradients when the temporal gradient path is cut."""
    torch.manual_seed(0)
    neuron = {"tau": 2.0, "reset": "soft", "detach_reset": True, "detach_membrane": True}
    spec = LayerSpec(norm="bn", norm_kwargs={"running_update": "per_batch"}, neuron_kwargs=neuron)
    bptt = SpikingVGG("small", in_channels=1, num_classes=5, layers=spec).to(device, torch.float64)
    online = copy.deepcopy(bptt)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(T, 8, 1, 8, 8, generator=g, dtype=torch.float64) * 1.7 + 0.4).to(device)
    y = torch.arange(8, device=device) % 5
    tet_loss(bptt(x), y).backward()
    online_backward(online, x, lambda out: tet_loss(out, y) / T)
    for (name, a), b in zip(bptt.named_buffers(), online.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert all(int(m.num_batches_tracked) == 1 for m in online.modules() if hasattr(m, "num_batches_tracked"))
    for (name, a), b in zip(bptt.named_parameters(), online.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x = torch.from_numpy(sample(6))[:, rank * (B // 2) : (rank + 1) * (B // 2)]
        for online in (False, True):
            layer = build_norm("bn", C, running_update="per_batch").double()
            if online:
                with stateful(layer):
                    for t in range(T):
                        layer(x[t : t + 1])
            else:
                layer(x)
            stats = {"mean": layer.running_mean, "var": layer.running_var}
            torch.save(stats, f"{out_dir}/{'online' if online else 'bptt'}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_pool_the_per_step_moments(tmp_path):
    """Under DDP the per-step moments are those of the global batch (half of it on each of 2 processes), in BPTT
    and in online (single-step) mode, both from one process group."""
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    mu_t, var_t = step_moments(sample(6))
    for mode in ("bptt", "online"):
        for rank in range(2):
            result = torch.load(tmp_path / f"{mode}-rank{rank}.pt")
            where = f"{mode}, rank {rank}"
            np.testing.assert_allclose(result["mean"].numpy(), MOM * mu_t.mean(0), rtol=1e-12, err_msg=where)
            np.testing.assert_allclose(
                result["var"].numpy(), (1 - MOM) + MOM * var_t.mean(0), rtol=1e-12, err_msg=where
            )


def test_bfloat16_input_keeps_float32_buffers():
    x = torch.from_numpy(sample(5)).to(torch.bfloat16)
    layer = build_norm("bn", C, running_update="per_batch")
    assert layer(x).dtype == torch.bfloat16
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32
    mu_t, var_t = step_moments(x.double().numpy())  # the statistics of the (exactly upcast) bfloat16 values
    np.testing.assert_allclose(layer.running_mean.numpy(), MOM * mu_t.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var.numpy(), (1 - MOM) + MOM * var_t.mean(0), rtol=1e-5)


def test_running_update_option_is_validated_and_described():
    with pytest.raises(ValueError, match="unknown running_update 'per_step'; available: per_call, per_batch"):
        build_norm("bn", C, running_update="per_step")
    per_batch, per_call = build_norm("bn", C, running_update="per_batch"), build_norm("bn", C)
    assert (per_call.running_update, per_call.running_var_unbiased) == ("per_call", True)
    assert per_batch.running_var_unbiased is False  # exact re-calibration writes the biased variance
    assert "running_update='per_batch'" in repr(per_batch)
    # one step of one process would otherwise take torch's fused batch norm, which updates at every call
    assert not per_batch.uses_torch_batch_norm(torch.zeros(1, B, C))
    assert per_call.uses_torch_batch_norm(torch.zeros(1, B, C))


def test_mpbn_refuses_the_per_batch_update():
    """MPBN's neuron calls the layer once per step outside any sequence: a per-batch update would never commit."""
    with pytest.raises(ValueError, match="mpbn updates its running statistics once per neuron step"):
        build_norm("mpbn", 3, running_update="per_batch")
