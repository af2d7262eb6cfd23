"""Spiking ResNet-19 (tdBN, Zheng et al. 2021) with a width multiplier."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from spikenorm.models.layers import (
    SpikingLayerFactory,
    SpikingModel,
    SurrogateSpec,
    TimeDistributed,
    spiking_conv,
    spiking_linear,
)


class SpikingBasicBlock(nn.Module):
    """``conv-norm-neuron-conv-norm (+ shortcut) -> neuron``; the shortcut is ``conv1x1-norm`` when the shape changes."""

    def __init__(self, factory: SpikingLayerFactory, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        bias = not factory.uses_norm
        self.conv1 = spiking_conv(factory, in_channels, out_channels, stride)
        self.conv2 = TimeDistributed(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias))
        self.norm2 = factory.make_norm(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                TimeDistributed(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)),
                factory.make_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.neuron = factory.make_neuron()

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


class SpikingResNet19(SpikingModel):
    """ResNet-19: stem conv 128, three stages of [3, 3, 2] basic blocks with 128/256/512 channels
    (strides 1, 2, 2), global average pooling, ``linear 256 -> norm -> neuron``, linear readout.

    Input ``[T, B, C, H, W]``; output per-step logits ``[T, B, num_classes]``.

    Args:
        width: channel multiplier (``0.25`` gives a CPU-sized 32/64/128 network).
    """

    input_ndim = 5

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        norm: str = "tdbn",
        neuron: str = "lif",
        surrogate: SurrogateSpec = "sigmoid",
        norm_kwargs: dict[str, Any] | None = None,
        neuron_kwargs: dict[str, Any] | None = None,
        surrogate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        factory = SpikingLayerFactory(norm, neuron, surrogate, norm_kwargs, neuron_kwargs, surrogate_kwargs)
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [max(1, round(c * width)) for c in (128, 256, 512)]
        self.stem = spiking_conv(factory, in_channels, widths[0])
        blocks: list[nn.Module] = []
        channels = widths[0]
        for out_channels, depth, stride in zip(widths, (3, 3, 2), (1, 2, 2)):
            for i in range(depth):
                blocks.append(SpikingBasicBlock(factory, channels, out_channels, stride if i == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        hidden = max(1, round(256 * width))
        self.head = spiking_linear(factory, channels, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x, channels=self.in_channels)
        features = self.blocks(self.stem(x)).mean(dim=(3, 4))  # [T, B, C]
        return self.classifier(self.head(features))
