"""Surrogate spike functions.

The spike is the Heaviside step of ``x = u - theta`` (membrane minus threshold), strict: ``s = 1[x > 0]``,
as in the CaRe-BN and MPBN reference code. Its derivative is zero almost everywhere, so training replaces
it in the backward pass by the derivative ``g(x)`` of a smooth function. Every surrogate here is a module
whose forward is exactly the Heaviside step and whose backward is its closed-form ``g``; all of them run
through the one autograd Function :class:`HeavisideSurrogateFn`, parametrised by the module.

=========  ===============================================================  =====================================
name       g(x)                                                             reference
=========  ===============================================================  =====================================
rectangle  ``1[|x| < w/2] / w``                                             Wu et al. 2018 (STBP); CaRe-BN: w = 1
sigmoid    ``a * sig(a x) * (1 - sig(a x))``                                OSR/OTTT use a = 4
atan       ``(a/2) / (1 + (pi a x / 2)^2)``                                 Fang et al. 2021
triangle   ``max(0, 1 - |x|/w) / w``                                        Esser et al. 2016; Bellec et al. 2018
dspike     ``b sech^2(b x/w) / (2 w tanh(b/2))`` for ``|x| < w/2``, else 0  Li et al. 2021 (Dspike); MPBN: b = 3
=========  ===============================================================  =====================================

All of them integrate to 1 over the real line (Dspike and rectangle over their window), so the
surrogate is a smoothed Dirac delta. Any callable ``f(x) -> spikes`` (for example every
``snntorch.surrogate`` function such as ``snntorch.surrogate.atan()``) can be used instead through
:class:`CallableSurrogate`, so snnTorch users keep the surrogate they trained with.

Extending: a new surrogate subclasses :class:`Surrogate`, keeps its forward, writes ``g`` in
:meth:`Surrogate.derivative` from tensor ops and plain float/int/bool/str attributes, and, to be built by
name, registers it with ``@SURROGATES.register("name")``. That is all the fused kernels (:mod:`spikenorm.fused`)
need: their compiled backward calls the function :meth:`Surrogate.kernel_derivative` returns, and they are
cached per :meth:`Surrogate.kernel_key`. A surrogate with another forward (:class:`CallableSurrogate`), tensor
state or no ``derivative`` runs the eager loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, nn

from spikenorm.config import RecordsInit
from spikenorm.registry import Registry

SURROGATES: Registry[Surrogate] = Registry("surrogate")


#: instance attributes every module has (torch's bookkeeping, the recorded init config): not parameters of g
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"_init_config"}


class HeavisideSurrogateFn(torch.autograd.Function):
    """Forward: ``1[x > 0]``. Backward: ``grad_output * surrogate.derivative(x)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, surrogate: Surrogate) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


class Surrogate(RecordsInit, nn.Module):
    """Base class: ``forward(x)`` is the Heaviside spike of ``x = u - theta`` with gradient ``derivative(x)``."""

    def derivative(self, x: Tensor) -> Tensor:
        """The surrogate gradient ``g(x)`` used in place of the Dirac delta."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return HeavisideSurrogateFn.apply(x, self)

    def kernel_key(self) -> Hashable | None:
        """What identifies :meth:`derivative` for the fused kernels: the class and its parameters (every
        attribute it sets, all float/int/bool/str). None when the fused kernels cannot use this surrogate: its
        forward is not the Heaviside step of :class:`Surrogate`, it defines no ``derivative``, or it holds
        state a key of plain values cannot capture (parameters, buffers, submodules, other attributes)."""
        cls = type(self)
        if cls.forward is not Surrogate.forward or cls.derivative is Surrogate.derivative:
            return None
        if self._parameters or self._buffers or self._modules:
            return None
        own = self._settings()
        if not all(isinstance(v, (bool, int, float, str)) for v in own.values()):
            return None
        return (cls, tuple(sorted(own.items())))

    def _settings(self) -> dict[str, Any]:
        """The attributes this surrogate sets itself (the parameters of ``g``), in the order it set them."""
        return {k: v for k, v in vars(self).items() if k not in _MODULE_INTERNALS}

    def extra_repr(self) -> str:
        """The parameters of ``g`` as ``name=value``."""
        return ", ".join(f"{name}={value}" for name, value in self._settings().items())

    def kernel_derivative(self) -> Callable[[Tensor], Tensor] | None:
        """``g`` as a pure function for the fused kernels to trace (``torch.compile`` inlines it): the
        :meth:`derivative` of a frozen copy, so later changes to this module cannot reach a cached kernel;
        None exactly when :meth:`kernel_key` is None."""
        if self.kernel_key() is None:
            return None
        return copy.deepcopy(self).derivative


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"surrogate parameter {name} must be > 0, got {value}")
    return float(value)


@SURROGATES.register("rectangle")
class Rectangle(Surrogate):
    """Rectangular window: ``g(x) = 1[|x| < width/2] / width``."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = _positive("width", width)

    def derivative(self, x: Tensor) -> Tensor:
        return (x.abs() < self.width / 2).to(x.dtype) / self.width


