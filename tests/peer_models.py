"""Small conv SNNs built with spikenorm, snnTorch and SpikingJelly for the attach-to-any-model tests.

Each takes time-major input ``[T, B, 2, 4, 4]`` and returns ``[T, B, 5]``. The snnTorch and SpikingJelly
neurons keep their membrane between calls (snnTorch ``init_hidden=True``; SpikingJelly always), so running
them without a reset leaks state from one batch into the next.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.synapse import TimeDistributed

T, B, C, H = 4, 6, 2, 4
FEATURES = 4


class SnnTorchNet(nn.Module):
    """snnTorch style: plain torch layers and Leaky neurons, looped over time; each BN is reused T times."""

    def __init__(self) -> None:
        super().__init__()
        import snntorch as snn

        self.conv = nn.Conv2d(C, FEATURES, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(FEATURES)
        self.lif1 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True)
        self.fc = nn.Linear(FEATURES * H * H, 5)
        self.bn2 = nn.BatchNorm1d(5)
        self.lif2 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True)

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for x_t in x:
            s = self.lif1(self.bn1(self.conv(x_t))).to(x_t.dtype)  # snnTorch fires float32 spikes
            out.append(self.lif2(self.bn2(self.fc(s.flatten(1)))).to(x_t.dtype))
        return torch.stack(out)


def snntorch_net() -> nn.Module:
    torch.manual_seed(0)
    return SnnTorchNet().double()


def spikingjelly_net() -> nn.Module:
    """SpikingJelly multi-step layers; its BN sees ``[T, B, C, ...]`` with the channels on axis 2."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    torch.manual_seed(0)
    # each neuron gets its own surrogate: SpikingJelly's default is one instance shared by every LIFNode, so a
    # test that puts one net in eval mode would leave that shared module in eval for every later test
    return nn.Sequential(
        layer.Conv2d(C, FEATURES, 3, padding=1, step_mode="m"),
        layer.BatchNorm2d(FEATURES, step_mode="m"),
        neuron.LIFNode(tau=2.0, v_threshold=0.5, surrogate_function=surrogate.Sigmoid(), step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(FEATURES * H * H, 5, step_mode="m"),
        layer.BatchNorm1d(5, step_mode="m"),
        neuron.LIFNode(tau=2.0, v_threshold=0.5, surrogate_function=surrogate.Sigmoid(), step_mode="m"),
    ).double()


def spikenorm_net() -> nn.Module:
    """spikenorm layers with a torch BatchNorm2d after the conv and MPBN inside the second neuron."""
    torch.manual_seed(0)
    return nn.Sequential(
        TimeDistributed(nn.Conv2d(C, FEATURES, 3, padding=1)),
        TimeDistributed(nn.BatchNorm2d(FEATURES)),
        LIF(decay=0.5, threshold=0.5),
        TimeDistributed(nn.Flatten()),
        TimeDistributed(nn.Linear(FEATURES * H * H, 5)),
        build_norm("bn", 5),
        LIF(decay=0.5, threshold=0.5, membrane_norm=build_norm("mpbn", 5)),
    ).double()


BUILDERS = {"spikenorm": spikenorm_net, "snntorch": snntorch_net, "spikingjelly": spikingjelly_net}


def data(num_batches: int = 5, seed: int = 1) -> list[Tensor]:
    """Batches with different means and scales, so running statistics differ from any single batch."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(T, B, C, H, H, generator=g, dtype=torch.float64) * (1 + 0.3 * j) + 0.2 * j
        for j in range(num_batches)
    ]


def library_reset(library: str, model: nn.Module) -> None:
    """Each library's own state reset (independent of spikenorm.interop)."""
    if library == "snntorch":
        from snntorch import utils

        utils.reset(model)
    elif library == "spikingjelly":
        from spikingjelly.activation_based import functional

        functional.reset_net(model)


class PeerClassifier(LightningModule):
    """A plain LightningModule around one of the networks above (no spikenorm task code): batches are
    ``(x [B, T, ...], y)``; the class score is the spike count of each output neuron."""

    def __init__(self, library: str = "snntorch") -> None:
        super().__init__()
        self.library = library
        self.model = BUILDERS[library]()

    def forward(self, x: Tensor) -> Tensor:
        library_reset(self.library, self.model)  # as users of these libraries do before every batch
        return self.model(x.transpose(0, 1)).mean(0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x) * 4, y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).double().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def classification_data(samples: int = 48, seed: int = 2) -> TensorDataset:
    """Random ``[T, 2, 4, 4]`` float64 inputs whose class shifts their mean."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (samples,), generator=g)
    x = torch.randn(samples, T, C, H, H, generator=g, dtype=torch.float64) + 0.3 * y.reshape(-1, 1, 1, 1, 1)
    return TensorDataset(x, y)
