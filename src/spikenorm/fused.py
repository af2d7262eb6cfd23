r"""Fused multi-step neurons: all ``T`` steps in one compiled kernel, forward and backward, optionally with the
norm that feeds the neuron.

For the cases it covers, one custom operator (``torch.ops.spikenorm.fused_neuron``, with its backward
``torch.ops.spikenorm.fused_neuron_backward``) replaces the eager loop of
:meth:`spikenorm.neurons.SpikingNeuron.forward`. Each runs one ``torch.compile``-d function of tensors, generated
per configuration. Being an operator, it is kept whole by an outer ``torch.compile`` (inductor calls it as one
node), so compiled models use these kernels too instead of tracing the time loop. Outside ``torch.compile`` the
operators' implementations are called directly, through a ``torch.autograd.Function`` when a gradient is wanted:
the same kernels without the operators' Python dispatch, which cost about as much as the rest of a call
(``benchmarks/results/fused_ab.md``). Neurons take this path with ``backend="fused"``, or with ``backend="auto"``
for large inputs (:func:`fused_plan`), eager or compiled.

What is saved for the backward: the kernel's input ``x`` only (plus the small per-feature parameters). The
backward recomputes the forward recurrence from ``x`` (the same operations, hence the same ``h_t`` bit for bit) and
then runs the reverse-time recurrence below, in one kernel. Per element, the forward reads ``x`` and writes the
spikes; the backward reads ``x`` and the spikes' gradient and writes the input's gradient: five passes over the
tensor in all, near the memory floor (``benchmarks/compare.py``, the neuron alone). With an input norm the backward
writes ``dL/dy_t`` in ``x``'s dtype from that kernel, reduces it with ``x`` to the norm's parameter gradients (and
its statistics' share), and forms ``dL/dx`` in one more pass; the norm's parameters and the threshold go to the
kernels in their own broadcast shapes (a per-channel statistic as ``[C]`` values, not copied per element), so that
they stay in cache.

The contract. This module imports nothing from spikenorm: it writes its kernels from what the objects declare,
so a new neuron, surrogate or norm gets the fused path without an edit here.

* the neuron: ``declared_charge()``, a :class:`~spikenorm.recurrence.LinearCharge` (membrane decay ``b``, input
  scale ``s``, current-stage decays ``a_1 .. a_K``) or None (not covered); ``threshold_stabilizer``, None or an
  object whose ``fused_unsupported_reason()`` says why it is not covered; and ``threshold``, ``threshold_for``,
  ``state_dtype``, ``reset``, ``reset_value``, ``detach_reset``, ``detach_membrane``, ``membrane_norm``,
  ``surrogate``;
* the surrogate: ``kernel_key()``, a hashable identity of its derivative (None: not covered), and
  ``kernel_derivative()``, the function ``g(z)`` the backward kernel calls;
* the membrane norm: in eval mode ``fused_membrane_parameters(x)``, ``(mean, rstd, weight, bias)`` (weight, bias
  None without affine) or the reason it cannot; in training ``fused_membrane_training_parameters(x)``, ``(weight,
  bias, eps)`` or the reason, and ``record_step_moments(mean, var, count)``, which the kernels call once per step
  with the batch moments they computed, for the running update (MPBN: ``T`` updates per forward, as when the neuron
  calls it at every step); :class:`~spikenorm.norm.TimeMajorNorm` provides them;
* the input norm (the layer just before the neuron, e.g. tdBN or per-step BN, training or eval mode):
  ``fused_input_unsupported_reason(x)`` (pure: None or why not) and ``fused_input_parameters(x)``, ``(mean, rstd,
  gain, weight, bias)`` with statistics per feature (``[*features]``) or per step and feature (``[T,
  *features]``), a constant ``gain`` and weight, bias None without affine. In training it computes the batch
  statistics (pooled across processes under DDP) and updates the running ones, exactly as the layer's reference
  forward does; the statistics stay in the autograd graph, so their gradient reaches ``x`` through autograd
  (and, under DDP, through the all-reduce) as in the unfused layer. :class:`~spikenorm.norm.TimeMajorNorm`
  provides both.

Equations (elementwise)::

    input:   y_t = x_t                                                        (no input norm)
             y_t = round(((x_t - m) * r) * k * w + bb)    (m, r = rsqrt(var + eps): per feature, or per step)
                   (round: to the input's dtype, as the layer returns it; exact for float32)
    charge:  i_t = s y_t
             c1_t = a_1 c1_{t-1} + i_t,   ck_t = a_k ck_{t-1} + c(k-1)_t   (k = 2 .. K)
             h_t = b v_{t-1} + cK_t                                      (cK_t := i_t when K = 0)
    norm:    u_t = h_t                                   (no membrane norm)
             u_t = (h_t - mu) * rstd * gamma + beta      (eval-mode norm: alpha = rstd * gamma)
             u_t = uh_t gamma + beta,  uh_t = (h_t - m_t) r_t   (training: m_t, var_t the batch mean and biased
                                                              variance of h_t, r_t = rsqrt(var_t + eps))
    fire:    z_t = u_t - theta,   s_t = H(z_t),   dH/dz := g(z_t)   (the surrogate derivative)
    reset:   hard  v_t = h_t (1 - s_t) + v_r s_t
             soft  v_t = h_t - theta s_t
    v_0 = c_0 = 0.

Backward (BPTT). With ``S_t = dL/ds_t``, ``V_t = dL/dv_t`` (``V_T = 0``), ``G_t = dL/dh_t`` and the reset written
``v_t = P_t h_t + R_t s_t`` (hard: ``P_t = 1 - s_t``, ``R_t = v_r - h_t``; soft: ``P_t = 1``, ``R_t = -theta``)::

    G_t = alpha g(z_t) (S_t + D R_t V_t) + P_t V_t          (D = 0 under detach_reset, else 1; alpha = 1 without norm)
    CK_t = G_t + a_K CK_{t+1},   Ck_t = C(k+1)_t + a_k Ck_{t+1}   (k = K-1 .. 1; Ck_{T+1} = 0)
    Y_t = dL/dy_t = s C1_t  (s G_t when K = 0),   V_{t-1} = b G_t

where a training-mode membrane norm puts its batch-norm backward between ``U_t = g(z_t) (S_t + D R_t V_t)`` and
``G_t`` (means over the statistics' axes; ``dL/dgamma = sum U_t uh_t``, ``dL/dbeta = sum U_t``)::

    G_t = r_t (gamma U_t - mean(gamma U_t) - uh_t mean(gamma U_t uh_t)) + P_t V_t

and through the input norm (``Y_t`` first rounded to the input's dtype, as the unfused layer receives it)::

    dL/dw = sum Y_t xh_t (xh_t = ((x_t - m) r) k),   dL/dbb = sum Y_t,   X_t = Y_t w k r,
    dL/dr = sum Y_t w k (x_t - m),   dL/dm = -sum X_t,   dL/dx_t = X_t   (+ what autograd adds through m and r)

with the sums over the batch (and over time for statistics shared by all steps); autograd carries ``dL/dm`` and
``dL/dr`` back to ``x`` through the statistics. This is what autograd computes through the unfused layers, up to
the order of float rounding. The forward kernel performs the unfused operations in their order (the reference
forward of the norm, :meth:`~spikenorm.norm.TimeMajorNorm.normalize` and ``affine_transform``, then
:meth:`~spikenorm.recurrence.LinearCharge.charge`; C++ compiled with ``-ffp-contract=off``; membrane-norm
parameters computed as the norm computes them), so its spikes are bit-identical on CPU to those of the neuron's
eager loop on the output of the norm's reference forward. (A channel-wise tdBN on one process computes its
unfused training forward with torch's ``batch_norm`` kernel, and a training-mode membrane norm's statistics are
reduced inside the kernels: another summation order can move a statistic by a rounding, so there a spike can flip
where ``u_t`` lies within rounding of ``theta``; the tests find none in float64 and float32.) On CUDA, Triton may
contract ``a * b + c`` into an FMA, with the same effect. Half-precision inputs are computed in the neuron's
``state_dtype`` (float32), as the eager loop does; spikes and input gradients come back in the input's dtype.

Not covered (:func:`unsupported_reason` and :func:`input_norm_unsupported_reason` name the cause, and the neuron
runs its eager loop after the norm's own forward): double backward, a threshold stabiliser, a training-mode
membrane norm under DDP (its statistics would need an all-reduce at every step) or without a per-step running
update (``records_step_moments``), ``detach_membrane``, the carried state of :func:`~spikenorm.neurons.stateful`
scopes, callable (snnTorch) surrogates, gradients w.r.t. thresholds or eval-mode membrane-norm parameters, norms
with hooks, per-step parameters (BNTT, TEBN, TAB) or their own forward. A configuration whose compilation fails is
marked broken (one warning) and runs its kernels uncompiled (the same operations, slower).
"""

