r"""Fused multi-step IF / LIF / CLIF: all ``T`` steps in one compiled kernel, forward and backward.

:meth:`spikenorm.neurons.SpikingNeuron.forward` loops over time in Python and autograd records every
elementwise op of every step (about ten saved tensors per step). This module replaces that loop, for the
cases it covers, by one ``torch.autograd.Function`` whose forward and backward are each a single
``torch.compile``-d function of tensors (inductor: C++/OpenMP on CPU, Triton on GPU). The forward saves one
tensor, the pre-spike membranes ``h_t`` (``[T, B, ...]``); the backward recomputes ``z_t = u_t - theta``
from ``h_t`` and runs the reverse-time recurrence below. Neurons take it under ``backend="auto"`` (the
default, large inputs only) or always with ``backend="fused"``; the loop of :mod:`spikenorm.neurons` stays
the reference (``backend="eager"``).

Equations (elementwise; ``lambda`` = 1 for IF, ``decay`` for LIF)::

    IF/LIF:  h_t = lambda v_{t-1} + x_t
    CLIF:    c_t = a c_{t-1} + x_t,   h_t = b v_{t-1} + c_t
    norm:    u_t = h_t                                   (no membrane norm)
             u_t = (h_t - mu) * rstd * gamma + beta      (eval-mode MPBN/VanillaBN: alpha = rstd * gamma)
    fire:    z_t = u_t - theta,   s_t = H(z_t),   dH/dz := g(z_t)   (the surrogate derivative)
    reset:   hard  v_t = h_t (1 - s_t) + v_r s_t
             soft  v_t = h_t - theta s_t
    v_0 = c_0 = 0.

Backward (BPTT). Write ``S_t = dL/ds_t`` (the incoming gradient of the spikes), ``V_t = dL/dv_t`` (what the
future sends back to the state after step ``t``; ``V_T = 0``), ``G_t = dL/dh_t``. The reset is
``v_t = P_t h_t + R_t s_t`` with

    hard: ``P_t = 1 - s_t``, ``R_t = v_r - h_t``;      soft: ``P_t = 1``, ``R_t = -theta``,

so, with ``D = 1`` normally and ``D = 0`` under ``detach_reset`` (the reset's ``s_t`` carries no
gradient),

    ``G_t = alpha g(z_t) (S_t + D R_t V_t) + P_t V_t``

(``alpha = 1`` without a membrane norm). Then, going from ``t = T`` down to 1:

    IF/LIF:  ``dL/dx_t = G_t``,  ``V_{t-1} = lambda G_t``
    CLIF:    ``C_t = G_t + a C_{t+1}`` (``C_{T+1} = 0``),  ``dL/dx_t = C_t``,  ``V_{t-1} = b G_t``

which is exactly what autograd computes through the eager loop (up to float rounding order). The spikes
of the fused forward are bit-identical to the eager loop's: the kernel performs the same floating-point
operations in the same order (inductor keeps the graph's op order and compiles C++ with
``-ffp-contract=off``); membrane-norm parameters are pre-computed in eager exactly as the norm does
(``rsqrt(running_var + eps)``) rather than folded into one affine map, which would round differently.
This bit-exactness is tested on CPU only; on CUDA, Triton may contract ``a * b + c`` into an FMA, so a
spike can flip where ``u_t`` lies within one rounding of ``theta`` (gradients agree to tolerance).

Covered (otherwise :func:`unsupported_reason` names the cause and the neuron runs its eager loop):
exact classes IF / LIF / CLIF, hard or soft reset, ``detach_reset`` on or off, scalar / per-channel /
per-element thresholds (a buffer without gradient), the registered surrogates (rectangle, sigmoid, atan,
triangle, dspike; subclasses overriding ``derivative`` are not covered), no membrane norm or an eval-mode
:class:`~spikenorm.norm.batchnorm.VanillaBN` / :class:`~spikenorm.norm.mpbn.MPBN` with per-feature running
statistics whose parameters get no gradient; float32 and float64 inputs. Not covered: float16/bfloat16,
double backward, OTS, training-mode (batch-statistics) membrane
norms, ``detach_membrane``, the carried state of :func:`~spikenorm.neurons.stateful` scopes, callable
(snnTorch) surrogates, gradients w.r.t. thresholds or norm parameters, and calls made while an outer
``torch.compile`` is tracing (it then traces the eager loop itself).

Kernels are generated per configuration (neuron kind and constants, reset, detach_reset, surrogate and its
parameters, norm affine or not, with/without saved membranes, dtype, device), each with its own code
object, and compiled lazily; dynamo then specialises on shapes. If ``torch.compile`` is unavailable or a
compilation fails, the configuration is marked broken (one warning) and the neuron falls back to its eager
loop (forward) or the uncompiled kernel (backward). Compile cost: a first kernel takes ~15 s on CPU, later
ones a few seconds, hence ``backend="auto"`` (the default) only picks this path for large inputs (see
:func:`use_fused`).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["clear_cache", "compile_available", "fused_forward", "unsupported_reason", "use_fused"]

#: ``backend="auto"`` uses the fused path for inputs of at least this many elements, per device type (none
#: listed: never). On CPU a first compilation costs seconds, so only large layers take it there.
AUTO_MIN_NUMEL: dict[str, int] = {"cuda": 1 << 16, "cpu": 1 << 20}

_LOCK = threading.Lock()
_CACHE: dict[tuple, Callable[..., Any]] = {}
_BROKEN: set[tuple] = set()


def compile_available() -> bool:
    """Whether ``torch.compile`` can be used in this process (dynamo supported on this Python)."""
    try:
        import torch._dynamo as dynamo

        return hasattr(torch, "compile") and bool(dynamo.is_dynamo_supported())
    except Exception:  # noqa: BLE001  # pragma: no cover - exotic builds
        return False


def clear_cache() -> None:
    """Forget every generated kernel and every broken-configuration mark."""
    with _LOCK:
        _CACHE.clear()
        _BROKEN.clear()


# -- configuration ---------------------------------------------------------------------------------
def _surrogate_spec(surrogate: Any) -> tuple | None:
    """``(name, params)`` of a surrogate whose derivative the kernels write out, else None."""
    from spikenorm import surrogate as sg

    known = {sg.Rectangle: ("rectangle", "width"), sg.Sigmoid: ("sigmoid", "alpha"), sg.ATan: ("atan", "alpha"),
             sg.Triangle: ("triangle", "width"), sg.Dspike: ("dspike", "b", "width")}
    spec = known.get(type(surrogate))
    if spec is None:
        return None
    return (spec[0], *(float(getattr(surrogate, p)) for p in spec[1:]))


def _derivative_src(spec: tuple) -> str:
    """Source of ``g(z)``, written as the surrogate module computes it (constants as exact reprs)."""
    name = spec[0]
    if name == "rectangle":
        w = spec[1]
        return f"(z.abs() < {w / 2!r}).to(z.dtype) / {w!r}"
    if name == "sigmoid":
        a = spec[1]
        return f"{a!r} * torch.sigmoid({a!r} * z) * (1 - torch.sigmoid({a!r} * z))"
    if name == "atan":
        a = spec[1]
        return f"{a / 2!r} / (1 + ({math.pi / 2 * a!r} * z) ** 2)"
    if name == "triangle":
        w = spec[1]
        return f"torch.clamp(1 - z.abs() / {w!r}, min=0) / {w!r}"
    if name == "dspike":
        b, w = spec[1], spec[2]
        return (f"(((z / {w!r}).abs() < 0.5).to(z.dtype) * {b!r} * (1 - torch.tanh({b!r} * (z / {w!r})) ** 2)"
                f" / {2 * w * math.tanh(b / 2)!r})")
    raise AssertionError(name)


@dataclass(frozen=True)
class _Config:
    kind: str  # "if" | "lif" | "clif"
    decay: float  # lambda (IF: 1) or b (CLIF)
    current_decay: float  # a (CLIF only)
    reset: str
    reset_value: float
    detach_reset: bool
    surrogate: tuple
    norm: str  # "none" | "norm" | "affine"


def _neuron_config(neuron: Any) -> _Config | str:
    """The kernel configuration of ``neuron``, or the reason it is not covered."""
    from spikenorm.neurons import CLIF, IF, LIF

    kind = {IF: "if", LIF: "lif", CLIF: "clif"}.get(type(neuron))
    if kind is None:
        return f"{type(neuron).__name__} is not IF, LIF or CLIF"
    if neuron.ots:
        return "OTS thresholds depend on batch statistics of each step"
    if neuron.detach_membrane:
        return "detach_membrane"
    if neuron._carried_state is not None:
        return "carried state (stateful scope)"
    spec = _surrogate_spec(neuron.surrogate)
    if spec is None:
        return f"surrogate {type(neuron.surrogate).__name__} has no closed-form derivative known to the kernels"
    norm = "none"
    if neuron.membrane_norm is not None:
        reason = _norm_reason(neuron.membrane_norm)
        if reason:
            return reason
        norm = "affine" if neuron.membrane_norm.affine else "norm"
    decay = {"if": 1.0, "lif": getattr(neuron, "decay", 1.0), "clif": getattr(neuron, "decay", 1.0)}[kind]
    return _Config(kind, float(decay), float(getattr(neuron, "current_decay", 0.0)), neuron.reset,
                   float(neuron.reset_value), bool(neuron.detach_reset), spec, norm)


def _norm_reason(norm: Any) -> str | None:
    from spikenorm.norm.base import TimeMajorNorm
    from spikenorm.norm.batchnorm import VanillaBN

    if not isinstance(norm, VanillaBN):
        return f"membrane norm {type(norm).__name__} is not an eval-mode VanillaBN/MPBN"
    for name in ("forward", "normalize", "affine_transform", "feature_view"):
        if getattr(type(norm), name) is not getattr(TimeMajorNorm, name):
            return f"membrane norm {type(norm).__name__} overrides {name}"
    if norm.training:
        return "membrane norm in training mode (batch statistics)"
    if tuple(norm.running_mean.shape) != tuple(norm.feature_shape):
        return "membrane norm statistics are not per feature"
    if torch.is_grad_enabled() and norm.affine and (norm.weight.requires_grad or norm.bias.requires_grad):
        return "membrane norm parameters require grad"
    return None


def unsupported_reason(neuron: Any, x: Tensor) -> str | None:
    """Why the fused path cannot run ``neuron`` on ``x`` (``[T, B, ...]``), or None when it can."""
    if not compile_available():
        return "torch.compile is unavailable"
    if torch.compiler.is_compiling():
        return "already inside torch.compile"
    if x.dtype not in (torch.float32, torch.float64) or x.ndim < 2:
        # half types: inductor computes in float32 and rounds once, the eager loop rounds every op
        return "input must be a float32/float64 [T, B, ...] tensor"
    config = _neuron_config(neuron)
    if isinstance(config, str):
        return config
    theta = neuron.threshold
    if theta.requires_grad and torch.is_grad_enabled():
        return "threshold requires grad"
    if theta.ndim and theta.dtype != x.dtype:
        return "tensor threshold of another dtype than the input (type promotion)"
    if theta.device != x.device:
        return "threshold on another device"
    norm = neuron.membrane_norm
    if norm is not None:
        k = len(norm.feature_shape)
        if tuple(x.shape[2 : 2 + k]) != tuple(norm.feature_shape):
            return "membrane norm feature shape does not fit the input"
        tensors = [norm.running_mean, norm.running_var] + ([norm.weight, norm.bias] if norm.affine else [])
        if any(t.dtype != x.dtype or t.device != x.device for t in tensors):
            return "membrane norm tensors of another dtype or device than the input"
    if _key(config, x, True) in _BROKEN:
        return "compilation failed for this configuration"
    return None


def use_fused(neuron: Any, x: Tensor, backend: str) -> bool:
    """Whether ``backend`` (``"eager" | "fused" | "auto"``) runs ``neuron`` on ``x`` fused.

    ``"fused"`` means fused whenever covered; ``"auto"`` additionally asks for an input of at least
    :data:`AUTO_MIN_NUMEL` elements for its device type (CUDA 65,536, CPU 1,048,576): the first call of
    each configuration pays a compilation (several seconds of C++ on CPU), which a small layer, a short run
    or a test does not win back. On the CIFAR-sized VGG of ``benchmarks/compare.py`` (every neuron layer
    at least 4M elements) the fused path trained 14% faster on a 2-core CPU (23.2 vs 20.4 samples/s).
    """
    if backend == "eager" or torch.compiler.is_compiling():  # a traced size would become a guard
        return False
    if backend == "auto" and x.numel() < AUTO_MIN_NUMEL.get(x.device.type, math.inf):
        return False
    return unsupported_reason(neuron, x) is None


# -- kernel generation --------------------------------------------------------------------------------
def _charge_src(c: _Config) -> list[str]:
    if c.kind == "if":
        return ["h = v + x[t]"]
    if c.kind == "lif":
        return [f"h = {c.decay!r} * v + x[t]"]
    return [f"c = {c.current_decay!r} * c + x[t]", f"h = {c.decay!r} * v + c"]


def _u_src(c: _Config) -> list[str]:
    if c.norm == "none":
        return ["u = h"]
    if c.norm == "norm":
        return ["u = (h - nm) * nr"]
    return ["u = (h - nm) * nr * nw + nb"]


def _forward_src(c: _Config, save_h: bool) -> str:
    lines = ["def kernel(x, theta, nm, nr, nw, nb):", "    v = torch.zeros_like(x[0])"]
    if c.kind == "clif":
        lines.append("    c = torch.zeros_like(x[0])")
    lines += ["    spikes = []", "    hs = []", "    for t in range(x.shape[0]):"]
    body = _charge_src(c) + _u_src(c) + ["s = (u - theta > 0).to(x.dtype)"]
    if c.reset == "hard":
        body.append(f"v = h * (1 - s) + {c.reset_value!r} * s")
    else:
        body.append("v = h - theta * s")
    body += ["spikes.append(s)", "hs.append(h)" if save_h else "pass"]
    lines += ["        " + b for b in body]
    lines.append("    return (torch.stack(spikes), torch.stack(hs))" if save_h else "    return torch.stack(spikes)")
    return "\n".join(lines) + "\n"


def _backward_src(c: _Config) -> str:
    lines = ["def kernel(gs, hs, theta, nm, nr, nw, nb):", "    gv = torch.zeros_like(gs[0])"]
    if c.kind == "clif":
        lines.append("    gc = torch.zeros_like(gs[0])")
    lines += ["    gx = [None] * gs.shape[0]", "    for t in range(gs.shape[0] - 1, -1, -1):", "        h = hs[t]"]
    body = _u_src(c) + ["z = u - theta", f"g = {_derivative_src(c.surrogate)}"]
    if c.norm == "norm":
        body.append("g = g * nr")
    elif c.norm == "affine":
        body.append("g = g * (nr * nw)")
    if c.reset == "hard":
        body += ["s = (z > 0).to(h.dtype)", "p = 1 - s", f"r = {c.reset_value!r} - h"]
        keep = "p * gv"
    else:
        body += ["r = -theta"]
        keep = "gv"
    if c.detach_reset:
        body.append(f"gh = g * gs[t] + {keep}")
    else:
        body.append(f"gh = g * (gs[t] + r * gv) + {keep}")
    if c.kind == "clif":
        body += [f"gc = gh + {c.current_decay!r} * gc", "gx[t] = gc", f"gv = {c.decay!r} * gh"]
    else:
        body += ["gx[t] = gh", f"gv = {c.decay!r} * gh"]
    lines += ["        " + b for b in body]
    lines.append("    return torch.stack(gx)")
    return "\n".join(lines) + "\n"


def _key(c: _Config, x: Tensor, save_h: bool, part: str = "fwd") -> tuple:
    if part == "fwd":  # the forward does not depend on the surrogate or on detach_reset
        c = replace(c, detach_reset=False, surrogate=())
    return (part, c, save_h, x.dtype, x.device.type)


def _build(src: str, name: str) -> Callable[..., Any]:
    """Exec ``src`` into a fresh function (its own code object, hence its own dynamo cache)."""
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(src, f"<spikenorm.fused {name}>", "exec"), namespace)  # noqa: S102 - generated here
    return namespace["kernel"]


def _kernels(key: tuple, src: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(compiled, plain)`` kernel for ``key``, built once."""
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            plain = _build(src, "/".join(map(str, key)))
            entry = (torch.compile(plain, fullgraph=True), plain)
            _CACHE[key] = entry
    return entry


