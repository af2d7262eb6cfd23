"""Building blocks shared by the spiking models: time-distributed stateless layers and a layer factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
from torch import Tensor, nn

from spikenorm.binary import binarize_model
from spikenorm.config import RecordsInit
from spikenorm.neurons import SpikingNeuron, build_neuron
from spikenorm.norm import TimeMajorNorm, build_norm
from spikenorm.surrogate import Surrogate
from spikenorm.trace import TraceSynapse
from spikenorm.validation import check_time_major

SurrogateSpec = str | Surrogate | Callable[[Tensor], Tensor]


class TimeDistributed(nn.Module):
    """Apply a stateless module to every step of ``[T, B, ...]`` at once by folding ``T`` into the batch.

    Layout: a 2-d convolution on CPU gets its input in channels-last (NHWC) layout unless
    ``channels_last=False``. oneDNN's convolutions on NCHW input reorder to a blocked layout and back on
    every call; on NHWC they do not, which made training of the spiking VGG of ``benchmarks/compare.py``
    about 10% faster on a 2-core CPU. The output stays channels-last, and so do the norms, neurons
    (:mod:`spikenorm.fused` included) and pools after it, so only a network's input is converted once.
    ``channels_last=True`` forces the layout on any device for 4-d inputs; the default leaves CUDA inputs
    as they are (not measured there), and so does it while ``torch.compile`` or ``torch.export`` traces the
    model (the compiler picks layouts itself; a layout conversion on a dynamic batch size fails to export).
    Values are the same up to the rounding order of the convolution's sums.
    """

    def __init__(self, module: nn.Module, channels_last: bool | None = None) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, f"TimeDistributed({type(self.module).__name__})")
        folded = x.flatten(0, 1)
        if folded.ndim == 4 and self._wants_channels_last(folded):
            folded = folded.contiguous(memory_format=torch.channels_last)
        return self.module(folded).unflatten(0, x.shape[:2])

    def _wants_channels_last(self, x: Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return isinstance(self.module, nn.Conv2d) and x.device.type == "cpu" and not torch.compiler.is_compiling()


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
        membrane_norm: registered norm applied to every neuron's membrane before firing (``"mpbn"``), or
            None.
        membrane_norm_kwargs: its options; ``{"elementwise": True}`` gives one statistic per neuron
            (``C x H x W``), which needs the model's ``input_size``.
        trace: wrap every synaptic layer that receives spikes in a
            :class:`~spikenorm.trace.TraceSynapse` (OTTT: weight gradients from presynaptic traces, with
            the neuron's decay).
    """

    norm: str = "tdbn"
    neuron: str = "lif"
    surrogate: SurrogateSpec = "sigmoid"
    norm_kwargs: dict[str, Any] | None = None
    neuron_kwargs: dict[str, Any] | None = None
    surrogate_kwargs: dict[str, Any] | None = None
    membrane_norm: str | None = None
    membrane_norm_kwargs: dict[str, Any] | None = None
    trace: bool = False

    def __post_init__(self) -> None:
        self.norm_kwargs = dict(self.norm_kwargs or {})
        self.neuron_kwargs = dict(self.neuron_kwargs or {})
        self.surrogate_kwargs = dict(self.surrogate_kwargs or {})
        self.membrane_norm_kwargs = dict(self.membrane_norm_kwargs or {})
        self.elementwise_membrane = bool(self.membrane_norm_kwargs.pop("elementwise", False))
        # build one of each now, so a bad name or option fails at model construction
        if self.make_norm(1).fold_target == "threshold":
            raise ValueError(
                f"norm={self.norm!r} normalizes the membrane potential inside a neuron (it folds into the firing "
                f"threshold), so it cannot be the post-conv norm: use membrane_norm={self.norm!r} together with a "
                "post-conv norm such as norm='tdbn' (MPBN adds a BN on the membrane just before firing, on top of "
                "the usual BN after the conv)"
            )
        self.make_neuron((1, 1, 1))

    @property
    def uses_norm(self) -> bool:
        """False for ``norm="none"``: the layer before it then keeps its bias."""
        return self.norm.lower() != "none"

    def make_norm(self, num_features: int) -> TimeMajorNorm:
        return build_norm(self.norm, num_features, **self.norm_kwargs)

    def synapse(self, layer: nn.Module, receives_spikes: bool = True) -> nn.Module:
        """``layer`` itself, or wrapped in a TraceSynapse when ``trace`` is on and its input is spikes."""
        if not (self.trace and receives_spikes):
            return layer
        return TraceSynapse(layer, decay=getattr(self.make_neuron((1,)), "decay", 1.0))

    def make_neuron(self, feature_shape: tuple[int | None, ...]) -> SpikingNeuron:
        """A neuron for features ``(C,)`` or ``(C, H, W)``; ``H, W`` may be None when unknown."""
        membrane = None
        if self.membrane_norm is not None:
            shape = None
            if self.elementwise_membrane:
                if None in feature_shape:
                    raise ValueError(
                        "an element-wise membrane norm needs the spatial size of every layer: give the model "
                        "its input_size"
                    )
                shape = tuple(feature_shape)
            membrane = build_norm(self.membrane_norm, int(feature_shape[0]), feature_shape=shape, **self.membrane_norm_kwargs)
        return build_neuron(
            self.neuron,
            surrogate=self.surrogate,
            surrogate_kwargs=self.surrogate_kwargs,
            membrane_norm=membrane,
            **self.neuron_kwargs,
        )


