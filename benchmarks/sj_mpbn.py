"""How many spikes SpikingJelly's own MPBN threshold fold flips, on one of our trained SpikingVGG models.

:func:`spikingjelly_fold_flips` rebuilds a spikenorm ``SpikingVGG`` (``norm="tdbn"``,
``membrane_norm="mpbn"``, channel-wise MPBN, LIF with hard reset to 0) out of SpikingJelly V2 layers:

* conv + post-conv norm -> ``layer.Conv2d`` (multi-step) whose weights are our conv weights with the
  norm's eval-mode affine (``norm.inference_affine()``: tdBN's ``gamma * alpha * v_th / sqrt(var + eps)``)
  folded in, in float64;
* pools -> ``layer.AvgPool2d`` / ``layer.MaxPool2d`` (multi-step);
* ``LIF(decay=d, threshold=theta, membrane_norm=MPBN)`` -> ``neuron.MPBNLIFNode(tau=1/(1-d),
  decay_input=False, v_threshold=theta, v_reset=0.0, out_channels=C)`` whose ``vbn`` gets our MPBN
  ``running_mean``, ``running_var``, ``weight``, ``bias`` and ``eps``. SpikingJelly charges
  ``v <- v - (v - v_reset)/tau + x``, so ``tau = 1/(1-d)`` with ``decay_input=False`` and ``v_reset=0`` is
  ``v <- d v + x`` (``tau = 4/3`` for ``d = 0.25``; 4/3 is not a binary fraction, so the charge equals
  ours up to one float64 rounding). Its unfolded threshold compares the *normalised* v with
  ``v_threshold``, so ``v_threshold = theta`` (0.5).

It then runs, in eval mode and float64, SpikingJelly's network unfolded, and after SpikingJelly's own fold
``MPBNLIFNode.re_parameterize_v_threshold()`` with its default arguments and with
``normalize_residual=True`` (``functional.reset_net`` before and after every run), and counts per neuron
layer and in total the spikes that differ from the unfolded SpikingJelly run. Flips in a layer include
those caused by flips upstream. It also compares every SpikingJelly run with our own (unfolded) model.

Model semantics, from SpikingJelly's source (``activation_based/neuron/mpbn.py``):

* unfolded ``MPBNLIFNode`` replaces ``v`` by ``BN(v)`` before firing and keeps (and hard-resets) the
  *normalised* ``v``: ``m_t = d * BN(m_{t-1})(1 - s_{t-1}) + x_t``. Ours (and the MPBN reference code)
  keeps the raw membrane: ``m_t = d * m_{t-1}(1 - s_{t-1}) + x_t``. The two differ from ``t = 1`` on.
* the default fold keeps the raw ``v`` (our semantics for ``gamma > 0``), so it disagrees with its own
  unfolded network; ``normalize_residual=True`` writes the normalised ``v`` back for neurons below the
  threshold, which matches its unfolded network for ``gamma > 0``.
* both folds compare ``v >= (theta - beta) sqrt(var + eps) / gamma + mu`` whatever the sign of gamma,
  so channels with ``gamma < 0`` fire on the wrong side of the threshold (and ``gamma = 0`` divides by 0).
* SpikingJelly fires on ``>=``, we on ``>``; ties have probability 0 with real-valued inputs.

Run ``python benchmarks/sj_mpbn.py`` for the example (random data, half the last layer's MPBN gammas
negated) and a control without negative gammas. Needs SpikingJelly 2.x (and its dependency ``loguru``);
this module imports without it.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

import torch
from torch import Tensor, nn

from spikenorm.neurons import LIF, SpikingNeuron
from spikenorm.norm import TimeMajorNorm
from spikenorm.norm.mpbn import MPBN
from spikenorm.synapse import TimeDistributed


def _import_spikingjelly() -> tuple[Any, Any, Any, Any]:
    try:
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError as err:  # spikingjelly missing, or one of its own imports (e.g. loguru)
        raise ImportError(
            "spikingjelly_fold_flips needs SpikingJelly 2.x (`pip install spikingjelly`; it imports "
            f"`loguru` at start-up): importing spikingjelly.activation_based failed with: {err}"
        ) from err
    if not hasattr(neuron, "MPBNLIFNode"):
        raise ImportError("spikingjelly_fold_flips needs SpikingJelly >= 2.0 (neuron.MPBNLIFNode is missing)")
    return functional, layer, neuron, surrogate


# --- conversion --------------------------------------------------------------------------------------


def _sj_layer(sj_class: Any, module: nn.Module, settings: tuple[str, ...], **extra: Any) -> nn.Module:
    """The SpikingJelly multi-step ``sj_class`` built with the attributes ``settings`` of the torch ``module``."""
    return sj_class(**{name: getattr(module, name) for name in settings}, **extra, step_mode="m")


def _sj_conv(layer: Any, conv: nn.Conv2d, norm: TimeMajorNorm | None) -> nn.Module:
    """SpikingJelly multi-step Conv2d computing ``norm(conv(x))`` (eval-mode norm folded in, float64)."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero-padded convolutions are supported, got padding_mode={conv.padding_mode!r}")
    settings = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    sj = _sj_layer(layer.Conv2d, conv, settings, bias=True).to(torch.float64)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    if norm is not None:
        if norm.fold_target == "identity":
            pass
        elif norm.fold_target != "weights" or len(norm.feature_shape) != 1:
            raise ValueError(
                f"post-conv norm {type(norm).__name__} has no per-channel eval-mode affine map "
                f"(fold_target={norm.fold_target!r}, feature_shape={norm.feature_shape})"
            )
        else:
            scale, shift = norm.inference_affine()
            w = w * scale.reshape(-1, 1, 1, 1)
            b = b * scale + shift
    with torch.no_grad():
        sj.weight.copy_(w)
        sj.bias.copy_(b)
    return sj