def _run(key: tuple, src: str, *args: Tensor) -> Any:
    """Run the compiled kernel; on failure mark ``key`` broken, warn once and run it uncompiled."""
    compiled, plain = _kernels(key, src)
    if key not in _BROKEN:
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compile error surfaces at the first call
            _BROKEN.add(key)
            warnings.warn(f"spikenorm.fused: torch.compile failed ({type(err).__name__}: {err}); "
                          "falling back to eager for this configuration", RuntimeWarning, stacklevel=3)
    return plain(*args)


class _FusedNeuronFn(torch.autograd.Function):
    """Autograd node of a whole multi-step neuron: saves ``h_t`` only, backward is one kernel."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, config: _Config, theta: Tensor, params: tuple) -> Tensor:
        spikes, hs = _run(_key(config, x, True), _forward_src(config, True), x, theta, *params)
        ctx.config = config
        ctx.save_for_backward(hs, theta, *params)
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_spikes: Tensor) -> tuple[Tensor | None, None, None, None]:
        hs, theta, *params = ctx.saved_tensors
        c: _Config = ctx.config
        grad = _run(_key(c, hs, True, "bwd"), _backward_src(c), grad_spikes.contiguous(), hs, theta, *params)
        return grad, None, None, None


def _memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The permutation of ``x``'s dims (``[T, B, ...]``) that makes it contiguous without a copy, when ``T``
    and ``B`` stay outermost (e.g. ``(0, 1, 3, 4, 2)`` for convolution outputs in channels-last layout);
    None when ``x`` is contiguous already or no such permutation exists (then ``x`` is copied)."""
    if x.is_contiguous():
        return None
    features = sorted(range(2, x.ndim), key=lambda d: x.stride(d), reverse=True)
    order = (0, 1, *features)
    return order if x.permute(order).is_contiguous() else None