from __future__ import annotations

import ast
import functools
import importlib
import math
import threading
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "clear_cache",
    "compile_available",
    "fused_forward",
    "fused_plan",
    "input_norm_unsupported_reason",
    "unsupported_reason",
    "use_fused",
]

#: ``backend="auto"`` uses the fused path for inputs of at least this many elements, per device type (none
#: listed: never). On CPU a first compilation costs seconds, so only large layers take it there.
AUTO_MIN_NUMEL: dict[str, int] = {"cuda": 1 << 16, "cpu": 1 << 20}

_LOCK = threading.Lock()
_CACHE: dict[tuple, tuple[Callable[..., Any], Callable[..., Any]]] = {}  # key -> (compiled, plain) kernel
_BROKEN: set[tuple] = set()


def compile_available() -> bool:
    """Whether ``torch.compile`` can be used in this process (dynamo supported on this Python)."""
    if torch.compiler.is_compiling():  # (and dynamo could not trace the check)
        return True
    return _dynamo_supported()


@functools.cache  # (a property of the process: asked once, not at every neuron call)
def _dynamo_supported() -> bool:
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
class _Charge:
    """The values of the neuron's ``LinearCharge`` the kernels are written from."""

    decay: float
    input_scale: float
    current_decays: tuple[float, ...]


@dataclass(frozen=True)
class _Config:
    charge: _Charge
    reset: str
    reset_value: float
    detach_reset: bool
    surrogate: Hashable  # the surrogate's kernel_key()
    norm: str  # membrane norm: "none" | "norm" | "affine" (eval: running statistics) | "batch" | "batch_affine"
    input_norm: str = "none"  # the norm before the neuron: "none" | "norm" | "affine"
    input_gain: float = 1.0  # its constant gain k (tdBN's alpha * v_th)
    #: the axes of the per-step parameters ``[T, *features]`` over which the input norm's statistics are the batch
    #: moments of ``x`` itself (with the batch), when they are (training on one process): the backward then
    #: differentiates through them in closed form; None: autograd does, outside the kernels
    input_stat_dims: tuple[int, ...] | None = None
    #: a training-mode membrane norm: its eps, and the axes of ``x[t]`` (``[B, *features]`` permuted like ``x``)
    #: its per-step batch statistics pool
    membrane_eps: float = 0.0
    membrane_stat_dims: tuple[int, ...] = ()


_NormParams = tuple[Tensor, Tensor, Tensor | None, Tensor | None]
_InputParams = tuple[Tensor, Tensor, float, Tensor | None, Tensor | None, bool]


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
    membrane = _membrane_config(neuron.membrane_norm, x)
    if isinstance(membrane, str):
        return membrane
    norm, params, eps, stat_dims = membrane
    if torch.compiler.is_compiling() and "<locals>" in surrogate[0].__qualname__:
        return "surrogate class defined inside a function: the compiled operator could not import it by name"
    charge = _Charge(float(charge.decay), float(charge.input_scale), tuple(float(a) for a in charge.current_decays))
    config = _Config(
        charge,
        neuron.reset,
        float(neuron.reset_value),
        bool(neuron.detach_reset),
        surrogate,
        norm,
        membrane_eps=eps,
        membrane_stat_dims=stat_dims,
    )
    return config, params


