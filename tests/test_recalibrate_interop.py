"""recalibrate_bn on spikenorm, snnTorch and SpikingJelly models against pooled numpy float64 statistics.

The reference runs the recalibrated model in eval mode, resets the neurons with each library's own reset
before every batch, captures every BN layer's inputs over all calls (all time steps) and pools them with
numpy; exact recalibration must be the fixed point of that computation.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from peer_models import BUILDERS, T, data, library_reset, snntorch_net
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.norm import TimeMajorNorm
from spikenorm.recalibrate import recalibrate_bn


def bn_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (_BatchNorm, TimeMajorNorm))}


def channel_last(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Inputs of one call as ``[samples, C]``: channels on axis 1 (torch), 2 (time-major layers)."""
    time_major = isinstance(module, TimeMajorNorm) or getattr(module, "step_mode", "s") == "m"
    axis = 2 if time_major else 1
    x = np.moveaxis(x.detach().numpy(), axis, -1)
    return x.reshape(-1, x.shape[-1])


def numpy_statistics(library, model, batches):
    """Pooled float64 mean and unbiased variance of every BN layer's inputs, fresh state per batch."""
    captured = {name: [] for name in bn_layers(model)}
    handles = [
        m.register_forward_hook(lambda m, i, o, name=name: captured[name].append(channel_last(m, i[0])))
        for name, m in bn_layers(model).items()
    ]
    model.eval()
    with torch.no_grad():
        for x in batches:
            library_reset(library, model)
            model(x)
    for h in handles:
        h.remove()
    pooled = {name: np.concatenate(chunks) for name, chunks in captured.items()}
    return {name: (x.mean(0), x.var(0, ddof=1), len(x)) for name, x in pooled.items()}


@pytest.mark.parametrize("library", sorted(BUILDERS))
def test_exact_statistics_equal_numpy_pooled_statistics(library):
    model = BUILDERS[library]()
    batches = data()
    report = recalibrate_bn(model, batches)
    reference = numpy_statistics(library, model, batches)
    assert set(report.layers) == set(reference) and len(reference) >= 2
    for name, layer in bn_layers(model).items():
        mean, var, samples = reference[name]
        np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-10)
        assert report.layers[name].samples == samples  # every call of a reused layer pooled: batch x time
        assert report.layers[name].mean_shift > 0


def test_reused_bn_pools_every_time_step():
    model = snntorch_net()
    batches = data()
    report = recalibrate_bn(model, batches)
    assert report.layers["bn2"].samples == len(batches) * T * batches[0].shape[1]
    assert report.layers["bn1"].samples == len(batches) * T * batches[0].shape[1] * 16


@pytest.mark.parametrize("library", ["snntorch", "spikingjelly"])
def test_leaky_state_is_reset_before_every_batch(library):
    """Without resets these neurons carry membranes across batches; recalibration equals fresh-state runs."""
    batches = data()
    recalibrated = BUILDERS[library]()
    recalibrated(batches[-1])  # leave state behind, as a training step would
    recalibrate_bn(recalibrated, batches)
    reference = numpy_statistics(library, recalibrated, batches)
    leaky = BUILDERS[library]()
    leaky.load_state_dict(recalibrated.state_dict())
    captured = []
    leaky.eval()
    last = list(bn_layers(leaky).values())[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.append(channel_last(m, i[0])))
    with torch.no_grad():
        for x in batches:  # what a recalibration without resets would pool
            leaky(x)
    handle.remove()
    name = list(bn_layers(recalibrated))[-1]
    np.testing.assert_allclose(bn_layers(recalibrated)[name].running_var.numpy(), reference[name][1], rtol=1e-10)
    assert not np.allclose(np.concatenate(captured).var(0, ddof=1), reference[name][1], rtol=1e-3)


def test_sync_batchnorm_and_batchnorm1d_are_covered():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.SyncBatchNorm(4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2)).double()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, generator=g, dtype=torch.float64) + j for j in range(3)]
    report = recalibrate_bn(model, batches)
    assert set(report.layers) == {"1", "4"}
    model.eval()
    with torch.no_grad():
        x = torch.cat(batches)
        h = model[0](x).numpy()
        np.testing.assert_allclose(model[1].running_var.numpy(), h.var(0, ddof=1), rtol=1e-10)
        h = model[3](model[2](model[1](model[0](x)))).numpy()
        np.testing.assert_allclose(model[4].running_mean.numpy(), h.mean(0), rtol=1e-10, atol=1e-12)