def _dense(t: Tensor, features: torch.Size, order: tuple[int, ...] | None) -> Tensor:
    """``t`` (scalar, ``[C]`` or ``[C, ...]``) broadcast to ``features`` and laid out like the input: its
    feature dims permuted by ``order`` (an input permutation, see :func:`_memory_order`), contiguous."""
    t = t.reshape(tuple(t.shape) + (1,) * (len(features) - t.ndim)).expand(features)
    if order is not None:
        t = t.permute([d - 2 for d in order[2:]])
    return t.contiguous()


def _params(neuron: Any, x: Tensor, order: tuple[int, ...] | None) -> tuple[Tensor, tuple]:
    """The dense threshold and the norm parameters ``(mean, rstd, weight, bias)`` of one step, laid out like
    ``x.permute(order)``."""
    features = x.shape[2:]
    theta = neuron.threshold_for(x[0])  # validates the shape like the eager path
    theta = theta.to(x.dtype) if theta.ndim == 0 else theta  # eager: a 0-dim theta takes x's dtype
    theta = _dense(theta.detach(), features, order)
    norm = neuron.membrane_norm
    if norm is None:
        empty = x.new_zeros(())
        return theta, (empty, empty, empty, empty)
    with torch.no_grad():
        rstd = torch.rsqrt(norm.running_var + norm.eps)  # exactly the eager normalize()
        mean = norm.running_mean
        weight = norm.weight if norm.affine else torch.ones_like(mean)
        bias = norm.bias if norm.affine else torch.zeros_like(mean)
        return theta, tuple(_dense(p.detach(), features, order) for p in (mean, rstd, weight, bias))


def fused_forward(neuron: Any, x: Tensor) -> Tensor:
    """Spikes of ``neuron`` on ``x`` (``[T, B, ...]``) through the fused kernels.

    Call only when :func:`unsupported_reason` is None. Without gradient (no_grad or an input without
    ``requires_grad``) a spikes-only kernel runs and nothing is saved. The kernels are elementwise over the
    features, so an input whose features are stored in another order (channels-last convolution outputs)
    runs in that order: no copy, and the spikes (and the input gradient) keep the input's layout.
    """
    config = _neuron_config(neuron)
    assert isinstance(config, _Config), config
    order = _memory_order(x)
    theta, params = _params(neuron, x, order)
    x = x.contiguous() if order is None else x.permute(order)
    if torch.is_grad_enabled() and x.requires_grad:
        spikes = _FusedNeuronFn.apply(x, config, theta, params)
    else:
        spikes = _run(_key(config, x, False), _forward_src(config, False), x, theta, *params)
    return spikes if order is None else spikes.permute([order.index(d) for d in range(x.ndim)])