def _membrane_config(membrane: Any, x: Tensor) -> tuple[str, _NormParams | None, float, tuple[int, ...]] | str:
    """The membrane norm's kind, its tensors ``(mean, rstd, weight, bias)`` (eval; in training mean and rstd are
    None: the kernels compute them per step), its eps and the axes of ``x[t]`` its training statistics pool; or the
    reason it is not covered."""
    if membrane is None:
        return "none", None, 0.0, ()
    method = "fused_membrane_training_parameters" if membrane.training else "fused_membrane_parameters"
    declared = getattr(membrane, method, None)
    if declared is None:
        return f"membrane norm {type(membrane).__name__} declares no {method} (see spikenorm.norm.TimeMajorNorm)"
    params = declared(x)
    if isinstance(params, str):
        return params
    if membrane.training:
        weight, bias, eps = params
        own = len(membrane.feature_shape)  # the feature axes with statistics of their own; the rest are pooled
        order = _memory_order(x) or tuple(range(x.ndim))
        stat_dims = (0, *(i + 1 for i, axis in enumerate(order[2:]) if axis >= 2 + own))
        return ("batch" if weight is None else "batch_affine"), (None, None, weight, bias), float(eps), stat_dims
    params = tuple(None if p is None else p.detach() for p in params)
    return ("norm" if params[2] is None else "affine"), params, 0.0, ()


#: what the fused path runs a neuron with: its kernel configuration and membrane-norm parameters
Plan = tuple[_Config, _NormParams | None]


def _plan(neuron: Any, x: Tensor) -> Plan | str:
    """The :data:`Plan` of ``neuron`` on ``x`` (``[T, B, ...]``), or why the fused path cannot run it."""
    if not compile_available():
        return "torch.compile is unavailable"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or x.ndim < 2:
        return "input must be a float16/bfloat16/float32/float64 [T, B, ...] tensor"
    planned = _neuron_config(neuron, x)
    if isinstance(planned, str):
        return planned
    theta = neuron.threshold
    if theta.requires_grad and torch.is_grad_enabled():
        return "threshold requires grad"
    state = neuron.state_dtype(x.dtype)
    if theta.ndim and theta.dtype != state:
        return f"tensor threshold of another dtype than the neuron state ({state}; type promotion)"
    if theta.device != x.device:
        return "threshold on another device"
    if _BROKEN and _key(planned[0], x) in _BROKEN:
        return "compilation failed for this configuration"
    return planned


def unsupported_reason(neuron: Any, x: Tensor) -> str | None:
    """Why the fused path cannot run ``neuron`` on ``x`` (``[T, B, ...]``), or None when it can."""
    planned = _plan(neuron, x)
    return planned if isinstance(planned, str) else None


def input_norm_unsupported_reason(norm: Any, x: Tensor) -> str | None:
    """Why the fused kernels cannot apply ``norm`` (the layer before the neuron) to ``x``, or None when they can.
    Pure: computes nothing, updates nothing."""
    name = type(norm).__name__
    if getattr(norm, "fused_input_unsupported_reason", None) is None:
        return f"{name} declares no fused_input_parameters (see spikenorm.norm.TimeMajorNorm)"
    if norm._forward_hooks or norm._forward_pre_hooks or _global_module_hooks():
        return f"{name} has forward hooks, which a fused call would skip"
    return norm.fused_input_unsupported_reason(x)


def _global_module_hooks() -> bool:
    """Whether a global module forward (pre-)hook is registered (``nn.modules.module.register_module_forward_hook``)."""
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def fused_plan(neuron: Any, x: Tensor, backend: str) -> Plan | None:
    """The :data:`Plan` with which ``backend`` (``"eager" | "fused" | "auto"``) runs ``neuron`` on ``x`` fused, or
    None when it runs the eager loop; :func:`fused_forward` takes it (the checks are then made once per call).

    ``"fused"`` means fused whenever covered; ``"auto"`` additionally asks for an input of at least
    :data:`AUTO_MIN_NUMEL` elements for its device type: the first call of each configuration pays a compilation,
    which a small layer, a short run or a test does not win back, and under an outer ``torch.compile`` a small
    layer gains more from inductor fusing it with its neighbours than from the operator (``benchmarks/compare.py``
    measures both paths; results in ``benchmarks/results``). A symbolic size (dynamic shapes under
    ``torch.compile``) is not compared, since the comparison would become a guard: the operator is used.
    """
    if backend == "eager":
        return None
    numel = x.numel()  # a symbolic size (dynamic shapes under torch.compile) is not compared: it would become a guard
    if backend == "auto" and isinstance(numel, int) and numel < AUTO_MIN_NUMEL.get(x.device.type, math.inf):
        return None
    planned = _plan(neuron, x)
    return None if isinstance(planned, str) else planned


def use_fused(neuron: Any, x: Tensor, backend: str) -> bool:
    """Whether ``backend`` runs ``neuron`` on ``x`` fused (:func:`fused_plan`)."""
    return fused_plan(neuron, x, backend) is not None


