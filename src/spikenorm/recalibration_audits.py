"""The audits of a measuring pass: they refuse a model whose statistics would be wrong, before any is written.

* state the resets miss (:func:`check_resets`, :func:`check_resettable`): a hand-written neuron that keeps ``self.v``
  (a plain tensor attribute or a buffer) between calls would carry membranes from batch to batch. The first batch
  runs twice, each time from reset state, and every module's tensors are compared after the reset that follows each
  run: they differ exactly when some state survives the resets.
* NaN/Inf activations (:func:`measure_all_batches`): a NaN or Inf in any input of a measured layer makes that layer's
  float64 moments non-finite, so the moments are checked once per batch; only when the check fails is the batch run
  again from the same moments to count the NaN and Inf values (:class:`NonFiniteCounts`).

Under ``torch.distributed`` every process learns whether any process failed (:func:`raise_on_every_process`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spikenorm.modes import eval_mode
from spikenorm.norm.stats import PooledMoments
from spikenorm.statistics_layers import StatisticsLayer, statistics_layers
from spikenorm.statistics_passes import PassContext, ResetFn


def measure_all_batches(ctx: PassContext, moments: dict[str, PooledMoments], start: Callable[[int], None]) -> None:
    """Run every batch from fresh state (``start(index)`` first) while layers accumulate into ``moments``
    (which may gain entries during the first batch), and check after each batch that they are finite.

    The check reads the per-feature moments once per batch, not the inputs, so it costs next to nothing;
    only on failure is the batch run again (from the moments it started with, so every measured input is
    the same) to count the NaN and Inf values of each measured layer's inputs.

    Under ``torch.distributed`` every process learns whether any process failed (one collective per pass,
    which every process reaches), so all of them raise instead of leaving the others waiting in the next
    all-reduce.

    Raises:
        ValueError: the first batch after which some moments are not finite (see :class:`NonFiniteCounts`), or,
            on the other processes, that a process found one.
    """
    error = None
    for index, batch in enumerate(ctx.batches):
        saved = {name: m.state() for name, m in moments.items()}
        start(index)
        ctx.fresh(batch)
        if all(m.finite() for m in moments.values()):
            continue
        audit = NonFiniteCounts()
        for name, m in moments.items():
            m.restore(saved.get(name, (0, None, None)))
            m.inspect = functools.partial(audit.record, name)
        start(index)
        ctx.fresh(batch)
        error = audit.error(ctx.layers, index, [name for name, m in moments.items() if not m.finite()])
        break
    raise_on_every_process(error)


def raise_on_every_process(error: ValueError | None) -> None:
    """Raise ``error`` here and a ValueError on every other process when any process has an error."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        failed: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(failed, error is not None)
        if error is None and any(failed):
            ranks = [rank for rank, flag in enumerate(failed) if flag]
            raise ValueError(
                f"recalibrate_bn: process(es) {ranks} found NaN/Inf values in the inputs of a measured "
                "layer (their error names the layer and batch); the running statistics are unchanged"
            )
    if error is not None:
        raise error


@dataclass
class NonFiniteCounts:
    """NaN, Inf and element counts of every measured layer's inputs over one batch, in the order of their calls."""

    counts: dict[str, list[int]] = field(default_factory=dict)  # name -> [NaN, Inf, elements]
    culprits: list[str] = field(default_factory=list)  # layers whose inputs held NaN/Inf, first one first

    def record(self, name: str, x: Tensor) -> None:
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        counts = self.counts.setdefault(name, [0, 0, 0])
        counts[0] += nan
        counts[1] += inf
        counts[2] += x.numel()
        if (nan or inf) and name not in self.culprits:
            self.culprits.append(name)

    def error(self, layers: dict[str, StatisticsLayer], index: int, non_finite: list[str]) -> ValueError:
        """The error naming the first layer whose inputs held NaN/Inf (or whose moments overflowed)."""
        unchanged = "no statistics were written (the model keeps its previous ones)"
        if self.culprits:
            name = self.culprits[0]
            nan, inf, elements = self.counts[name]
            return ValueError(
                f"recalibrate_bn: the inputs of layer '{name}' ({type(layers[name].module).__name__}) in batch "
                f"{index} (0-based, of the batches used) hold {nan} NaN and {inf} Inf values among {elements} "
                f"elements; {unchanged}. Expected finite activations: check that batch with torch.isfinite and "
                f"the layers before '{name}'"
            )
        name = next((n for n in self.counts if n in non_finite), non_finite[0])
        return ValueError(
            f"recalibrate_bn: the inputs of layer '{name}' ({type(layers[name].module).__name__}) in batch {index} "
            f"are finite but so large that their squared deviations overflow; {unchanged}. Expected activations "
            f"whose squares fit in their dtype: check the layers before '{name}', or recalibrate in float64"
        )


