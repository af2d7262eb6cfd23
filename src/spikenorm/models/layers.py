"""Building blocks shared by the spiking models: time-distributed stateless layers and a layer factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from spikenorm.neurons import SpikingNeuron, build_neuron
from spikenorm.norm import TimeMajorNorm, build_norm
from spikenorm.surrogate import Surrogate
from spikenorm.validation import check_time_major

SurrogateSpec = str | Surrogate | Callable[[Tensor], Tensor]


class TimeDistributed(nn.Module):
    """Apply a stateless module to every step of ``[T, B, ...]`` at once by folding ``T`` into the batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, f"TimeDistributed({type(self.module).__name__})")
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


@dataclass
class SpikingLayerFactory:
    """Builds the norm and neuron layers of a model from names, so every model takes the same options.

    Attributes:
        norm: registered norm name (see :func:`spikenorm.norm.available_norms`).
        neuron: registered neuron name (see :func:`spikenorm.neurons.available_neurons`).
        surrogate: surrogate name, Surrogate or spike callable, given to every neuron.
        norm_kwargs: options for every norm layer (e.g. ``{"time_steps": 4}`` for ``bntt``).
        neuron_kwargs: options for every neuron (e.g. ``{"decay": 0.25, "threshold": 0.5}``).
        surrogate_kwargs: options for a named surrogate (e.g. ``{"alpha": 4.0}``).
    """

    norm: str = "tdbn"
    neuron: str = "lif"
    surrogate: SurrogateSpec = "sigmoid"
    norm_kwargs: dict[str, Any] | None = None
    neuron_kwargs: dict[str, Any] | None = None
    surrogate_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.norm_kwargs = dict(self.norm_kwargs or {})
        self.neuron_kwargs = dict(self.neuron_kwargs or {})
        self.surrogate_kwargs = dict(self.surrogate_kwargs or {})
        # build one of each now, so a bad name or option fails at model construction
        self.make_norm(1)
        self.make_neuron()

    @property
    def uses_norm(self) -> bool:
        """False for ``norm="none"``: the layer before it then keeps its bias."""
        return self.norm.lower() != "none"

    def make_norm(self, num_features: int) -> TimeMajorNorm:
        return build_norm(self.norm, num_features, **self.norm_kwargs)

    def make_neuron(self) -> SpikingNeuron:
        return build_neuron(
            self.neuron, surrogate=self.surrogate, surrogate_kwargs=self.surrogate_kwargs, **self.neuron_kwargs
        )


def spiking_conv(factory: SpikingLayerFactory, in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """``conv3x3 -> norm -> neuron`` on ``[T, B, C, H, W]``."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not factory.uses_norm)
    return nn.Sequential(TimeDistributed(conv), factory.make_norm(out_channels), factory.make_neuron())


def spiking_linear(factory: SpikingLayerFactory, in_features: int, out_features: int) -> nn.Sequential:
    """``linear -> norm -> neuron`` on ``[T, B, F]`` (Linear acts on the last axis at every step)."""
    linear = nn.Linear(in_features, out_features, bias=not factory.uses_norm)
    return nn.Sequential(linear, factory.make_norm(out_features), factory.make_neuron())


class SpikingModel(nn.Module):
    """Base of the spikenorm models: input ``[T, B, ...]`` in, per-step logits ``[T, B, num_classes]`` out."""

    num_classes: int
    input_ndim: int  # rank of the expected time-major input

    def check_input(self, x: Tensor, channels: int | None = None) -> None:
        check_time_major(x, type(self).__name__, min_ndim=self.input_ndim, channels=channels)
        if x.ndim != self.input_ndim:
            raise ValueError(
                f"{type(self).__name__} expects rank-{self.input_ndim} time-major input, got shape {tuple(x.shape)}"
            )