def var_mean(x: Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``torch.var_mean(x.to(dtype), dims, correction=0)`` (biased variance, mean): through one compiled kernel
    (which reads ``x`` once, upcasting in registers) for inputs as large as :data:`AUTO_MIN_NUMEL` asks of the fused
    neurons (on this project's Xeon, ATen's CPU ``var_mean`` over the non-channel axes of a channels-last activation
    took 32 ms where inductor's took 2.3 ms), through ATen otherwise and under an outer ``torch.compile`` (which
    generates its own). Differentiable either way."""
    if (
        torch.compiler.is_compiling()
        or x.numel() < AUTO_MIN_NUMEL.get(x.device.type, math.inf)
        or not compile_available()
    ):
        return torch.var_mean(x.to(dtype), dim=dims, correction=0)
    key = ("var_mean", dims, x.dtype, dtype, x.device.type)
    src = f"def kernel(x):\n    return torch.var_mean(x.to({dtype}), dim={dims}, correction=0)\n"
    return _run(key, _kernels(key, src), x)


# -- kernel generation --------------------------------------------------------------------------------
def _times(factor: float, name: str) -> str:
    """``factor * name`` as source (the exact repr of the constant), or ``name`` when ``factor`` is exactly 1."""
    return name if factor == 1.0 else f"{factor!r} * {name}"


def _input_src(c: _Config) -> list[str]:
    """The neuron's input ``y_t`` of one step, in the state dtype (the threshold's): ``x_t`` itself, or the input
    norm's output computed with the ops of the norm's reference forward and rounded to ``x``'s dtype as the layer
    returns it (no-op for float32). Names the centred and normalised input ``xc``, ``xh`` (the backward uses them)."""
    lines = ["xt = x[t].to(theta.dtype)"]
    if c.input_norm == "none":
        return lines
    lines += ["xc = xt - im[t]", "xh = xc * ir[t]"]
    if c.input_gain != 1.0:
        lines.append(f"xh = xh * {c.input_gain!r}")
    y = "xh * iw[t] + ib[t]" if c.input_norm == "affine" else "xh"
    return lines + [f"xt = ({y}).to(x.dtype).to(theta.dtype)"]


def _charge_src(c: _Config) -> list[str]:
    """The charge of one step from ``xt``, the operations of ``LinearCharge.charge`` in its order."""
    current = _times(c.charge.input_scale, "xt")
    lines = []
    for k, a in enumerate(c.charge.current_decays):
        lines.append(f"c{k} = {_times(a, f'c{k}')} + {current}")
        current = f"c{k}"
    return lines + [f"h = {_times(c.charge.decay, 'v')} + {current}"]


def _u_src(c: _Config, recompute: bool = False) -> list[str]:
    """The membrane norm's output ``u`` from ``h``. In training its batch statistics of the step (``mt``, ``vt``,
    ``rt = rsqrt(vt + eps)``, over ``membrane_stat_dims``) are computed, or, when ``recompute``, read from the
    forward's (``mm[t]``, ``mr[t]``); the normalised membrane is ``uh``."""
    if c.norm == "none":
        return ["u = h"]
    if c.norm == "norm":
        return ["u = (h - nm) * nr"]
    if c.norm == "affine":
        return ["u = (h - nm) * nr * nw + nb"]
    if recompute:
        lines = ["mt = mm[t]", "rt = mr[t]"]
    else:
        dims = c.membrane_stat_dims
        lines = [f"vt, mt = torch.var_mean(h, dim={dims}, correction=0, keepdim=True)"]
        lines.append(f"rt = torch.rsqrt(vt + {c.membrane_eps!r})")
    lines.append("uh = (h - mt) * rt")
    return lines + ["u = uh * nw + nb" if c.norm == "batch_affine" else "u = uh"]


def _step_src(c: _Config, recompute: bool = False) -> list[str]:
    """One forward step: input, charge, membrane norm, fire (``s``) and reset (``v``)."""
    lines = _input_src(c) + _charge_src(c) + _u_src(c, recompute) + ["s = (u - theta > 0).to(theta.dtype)"]
    if c.reset == "hard":
        return lines + [f"v = h * (1 - s) + {c.reset_value!r} * s"]
    return lines + ["v = h - theta * s"]


_ARGS = "theta, nm, nr, nw, nb, im, ir, iw, ib"
#: the backward's arguments after ``gs, x``: those of the forward and a training-mode membrane norm's statistics
_BACKWARD_ARGS = _ARGS + ", mm, mr"


def _zeros(names: list[str], like: str, dtype: str) -> list[str]:
    return [f"    {name} = torch.zeros_like({like}, dtype={dtype})" for name in names]


def _indent(lines: list[str], depth: int) -> list[str]:
    return ["    " * depth + line for line in lines]


@functools.cache  # (a configuration's source is written once, not at every call)
def _forward_src(c: _Config) -> str:
    stages = [f"c{k}" for k in range(len(c.charge.current_decays))]
    lines = [f"def kernel(x, {_ARGS}):", *_zeros(["v", *stages], "x[0]", "theta.dtype")]
    statistics = ["means", "variances", "rstds"] if c.norm.startswith("batch") else []
    lines += [f"    {name} = []" for name in ["spikes", *statistics]]
    lines.append("    for t in range(x.shape[0]):")
    lines += _indent([*_step_src(c), "spikes.append(s.to(x.dtype))"], 2)  # 0/1: exact in the input's dtype
    if statistics:
        lines += _indent(["means.append(mt)", "variances.append(vt)", "rstds.append(rt)"], 2)
    outputs = [f"torch.stack({name})" for name in ["spikes", *statistics]]  # (cast before the stack: one pass)
    lines.append(f"    return ({', '.join(outputs)},)")
    return "\n".join(lines) + "\n"