def module_tensors(model: nn.Module) -> dict[tuple[str, str], Tensor]:
    """Copies of the tensors every module holds besides its parameters and submodules (buffers, plain
    attributes, and tensors directly inside list, tuple or dict attributes), keyed ``(module, attribute)``."""
    state: dict[tuple[str, str], Tensor] = {}
    for name, module in model.named_modules():
        attributes = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        attributes.update(module._buffers)
        for attribute, value in attributes.items():
            if isinstance(value, dict):
                items = [(f"{attribute}[{k!r}]", v) for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                items = [(f"{attribute}[{i}]", v) for i, v in enumerate(value)]
            else:
                items = [(attribute, value)]
            for key, tensor in items:
                if isinstance(tensor, Tensor) and not isinstance(tensor, nn.Parameter):
                    state[name, key] = tensor.detach().clone()
    return state


def check_resets(ctx: PassContext) -> None:
    """Refuse a model whose state survives the resets, which would make every batch's statistics depend on
    the batches before it.

    The first batch runs twice, each time from reset state, and the module tensors are compared after the
    reset that follows each run: resets that clear every state leave the same tensors both times, while a
    state they miss (e.g. a hand-written neuron's ``self.v``) holds what two forwards left rather than one.
    Costs two forwards of one batch, once per call.

    Raises:
        ValueError: naming the modules and attributes whose state survived, and suggesting ``reset_fn``.
    """
    snapshots = []
    for _ in range(2):
        ctx.fresh(ctx.batches[0])
        ctx.reset()
        snapshots.append(module_tensors(ctx.model))
    first, second = snapshots
    survived = sorted(
        k
        for k in first.keys() | second.keys()
        if k not in first
        or k not in second
        or first[k].shape != second[k].shape
        or not torch.equal(first[k], second[k])
    )
    if not survived:
        return
    modules = dict(ctx.model.named_modules())
    owners = {modules[name] for name, _ in survived}
    classes = ", ".join(sorted({type(m).__name__ for m in owners}))
    if all(callable(getattr(m, "reset", None)) for m in owners):
        example = f"reset_fn=lambda model: [m.reset() for m in model.modules() if isinstance(m, ({classes},))]"
    else:
        example = "reset_fn=<a function of the model that clears these states>"
    named = ", ".join(f"'{name or '<root>'}' ({type(modules[name]).__name__}.{attr})" for name, attr in survived)
    resets = "spikenorm neurons, snnTorch reset_mem(), SpikingJelly reset()" + (", reset_fn" if ctx.reset_fn else "")
    raise ValueError(
        f"recalibrate_bn: state kept by these modules survives the resets before each batch ({resets}): {named}; "
        f"every batch's statistics would depend on the batches before it. Expected resets that clear it: pass {example}"
    )


def check_resettable(
    model: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    reset_fn: ResetFn | None = None,
) -> None:
    """Raise now if :func:`~spikenorm.recalibrate.recalibrate_bn` would refuse ``model`` for state that survives
    its resets.

    Runs the check :func:`~spikenorm.recalibrate.recalibrate_bn` starts with (:func:`check_resets`: two eval-mode
    forwards of ``batch`` from reset state; no statistics change), so a callback can refuse a model before training
    instead of at its first recalibration. Arguments as for :func:`~spikenorm.recalibrate.recalibrate_bn`.
    """
    ctx = PassContext(model, statistics_layers(model), [batch], forward, reset_fn)
    ctx.check_batches(None)
    with eval_mode(model), torch.no_grad():
        try:
            check_resets(ctx)
        finally:
            ctx.reset()