def _sj_neuron(neuron_mod: Any, surrogate: Any, ours: SpikingNeuron, name: str) -> nn.Module:
    """SpikingJelly ``MPBNLIFNode`` with our LIF constants and our MPBN statistics and affine."""
    if type(ours) is not LIF:
        raise ValueError(f"neuron '{name}' is {type(ours).__name__}; only spikenorm LIF maps to MPBNLIFNode")
    norm = ours.membrane_norm
    if not isinstance(norm, MPBN):
        raise TypeError(f"neuron '{name}' has membrane_norm {type(norm).__name__}, expected MPBN")
    if norm.elementwise:
        raise ValueError(f"neuron '{name}': element-wise MPBN has no SpikingJelly counterpart (channel-wise only)")
    if ours.reset != "hard" or ours.reset_value != 0.0:
        # SpikingJelly leaks towards v_reset (v - (v - v_reset)/tau); ours leaks towards 0
        raise ValueError(f"neuron '{name}': only hard reset to 0 maps exactly (got {ours.reset}, {ours.reset_value})")
    if ours.threshold.ndim != 0:
        raise ValueError(
            f"neuron '{name}': SpikingJelly needs a scalar v_threshold, got shape {tuple(ours.threshold.shape)}"
        )
    if not 0.0 < ours.decay < 1.0:
        raise ValueError(f"neuron '{name}': decay {ours.decay} has no SpikingJelly tau (tau = 1/(1-decay) must be > 1)")
    channels = norm.num_features
    node = neuron_mod.MPBNLIFNode(
        tau=float(1.0 / (1.0 - ours.decay)),
        decay_input=False,
        v_threshold=float(ours.threshold),
        v_reset=0.0,
        surrogate_function=surrogate.Sigmoid(),  # forward is the Heaviside step 1[x >= 0] whatever the surrogate
        detach_reset=False,
        step_mode="m",
        mpbn=True,
        out_channels=channels,
    ).to(torch.float64)
    with torch.no_grad():
        node.vbn.running_mean.copy_(norm.running_mean.double())
        node.vbn.running_var.copy_(norm.running_var.double())
        node.vbn.weight.copy_(norm.weight.double() if norm.weight is not None else torch.ones(channels))
        node.vbn.bias.copy_(norm.bias.double() if norm.bias is not None else torch.zeros(channels))
    node.vbn.eps = float(norm.eps)
    return node


