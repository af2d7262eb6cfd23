"""Spiking ResNet-19 (tdBN, Zheng et al. 2021) with a width multiplier."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from spikenorm.models.layers import (
    SpikingLayerFactory,
    SpikingModel,
    SurrogateSpec,
    TimeDistributed,
    conv_output_size,
    spiking_conv,
    spiking_linear,
)


class SpikingBasicBlock(nn.Module):
    """``conv-norm-neuron-conv-norm (+ shortcut) -> neuron``; the shortcut is ``conv1x1-norm`` when the shape changes."""

    def __init__(
        self, factory: SpikingLayerFactory, in_channels: int, out_channels: int, stride: int, in_size: int | None
    ) -> None:
        super().__init__()
        bias = not factory.uses_norm
        self.conv1 = spiking_conv(factory, in_channels, out_channels, stride, in_size)
        self.out_size = conv_output_size(in_size, stride)
        self.conv2 = factory.synapse(TimeDistributed(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)))
        self.norm2 = factory.make_norm(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                factory.synapse(TimeDistributed(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias))),
                factory.make_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.neuron = factory.make_neuron((out_channels, self.out_size, self.out_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


class SpikingResNet19(SpikingModel):
    """ResNet-19: stem conv 128, three stages of [3, 3, 2] basic blocks with 128/256/512 channels
    (strides 1, 2, 2), global average pooling, ``linear 256 -> norm -> neuron``, linear readout.

    Input ``[T, B, C, H, W]``; output per-step logits ``[T, B, num_classes]``.

    Args:
        width: channel multiplier (``0.25`` gives a CPU-sized 32/64/128 network).
        input_size: input height (= width); needed only for element-wise membrane norms.
        trace: OTTT presynaptic-trace synapses (:class:`~spikenorm.trace.TraceSynapse`) after the stem.
        norm, neuron, surrogate, membrane_norm, *_kwargs: see
            :class:`~spikenorm.models.layers.SpikingLayerFactory` (``membrane_norm="mpbn"`` adds MPBN).
    """

    input_ndim = 5

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        input_size: int | None = None,
        norm: str = "tdbn",
        neuron: str = "lif",
        surrogate: SurrogateSpec = "sigmoid",
        norm_kwargs: dict[str, Any] | None = None,
        neuron_kwargs: dict[str, Any] | None = None,
        surrogate_kwargs: dict[str, Any] | None = None,
        membrane_norm: str | None = None,
        membrane_norm_kwargs: dict[str, Any] | None = None,
        trace: bool = False,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        factory = SpikingLayerFactory(
            norm, neuron, surrogate, norm_kwargs, neuron_kwargs, surrogate_kwargs, membrane_norm, membrane_norm_kwargs, trace
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [max(1, round(c * width)) for c in (128, 256, 512)]
        self.stem = spiking_conv(factory, in_channels, widths[0], in_size=input_size, receives_spikes=False)
        blocks: list[SpikingBasicBlock] = []
        channels, size = widths[0], input_size
        for out_channels, depth, stride in zip(widths, (3, 3, 2), (1, 2, 2)):
            for i in range(depth):
                blocks.append(SpikingBasicBlock(factory, channels, out_channels, stride if i == 0 else 1, size))
                channels, size = out_channels, blocks[-1].out_size
        self.blocks = nn.Sequential(*blocks)
        hidden = max(1, round(256 * width))
        self.head = spiking_linear(factory, channels, hidden)
        self.classifier = factory.synapse(nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x, channels=self.in_channels)
        features = self.blocks(self.stem(x)).mean(dim=(3, 4))  # [T, B, C]
        return self.classifier(self.head(features))
