"""Residual conv blocks and the shortcut layouts of the spiking CNNs (``shortcuts: per_layer | per_block | none``).

A block is ``k`` conv layers whose last one adds a shortcut of the block's input to its normalized
output before firing (the Spiking-ResNet placement, Zheng et al. 2021)::

    y = neuron( norm_k(conv_k( ... spiking_conv_1(x) ... )) + shortcut(x) )

``shortcut`` is the identity when the shape is kept, else ``conv1x1(stride) -> norm`` on the input spikes.
``per_block`` shortcuts go around pairs of convs (ResNet's basic block), ``per_layer`` around every single
conv (Bi-Real-Net style, the "multiple shortcuts" of SEI-BWSNN as spikenorm reads it).
The placement is an inference from the SEI-BWSNN abstract, not the paper's verified design: the
shortcut carries spikes into the membrane input here, not a real-valued stream as in Bi-Real-Net.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from spikenorm.models.layers import Shortcuts, SpikingLayerFactory, conv_output_size, spiking_conv
from spikenorm.synapse import TimeDistributed
from spikenorm.validation import check_choice


class ResidualConvBlock(nn.Module):
    """``len(channels) - 1`` conv layers on ``[T, B, C, H, W]``, the first with ``stride``, and an optional
    shortcut added before the last neuron (see the module docstring).

    Args:
        factory: builds the norm, neuron and synapse layers.
        channels: ``(in, c_1, ..., c_k)``, ``k >= 1``.
        stride: stride of the first conv (and of a projection shortcut).
        in_size: input height (= width), if known (element-wise membrane norms need it).
        shortcut: add the shortcut; ``False`` gives a plain stack of conv layers.
    """

    def __init__(
        self,
        factory: SpikingLayerFactory,
        channels: Sequence[int],
        stride: int = 1,
        in_size: int | None = None,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"a block needs (in, out, ...) channels, got {list(channels)}")
        self.out_size = conv_output_size(in_size, stride)
        inner, size, first_stride = [], in_size, stride
        for a, b in zip(channels[:-2], channels[1:-1]):
            inner.append(spiking_conv(factory, a, b, first_stride, size))
            size, first_stride = conv_output_size(size, first_stride), 1
        self.layers = nn.Sequential(*inner)
        bias = not factory.uses_norm
        in_channels, out_channels = channels[0], channels[-1]
        conv = nn.Conv2d(channels[-2], out_channels, 3, stride=first_stride, padding=1, bias=bias)
        self.conv = factory.synapse(TimeDistributed(conv))
        self.norm = factory.make_norm(out_channels)
        self.shortcut: nn.Module | None = None
        if shortcut:
            if stride != 1 or in_channels != out_channels:
                projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
                self.shortcut = nn.Sequential(
                    factory.synapse(TimeDistributed(projection)), factory.make_norm(out_channels)
                )
            else:
                self.shortcut = nn.Identity()
        self.neuron = factory.make_neuron((out_channels, self.out_size, self.out_size))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(self.layers(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.neuron(y)


def group_convs(widths: Sequence[int], shortcuts: Shortcuts) -> list[list[int]]:
    """Split a run of conv widths (one resolution, stride 1) into blocks: singletons for ``per_layer``,
    pairs (and a trailing singleton) for ``per_block``; ``none`` gives pairs without shortcuts."""
    check_choice(shortcuts, Shortcuts, "shortcuts")
    size = 1 if shortcuts == "per_layer" else 2
    return [list(widths[i : i + size]) for i in range(0, len(widths), size)]