def _convert(model: nn.Module, sj: tuple[Any, Any, Any, Any]) -> tuple[nn.Sequential, list[str]]:
    """SpikingJelly version of ``model.features`` and the qualified names of our neurons, in order."""
    _, layer, neuron_mod, surrogate = sj
    if not isinstance(getattr(model, "features", None), nn.Sequential):
        raise TypeError(f"expected a spikenorm SpikingVGG (a `features` Sequential), got {type(model).__name__}")
    modules: list[nn.Module] = []
    names: list[str] = []

    def leaves(prefix: str, module: nn.Module):
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                yield from leaves(f"{prefix}.{child_name}", child)
        else:
            yield prefix, module

    pending_conv: nn.Conv2d | None = None
    pending_norm: TimeMajorNorm | None = None

    def flush() -> None:
        nonlocal pending_conv, pending_norm
        if pending_conv is not None:
            modules.append(_sj_conv(layer, pending_conv, pending_norm))
        pending_conv, pending_norm = None, None

    for name, module in leaves("features", model.features):
        inner = module.module if isinstance(module, TimeDistributed) else module
        if isinstance(inner, nn.Conv2d):
            flush()
            pending_conv = inner
        elif isinstance(module, TimeMajorNorm):
            if pending_conv is None or pending_norm is not None:
                raise ValueError(f"norm '{name}' does not directly follow a conv")
            pending_norm = module
        elif isinstance(module, SpikingNeuron):
            flush()
            modules.append(_sj_neuron(neuron_mod, surrogate, module, name))
            names.append(name)
        elif isinstance(inner, nn.AvgPool2d):
            flush()
            settings = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            modules.append(_sj_layer(layer.AvgPool2d, inner, settings))
        elif isinstance(inner, nn.MaxPool2d):
            flush()
            modules.append(
                _sj_layer(layer.MaxPool2d, inner, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
            )
        elif isinstance(inner, (nn.Identity, nn.Dropout)):
            continue
        else:
            raise TypeError(f"layer '{name}' ({type(inner).__name__}) has no SpikingJelly counterpart here")
    flush()
    return nn.Sequential(*modules).eval(), names


# --- running -----------------------------------------------------------------------------------------


@torch.no_grad()
def _run_sj(
    net: nn.Sequential, head: nn.Module, x: Tensor, neuron_type: type, functional: Any
) -> tuple[Tensor, list[Tensor]]:
    """Logits ``[T, B, K]`` and the spikes ``[T, B, C, H, W]`` of every SpikingJelly neuron layer."""
    functional.reset_net(net)
    spikes: list[Tensor] = []
    h = x
    for module in net:
        h = module(h)
        if isinstance(module, neuron_type):
            spikes.append(h.clone())
    functional.reset_net(net)
    return head(h.mean(dim=(3, 4))), spikes


@torch.no_grad()
def _run_ours(model: nn.Module, x: Tensor, names: list[str]) -> tuple[Tensor, list[Tensor]]:
    recorded: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, out, name=name: recorded.__setitem__(name, out.clone()))
        for name in names
    ]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, [recorded[name] for name in names]


def _compare(
    ref: list[Tensor],
    other: list[Tensor],
    names: list[str],
    negative: list[Tensor],
    ref_logits: Tensor,
    logits: Tensor,
) -> dict[str, Any]:
    """Flipped spikes of ``other`` against ``ref``, per layer (with per-step and gamma<0 splits) and in total."""
    per_layer = []
    for name, a, b, neg in zip(names, ref, other, negative, strict=True):
        diff = a != b  # [T, B, C, H, W]
        flipped = int(diff.sum())
        steps = diff.numel()
        neg_view = neg.reshape(1, 1, -1, *([1] * (diff.ndim - 3))).expand_as(diff)
        per_layer.append(
            {
                "layer": name,
                "flipped": flipped,
                "neuron_steps": steps,
                "rate": flipped / steps,
                "flipped_by_step": [int(d.sum()) for d in diff.unbind(0)],
                "flipped_in_negative_gamma_channels": int(diff[neg_view].sum()),
                "flipped_in_other_channels": int(diff[~neg_view].sum()),
                "spikes_ref": int(a.sum()),
                "spikes": int(b.sum()),
            }
        )
    flipped = sum(p["flipped"] for p in per_layer)
    steps = sum(p["neuron_steps"] for p in per_layer)
    pred_ref, pred = ref_logits.mean(0).argmax(-1), logits.mean(0).argmax(-1)
    return {
        "flipped": flipped,
        "neuron_steps": steps,
        "rate": flipped / steps,
        "per_layer": per_layer,
        "logits_max_abs_diff": float((ref_logits - logits).abs().max()),
        "prediction_change_rate": float((pred_ref != pred).double().mean()),
    }