def _input_grad_src(c: _Config) -> list[str]:
    """The input's gradient from ``ys`` (``Y_t = dL/dy_t`` of every step, rounded to ``x``'s dtype: what the unfused
    input norm receives), after the reverse loop, over all steps at once: ``X_t = Y_t w k r`` plus, for statistics
    that are the batch moments of ``x``, their share (:func:`_statistics_grad_src`); and the input norm's per-step
    parameter gradients (``gim``, ``gir``, ``giw``, ``gib``, summed to their parameters' shapes). Written over the
    stacked ``Y`` rather than step by step, so that the compiled kernel stores ``Y`` once in ``x``'s dtype and the
    reductions and the last pass read it (and ``x``) instead of float32 intermediates of the recurrence."""
    lines = [
        "gy = torch.stack(ys).to(theta.dtype)",
        "xc = x.to(theta.dtype) - im.unsqueeze(1)",
        "xh = xc * ir.unsqueeze(1)",
    ]
    if c.input_gain != 1.0:
        lines.append(f"xh = xh * {c.input_gain!r}")
    if c.input_norm == "affine":
        lines += ["giw = (gy * xh).sum(1).sum_to_size(iw.shape)", "gib = gy.sum(1).sum_to_size(ib.shape)"]
        lines.append("gy = gy * iw.unsqueeze(1)")
    if c.input_gain != 1.0:
        lines.append(f"gy = gy * {c.input_gain!r}")
    lines += ["gir = (gy * xc).sum(1).sum_to_size(ir.shape)", "gy = gy * ir.unsqueeze(1)"]
    lines.append("gim = -gy.sum(1).sum_to_size(im.shape)")
    return lines + (["gx = gy.to(x.dtype)"] if c.input_stat_dims is None else _statistics_grad_src(c))


def _statistics_grad_src(c: _Config) -> list[str]:
    """``dL/dx_i = X_i + dL/dm / n - dL/dr r^3 (x_i - m) / n`` for statistics that are the batch moments of ``x``
    over ``n`` values (``m`` the mean, ``r = rsqrt(var + eps)``, ``var`` biased), the sums ``dL/dm``, ``dL/dr``
    pooled over the statistics' axes first."""
    dims = c.input_stat_dims
    assert dims is not None
    sizes = " * ".join(["x.shape[1]", *(f"x.shape[{0 if d == 0 else d + 1}]" for d in dims)])
    lines = [f"n = {sizes}", f"gm = gim.sum({dims}, keepdim=True).unsqueeze(1)"]
    lines += [f"gr = gir.sum({dims}, keepdim=True).unsqueeze(1)", "r3 = (ir * ir * ir).unsqueeze(1)"]
    return lines + ["gx = (gy + gm / n - gr * r3 * xc / n).to(x.dtype)"]


def _membrane_grad_src(c: _Config) -> list[str]:
    """From ``gu`` (``dL/du_t``) to ``gh``, ``dL/dh_t`` through a training-mode membrane norm: per step the batch
    norm backward ``rt (gu - mean(gu) - uh mean(gu uh))`` over the statistics' axes (``gu`` times ``gamma`` first,
    whose gradient, ``sum gu uh``, and beta's, ``sum gu``, are summed over the batch here and over the rest by
    autograd)."""
    lines = []
    if c.norm == "batch_affine":
        lines += ["gnw[t] = (gu * uh).sum_to_size(nw.shape)", "gnb[t] = gu.sum_to_size(nb.shape)", "gu = gu * nw"]
    dims = c.membrane_stat_dims
    mean_gu, mean_guh = f"gu.mean({dims}, keepdim=True)", f"(gu * uh).mean({dims}, keepdim=True)"
    return lines + [f"gh = rt * (gu - {mean_gu} - uh * {mean_guh})"]


#: the parameter gradients the backward kernel may return, and the operator argument (index in its tensors) each
#: is for
_GRAD_SLOTS = {"gnw": 3, "gnb": 4, "gim": 5, "gir": 6, "giw": 7, "gib": 8}
#: the input norm's per-step parameter gradients, by kind
_INPUT_GRADS = {"none": [], "norm": ["gim", "gir"], "affine": ["gim", "gir", "giw", "gib"]}


def _grads(c: _Config) -> list[str]:
    """The parameter gradients the backward kernel of ``c`` returns after ``dL/dx``, in order: the input norm's
    (those of its statistics only when autograd carries them back, see ``input_stat_dims``), then those of a
    training-mode membrane norm's affine map."""
    grads = _INPUT_GRADS[c.input_norm]
    grads = grads if c.input_stat_dims is None else [g for g in grads if g not in ("gim", "gir")]  # (see above)
    return grads + (["gnw", "gnb"] if c.norm == "batch_affine" else [])


@functools.cache  # (a configuration's source is written once, not at every call)
def _backward_src(c: _Config) -> str:
    """The forward recurrence recomputed from ``x``, then the reverse-time BPTT of the module docstring;
    ``derivative`` is the surrogate's ``g``. Returns ``dL/dx`` and the input norm's per-step parameter gradients."""
    decays = c.charge.current_decays
    stages = [f"c{k}" for k in range(len(decays))]
    lines = [f"def kernel(gs, x, {_BACKWARD_ARGS}):", *_zeros(["v", *stages], "x[0]", "theta.dtype")]
    lines.append("    hs = []")
    lines.append("    for t in range(x.shape[0]):")
    lines += _indent([*_step_src(c, recompute=True), "hs.append(h)"], 2)
    lines += _zeros(["gv", *[f"g{s}" for s in stages]], "x[0]", "theta.dtype")
    names = ["gx" if c.input_norm == "none" else "ys"] + (["gnw", "gnb"] if c.norm == "batch_affine" else [])
    lines += [f"    {name} = [None] * x.shape[0]" for name in names]
    lines += ["    for t in range(x.shape[0] - 1, -1, -1):", "        h = hs[t]", "        gst = gs[t].to(h.dtype)"]
    body = _u_src(c, recompute=True) + ["z = u - theta", "g = derivative(z)"]
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
    fired = "g * gst" if c.detach_reset else "g * (gst + r * gv)"  # dL/du_t: through the spike
    if c.norm.startswith("batch"):
        body += [f"gu = {fired}", *_membrane_grad_src(c), f"gh = gh + {keep}"]
    else:
        body.append(f"gh = {fired} + {keep}")
    grad = "gh"
    for k in reversed(range(len(decays))):  # the stage next to the membrane first
        body.append(f"gc{k} = {grad} + {_times(decays[k], f'gc{k}')}")
        grad = f"gc{k}"
    gy = _times(c.charge.input_scale, grad)
    # dL/dy_t in the input's dtype: dL/dx itself without an input norm, else what the unfused norm receives
    body += [
        f"{'gx' if c.input_norm == 'none' else 'ys'}[t] = ({gy}).to(x.dtype)",
        f"gv = {_times(c.charge.decay, 'gh')}",
    ]
    lines += _indent(body, 2)
    if c.input_norm != "none":
        lines += _indent(_input_grad_src(c), 1)
    outputs = ["torch.stack(gx)" if c.input_norm == "none" else "gx"]  # dL/dx in the input's dtype
    outputs += [f"torch.stack({name}).sum(0)" if name in ("gnw", "gnb") else name for name in _grads(c)]
    lines.append(f"    return ({', '.join(outputs)},)")
    return "\n".join(lines) + "\n"