@SURROGATES.register("sigmoid")
class Sigmoid(Surrogate):
    """Derivative of ``sig(alpha x)``: ``g(x) = alpha sig(alpha x)(1 - sig(alpha x))``."""

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def derivative(self, x: Tensor) -> Tensor:
        sig = torch.sigmoid(self.alpha * x)
        return self.alpha * sig * (1 - sig)


@SURROGATES.register("atan")
class ATan(Surrogate):
    """Derivative of ``atan(pi alpha x / 2)/pi + 1/2``: ``g(x) = (alpha/2) / (1 + (pi alpha x / 2)^2)``."""

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)


@SURROGATES.register("triangle")
class Triangle(Surrogate):
    """Triangular window of half-width ``width``: ``g(x) = max(0, 1 - |x|/width) / width``."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = _positive("width", width)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.clamp(1 - x.abs() / self.width, min=0) / self.width


@SURROGATES.register("dspike")
class Dspike(Surrogate):
    """Dspike (Li et al., NeurIPS 2021) with temperature ``b`` on a window of width ``width``.

    With ``z = x / width`` the smooth spike is ``(tanh(b z) + tanh(b/2)) / (2 tanh(b/2))`` on
    ``|z| < 1/2``, so ``g(x) = b sech^2(b z) / (2 width tanh(b/2))`` there and 0 outside. With the MPBN
    defaults (``b = 3``, width 1) the peak is 1.66 at the threshold and about 0.30 at the window edges.
    """

    def __init__(self, b: float = 3.0, width: float = 1.0) -> None:
        super().__init__()
        self.b = _positive("b", b)
        self.width = _positive("width", width)

    def derivative(self, x: Tensor) -> Tensor:
        z = x / self.width
        inside = (z.abs() < 0.5).to(x.dtype)
        sech2 = 1 - torch.tanh(self.b * z) ** 2
        return inside * self.b * sech2 / (2 * self.width * math.tanh(self.b / 2))


class CallableSurrogate(Surrogate):
    """Adapter for any callable ``f(x) -> spikes`` with its own gradient, e.g. ``snntorch.surrogate.atan()``.

    snnTorch surrogates take ``mem - threshold`` and return ``1[x > 0]`` with their own backward, which is
    exactly the contract here, so the callable is applied as is.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"CallableSurrogate needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__qualname__', repr(self.fn))}"


def available_surrogates() -> list[str]:
    """Names accepted by :func:`build_surrogate`."""
    return SURROGATES.names()


def build_surrogate(spec: str | Surrogate | Callable[[Tensor], Tensor], **kwargs: Any) -> Surrogate:
    """Build a surrogate from a registered name (with ``kwargs``), a Surrogate, or any spike callable."""
    if isinstance(spec, Surrogate):
        if kwargs:
            raise ValueError(f"surrogate kwargs {sorted(kwargs)} given together with a built surrogate {spec!r}")
        return spec
    if isinstance(spec, str):
        return SURROGATES.get(spec)(**kwargs)
    if callable(spec):
        return CallableSurrogate(spec)
    raise TypeError(
        f"surrogate must be a name ({', '.join(available_surrogates())}), a Surrogate or a callable, "
        f"got {type(spec).__name__}"
    )
