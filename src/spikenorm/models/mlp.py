"""Spiking multi-layer perceptron."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, SpikingModel, spiking_linear


class SpikingMLP(SpikingModel):
    """``[linear -> norm -> neuron] x len(hidden) -> linear`` readout, applied at every time step.

    Input ``[T, B, in_features]`` or ``[T, B, *dims]`` with ``prod(dims) == in_features`` (flattened);
    output per-step logits ``[T, B, num_classes]`` (the readout does not spike).

    ``layers`` (:class:`~spikenorm.models.layers.LayerSpec`): ``membrane_norm="mpbn"`` adds MPBN to every neuron
    (per feature, so channel- and element-wise coincide); ``trace=True`` gives the OTTT presynaptic-trace
    synapses; ``binary_weights=True`` gives 1-bit weights in the hidden layers but the first
    (:mod:`spikenorm.binary`). An MLP has no shortcuts.
    """

    input_ndim = 3

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        layers: LayerSpec = LayerSpec(),
    ) -> None:
        super().__init__()
        layers.refuse(type(self).__name__, "shortcuts", reason="it has no residual blocks")
        factory = SpikingLayerFactory(layers)
        self.time_steps = factory.time_steps
        self.in_features = in_features
        self.num_classes = num_classes
        widths = [in_features, *hidden]
        self.features = nn.Sequential(
            *(spiking_linear(factory, a, b, receives_spikes=i > 0) for i, (a, b) in enumerate(zip(widths, widths[1:])))
        )
        self.classifier = factory.synapse(nn.Linear(widths[-1], num_classes))
        self.use_binary_weights(layers.binary_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2)  # [T, B, *dims] -> [T, B, in_features]; a no-op on [T, B, F]
        self.check_input(x, channels=self.in_features)
        return self.classifier(self.features(x))