def _key(c: _Config, x: Tensor, part: str = "fwd") -> tuple:
    if part == "fwd":  # the forward does not depend on the surrogate or on detach_reset
        c = replace(c, detach_reset=False, surrogate=None)
    return (part, c, x.dtype, x.device.type)


def _broadcast_pattern(tensors: list[Tensor]) -> tuple:
    """Which axes of each operator tensor have size 1 (it is shared along them). Part of a kernel's cache key:
    dynamo specialises on size-1 axes, so a function called with a scalar, a per-channel and a per-element threshold
    would compile three times under one cache entry and reach its recompile limit; one function per pattern
    does not."""
    return tuple(tuple(n == 1 for n in t.shape) for t in tensors)


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
    if not _BROKEN or key not in _BROKEN:
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


# -- the operators ---------------------------------------------------------------------------------
#: the configurations the operators were called with, by name (an operator takes strings, not objects), with the
#: surrogate derivative of each
_CONFIGS: dict[str, tuple[_Config, Callable[[Tensor], Tensor]]] = {}


def _config_name(config: _Config) -> str:
    """A name for ``config`` that the operators can take: the ``repr`` of its plain values (the surrogate as its
    class's module and qualified name and its settings). An outer ``torch.compile`` folds it to a constant, and
    :func:`_registered` rebuilds the configuration from it wherever the operator runs."""
    charge, (surrogate_class, settings) = config.charge, config.surrogate
    values = (charge.decay, charge.input_scale, charge.current_decays, config.reset, config.reset_value)
    values += (config.detach_reset, config.norm, config.input_norm, config.input_gain, config.input_stat_dims)
    values += (config.membrane_eps, config.membrane_stat_dims)
    return repr((*values, surrogate_class.__module__, surrogate_class.__qualname__, settings))


def _register(name: str, config: _Config, surrogate: Any) -> None:
    """Register ``config`` under ``name`` with ``surrogate``'s derivative (a frozen copy), unless known."""
    if name not in _CONFIGS:
        _CONFIGS.setdefault(name, (config, surrogate.kernel_derivative()))


def _registered(name: str) -> tuple[_Config, Callable[[Tensor], Tensor]]:
    """The configuration named ``name`` and its surrogate derivative; rebuilt from the name when it was not
    registered in this process (a compiled model's first run): the surrogate class is imported by name and given
    its settings, which are all the state its derivative may read (``Surrogate.kernel_key``)."""
    if name not in _CONFIGS:
        *values, module, qualname, settings = ast.literal_eval(name)
        surrogate_class: Any = importlib.import_module(module)
        for part in qualname.split("."):
            surrogate_class = getattr(surrogate_class, part)
        surrogate = surrogate_class.__new__(surrogate_class)
        torch.nn.Module.__init__(surrogate)
        for key, value in settings:
            setattr(surrogate, key, value)
        decay, scale, stages, reset, reset_value, detach_reset, norm, input_norm, gain, stat_dims, eps, dims = values
        config = _Config(
            _Charge(decay, scale, stages),
            reset,
            reset_value,
            detach_reset,
            (surrogate_class, settings),
            norm,
            input_norm,
            gain,
            stat_dims,
            eps,
            dims,
        )
        _register(name, config, surrogate)
    return _CONFIGS[name]


def _neuron_impl(x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor]:
    """The spikes of the configuration named ``config`` on ``x`` (contiguous ``[T, B, ...]``), and for a
    training-mode membrane norm its per-step batch means, variances and ``rsqrt(var + eps)`` (``[T, 1, ...]``);
    ``tensors`` are the threshold, the membrane-norm and the input-norm parameters, shaped to broadcast against
    ``x[0]`` and ``x[:, 0]`` (:func:`_params`)."""
    c = _registered(config)[0]
    key = _key(c, x)
    return list(_run(key, _kernels((*key, _broadcast_pattern(tensors)), _forward_src(c)), x, *tensors))


def _neuron_backward_impl(grad_spikes: Tensor, x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor]:
    """``dL/dx`` and the parameter gradients (:func:`_grads`) of :func:`_neuron_impl`; ``tensors`` are its tensors
    followed by the membrane norm's saved means and rstds (zero-dim placeholders without one in training)."""
    c, derivative = _registered(config)
    key = _key(c, x, "bwd")
    kernels = _kernels((*key, _broadcast_pattern(tensors)), _backward_src(c), derivative=derivative)
    return list(_run(key, kernels, grad_spikes.contiguous(), x, *tensors))


#: the operators, for ``torch.compile``: an outer compilation keeps each as one node of its graph
_neuron_op = torch.library.custom_op("spikenorm::fused_neuron", _neuron_impl, mutates_args=())
_neuron_backward_op = torch.library.custom_op(
    "spikenorm::fused_neuron_backward", _neuron_backward_impl, mutates_args=()
)


