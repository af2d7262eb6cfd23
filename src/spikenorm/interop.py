"""Recognise and reset the spiking neurons of spikenorm, snnTorch and SpikingJelly models.

The attach-to-any-model callbacks (BN re-calibration, spike and energy monitors) work on networks built
with any of the three libraries. Neurons are recognised by their class hierarchy, so neither peer has to
be installed for spikenorm to work:

* spikenorm: :class:`spikenorm.neurons.SpikingNeuron` (multi-step, ``[T, B, ...]`` in and out; keeps no
  state between calls except inside a :func:`spikenorm.neurons.stateful` scope);
* snnTorch: subclasses of ``snntorch.SpikingNeuron`` (one step per call; with ``init_hidden=True`` the
  membrane lives on the module between calls and is cleared by ``reset_mem()``, which is what
  ``snntorch.utils.reset`` calls);
* SpikingJelly: subclasses of ``spikingjelly.activation_based.neuron.BaseNode`` (single- or multi-step;
  every ``MemoryModule`` keeps its state between calls until ``reset()``, which is what
  ``functional.reset_net`` calls).

Neurons of any other class are recognised when the caller names their classes (``neuron_types``, e.g.
``SpikeMonitor(neuron_types=[MyLIF])``): such a neuron is single-step (one call per time step, spikes
``[B, ...]``) unless it has ``step_mode == "m"`` (SpikingJelly's convention), then multi-step (``[T, B, ...]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

from torch import Tensor, nn

from spikenorm.neurons import SpikingNeuron

Library = Literal["spikenorm", "snntorch", "spikingjelly"]


def _has_base(module: nn.Module, class_name: str, package: str) -> bool:
    return any(c.__name__ == class_name and c.__module__.startswith(package) for c in type(module).__mro__)


def neuron_library(module: nn.Module) -> Library | None:
    """The library whose spiking neuron ``module`` is, or None if it is not a spiking neuron."""
    if isinstance(module, SpikingNeuron):
        return "spikenorm"
    if _has_base(module, "SpikingNeuron", "snntorch"):
        return "snntorch"
    if _has_base(module, "BaseNode", "spikingjelly"):
        return "spikingjelly"
    return None


def check_neuron_types(neuron_types: Sequence[type[nn.Module]] | None) -> tuple[type[nn.Module], ...]:
    """``neuron_types`` as a tuple of ``nn.Module`` subclasses (empty for None).

    Raises:
        TypeError: an entry that is not a subclass of ``nn.Module`` (e.g. an instance instead of its class).
    """
    types = tuple(neuron_types or ())
    for entry in types:
        if not (isinstance(entry, type) and issubclass(entry, nn.Module)):
            raise TypeError(
                f"neuron_types must list neuron classes (subclasses of nn.Module), got {entry!r} of type "
                f"{type(entry).__name__}; pass the class itself, e.g. neuron_types=[MyLIF]"
            )
    return types


def is_spiking_neuron(module: nn.Module, neuron_types: Sequence[type[nn.Module]] = ()) -> bool:
    """Whether ``module`` is a spikenorm, snnTorch or SpikingJelly neuron, or an instance of ``neuron_types``."""
    return neuron_library(module) is not None or isinstance(module, tuple(neuron_types))


def any_spiking_neurons(
    model: nn.Module, neuron_types: Sequence[type[nn.Module]] = ()
) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for every spikenorm, snnTorch or SpikingJelly neuron in ``model``, and
    every instance of ``neuron_types``."""
    for name, module in model.named_modules():
        if is_spiking_neuron(module, neuron_types):
            yield name, module


def is_multi_step(module: nn.Module) -> bool:
    """Whether one call of the neuron runs all T steps (output ``[T, B, ...]``) rather than one step:
    always for spikenorm, never for snnTorch, and for SpikingJelly and custom neurons when ``step_mode == "m"``."""
    library = neuron_library(module)
    if library in ("spikenorm", "snntorch"):
        return library == "spikenorm"
    return getattr(module, "step_mode", "s") == "m"


def spike_tensor(output: object) -> Tensor:
    """The spikes among a neuron's outputs: snnTorch neurons may return ``(spk, mem)`` or more."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find the spike tensor in a neuron output of type {type(output).__name__}")


def reset_neuron_states(model: nn.Module) -> int:
    """Clear every neuron state that a previous forward left behind; returns how many modules were reset.

    spikenorm neurons inside a ``stateful`` scope restart from zero; snnTorch neurons get ``reset_mem()``;
    every SpikingJelly ``MemoryModule`` gets ``reset()``.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, SpikingNeuron):
            if module._carried_state is not None:
                module._carried_state = {}
                count += 1
        elif _has_base(module, "SpikingNeuron", "snntorch") and hasattr(module, "reset_mem"):
            if hasattr(module, "mem"):
                module.reset_mem()
                count += 1
        elif _has_base(module, "MemoryModule", "spikingjelly"):
            module.reset()
            count += 1
    return count
