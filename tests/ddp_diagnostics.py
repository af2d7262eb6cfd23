"""Run by test_diagnostics_distributed (``torch.multiprocessing.spawn``, 2 CPU processes, gloo): each rank diagnoses
its share of the batches of every case and saves the diagnosis to ``<out_dir>/<case>-rank<r>.pt``.

The models are small and built here (not from ``peer_models``, which imports Lightning: seconds per process);
SpikingJelly is left out for the same reason (its import alone takes seconds per process): nothing in its path is
distributed code of its own; the reductions are those of the recorders and the pooled moments, which these cases
exercise (snnTorch: one step per call; TimeDistributed torch BN: one step over ``[T B, ...]``; spikenorm norms and
MPBN: ``T`` steps, and batch statistics pooled over processes in training).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spikenorm.diagnostics import diagnose
from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.synapse import TimeDistributed

T, B, C_IN, F, K = 4, 6, 3, 6, 5
WORLD = 2
BATCHES = 4  # in all; each rank takes BATCHES // WORLD


class SnnTorchNet(nn.Module):
    """snnTorch style: torch BN and Leaky neurons called once per step (BN statistics local to each process)."""

    def __init__(self) -> None:
        super().__init__()
        import snntorch as snn

        self.fc1 = nn.Linear(C_IN, F)
        self.bn1 = nn.BatchNorm1d(F)
        self.lif1 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True)
        self.fc2 = nn.Linear(F, K)
        self.bn2 = nn.BatchNorm1d(K)
        self.lif2 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True)

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for x_t in x:
            s = self.lif1(self.bn1(self.fc1(x_t))).to(x.dtype)
            out.append(self.lif2(self.bn2(self.fc2(s))).to(x.dtype))
        return torch.stack(out)


def snntorch_net() -> nn.Module:
    torch.manual_seed(0)
    return SnnTorchNet().double()


def time_distributed_net() -> nn.Module:
    """torch BN over ``[T B, F]`` (inside ``TimeDistributed``, statistics local to each process) and spikenorm LIF."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(C_IN, F),
        TimeDistributed(nn.BatchNorm1d(F)),
        LIF(decay=0.5, threshold=0.5),
        nn.Linear(F, K),
        TimeDistributed(nn.BatchNorm1d(K)),
    ).double()


def spikenorm_net() -> nn.Module:
    """spikenorm norms (and MPBN inside the neuron): in training they pool their batch statistics over processes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(C_IN, F),
        build_norm("bn", F),
        LIF(decay=0.5, threshold=0.5, membrane_norm=build_norm("mpbn", F)),
        nn.Linear(F, K),
        build_norm("bn", K),
    ).double()


BUILDERS = {"snntorch": snntorch_net, "time_distributed": time_distributed_net, "spikenorm": spikenorm_net}


def batches() -> list[Tensor]:
    """``BATCHES`` batches ``[T, B, C_IN]`` with different means and scales."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(T, B, C_IN, generator=g, dtype=torch.float64) * (1 + 0.3 * j) + 0.2 * j for j in range(BATCHES)]


def rank_batches(rank: int) -> list[Tensor]:
    """The batches rank ``rank`` diagnoses: ``rank, rank + WORLD, ...``."""
    return batches()[rank::WORLD]


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes share the machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for case, builder in BUILDERS.items():
            diagnosis = diagnose(builder(), rank_batches(rank))
            torch.save(
                {"diagnosis": diagnosis.to_dict(), "histograms": diagnosis.histograms},
                f"{out_dir}/{case}-rank{rank}.pt",
            )
    finally:
        dist.destroy_process_group()
