"""An snnTorch CNN trained with Lightning, with spikenorm's callbacks attached (bundled digits, CPU).

python examples/snntorch_digits.py            # about 15 s on 2 CPU cores, 97% val accuracy
"""

from __future__ import annotations

import lightning as L
import snntorch as snn
import torch
from digits_task import DigitsTask, fit_with_callbacks
from snntorch import surrogate, utils
from torch import nn


class ConvSNN(nn.Module):
    """conv-BN-Leaky x2, then a Leaky readout; one BN per conv, reused at every time step."""

    def __init__(self, time_steps: int = 4) -> None:
        super().__init__()
        spike_grad = surrogate.atan(alpha=2.0)
        self.time_steps = time_steps
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.lif1 = snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.lif2 = snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True)
        self.fc = nn.Linear(32 * 4 * 4, 10)
        self.lif_out = snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 8, 8]`` image, fed at every step -> membrane of the readout per step ``[T, B, 10]``."""
        utils.reset(self)  # snnTorch keeps hidden state between calls
        membranes = []
        for _ in range(self.time_steps):
            s = self.lif1(self.bn1(self.conv1(x)))
            s = self.lif2(self.bn2(self.conv2(s)))
            _, mem = self.lif_out(self.fc(nn.functional.avg_pool2d(s, 2).flatten(1)))
            membranes.append(mem)
        return torch.stack(membranes)


class DigitsSNN(DigitsTask):
    def __init__(self, time_steps: int = 4) -> None:
        super().__init__(time_steps)
        self.model = ConvSNN(time_steps)  # the callbacks look for the network here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    L.seed_everything(0)
    return fit_with_callbacks(DigitsSNN(), "snntorch-digits", argv)


if __name__ == "__main__":
    main()
