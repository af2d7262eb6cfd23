"""Spiking ResNet-19 (tdBN, Zheng et al. 2021) with a width multiplier."""

from __future__ import annotations

from torch import Tensor, nn

from spikenorm.models.blocks import ResidualConvBlock
from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, SpikingModel, spiking_conv, spiking_linear


class SpikingResNet19(SpikingModel):
    """ResNet-19: stem conv 128, three stages of [3, 3, 2] basic blocks with 128/256/512 channels
    (strides 1, 2, 2), global average pooling, ``linear 256 -> norm -> neuron``, linear readout.

    Input ``[T, B, C, H, W]``; output per-step logits ``[T, B, num_classes]``.

    Args:
        width: channel multiplier (``0.25`` gives a CPU-sized 32/64/128 network).
        input_size: input height (= width); needed only for element-wise membrane norms.
        layers: norm, neuron, surrogate and their options (:class:`~spikenorm.models.layers.LayerSpec`;
            ``membrane_norm="mpbn"`` adds MPBN). ``trace``: OTTT presynaptic-trace synapses
            (:class:`~spikenorm.synapse.TraceSynapse`) after the stem. ``shortcuts``: ``per_block`` (ResNet's
            basic blocks, the default), ``per_layer`` (each basic block split into two single-conv blocks, each
            with its shortcut) or ``none`` (the same convs, no shortcuts); see :mod:`spikenorm.models.blocks`;
            the head's linear layer has no shortcut. ``binary_weights``: 1-bit weights in every conv/linear
            layer except the first and the last (:mod:`spikenorm.binary`, SEI-BWSNN).
    """

    input_ndim = 5

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        input_size: int | None = None,
        layers: LayerSpec = LayerSpec(),
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width multiplier must be > 0, got {width}")
        factory = SpikingLayerFactory(layers)
        self.time_steps = factory.time_steps
        shortcuts = layers.shortcuts or "per_block"
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [max(1, round(c * width)) for c in (128, 256, 512)]
        self.stem = spiking_conv(factory, in_channels, widths[0], in_size=input_size, receives_spikes=False)
        blocks: list[ResidualConvBlock] = []
        channels, size = widths[0], input_size
        for out_channels, depth, stride in zip(widths, (3, 3, 2), (1, 2, 2)):
            for i in range(depth):
                # a basic block: two 3x3 convs, the first with the stage's stride
                units = [[out_channels], [out_channels]] if shortcuts == "per_layer" else [[out_channels] * 2]
                for j, unit in enumerate(units):
                    first_stride = stride if i == 0 and j == 0 else 1
                    blocks.append(
                        ResidualConvBlock(factory, [channels, *unit], first_stride, size, shortcut=shortcuts != "none")
                    )
                    channels, size = out_channels, blocks[-1].out_size
        self.blocks = nn.Sequential(*blocks)
        hidden = max(1, round(256 * width))
        self.head = spiking_linear(factory, channels, hidden)
        self.classifier = factory.synapse(nn.Linear(hidden, num_classes))
        self.use_binary_weights(layers.binary_weights)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x, channels=self.in_channels)
        features = self.blocks(self.stem(x)).mean(dim=(3, 4))  # [T, B, C]
        return self.classifier(self.head(features))
