"""Binary-weight (1-bit) synaptic layers for binary-weight SNNs (SEI-BWSNN).

SEI-BWSNN: Meng, Xiao, Ma, Zhou, Tian, Lin, "A Self-Ensemble Inspired Approach for Effective Training of
Binary-Weight Spiking Neural Networks", arXiv 2508.12609 (2025). Its abstract fixes only three things: 1-bit
weights, multiple shortcuts and knowledge distillation. **The binarizer here is inferred, in the style of
XNOR-Net (Rastegari et al., ECCV 2016) and IR-Net (Qin et al., CVPR 2020)**; every choice below is an
inference, not the paper's, and is configurable:

* Effective weight per output channel ``i`` (row ``W_i`` of the latent weight, ``n_i`` entries):

      ``W_b[i, j] = alpha_i * s_ij``,  ``s_ij = sign(W_ij)`` with ``sign(0) = +1`` (so ``s`` is exactly ±1),
      ``alpha_i = mean_j |W_ij| = (1 / n_i) sum_j s_ij W_ij``.

* Straight-through estimator with clipping (``clip``, default 1): ``d s_ij / d W_ij := 1[|W_ij| <= clip]``.
* ``alpha_grad=True``: the gradient also flows through ``alpha`` (XNOR-Net's full derivative); with
  ``g = dL/dW_b``,

      ``dL/dW_ij = alpha_i g_ij 1[|W_ij| <= clip] + s_ij (sum_k g_ik s_ik) / n_i``;

  ``alpha_grad=False`` drops the second term (``alpha`` is a detached per-channel scale).
* The latent full-precision ``.weight`` stays the optimizer's parameter; only the forward sees ``W_b``.
* :func:`binarize_model` keeps the first and last conv/linear layers full precision by default (BNN practice).

Deployment (1 bit per weight on disk) is :mod:`spikenorm.binary_packing`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.traceable import traceable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BINARY_WEIGHT_FUNCTIONS",
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "SignSTE",
    "binarize_model",
    "binarize_weight",
    "binary_layers",
]


class SignSTE(torch.autograd.Function):
    """``sign`` with ``sign(0) = +1`` (outputs exactly ±1) and a clipped straight-through gradient.

    Forward: ``s = +1 if w >= 0 else -1``. Backward: ``dL/dw = dL/ds * 1[|w| <= clip]``.
    Call as ``SignSTE.apply(w, clip)``.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, clip: float = 1.0) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.clip = float(clip)
        return _sign(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad * (weight.abs() <= ctx.clip).to(grad.dtype), None


def _sign(weight: Tensor) -> Tensor:
    """``sign`` with ``sign(0) = +1`` (also for ``-0.0``): exactly ±1 in ``weight``'s dtype."""
    one = torch.ones((), dtype=weight.dtype, device=weight.device)
    return torch.where(weight >= 0, one, -one)


def _channel_alpha(weight: Tensor) -> Tensor:
    """``alpha_i = (1/n_i) sum_j s_ij W_ij = mean_j |W_ij|``, shaped ``[O, 1, ...]`` (broadcastable to W).

    Written as ``W * s`` with a detached ``s`` (instead of ``W.abs()``) so that the gradient at ``W_ij = 0`` is
    ``s_ij / n_i = +1 / n_i``, consistent with ``sign(0) = +1``; the value is the same (``|w| = w * s``
    exactly in floating point).
    """
    dims = tuple(range(1, weight.ndim))
    return (weight * _sign(weight).detach()).mean(dim=dims, keepdim=True)


@traceable
def binarize_weight(weight: Tensor, clip: float = 1.0, alpha_grad: bool = True) -> Tensor:
    """``W_b = alpha * SignSTE(W)`` with per-output-channel ``alpha_i = mean_j |W_ij|`` (over all dims but 0).

    Gradient (``g = dL/dW_b``, ``s = sign(W)`` with ``sign(0) = +1``, ``n_i`` = entries per output channel):

        ``alpha_grad=True``:  ``dL/dW_ij = alpha_i g_ij 1[|W_ij| <= clip] + s_ij (sum_k g_ik s_ik) / n_i``
        ``alpha_grad=False``: ``dL/dW_ij = alpha_i g_ij 1[|W_ij| <= clip]`` (alpha detached)

    Args:
        weight: the latent full-precision weight, ``[O, ...]`` (at least 2-D).
        clip: STE clipping threshold: no gradient where ``|W| > clip``.
        alpha_grad: let the gradient flow through ``alpha`` too.
    """
    if weight.ndim < 2:
        raise ValueError(
            f"binarize_weight expects a weight of rank >= 2 ([out, in, ...]), got shape {tuple(weight.shape)}"
        )
    alpha = _channel_alpha(weight)
    if not alpha_grad:
        alpha = alpha.detach()
    return alpha * SignSTE.apply(weight, clip)


@traceable
def _deployed_weight(alpha: Tensor, weight: Tensor, clip: float) -> Tensor:
    """``alpha_i * SignSTE(W_ij)`` with a stored flat ``alpha`` (the deployed state of a binary layer)."""
    return alpha.reshape((-1,) + (1,) * (weight.ndim - 1)) * SignSTE.apply(weight, clip)


# torch.fx (e.g. spikenorm.fold) traces through binary layers and keeps the (traceable) weight binarization one graph
# node, whose target is one of these functions (so a graph pass can tell a binary layer's weight from a float one)
BINARY_WEIGHT_FUNCTIONS = (binarize_weight, _deployed_weight)


class BinaryLayer(nn.Module):
    """Common base of the binary-weight layers: latent ``.weight`` trained, ``{-alpha_i, +alpha_i}`` used.

    Training state (``alpha`` buffer is None): the forward weight is :func:`binarize_weight` of the latent
    weight (``alpha`` recomputed as ``mean |W|`` every call). Deployed state (``alpha`` set, e.g. by
    :func:`spikenorm.binary_packing.load_packed`): the forward weight is ``alpha_i * sign(W_ij)`` with the
    stored ``alpha``, so a model unpacked from 1-bit weights (``W = ±1``) reproduces the original outputs bit
    for bit. Set ``layer.alpha = None`` to return to the training state. The ``alpha`` buffer is checkpointed
    when set; loading a state dict with (without) ``<prefix>alpha`` puts the layer in the deployed (training)
    state.
    """

    weight: Tensor
    alpha: Tensor | None
    clip: float
    alpha_grad: bool
    #: the float layer this layer replaces, and the settings of it that the constructor takes (besides ``bias``)
    float_class: ClassVar[type[nn.Module]]
    float_settings: ClassVar[tuple[str, ...]]

    @classmethod
    def from_float(cls, layer: nn.Module, **kw: Any) -> Self:
        """A binary layer with ``layer``'s settings and a copy of its weight (the latent weight) and bias;
        ``kw``: clip, alpha_grad."""
        if not isinstance(layer, cls.float_class):
            raise TypeError(
                f"{cls.__name__}.from_float expects an nn.{cls.float_class.__name__}, got {type(layer).__name__}"
            )
        settings = {name: getattr(layer, name) for name in cls.float_settings}
        new = cls(**settings, bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype, **kw)
        _copy_params(layer, new)
        return new

    def _init_binary(self, clip: float, alpha_grad: bool) -> None:
        if not (isinstance(clip, (int, float)) and clip > 0):
            raise ValueError(f"clip must be a positive number, got {clip!r}")
        self.clip = float(clip)
        self.alpha_grad = bool(alpha_grad)
        self.register_buffer("alpha", None)

    def effective_weight(self) -> Tensor:
        """The weight the forward uses: ``alpha_i * sign(W_ij)`` (differentiable through the STE)."""
        if self.alpha is not None:
            return _deployed_weight(self.alpha, self.weight, self.clip)
        return binarize_weight(self.weight, self.clip, self.alpha_grad)

    @torch.no_grad()
    def binary_weight(self) -> Tensor:
        """The effective weight (values ``{-alpha_i, +alpha_i}`` per output channel ``i``), without gradient."""
        return self.effective_weight().detach()

    @torch.no_grad()
    def current_alpha(self) -> Tensor:
        """The per-output-channel ``alpha`` (flat ``[O]``) exactly as the forward uses it."""
        if self.alpha is not None:
            return self.alpha.detach().reshape(-1).clone()
        return _channel_alpha(self.weight).detach().reshape(-1)

    @property
    def deployed(self) -> bool:
        """True when ``alpha`` is stored (set by :func:`spikenorm.binary_packing.load_packed`), not ``mean |W|``."""
        return self.alpha is not None

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "alpha"
        if key in state_dict and self.alpha is None:
            value = state_dict[key]
            if isinstance(value, Tensor):  # a placeholder of the right shape; the default loader copies into it
                self.alpha = torch.empty(value.shape, dtype=self.weight.dtype, device=self.weight.device)
        elif key not in state_dict and self.alpha is not None:
            self.alpha = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        """The float layer's description, then ``clip``, ``alpha_grad`` and whether ``alpha`` is stored."""
        deployed = ", deployed" if self.alpha is not None else ""
        return f"{super().extra_repr()}, clip={self.clip}, alpha_grad={self.alpha_grad}{deployed}"


class BinaryLinear(BinaryLayer, nn.Linear):
    """``nn.Linear`` whose forward uses the 1-bit weight ``W_b[i, j] = alpha_i sign(W_ij)`` (see :class:`BinaryLayer`).

    ``y = x W_b^T + b``; the bias stays full precision.
    """

    float_class = nn.Linear
    float_settings = ("in_features", "out_features")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        clip: float = 1.0,
        alpha_grad: bool = True,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binary(clip, alpha_grad)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the 1-bit kernel ``W_b[o, :, :, :] = alpha_o sign(W[o, :, :, :])``.

    ``alpha_o = mean |W[o]|`` over ``in_channels/groups x kH x kW``; the bias stays full precision.
    """

    float_class = nn.Conv2d
    float_settings = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        clip: float = 1.0,
        alpha_grad: bool = True,
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_binary(clip, alpha_grad)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


@torch.no_grad()
def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if getattr(src, "bias", None) is not None:
        dst.bias.copy_(src.bias)
        dst.bias.requires_grad_(src.bias.requires_grad)
    dst.train(src.training)


# --------------------------------------------------------------------------------------------- model surgery

_FLOAT_TO_BINARY: dict[type[nn.Module], type[BinaryLayer]] = {nn.Linear: BinaryLinear, nn.Conv2d: BinaryConv2d}


def _is_layer(m: nn.Module) -> bool:
    """A conv/linear position binarize_model counts: exactly nn.Linear/nn.Conv2d, or a binary layer.

    Subclasses of nn.Linear (e.g. MultiheadAttention's ``out_proj``, whose parent reads ``.weight`` directly)
    are not eligible: replacing them would not change what their parent computes.
    """
    return type(m) in _FLOAT_TO_BINARY or isinstance(m, BinaryLayer)


def binarize_model(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_first_last: bool = True,
    **layer_kwargs: Any,
) -> list[str]:
    """Replace, in place, ``nn.Linear``/``nn.Conv2d`` submodules with :class:`BinaryLinear`/:class:`BinaryConv2d`.

    Layers are found at any depth (also inside wrappers such as ``TimeDistributed.module`` or
    ``TraceSynapse.layer``) and replaced on their direct parent. Build the optimizer *after* this call: the
    new layers hold copies of the old parameters.

    Args:
        model: the model to modify.
        include: fnmatch patterns over qualified names (``model.named_modules()``; ``*`` also matches dots);
            a layer must match one. None: every eligible layer.
        exclude: fnmatch patterns; a layer matching any is left full precision.
        keep_first_last: keep the first and the last conv/linear layer (in ``named_modules`` order, counting
            binary ones) full precision: the first sees the real-valued input, the last produces the logits.
        **layer_kwargs: ``clip``, ``alpha_grad`` for the new layers.

    Returns:
        The sorted qualified names of the layers replaced (layers that match but are already binary are left
        alone and not listed).

    Raises:
        ValueError: no layer matches the selection (the message lists the eligible names).
    """
    positions = [(name, m) for name, m in model.named_modules() if name and _is_layer(m)]
    if _is_layer(model) and not positions:
        raise ValueError(
            f"binarize_model replaces submodules in place, but the model itself is a {type(model).__name__}; "
            f"use {_FLOAT_TO_BINARY.get(type(model), BinaryLinear).__name__}.from_float(model) instead"
        )
    names = [name for name, _ in positions]
    kept = {names[0], names[-1]} if keep_first_last and names else set()

    def selected(name: str) -> bool:
        if name in kept:
            return False
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))

    matched = [(name, m) for name, m in positions if selected(name)]
    if not matched:
        raise ValueError(
            f"binarize_model matched no layer (include={list(include) if include is not None else None}, "
            f"exclude={list(exclude) if exclude else None}, keep_first_last={keep_first_last} keeps "
            f"{sorted(kept)} full precision); eligible nn.Linear/nn.Conv2d layers: {names}"
        )
    replacements: dict[int, nn.Module] = {}
    replaced: list[str] = []
    for name, m in matched:
        if isinstance(m, BinaryLayer):
            continue
        if id(m) not in replacements:
            replacements[id(m)] = _FLOAT_TO_BINARY[type(m)].from_float(m, **layer_kwargs)  # type: ignore[attr-defined]
        replaced.append(name)
    # set on every parent that holds a replaced module (a module shared at several places stays shared)
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() would skip repeats
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return sorted(set(replaced))


def binary_layers(model: nn.Module) -> dict[str, BinaryLayer]:
    """The binary layers of ``model`` by qualified name, in ``named_modules`` order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BinaryLayer)}