def conv_output_size(size: int | None, stride: int) -> int | None:
    """Spatial size after a 3x3 convolution with padding 1 (or 1x1 with padding 0) and ``stride``."""
    return None if size is None else (size - 1) // stride + 1


def spiking_conv(
    factory: SpikingLayerFactory,
    in_channels: int,
    out_channels: int,
    stride: int = 1,
    in_size: int | None = None,
    receives_spikes: bool = True,
) -> nn.Sequential:
    """``conv3x3 -> norm -> neuron`` on ``[T, B, C, H, W]`` (``in_size``: input height = width, if known)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not factory.uses_norm)
    size = conv_output_size(in_size, stride)
    neuron = factory.make_neuron((out_channels, size, size))
    synapse = factory.synapse(TimeDistributed(conv), receives_spikes)
    return nn.Sequential(synapse, factory.make_norm(out_channels), neuron)


def spiking_linear(
    factory: SpikingLayerFactory, in_features: int, out_features: int, receives_spikes: bool = True
) -> nn.Sequential:
    """``linear -> norm -> neuron`` on ``[T, B, F]`` (Linear acts on the last axis at every step)."""
    linear = factory.synapse(nn.Linear(in_features, out_features, bias=not factory.uses_norm), receives_spikes)
    return nn.Sequential(linear, factory.make_norm(out_features), factory.make_neuron((out_features,)))


def check_model_input(x: Tensor, where: str, ndim: int, channels: int | None) -> None:
    """Check a model's time-major input: rank exactly ``ndim`` and ``channels`` at axis 2.

    Registered with ``torch.fx.wrap``, so traced (and folded) models keep the check as one graph node.
    """
    check_time_major(x, where, min_ndim=ndim, channels=channels)
    if x.ndim != ndim:
        raise ValueError(f"{where} expects rank-{ndim} time-major input, got shape {tuple(x.shape)}")


torch.fx.wrap("check_model_input")


class SpikingModel(RecordsInit, nn.Module):
    """Base of the spikenorm models: input ``[T, B, ...]`` in, per-step logits ``[T, B, num_classes]`` out.

    Every model records its constructor arguments (:class:`~spikenorm.config.RecordsInit`), so a checkpoint
    can rebuild it without the code that built it.
    """

    num_classes: int
    input_ndim: int  # rank of the expected time-major input

    def check_input(self, x: Tensor, channels: int | None = None) -> None:
        check_model_input(x, type(self).__name__, self.input_ndim, channels)

    def use_binary_weights(self, enabled: bool) -> None:
        """SEI-BWSNN: 1-bit weights (:func:`spikenorm.binary.binarize_model`) in every conv/linear layer except
        the first and the last, shortcut projections included."""
        if enabled:
            binarize_model(self)