@_neuron_op.register_fake
def _(x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor]:
    c = _registered(config)[0]
    if not c.norm.startswith("batch"):
        return [torch.empty_like(x)]
    shape = (x.shape[0], *(1 if d in c.membrane_stat_dims else n for d, n in enumerate(x.shape[1:])))
    return [torch.empty_like(x), *(x.new_empty(shape, dtype=tensors[0].dtype) for _ in range(3))]


@_neuron_backward_op.register_fake
def _(grad_spikes: Tensor, x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor]:
    grads = _grads(_registered(config)[0])
    return [torch.empty_like(x), *(torch.empty_like(tensors[_GRAD_SLOTS[name]]) for name in grads)]


def _save_for_backward(ctx: Any, x: Tensor, tensors: list[Tensor], config: str, output: list[Tensor]) -> None:
    statistics = (output[1], output[3]) if len(output) > 1 else (x.new_zeros(()), x.new_zeros(()))
    ctx.save_for_backward(x, *tensors, *statistics)
    ctx.config = config


def _gradients(
    ctx: Any, grad_spikes: Tensor, backward: Callable[..., list[Tensor]]
) -> tuple[Tensor, list[Tensor | None]]:
    """``dL/dx`` and the gradient of each operator tensor (None where it takes none) from ``backward``, the
    backward operator or its implementation."""
    x, *tensors = ctx.saved_tensors
    gx, *parameter_grads = backward(grad_spikes, x, tensors, ctx.config)
    # theta and an eval-mode membrane norm take no gradient (refused when they want one), nor do batch statistics
    # whose share the kernel added to dL/dx itself; the norms' other parameters do
    inputs: list[Tensor | None] = [None] * (len(tensors) - 2)
    for name, grad in zip(_grads(_registered(ctx.config)[0]), parameter_grads):
        inputs[_GRAD_SLOTS[name]] = grad
    return gx, inputs


def _setup_context(ctx: Any, inputs: tuple, output: list[Tensor]) -> None:
    x, tensors, config = inputs
    _save_for_backward(ctx, x, tensors, config, output)


def _neuron_op_backward(ctx: Any, grads: list[Tensor]) -> tuple[Tensor, list[Tensor | None], None]:
    return (*_gradients(ctx, grads[0], _neuron_backward_op), None)


_neuron_op.register_autograd(_neuron_op_backward, setup_context=_setup_context)


class _EagerNeuron(torch.autograd.Function):
    """:func:`_neuron_op` with its autograd, outside ``torch.compile``: the same implementations called without
    the operators' Python dispatch (forward and backward), which costs most after a large kernel, as in a network,
    where the interpreter's data has left the caches (``benchmarks/results/fused_ab.md``)."""

    @staticmethod
    def forward(x: Tensor, config: str, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(_untracked_impl(x, list(tensors), config))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, ...]) -> None:
        x, config, *tensors = inputs
        ctx.mark_non_differentiable(*output[1:])  # the statistics
        _save_for_backward(ctx, x, tensors, config, list(output))

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # (the gradient would hold no graph: a later backward would miss its terms)
            raise RuntimeError(
                "spikenorm.fused: the fused neuron kernels have no double backward (create_graph=True); run the "
                "neuron with backend='eager'"
            )
        gx, inputs = _gradients(ctx, grad_spikes, _neuron_backward_impl)
        return gx, None, *inputs


def _call_neuron(x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor] | tuple[Tensor, ...]:
    """:func:`_neuron_impl` through the operator under ``torch.compile``; outside it through ``_EagerNeuron`` when
    a gradient is wanted, else directly (no autograd to record)."""
    if torch.compiler.is_compiling():
        return _neuron_op(x, tensors, config)
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
        return _EagerNeuron.apply(x, config, *tensors)
    with torch.no_grad():
        return _untracked_impl(x, tensors, config)


def _untracked_impl(x: Tensor, tensors: list[Tensor], config: str) -> list[Tensor]:
    """:func:`_neuron_impl` on detached inputs (call it under ``no_grad``): dynamo specialises a compiled kernel on
    the grad mode and on each input's ``requires_grad``, so this way the training and the evaluation calls of one
    configuration share one compilation instead of compiling it two or three times."""
    return _neuron_impl(x.detach(), [t.detach() for t in tensors], config)