def test_flags_and_momenta_are_restored():
    model = snntorch_net()
    model.train()
    model.bn2.eval()
    model.bn1.momentum = 0.3
    model.bn2.momentum = None
    recalibrate_bn(model, data(2))
    assert model.training and model.bn1.training and not model.bn2.training
    assert model.bn1.momentum == 0.3 and model.bn2.momentum is None


def test_errors_name_the_problem():
    model = snntorch_net()
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(model, iter([]))
    with pytest.raises(ValueError, match="num_batches must be >= 1"):
        recalibrate_bn(model, data(), num_batches=0)
    with pytest.raises(ValueError, match="num_batches=9 but the data gave only 5"):
        recalibrate_bn(model, data(), num_batches=9)
    with pytest.raises(ValueError, match="no BN layer"):
        recalibrate_bn(
            nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)), [torch.zeros(3, 2)]
        )
    report = recalibrate_bn(model, iter(data()), num_batches=3)  # takes only the first 3 of an iterator
    assert report.batches == 3


def test_pairs_without_a_forward_are_refused_before_the_model_runs():
    """``(x, y)`` batches and no ``forward=``: a TypeError saying what was expected, before any forward."""
    model = snntorch_net()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    before = model.bn1.running_mean.clone()
    pairs = [(x, torch.zeros(x.shape[1], dtype=torch.long)) for x in data(2)]
    with pytest.raises(
        TypeError,
        match=r"batch 0 is a tuple \(Tensor\[4, 6, 2, 4, 4\], Tensor\[6\]\).*Expected a "
        r"tensor, or a forward= that unpacks the batch",
    ):
        recalibrate_bn(model, pairs)
    assert not calls and torch.equal(model.bn1.running_mean, before)
    recalibrate_bn(model, pairs, forward=lambda net, batch: net(batch[0]))
    assert calls and not torch.equal(model.bn1.running_mean, before)


def tebn_net(steps: int) -> nn.Module:
    """Two SpikingJelly TEBN layers (scales far from 1, random affine) around a ReLU, in float64."""
    from spikingjelly.activation_based import layer

    torch.manual_seed(0)
    model = nn.Sequential(
        layer.Linear(3, 4, step_mode="m"),
        layer.TemporalEffectiveBatchNorm1d(steps, 4),
        nn.ReLU(),
        layer.Linear(4, 5, step_mode="m"),
        layer.TemporalEffectiveBatchNorm1d(steps, 5),
    ).double()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.scale.copy_(torch.linspace(0.3, 2.5, steps, dtype=torch.float64))
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


def hand_single_pass(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The single pass computed in numpy float64: each TEBN pools its inputs of the batches so far (this one
    included), normalises with their mean and biased variance, applies its affine map and ``scale[t]``; returns
    every TEBN's final mean and unbiased variance."""
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    pooled: dict[int, list[np.ndarray]] = {1: [], 4: []}

    def tebn(index: int, h: np.ndarray) -> np.ndarray:  # h: [T, B, C]
        pooled[index].append(h.reshape(-1, h.shape[-1]))
        seen = np.concatenate(pooled[index])
        mean, var = seen.mean(0), seen.var(0)
        y = (h - mean) / np.sqrt(var + 1e-5) * params[f"{index}.weight"] + params[f"{index}.bias"]
        return y * params[f"{index}.scale"][:, None, None]

    for x in batches:
        h = x.numpy() @ params["0.weight"].T + params["0.bias"]
        h = np.maximum(tebn(1, h), 0) @ params["3.weight"].T + params["3.bias"]
        tebn(4, h)
    return [(np.concatenate(p).mean(0), np.concatenate(p).var(0, ddof=1)) for p in pooled.values()]


@pytest.mark.parametrize("steps", [2, 4])
def test_single_pass_keeps_spikingjelly_tebn_scales(steps):
    """Single-pass recalibration runs each SpikingJelly TEBN through its own forward (per-step scale included)."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(steps, 6, 3, generator=g, dtype=torch.float64) * (1 + j) + j for j in range(4)]
    model = tebn_net(steps)
    recalibrate_bn(model, batches, mode="single_pass")
    for bn, (mean, var) in zip((model[1], model[4]), hand_single_pass(model, batches)):
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-10)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = snntorch_net()
        batches = data(6)[rank::2]  # each process sees its own half
        recalibrate_bn(model, batches)
        torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_over_the_union_of_their_batches(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = snntorch_net()
    recalibrate_bn(single, data(6))
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # identical on both ranks
        np.testing.assert_allclose(value.numpy(), single.state_dict()[key].numpy(), rtol=1e-12, atol=1e-14)
