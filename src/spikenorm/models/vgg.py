"""Spiking VGG with a configurable layer list."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from spikenorm.models.blocks import ResidualConvBlock, group_convs
from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, SpikingModel, spiking_conv
from spikenorm.synapse import TimeDistributed

#: Layer lists: an int is a ``conv3x3 -> norm -> neuron`` with that many channels, ``"A"`` a 2x2 average
#: pool, ``"M"`` a 2x2 max pool. The classifier is global average pooling and one linear layer.
VGG_CONFIGS: dict[str, list[int | str]] = {
    # two stages for 8x8 to 16x16 inputs (digits); a few seconds per epoch on a laptop CPU
    "small": [16, 32, "A", 64, "A"],
    # VGG-11 with average pooling, for 32x32 inputs
    "vgg11": [64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512],
    # VGGSNN of OTTT/OSR: 64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-GAP-FC
    "vggsnn": [64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512],
}


class SpikingVGG(SpikingModel):
    """VGG-style spiking CNN on ``[T, B, C, H, W]``, output per-step logits ``[T, B, num_classes]``.

    Args:
        cfg: a name from :data:`VGG_CONFIGS` (``small``, ``vgg11``, ``vggsnn``) or a layer list.
        in_channels: input channels (1 for digits/MNIST, 2 for DVS polarity frames, 3 for CIFAR).
        num_classes: classifier outputs.
        input_size: input height (= width); needed only for element-wise membrane norms.
        dropout: dropout before the classifier (0 disables).
        layers: norm, neuron, surrogate and their options (:class:`~spikenorm.models.layers.LayerSpec`;
            ``membrane_norm="mpbn"`` adds MPBN). ``trace``: OTTT presynaptic-trace synapses
            (:class:`~spikenorm.synapse.TraceSynapse`) after the first layer. ``shortcuts``: ``none`` (plain VGG,
            the default), ``per_layer`` (a shortcut around every conv after the first) or ``per_block`` (around
            pairs of convs at one resolution); see :mod:`spikenorm.models.blocks`. ``binary_weights``: 1-bit
            weights in every conv/linear layer except the first and the last (:mod:`spikenorm.binary`, SEI-BWSNN).
    """

    input_ndim = 5

    def __init__(
        self,
        cfg: str | Sequence[int | str] = "small",
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | None = None,
        dropout: float = 0.0,
        layers: LayerSpec = LayerSpec(),
    ) -> None:
        super().__init__()
        layers_cfg = self._resolve(cfg)
        factory = SpikingLayerFactory(layers)
        self.time_steps = factory.time_steps
        shortcuts = layers.shortcuts or "none"
        self.in_channels = in_channels
        self.num_classes = num_classes
        modules: list[nn.Module] = []
        channels, size = in_channels, input_size
        run: list[int] = []  # convs at the current resolution still to be built as shortcut blocks

        def flush() -> None:
            nonlocal channels
            for group in group_convs(run, shortcuts):
                modules.append(ResidualConvBlock(factory, [channels, *group], in_size=size))
                channels = group[-1]
            run.clear()

        for item in layers_cfg:
            if item in ("A", "M"):
                flush()
                pool = nn.AvgPool2d(2) if item == "A" else nn.MaxPool2d(2)
                modules.append(TimeDistributed(pool))
                size = None if size is None else size // 2
            elif modules and shortcuts != "none":
                run.append(int(item))
            else:
                modules.append(spiking_conv(factory, channels, int(item), in_size=size, receives_spikes=bool(modules)))
                channels = int(item)
        flush()
        self.features = nn.Sequential(*modules)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = factory.synapse(nn.Linear(channels, num_classes))
        self.use_binary_weights(layers.binary_weights)

    @staticmethod
    def _resolve(cfg: str | Sequence[int | str]) -> list[int | str]:
        if isinstance(cfg, str):
            if cfg not in VGG_CONFIGS:
                raise ValueError(f"unknown VGG config {cfg!r}; available: {', '.join(sorted(VGG_CONFIGS))}")
            return list(VGG_CONFIGS[cfg])
        items = list(cfg)
        bad = [i for i in items if not (i in ("A", "M") or (isinstance(i, int) and i > 0))]
        if bad or not any(isinstance(i, int) for i in items):
            raise ValueError(f"VGG cfg entries must be positive ints, 'A' or 'M' (at least one conv), got {items}")
        return items

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x, channels=self.in_channels)
        features = self.features(x).mean(dim=(3, 4))  # global average pool -> [T, B, C]
        return self.classifier(self.dropout(features))
