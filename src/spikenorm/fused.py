r"""Fused multi-step neurons: all ``T`` steps in one compiled kernel, forward and backward.

For the cases it covers, one ``torch.autograd.Function`` replaces the eager loop of
:meth:`spikenorm.neurons.SpikingNeuron.forward`: its forward and its backward are each one ``torch.compile``-d
function of tensors, generated per configuration. The forward saves only the pre-spike membranes ``h_t``
(``[T, B, ...]``); the backward recomputes ``z_t = u_t - theta`` from them and runs the reverse-time recurrence
below. Neurons take this path with ``backend="fused"``, or with ``backend="auto"`` for large inputs
(:func:`use_fused`).

The contract. This module imports nothing from spikenorm: it writes its kernels from what the objects declare,
so a new neuron, surrogate or membrane norm gets the fused path without an edit here.

* the neuron: ``declared_charge()``, a :class:`~spikenorm.recurrence.LinearCharge` (membrane decay ``b``, input
  scale ``s``, current-stage decays ``a_1 .. a_K``) or None (not covered); ``threshold_stabilizer``, None or an
  object whose ``fused_unsupported_reason()`` says why it is not covered; and ``threshold``, ``threshold_for``,
  ``state_dtype``, ``reset``, ``reset_value``, ``detach_reset``, ``detach_membrane``, ``membrane_norm``,
  ``surrogate``;
* the surrogate: ``kernel_key()``, a hashable identity of its derivative (None: not covered), and
  ``kernel_derivative()``, the function ``g(z)`` the backward kernel calls;
* the membrane norm: ``fused_membrane_parameters(x)``, ``(mean, rstd, weight, bias)`` (weight, bias None without
  affine) or the reason it cannot; :class:`~spikenorm.norm.TimeMajorNorm` provides it.

Equations (elementwise)::

    charge:  i_t = s x_t
             c1_t = a_1 c1_{t-1} + i_t,   ck_t = a_k ck_{t-1} + c(k-1)_t   (k = 2 .. K)
             h_t = b v_{t-1} + cK_t                                      (cK_t := i_t when K = 0)
    norm:    u_t = h_t                                   (no membrane norm)
             u_t = (h_t - mu) * rstd * gamma + beta      (eval-mode norm: alpha = rstd * gamma)
    fire:    z_t = u_t - theta,   s_t = H(z_t),   dH/dz := g(z_t)   (the surrogate derivative)
    reset:   hard  v_t = h_t (1 - s_t) + v_r s_t
             soft  v_t = h_t - theta s_t
    v_0 = c_0 = 0.

Backward (BPTT). With ``S_t = dL/ds_t``, ``V_t = dL/dv_t`` (``V_T = 0``), ``G_t = dL/dh_t`` and the reset written
``v_t = P_t h_t + R_t s_t`` (hard: ``P_t = 1 - s_t``, ``R_t = v_r - h_t``; soft: ``P_t = 1``, ``R_t = -theta``)::

    G_t = alpha g(z_t) (S_t + D R_t V_t) + P_t V_t          (D = 0 under detach_reset, else 1; alpha = 1 without norm)
    CK_t = G_t + a_K CK_{t+1},   Ck_t = C(k+1)_t + a_k Ck_{t+1}   (k = K-1 .. 1; Ck_{T+1} = 0)
    dL/dx_t = s C1_t  (s G_t when K = 0),   V_{t-1} = b G_t

which is what autograd computes through the eager loop, up to the order of float rounding. The forward kernel
performs the eager loop's floating-point operations in its order (those of
:meth:`~spikenorm.recurrence.LinearCharge.charge`; C++ compiled with ``-ffp-contract=off``; membrane-norm parameters
computed as the norm computes them), so its spikes are bit-identical to the eager loop's on CPU. On CUDA, Triton
may contract ``a * b + c`` into an FMA, so a spike can flip where ``u_t`` lies within one rounding of ``theta``.
Half-precision inputs are computed in the neuron's ``state_dtype`` (float32), as the eager loop does; spikes and
input gradients come back in the input's dtype.

Not covered (:func:`unsupported_reason` names the cause, and the neuron runs its eager loop): double backward, a
threshold stabiliser, training-mode (batch-statistics) membrane norms, ``detach_membrane``, the carried state of
:func:`~spikenorm.neurons.stateful` scopes, callable (snnTorch) surrogates, gradients w.r.t. thresholds or norm
parameters, and calls made while an outer ``torch.compile`` is tracing. A configuration whose compilation fails is
marked broken (one warning) and runs eager (forward) or uncompiled (backward).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Hashable
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
_CACHE: dict[tuple, tuple[Callable[..., Any], Callable[..., Any]]] = {}  # key -> (compiled, plain) kernel
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
@dataclass(frozen=True)
class _Config:
    charge: Any  # the neuron's LinearCharge (frozen, hashable): decay, input_scale, current_decays
    reset: str
    reset_value: float
    detach_reset: bool
    surrogate: Hashable  # the surrogate's kernel_key()
    norm: str  # "none" | "norm" | "affine"


_NormParams = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def _neuron_config(neuron: Any, x: Tensor) -> tuple[_Config, _NormParams | None] | str:
    """The kernel configuration of ``neuron`` on ``x`` and its membrane-norm parameters ``(mean, rstd, weight,
    bias)`` (None without a norm), or the reason it is not covered. Reads only what the neuron, its surrogate
    and its norm declare (module docstring: the contract)."""
    name = type(neuron).__name__
    charge = neuron.declared_charge()
    if charge is None:
        return (
            f"{name} declares no linear charge, so the kernels cannot know its recurrence: define "
            f"{name}.linear_charge() returning a spikenorm.recurrence.LinearCharge (a class or mixin that overrides "
            "charge() must declare it itself)"
        )
    if neuron.threshold_stabilizer is not None:
        return neuron.threshold_stabilizer.fused_unsupported_reason()
    if neuron.detach_membrane:
        return "detach_membrane"
    if neuron._carried_state is not None:
        return "carried state (stateful scope)"
    surrogate = neuron.surrogate.kernel_key()
    if surrogate is None:
        return (
            f"surrogate {type(neuron.surrogate).__name__} supplies no kernel derivative (kernel_key() is None: "
            "the kernels need a Surrogate with the Heaviside forward, a closed-form derivative() and only "
            "float/int/bool/str parameters)"
        )
    params, norm = None, "none"
    if neuron.membrane_norm is not None:
        declared = getattr(neuron.membrane_norm, "fused_membrane_parameters", None)
        if declared is None:
            return (
                f"membrane norm {type(neuron.membrane_norm).__name__} declares no fused_membrane_parameters "
                "(see spikenorm.norm.TimeMajorNorm)"
            )
        params = declared(x)
        if isinstance(params, str):
            return params
        norm = "norm" if params[2] is None else "affine"
    config = _Config(charge, neuron.reset, float(neuron.reset_value), bool(neuron.detach_reset), surrogate, norm)
    return config, params


def unsupported_reason(neuron: Any, x: Tensor) -> str | None:
    """Why the fused path cannot run ``neuron`` on ``x`` (``[T, B, ...]``), or None when it can."""
    if not compile_available():
        return "torch.compile is unavailable"
    if torch.compiler.is_compiling():
        return "already inside torch.compile"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or x.ndim < 2:
        return "input must be a float16/bfloat16/float32/float64 [T, B, ...] tensor"
    planned = _neuron_config(neuron, x)
    if isinstance(planned, str):
        return planned
    config, _ = planned
    theta = neuron.threshold
    if theta.requires_grad and torch.is_grad_enabled():
        return "threshold requires grad"
    state = neuron.state_dtype(x.dtype)
    if theta.ndim and theta.dtype != state:
        return f"tensor threshold of another dtype than the neuron state ({state}; type promotion)"
    if theta.device != x.device:
        return "threshold on another device"
    if _key(config, x, True) in _BROKEN:
        return "compilation failed for this configuration"
    return None


def use_fused(neuron: Any, x: Tensor, backend: str) -> bool:
    """Whether ``backend`` (``"eager" | "fused" | "auto"``) runs ``neuron`` on ``x`` fused.

    ``"fused"`` means fused whenever covered; ``"auto"`` additionally asks for an input of at least
    :data:`AUTO_MIN_NUMEL` elements for its device type: the first call of each configuration pays a
    compilation, which a small layer, a short run or a test does not win back (``benchmarks/compare.py``
    measures both paths; results in ``benchmarks/results``).
    """
    if backend == "eager" or torch.compiler.is_compiling():  # a traced size would become a guard
        return False
    if backend == "auto" and x.numel() < AUTO_MIN_NUMEL.get(x.device.type, math.inf):
        return False
    return unsupported_reason(neuron, x) is None


# -- kernel generation --------------------------------------------------------------------------------
def _times(factor: float, name: str) -> str:
    """``factor * name`` as source (the exact repr of the constant), or ``name`` when ``factor`` is exactly 1."""
    return name if factor == 1.0 else f"{factor!r} * {name}"


def _charge_src(c: _Config) -> list[str]:
    """The charge of one step, the operations of ``LinearCharge.charge`` in its order, on ``x_t`` read in the
    state dtype (the threshold's; a no-op unless ``x`` is half precision)."""
    current = _times(c.charge.input_scale, "xt")
    lines = ["xt = x[t].to(theta.dtype)"]
    for k, a in enumerate(c.charge.current_decays):
        lines.append(f"c{k} = {_times(a, f'c{k}')} + {current}")
        current = f"c{k}"
    return lines + [f"h = {_times(c.charge.decay, 'v')} + {current}"]


def _u_src(c: _Config) -> list[str]:
    if c.norm == "none":
        return ["u = h"]
    if c.norm == "norm":
        return ["u = (h - nm) * nr"]
    return ["u = (h - nm) * nr * nw + nb"]


def _zeros(names: list[str], like: str, dtype: str) -> list[str]:
    return [f"    {name} = torch.zeros_like({like}, dtype={dtype})" for name in names]


def _forward_src(c: _Config, save_h: bool) -> str:
    stages = [f"c{k}" for k in range(len(c.charge.current_decays))]
    lines = ["def kernel(x, theta, nm, nr, nw, nb):", *_zeros(["v", *stages], "x[0]", "theta.dtype")]
    lines += ["    spikes = []", "    hs = []", "    for t in range(x.shape[0]):"]
    body = _charge_src(c) + _u_src(c) + ["s = (u - theta > 0).to(theta.dtype)"]
    if c.reset == "hard":
        body.append(f"v = h * (1 - s) + {c.reset_value!r} * s")
    else:
        body.append("v = h - theta * s")
    body += ["spikes.append(s)", "hs.append(h)" if save_h else "pass"]
    lines += ["        " + b for b in body]
    spikes = "torch.stack(spikes).to(x.dtype)"  # the state dtype's 0/1 in the input's dtype (exact)
    lines.append(f"    return ({spikes}, torch.stack(hs))" if save_h else f"    return {spikes}")
    return "\n".join(lines) + "\n"


def _backward_src(c: _Config) -> str:
    """Reverse-time BPTT of the module docstring; ``derivative`` is the surrogate's ``g``."""
    decays = c.charge.current_decays
    stages = [f"gc{k}" for k in range(len(decays))]
    lines = ["def kernel(gs, hs, theta, nm, nr, nw, nb):", *_zeros(["gv", *stages], "gs[0]", "hs.dtype")]
    lines += ["    gx = [None] * gs.shape[0]", "    for t in range(gs.shape[0] - 1, -1, -1):", "        h = hs[t]"]
    lines.append("        gst = gs[t].to(h.dtype)")
    body = _u_src(c) + ["z = u - theta", "g = derivative(z)"]
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
        body.append(f"gh = g * gst + {keep}")
    else:
        body.append(f"gh = g * (gst + r * gv) + {keep}")
    grad = "gh"
    for k in reversed(range(len(decays))):  # the stage next to the membrane first
        body.append(f"gc{k} = {grad} + {_times(decays[k], f'gc{k}')}")
        grad = f"gc{k}"
    body += [f"gx[t] = {_times(c.charge.input_scale, grad)}", f"gv = {_times(c.charge.decay, 'gh')}"]
    lines += ["        " + b for b in body]
    lines.append("    return torch.stack(gx).to(gs.dtype)")  # dL/dx in the input's dtype
    return "\n".join(lines) + "\n"


def _key(c: _Config, x: Tensor, save_h: bool, part: str = "fwd") -> tuple:
    if part == "fwd":  # the forward does not depend on the surrogate or on detach_reset
        c = replace(c, detach_reset=False, surrogate=None)
    return (part, c, save_h, x.dtype, x.device.type)


def _build(src: str, name: str, **names: Any) -> Callable[..., Any]:
    """Exec ``src`` into a fresh function (its own code object, hence its own dynamo cache) whose globals are
    ``torch`` and ``names``."""
    namespace: dict[str, Any] = {"torch": torch, **names}
    exec(compile(src, f"<spikenorm.fused {name}>", "exec"), namespace)  # noqa: S102 - generated here
    return namespace["kernel"]


_Kernels = tuple[Callable[..., Any], Callable[..., Any]]


def _kernels(key: tuple, src: str, **names: Any) -> _Kernels:
    """``(compiled, plain)`` kernel for ``key``, built once from ``src`` (compiled lazily, at its first call)."""
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            plain = _build(src, "/".join(map(str, key)), **names)
            entry = (torch.compile(plain, fullgraph=True), plain)
            _CACHE[key] = entry
    return entry


def _run(key: tuple, kernels: _Kernels, *args: Tensor) -> Any:
    """Run the compiled kernel; on failure mark ``key`` broken, warn once and run it uncompiled."""
    compiled, plain = kernels
    if key not in _BROKEN:
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compile error surfaces at the first call
            _BROKEN.add(key)
            warnings.warn(
                f"spikenorm.fused: torch.compile failed ({type(err).__name__}: {err}); "
                "falling back to eager for this configuration",
                RuntimeWarning,
                stacklevel=3,
            )
    return plain(*args)


def _backward_kernels(c: _Config, x: Tensor, surrogate: Any) -> tuple[tuple, _Kernels]:
    key = _key(c, x, True, "bwd")
    if key in _CACHE:  # the derivative (a frozen copy of the surrogate) is only taken for a new kernel
        return key, _CACHE[key]
    return key, _kernels(key, _backward_src(c), derivative=surrogate.kernel_derivative())


class _FusedNeuronFn(torch.autograd.Function):
    """Autograd node of a whole multi-step neuron: saves ``h_t`` only, backward is one kernel."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, config: _Config, theta: Tensor, params: tuple, surrogate: Any) -> Tensor:
        key = _key(config, x, True)
        spikes, hs = _run(key, _kernels(key, _forward_src(config, True)), x, theta, *params)
        ctx.backward_kernels = _backward_kernels(config, x, surrogate)
        ctx.save_for_backward(hs, theta, *params)
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_spikes: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        hs, theta, *params = ctx.saved_tensors
        key, kernels = ctx.backward_kernels
        return _run(key, kernels, grad_spikes.contiguous(), hs, theta, *params), None, None, None, None


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


def _params(neuron: Any, x: Tensor, order: tuple[int, ...] | None, norm: _NormParams | None) -> tuple[Tensor, tuple]:
    """The dense threshold and the norm parameters ``(mean, rstd, weight, bias)`` of one step, laid out like
    ``x.permute(order)`` (zero-dim placeholders for what the configuration does not use), in the neuron's state
    dtype (the threshold's dtype tells the kernels which it is)."""
    features = x.shape[2:]
    state = neuron.state_dtype(x.dtype)
    theta = neuron.threshold_for(x[0])  # validates the shape like the eager path
    theta = theta.to(state) if theta.ndim == 0 else theta  # eager: a 0-dim theta takes the membrane's dtype
    theta = _dense(theta.detach(), features, order)
    empty = x.new_zeros((), dtype=state)
    if norm is None:
        return theta, (empty, empty, empty, empty)
    return theta, tuple(empty if p is None else _dense(p.detach(), features, order) for p in norm)


def fused_forward(neuron: Any, x: Tensor) -> Tensor:
    """Spikes of ``neuron`` on ``x`` (``[T, B, ...]``) through the fused kernels.

    Call only when :func:`unsupported_reason` is None. Without gradient (no_grad or an input without
    ``requires_grad``) a spikes-only kernel runs and nothing is saved. The kernels are elementwise over the
    features, so an input whose features are stored in another order (channels-last convolution outputs)
    runs in that order: no copy, and the spikes (and the input gradient) keep the input's layout.
    """
    planned = _neuron_config(neuron, x)
    assert not isinstance(planned, str), planned
    config, norm = planned
    order = _memory_order(x)
    theta, params = _params(neuron, x, order, norm)
    x = x.contiguous() if order is None else x.permute(order)
    if torch.is_grad_enabled() and x.requires_grad:
        spikes = _FusedNeuronFn.apply(x, config, theta, params, neuron.surrogate)
    else:
        key = _key(config, x, False)
        spikes = _run(key, _kernels(key, _forward_src(config, False)), x, theta, *params)
    return spikes if order is None else spikes.permute([order.index(d) for d in range(x.ndim)])
