"""Building blocks shared by the spiking models: the layer factory and the model base class."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from spikenorm.binary import binarize_model
from spikenorm.config import RecordsInit, class_defaults
from spikenorm.neurons import NEURONS, SpikingNeuron, build_neuron
from spikenorm.norm import TimeMajorNorm, build_norm
from spikenorm.norm.base import NORMS
from spikenorm.sequence import SequenceAware
from spikenorm.surrogate import SURROGATES, Surrogate
from spikenorm.synapse import TimeDistributed, TraceSynapse
from spikenorm.traceable import traceable
from spikenorm.validation import check_choice, check_time_major

SurrogateSpec = str | Surrogate | Callable[[Tensor], Tensor]
Shortcuts = Literal["per_layer", "per_block", "none"]


@dataclass(frozen=True)
class LayerSpec:
    """What every spiking layer of a model is made of: one object with the same names in every model.

    Every spikenorm model takes it as ``layers`` (LightningCLI: a mapping of these fields under the model's
    ``init_args``). A ``conv/linear -> norm -> neuron`` layer computes ``s = neuron(norm(W x))``, where the
    neuron fires ``s_t = 1[v_t > threshold]`` on a membrane ``v_t`` that ``membrane_norm`` normalises just
    before firing (MPBN).

    Attributes:
        norm: registered norm after every synaptic layer (:func:`spikenorm.norm.available_norms`; ``"none"``
            keeps the layer's bias instead).
        norm_kwargs: its options (e.g. ``{"eps": 1e-4}`` for ``osr``).
        membrane_norm: registered norm applied to every neuron's membrane before firing (``"mpbn"``), or None.
        membrane_norm_kwargs: its options; ``{"elementwise": True}`` gives one statistic per neuron
            (``C x H x W``), which needs the model's ``input_size``.
        neuron: registered neuron (:func:`spikenorm.neurons.available_neurons`).
        neuron_kwargs: its options (e.g. ``{"decay": 0.25, "threshold": 0.5}``).
        surrogate: surrogate name, :class:`~spikenorm.surrogate.Surrogate` or spike callable, given to every neuron.
        surrogate_kwargs: options of a named surrogate (e.g. ``{"alpha": 4.0}``).
        trace: wrap every synaptic layer that receives spikes in a :class:`~spikenorm.synapse.TraceSynapse`
            (OTTT, Xiao et al., NeurIPS 2022: weight gradients from presynaptic traces, with the neuron's decay).
        binary_weights: 1-bit weights (:mod:`spikenorm.binary`, SEI-BWSNN) in the layers the model names.
        shortcuts: ``per_layer``, ``per_block`` or ``none`` (:mod:`spikenorm.models.blocks`); None: the model's
            default. Models without shortcuts refuse a value.
        time_steps: ``T``, usually left None: the task gives its ``time_steps`` to the network when it is built
            (:func:`spikenorm.time_steps.bind_time_steps`), and the norms whose per-step parameters need ``T``
            (``bntt``, ``tebn``, ``tab``) receive it then. Given here, the model is built for that ``T`` (a task with
            another ``T`` refuses it) and refuses input whose leading axis is not ``T``
            (:attr:`~spikenorm.models.SpikingModel.time_steps`).
            None: not known.
    """

    norm: str = "tdbn"
    norm_kwargs: dict[str, Any] = field(default_factory=dict)
    membrane_norm: str | None = None
    membrane_norm_kwargs: dict[str, Any] = field(default_factory=dict)
    neuron: str = "lif"
    neuron_kwargs: dict[str, Any] = field(default_factory=dict)
    surrogate: SurrogateSpec = "sigmoid"
    surrogate_kwargs: dict[str, Any] = field(default_factory=dict)
    trace: bool = False
    binary_weights: bool = False
    shortcuts: Shortcuts | None = None
    time_steps: int | None = None

    def __post_init__(self) -> None:
        if self.shortcuts is not None:
            check_choice(self.shortcuts, Shortcuts, "shortcuts")
        if self.time_steps is not None and (isinstance(self.time_steps, bool) or self.time_steps < 1):
            raise ValueError(f"LayerSpec.time_steps must be a positive int or None, got {self.time_steps!r}")

    @classmethod
    def complete_config_fields(cls, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` (a config's mapping of these fields) with the options of the named neuron and surrogate
        completed by their class defaults, the options the built layers really have, so that configs compare
        equal when one spells out a default the other leaves to the library (:func:`spikenorm.config.with_defaults`).

        The options the factory itself gives a neuron (its surrogate and membrane norm) are left out, and a
        norm's options are not completed: a norm's constructor also receives values from the model
        (``time_steps``, the PopSAN actor's ``v_th``), so its class defaults are not what the layer gets.
        Unknown names and built objects are left as they are."""
        completed = dict(fields)
        for name, options, registry, set_by_factory in _COMPLETED_PARTS:
            part = completed.get(name)
            if not isinstance(part, str) or part.lower() not in registry.names():
                continue
            defaults = {k: v for k, v in class_defaults(registry.get(part)).items() if k not in set_by_factory}
            completed[options] = {**defaults, **(completed.get(options) or {})}
        return completed

    def refuse(self, model: str, *options: str, reason: str) -> None:
        """Raise a ValueError naming every option of ``options`` that is set to other than its default."""
        defaults = LayerSpec()
        unsupported = [name for name in options if getattr(self, name) != getattr(defaults, name)]
        if unsupported:
            settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in unsupported)
            raise ValueError(f"{model} does not support layers.{settings}: {reason}")


#: the parts whose options :meth:`LayerSpec.complete_config_fields` completes: (name field, options field,
#: registry, options the layer factory sets itself)
_COMPLETED_PARTS = (
    ("neuron", "neuron_kwargs", NEURONS, frozenset({"surrogate", "surrogate_kwargs", "membrane_norm"})),
    ("surrogate", "surrogate_kwargs", SURROGATES, frozenset()),
)


class SpikingLayerFactory:
    """Builds the norm, neuron and synapse layers of a model from its :class:`LayerSpec`.

    Context values: a norm gets ``time_steps`` (``spec.time_steps``) and the model's ``norm_context`` (e.g. the
    PopSAN actor's ``v_th``, its neurons' threshold) when its constructor takes a parameter of that name and
    ``norm_kwargs`` does not set it. A norm that needs a value nobody gave, or a ``norm_kwargs`` value that
    disagrees with the spec's ``time_steps``, is refused at construction.

    Args:
        spec: the layer spec.
        norm_context: further values the model offers to the norms that take them.
    """

    def __init__(self, spec: LayerSpec, norm_context: Mapping[str, Any] | None = None) -> None:
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"layers must be a spikenorm.models.LayerSpec, got {type(spec).__name__}")
        self.spec = spec
        self.membrane_norm_kwargs = dict(spec.membrane_norm_kwargs)
        self.elementwise_membrane = bool(self.membrane_norm_kwargs.pop("elementwise", False))
        context = {} if spec.time_steps is None else {"time_steps": spec.time_steps}
        self.context = {**context, **(norm_context or {})}
        self.norm_kwargs = self._with_context(spec.norm, spec.norm_kwargs)
        if spec.membrane_norm is not None:
            self.membrane_norm_kwargs = self._with_context(spec.membrane_norm, self.membrane_norm_kwargs)
        # build one of each now, so a bad name or option fails at model construction
        if self.make_norm(1).fold_target == "threshold":
            raise ValueError(
                f"norm={spec.norm!r} normalizes the membrane potential inside a neuron (it folds into the firing "
                f"threshold), so it cannot be the post-conv norm: use membrane_norm={spec.norm!r} together with a "
                "post-conv norm such as norm='tdbn' (MPBN adds a BN on the membrane just before firing, on top of "
                "the usual BN after the conv)"
            )
        self.make_neuron((1, 1, 1))

    def _with_context(self, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus the context values the norm ``name`` takes and ``kwargs`` leaves unset."""
        kwargs = dict(kwargs)
        given = kwargs.get("time_steps")
        if given is not None and self.spec.time_steps is not None and given != self.spec.time_steps:
            raise ValueError(
                f"norm {name!r}: norm_kwargs time_steps={given} disagrees with layers.time_steps="
                f"{self.spec.time_steps}; give T once"
            )
        parameters = inspect.signature(NORMS.get(name)).parameters
        for key, value in self.context.items():
            if key in parameters:
                kwargs.setdefault(key, value)
        for key, parameter in parameters.items():
            required = parameter.default is inspect.Parameter.empty and parameter.kind in (
                parameter.POSITIONAL_OR_KEYWORD,
                parameter.KEYWORD_ONLY,
            )
            if required and key not in ("self", "num_features", "feature_shape") and key not in kwargs:
                raise ValueError(f"norm {name!r} needs {key}: give it in its kwargs")
        return kwargs

    @property
    def time_steps(self) -> int | None:
        """``T`` as the layers know it: ``spec.time_steps``, else a ``time_steps`` in the norm or membrane norm
        options, else None."""
        given = (self.spec.time_steps, self.norm_kwargs.get("time_steps"), self.membrane_norm_kwargs.get("time_steps"))
        return next((t for t in given if t is not None), None)

    @property
    def uses_norm(self) -> bool:
        """False for ``norm="none"``: the layer before it then keeps its bias."""
        return self.spec.norm.lower() != "none"

    def make_norm(self, num_features: int) -> TimeMajorNorm:
        return build_norm(self.spec.norm, num_features, **self.norm_kwargs)

    def synapse(self, layer: nn.Module, receives_spikes: bool = True) -> nn.Module:
        """``layer`` itself, or wrapped in a TraceSynapse when ``trace`` is on and its input is spikes."""
        if not (self.spec.trace and receives_spikes):
            return layer
        return TraceSynapse(layer, decay=getattr(self.make_neuron((1,)), "decay", 1.0))

    def make_neuron(self, feature_shape: tuple[int | None, ...]) -> SpikingNeuron:
        """A neuron for features ``(C,)`` or ``(C, H, W)``; ``H, W`` may be None when unknown."""
        spec, membrane = self.spec, None
        if spec.membrane_norm is not None:
            shape = None
            if self.elementwise_membrane:
                if None in feature_shape:
                    raise ValueError(
                        "an element-wise membrane norm needs the spatial size of every layer: give the model "
                        "its input_size"
                    )
                shape = tuple(feature_shape)
            membrane = build_norm(
                spec.membrane_norm, int(feature_shape[0]), feature_shape=shape, **self.membrane_norm_kwargs
            )
        return build_neuron(
            spec.neuron,
            surrogate=spec.surrogate,
            surrogate_kwargs=spec.surrogate_kwargs,
            membrane_norm=membrane,
            **spec.neuron_kwargs,
        )


def conv_output_size(size: int | None, stride: int) -> int | None:
    """Spatial size after a 3x3 convolution with padding 1 (or 1x1 with padding 0) and ``stride``."""
    return None if size is None else (size - 1) // stride + 1


class SpikingStage(nn.Sequential):
    """A ``synapse -> norm -> neuron`` sequence (any modules, in order) in which a neuron runs together with the
    layer before it: ``neuron.forward_normalized(norm, x)``
    (:meth:`~spikenorm.neurons.SpikingNeuron.forward_normalized`), which fuses the norm into the neuron's kernels
    where :mod:`spikenorm.fused` covers both, and is ``neuron(norm(x))`` otherwise. Module names and the state
    dict are those of ``nn.Sequential``; under ``torch.fx`` tracing (folding, export) it is a plain ``nn.Sequential``,
    so its layers stay the leaves the tracer sees."""

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, torch.fx.Proxy):
            return super().forward(x)
        modules = list(self)
        i = 0
        while i < len(modules):
            module = modules[i]
            after = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(after, SpikingNeuron) and isinstance(module, TimeMajorNorm):
                x, i = after.forward_normalized(module, x), i + 2
            else:
                x, i = module(x), i + 1
        return x


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
    return SpikingStage(synapse, factory.make_norm(out_channels), neuron)


def spiking_linear(
    factory: SpikingLayerFactory, in_features: int, out_features: int, receives_spikes: bool = True
) -> nn.Sequential:
    """``linear -> norm -> neuron`` on ``[T, B, F]`` (Linear acts on the last axis at every step)."""
    linear = factory.synapse(nn.Linear(in_features, out_features, bias=not factory.uses_norm), receives_spikes)
    return SpikingStage(linear, factory.make_norm(out_features), factory.make_neuron((out_features,)))


@traceable
def check_model_input(
    x: Tensor, where: str, ndim: int, channels: int | None, time_steps: int | tuple[int, ...] | None = None
) -> None:
    """Check a model's time-major input: rank exactly ``ndim``, ``channels`` at axis 2 and, when given,
    ``T = time_steps`` (or one of them) at axis 0 (shape comparisons only).

    :func:`~spikenorm.traceable.traceable`: traced (and folded) models keep the check as one graph node.
    """
    check_time_major(x, where, min_ndim=ndim, channels=channels, time_steps=time_steps)
    if x.ndim != ndim:
        raise ValueError(f"{where} expects rank-{ndim} time-major input, got shape {tuple(x.shape)}")


class SpikingModel(RecordsInit, SequenceAware, nn.Module):
    """Base of the spikenorm models: input ``[T, B, ...]`` in, per-step logits ``[T, B, num_classes]`` out.

    Every model records its constructor arguments (:class:`~spikenorm.config.RecordsInit`), so a checkpoint
    can rebuild it without the code that built it.

    Time-major check: a model that knows ``T`` (:attr:`time_steps`) refuses input whose leading axis is not ``T``
    with a ValueError, which catches batch-major ``[B, T, ...]`` input; inside a
    :func:`spikenorm.neurons.stateful` scope (single-step execution) any number of steps is accepted. A model
    that does not know ``T`` (built without ``layers.time_steps`` and with norms that do not fix it, e.g. ``tdbn``)
    cannot tell ``[B, T, ...]`` from ``[T, B, ...]`` when the channels match: it checks rank and channels only.
    """

    num_classes: int
    input_ndim: int  # rank of the expected time-major input
    #: ``T`` of the input the model accepts: ``layers.time_steps`` or its norms' ``time_steps``; None: any ``T``
    #: (a task's ``eval_time_steps`` is accepted too: :meth:`accept_time_steps`).
    time_steps: int | None = None
    #: further ``T`` the model accepts besides :attr:`time_steps` (:meth:`accept_time_steps`)
    extra_time_steps: tuple[int, ...] = ()
    _in_sequence = False  # inside a stateful scope

    def begin_sequence(self) -> None:
        self._in_sequence = True

    def end_sequence(self) -> None:
        self._in_sequence = False

    def abort_sequence(self) -> None:
        self._in_sequence = False

    def receive_time_steps(self, time_steps: int) -> None:
        """The task's ``T`` (:func:`spikenorm.time_steps.bind_time_steps`, which calls this after the model's norms
        received it): a model built for another ``T`` refuses it; a model that did not know ``T`` adopts it when one
        of its norms holds it (``bntt``, ``tebn``, ``tab``: their per-step parameters fix ``T``), exactly as if it
        had been built with ``layers.time_steps=T``, and records that in its config, so checkpoints rebuild it so."""
        if self.time_steps is not None:
            if time_steps != self.time_steps:
                raise ValueError(f"the model was built for T={self.time_steps} (layers.time_steps), not T={time_steps}")
            return
        if not any(getattr(m, "time_steps", None) == time_steps for m in self.modules() if m is not self):
            return
        self.time_steps = time_steps
        record = getattr(self, "_init_config", None)
        layers = record.get("init_args", {}).get("layers") if isinstance(record, dict) else None
        if isinstance(layers, dict):
            layers["time_steps"] = time_steps

    def accept_time_steps(self, *time_steps: int) -> None:
        """Also take input of these ``T`` (a task's ``eval_time_steps``), in any mode, because callbacks run the model
        in modes of their own; input whose leading axis is none of them is still refused. A model that does not know
        ``T`` accepts any ``T`` already; norms that fix ``T`` still refuse another one themselves."""
        if self.time_steps is not None:
            self.extra_time_steps = tuple(sorted({*self.extra_time_steps, *time_steps} - {self.time_steps}))

    def check_input(self, x: Tensor, channels: int | None = None) -> None:
        time_steps = None if self._in_sequence or self.time_steps is None else (self.time_steps, *self.extra_time_steps)
        check_model_input(x, type(self).__name__, self.input_ndim, channels, time_steps)

    def use_binary_weights(self, enabled: bool) -> None:
        """SEI-BWSNN: 1-bit weights (:func:`spikenorm.binary.binarize_model`) in every conv/linear layer except
        the first and the last, shortcut projections included."""
        if enabled:
            binarize_model(self)