def spikingjelly_fold_flips(model: nn.Module, inputs: Tensor) -> dict[str, Any]:
    """Spikes flipped by SpikingJelly's MPBN threshold fold on a copy of ``model`` built from its layers.

    Args:
        model: a trained spikenorm ``SpikingVGG`` with ``membrane_norm="mpbn"`` (channel-wise MPBN, LIF
            neurons with hard reset to 0 and a scalar threshold). Not modified; used in eval mode.
        inputs: one time-major batch ``[T, B, C, H, W]``.

    Returns:
        ``{"default": R, "normalize_residual": R, ...}`` where each ``R`` compares SpikingJelly's folded
        network (``re_parameterize_v_threshold()`` with default arguments, resp. ``normalize_residual=True``)
        with its unfolded one: ``flipped``, ``neuron_steps``, ``rate`` = flipped / neuron-steps,
        ``per_layer`` (same fields plus ``flipped_by_step`` and the split by gamma sign; a layer's flips
        include those propagated from upstream layers), ``logits_max_abs_diff`` and
        ``prediction_change_rate`` (argmax of the time-averaged logits). Also
        ``sj_unfolded_vs_ours_mismatch_rate`` (SpikingJelly unfolded against our unfolded model, spike by
        spike) with its details in ``sj_unfolded_vs_ours``, the same comparison of each SpikingJelly fold
        with our model in ``sj_default_folded_vs_ours`` and ``sj_normalize_residual_folded_vs_ours``,
        ``negative_gamma_channels`` and ``zero_gamma_channels`` (MPBN channels with gamma < 0 / = 0),
        ``layers`` (our neuron names), ``sj_tau`` and ``sj_v_threshold``.

    Raises:
        ImportError: SpikingJelly (>= 2.0) cannot be imported.
        TypeError: a model, layer or neuron type that has no SpikingJelly counterpart here.
        ValueError: a layer or neuron setting that has no exact SpikingJelly counterpart.
    """
    sj = _import_spikingjelly()
    functional, _, neuron_mod, _ = sj
    ours = copy.deepcopy(model).to(torch.float64).eval()
    x = inputs.detach().to(torch.float64)
    head = nn.Sequential(copy.deepcopy(ours.dropout), copy.deepcopy(ours.classifier)).eval()

    def build(fold: dict[str, bool] | None) -> tuple[nn.Sequential, list[str]]:
        net, names = _convert(ours, sj)
        if fold is not None:
            for module in net:
                if isinstance(module, neuron_mod.MPBNLIFNode):
                    module.re_parameterize_v_threshold(**fold)
            functional.invalidate_reset_cache(net)  # vbn was swapped for Identity
        return net.eval(), names

    unfolded, names = build(None)
    default, _ = build({})
    residual, _ = build({"normalize_residual": True})

    ref_logits, ref = _run_sj(unfolded, head, x, neuron_mod.MPBNLIFNode, functional)
    def_logits, def_spikes = _run_sj(default, head, x, neuron_mod.MPBNLIFNode, functional)
    res_logits, res_spikes = _run_sj(residual, head, x, neuron_mod.MPBNLIFNode, functional)
    our_logits, our_spikes = _run_ours(ours, x, names)

    modules = dict(ours.named_modules())
    gammas = [modules[name].membrane_norm.weight.detach() for name in names]
    negative = [g < 0 for g in gammas]
    nodes = [m for m in unfolded if isinstance(m, neuron_mod.MPBNLIFNode)]

    vs_ours = _compare(our_spikes, ref, names, negative, our_logits, ref_logits)
    return {
        "default": _compare(ref, def_spikes, names, negative, ref_logits, def_logits),
        "normalize_residual": _compare(ref, res_spikes, names, negative, ref_logits, res_logits),
        "sj_unfolded_vs_ours_mismatch_rate": vs_ours["rate"],
        "sj_unfolded_vs_ours": vs_ours,
        "sj_default_folded_vs_ours": _compare(our_spikes, def_spikes, names, negative, our_logits, def_logits),
        "sj_normalize_residual_folded_vs_ours": _compare(
            our_spikes, res_spikes, names, negative, our_logits, res_logits
        ),
        "negative_gamma_channels": int(sum(int(n.sum()) for n in negative)),
        "zero_gamma_channels": int(sum(int((g == 0).sum()) for g in gammas)),
        "layers": names,
        "sj_tau": [n.tau for n in nodes],
        "sj_v_threshold": [n.v_threshold for n in nodes],
    }


