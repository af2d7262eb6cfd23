"""Norm statistics are pooled across processes (2 CPU processes, gloo): outputs, gradients, running statistics and
re-calibrated statistics match one process on the concatenated batch.

One process group serves every norm of a test (starting two processes costs seconds; the norms are checked one
after the other inside it, and a failure names the norm)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.recalibrate import recalibrate_bn

T, B, C = 3, 4, 5
OPTIONS = {"bn": {}, "tdbn": {}, "tebn": {"time_steps": T}, "tab": {"time_steps": T}}


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, 2 * B, C, 2, 2, generator=g, dtype=torch.float64)
    return x * torch.linspace(0.5, 2.0, 2 * B, dtype=torch.float64).reshape(1, -1, 1, 1, 1) + 1.0


def _worker(rank: int, port: int, names: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for name in names:
            x = _data()[:, rank * B : (rank + 1) * B].clone().requires_grad_(True)
            layer = build_norm(name, C, **OPTIONS[name]).double()
            y = layer(x)
            y.pow(2).mul(torch.arange(C, dtype=torch.float64).reshape(1, 1, C, 1, 1)).sum().backward()
            torch.save(
                {"mean": layer.running_mean, "var": layer.running_var, "grad": x.grad, "out": y.detach()},
                f"{out_dir}/{name}-rank{rank}.pt",
            )
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(free_port(), sorted(OPTIONS), str(tmp_path)), nprocs=2, join=True)
    for name in sorted(OPTIONS):
        _check_against_one_process(name, [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(2)])


def _check_against_one_process(name: str, ranks: list[dict]) -> None:
    x = _data().requires_grad_(True)
    single = build_norm(name, C, **OPTIONS[name]).double()
    y = single(x)
    y.pow(2).mul(torch.arange(C, dtype=torch.float64).reshape(1, 1, C, 1, 1)).sum().backward()
    for r, result in enumerate(ranks):
        where = f"{name}, rank {r}"
        np.testing.assert_allclose(result["mean"].numpy(), single.running_mean.numpy(), rtol=1e-12, err_msg=where)
        np.testing.assert_allclose(result["var"].numpy(), single.running_var.numpy(), rtol=1e-12, err_msg=where)
        np.testing.assert_allclose(
            result["grad"].numpy(), x.grad[:, r * B : (r + 1) * B].numpy(), rtol=1e-9, atol=1e-12, err_msg=where
        )
        np.testing.assert_allclose(
            result["out"].numpy(), y.detach()[:, r * B : (r + 1) * B].numpy(), rtol=1e-10, atol=1e-12, err_msg=where
        )


def _recalibration_network(name: str) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(C, C), build_norm(name, C, **OPTIONS[name]), LIF(decay=0.75, threshold=0.5)
    ).double()


def _recalibration_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(T, 2 * B, C, generator=g, dtype=torch.float64) * (1 + j) + j for j in range(3)]


def _recalibration_worker(rank: int, port: int, names: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for name in names:
            model = _recalibration_network(name)
            recalibrate_bn(model, [x[:, rank * B : (rank + 1) * B] for x in _recalibration_batches()])
            stats = {"mean": model[1].running_mean, "var": model[1].running_var}
            torch.save(stats, f"{out_dir}/{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_recalibration_equals_one_process_on_the_union(tmp_path):
    """Pooled (tebn) and accumulated per-step (tab) statistics merge exactly across processes."""
    names = ["tebn", "tab"]
    mp.spawn(_recalibration_worker, args=(free_port(), names, str(tmp_path)), nprocs=2, join=True)
    for name in names:
        single = _recalibration_network(name)
        recalibrate_bn(single, _recalibration_batches())
        for r in range(2):
            result = torch.load(tmp_path / f"{name}-rank{r}.pt")
            for key, expected in (("mean", single[1].running_mean), ("var", single[1].running_var)):
                torch.testing.assert_close(
                    result[key], expected, rtol=1e-12, atol=1e-12, msg=lambda m, w=f"{name} rank {r} {key}": f"{w}: {m}"
                )