# -- layout and parameters -------------------------------------------------------------------------
def _memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The permutation of ``x``'s dims (``[T, B, ...]``) that makes it contiguous without a copy, when ``T``
    and ``B`` stay outermost (e.g. ``(0, 1, 3, 4, 2)`` for convolution outputs in channels-last layout);
    None when ``x`` is contiguous already or no such permutation exists (then ``x`` is copied)."""
    if x.is_contiguous():
        return None
    features = sorted(range(2, x.ndim), key=lambda d: x.stride(d), reverse=True)
    order = (0, 1, *features)
    return order if x.permute(order).is_contiguous() else None


def _broadcast(t: Tensor, features: torch.Size, order: tuple[int, ...] | None) -> Tensor:
    """``t`` (scalar, ``[C]`` or ``[C, ...]``) shaped to broadcast against one step of the input, ``x[t]``
    (``[B, *features]`` laid out in memory order): one axis per feature axis, size 1 where ``t`` is shared, its
    feature axes permuted by ``order`` (an input permutation, see :func:`_memory_order`), contiguous. Kept small
    (not expanded to the features), so that the kernels read a per-channel parameter from cache instead of a
    per-element copy of it."""
    t = t.reshape(tuple(t.shape) + (1,) * (len(features) - t.ndim))
    if order is not None:
        t = t.permute([d - 2 for d in order[2:]])
    return t.contiguous()


def _params(
    neuron: Any, x: Tensor, order: tuple[int, ...] | None, norm: _NormParams | None, inputs: _InputParams | None
) -> list[Tensor]:
    """The operator's tensors: the threshold and the membrane-norm parameters ``(mean, rstd, weight, bias)`` of one
    step (eval: detached; training: weight and bias only, with their history), shaped to broadcast against
    ``x.permute(order)[0]`` (:func:`_broadcast`), then the input-norm parameters ``(mean, rstd, weight, bias)`` of
    every step, shaped to broadcast against ``x.permute(order)[:, 0]`` (zero-dim placeholders for what the
    configuration does not use), in the neuron's state dtype (the threshold's dtype tells the kernels which it
    is). The input-norm tensors keep their autograd history: their gradients reach the statistics. The kernels
    sum each parameter's gradient to the parameter's shape (``sum_to_size``). With an input norm, a threshold
    shared more widely than its parameters (a scalar beside per-channel statistics) is widened to their shape:
    inductor then runs the recomputed forward (which reads the norm's parameters) and the reverse pass (which
    reads the threshold) with the same loop nest and fuses them, instead of storing the membrane potentials of
    every step in float32 between two kernels (measured: bf16 tdBN + LIF backward, channels-last)."""
    features = x.shape[2:]
    state = neuron.state_dtype(x.dtype)
    theta = neuron.threshold_for(x[0])  # validates the shape like the eager path
    theta = theta.to(state) if theta.ndim == 0 else theta  # eager: a 0-dim theta takes the membrane's dtype
    empty = x.new_zeros((), dtype=state)
    tensors = [_broadcast(theta.detach(), features, order)]
    membrane = (None,) * 4 if norm is None else norm
    tensors += [empty if p is None else _broadcast(p, features, order) for p in membrane]  # (training: with history)
    per_step = (None,) * 4 if inputs is None else (inputs[0], inputs[1], inputs[3], inputs[4])
    steps_order = None if order is None else [0, *(d - 1 for d in order[2:])]
    for p in per_step:  # as broadcast against x, with a step axis: e.g. [C, 1, 1] or [T, 1, C, 1, 1] -> [T, C, 1, 1]
        if p is not None:
            p = p.reshape((1,) * (x.ndim - p.ndim) + tuple(p.shape)).select(1, 0)
            p = p.expand(x.shape[0], *p.shape[1:])
        tensors.append(empty if p is None else p if steps_order is None else p.permute(steps_order))
    if inputs is not None:  # the threshold as wide as the input norm's parameters (see below)
        tensors[0] = tensors[0].expand(torch.broadcast_shapes(tensors[0].shape, tensors[5].shape[1:]))
    return [t.contiguous() for t in tensors]


def _statistics_dims(mean: Tensor, x: Tensor, order: tuple[int, ...] | None) -> tuple[int, ...]:
    """The axes of the per-step parameters (``[T, *features]`` permuted like ``x``) along which ``mean``
    (broadcasting against ``x``) is shared: the axes its statistics pool besides the batch."""
    shape = (1,) * (x.ndim - mean.ndim) + tuple(mean.shape)
    x_dims = order if order is not None else tuple(range(x.ndim))
    kept = [x_dims[0], *x_dims[2:]]  # the x axis behind each parameter axis
    return tuple(d for d, axis in enumerate(kept) if shape[axis] == 1)


def fused_forward(neuron: Any, x: Tensor, input_norm: Any = None, plan: Plan | None = None) -> Tensor:
    """Spikes of ``neuron`` on ``x`` (``[T, B, ...]``) through the fused kernels, or of ``neuron`` on
    ``input_norm(x)`` with the norm applied inside them.

    Call only when :func:`unsupported_reason` is None (and :func:`input_norm_unsupported_reason`, for an
    ``input_norm``); ``plan`` is :func:`fused_plan`'s, when the caller has it. The kernels are elementwise over the
    features, so an input whose features are stored in another order (channels-last convolution outputs) runs in
    that order: no copy, and the spikes (and the input gradient) keep the input's layout. With an ``input_norm`` in
    training, its batch statistics and running update happen here
    (:meth:`~spikenorm.norm.TimeMajorNorm.fused_input_parameters`).
    """
    planned = _plan(neuron, x) if plan is None else plan
    assert not isinstance(planned, str), planned
    config, norm = planned
    inputs, order = None, _memory_order(x)
    if input_norm is not None:
        inputs = input_norm.fused_input_parameters(x)
        kind = "norm" if inputs[3] is None else "affine"
        stat_dims = _statistics_dims(inputs[0], x, order) if inputs[5] else None
        config = replace(config, input_norm=kind, input_gain=float(inputs[2]), input_stat_dims=stat_dims)
        if stat_dims is not None:  # the kernels differentiate through the statistics themselves
            inputs = (inputs[0].detach(), inputs[1].detach(), *inputs[2:])
    tensors = _params(neuron, x, order, norm, inputs)
    xk = x.contiguous() if order is None else x.permute(order)
    name = _config_name(config)
    if not torch.compiler.is_compiling():  # (compiled: rebuilt from the name at the first run, see _registered)
        _register(name, config, neuron.surrogate)
    spikes, *statistics = _call_neuron(xk, tensors, name)
    if statistics:
        _record_membrane_statistics(neuron.membrane_norm, statistics[0], statistics[1], config, xk, order)
    return spikes if order is None else spikes.permute([order.index(d) for d in range(x.ndim)])


def _record_membrane_statistics(
    membrane: Any, means: Tensor, variances: Tensor, config: _Config, xk: Tensor, order: tuple[int, ...] | None
) -> None:
    """Hand a training-mode membrane norm the batch moments of each step, in step order, for its running update
    (``record_step_moments``, what its forward does when the neuron calls it at every step)."""
    count = math.prod(xk.shape[1 + d] for d in config.membrane_stat_dims)
    features = list(order[2:]) if order is not None else list(range(2, xk.ndim))
    back = [features.index(axis) for axis in range(2, xk.ndim)]  # from x's memory order to its feature order
    with torch.no_grad():
        for mean, var in zip(means.detach().unbind(0), variances.detach().unbind(0)):
            mean, var = (m[0].permute(back).reshape(membrane.feature_shape) for m in (mean, var))
            membrane.record_step_moments(mean, var, count)