# --- example -----------------------------------------------------------------------------------------


def _format(result: dict[str, Any]) -> str:
    """A compact table of a :func:`spikingjelly_fold_flips` result."""
    rows = [
        (
            f"MPBN channels with gamma < 0: {result['negative_gamma_channels']} "
            f"(gamma = 0: {result['zero_gamma_channels']}); "
            f"SpikingJelly tau = {result['sj_tau'][0]!r}, v_threshold = {result['sj_v_threshold'][0]}"
        )
    ]
    for key in (
        "default",
        "normalize_residual",
        "sj_unfolded_vs_ours",
        "sj_default_folded_vs_ours",
        "sj_normalize_residual_folded_vs_ours",
    ):
        r = result[key]
        rows.append(
            f"  {key:<38} flipped {r['flipped']:>7} / {r['neuron_steps']} = {r['rate']:8.4%}   "
            f"predictions changed {r['prediction_change_rate']:.1%}, max |logit diff| {r['logits_max_abs_diff']:.3g}"
        )
        for p in r["per_layer"]:
            rows.append(
                f"    {p['layer']:<14} {p['flipped']:>7} / {p['neuron_steps']:<7} = {p['rate']:8.4%}  "
                f"per step {p['flipped_by_step']}, in gamma<0 channels {p['flipped_in_negative_gamma_channels']}"
            )
    return "\n".join(rows)


def example_model(negate_last: bool = True, seed: int = 0, time_steps: int = 4) -> tuple[nn.Module, Tensor]:
    """Our small SpikingVGG with running statistics moved by training-mode forwards on random data,
    half of the last neuron layer's MPBN gammas negated (``negate_last``), in eval mode; and a test batch."""
    from spikenorm.models import LayerSpec, SpikingVGG

    torch.manual_seed(seed)
    model = SpikingVGG(
        "small",
        in_channels=1,
        num_classes=10,
        input_size=8,
        layers=LayerSpec(
            norm="tdbn", membrane_norm="mpbn", neuron_kwargs={"decay": 0.25, "threshold": 0.5}, surrogate="dspike"
        ),
    )
    model.train()
    with torch.no_grad():
        for _ in range(10):
            model(torch.rand(time_steps, 32, 1, 8, 8))
        if negate_last:
            last = [m for m in model.modules() if isinstance(m, SpikingNeuron)][-1].membrane_norm
            last.weight[: last.num_features // 2] *= -1
    model.eval()
    return model, torch.rand(time_steps, 64, 1, 8, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the full result dicts as JSON")
    args = parser.parse_args()

    from spikenorm.fold import check_equivalence, fold_model

    for negate in (True, False):
        model, x = example_model(negate_last=negate, seed=args.seed, time_steps=args.time_steps)
        ours = check_equivalence(model, fold_model(model), x, dtype=torch.float64)
        result = spikingjelly_fold_flips(model, x)
        print(f"=== {'half of the last layer MPBN gammas negated' if negate else 'control: all gammas positive'}")
        print(f"spikenorm fold_model: {ours.flipped_spikes} flipped of {ours.total_spikes} spikes")
        print(json.dumps(result, indent=1) if args.json else _format(result))


if __name__ == "__main__":
    main()
