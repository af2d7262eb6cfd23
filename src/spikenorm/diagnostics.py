"""Norm health, read-only: statistics error, train/eval gap, and the membrane relative to the threshold.

:func:`diagnose` runs given batches through a network twice and measures, for every layer with running
statistics (the layers :func:`~spikenorm.recalibrate.recalibrate_bn` re-calibrates: spikenorm norms, MPBN inside
neurons, torch and SpikingJelly BN) and every spikenorm, snnTorch or SpikingJelly neuron, the quantities the
papers' arguments rest on.

**Statistics error** (eval pass: the model as deployed, every layer on its running statistics). A layer's inputs
are pooled exactly over all samples, steps and batches (:class:`~spikenorm.norm.stats.PooledMoments`, the
accumulator of ``recalibrate_bn``; the pooled variance is written biased or unbiased as the layer's running
variance is), giving ``mu, var`` per feature, against the running ``mu_r, var_r``; with the layer's ``eps``:

* ``mean_error = mean_c |mu_r - mu| / sqrt(var + eps)``: the running mean's error in units of the layer's own
  normalisation scale;
* ``log_var_ratio = mean_c |log((var_r + eps) / (var + eps))|``: the variance's error as a log ratio;
* ``stat_w2 = mean_c W2(N(mu_r, var_r), N(mu, var)) = mean_c sqrt((mu_r - mu)^2 + (sqrt var_r - sqrt var)^2)``: the
  distance ``recalibrate_bn`` reports as ``stat_error`` (0 after an exact re-calibration of the first layer);
* per time step ``t``: ``step_stat_w2[t]`` = W2 between the statistics the layer normalises step ``t`` with and
  the pooled statistics of step ``t``'s inputs, and ``step_shift[t]`` = W2 between the pooled statistics of step
  ``t`` and those of all steps (how far each step's statistics sit from the pooled ones: the TEBN / TAB
  argument). A layer called once per step (snnTorch) has one step per call; a torch BN run on ``[T B, ...]``
  (inside :class:`~spikenorm.synapse.TimeDistributed`) sees one "step".

CaRe-BN (Xu et al., ICLR 2026): in online RL the running statistics lag the statistics of the current
policy's states, so ``stat_w2`` against recent replay states is large for vanilla BN and small after Re-BN.

**Train/eval gap** (train pass: the same batches with every norm layer, and every spikenorm neuron with OTS, in
training mode, each call's buffer updates undone, so nothing is updated). Per layer, with the same input ``x``,
``gap = ||y_train(x) - y_eval(x)|| / ||y_eval(x)||`` (L2 over every element of every call and batch), where
``y_train`` is the layer's training forward (batch statistics for BN; OSR's renormalisation) and ``y_eval`` its
eval forward (running statistics). At the output, the model's output in the train pass against the eval pass: for
logits (``output="logits"``, ``[T, B, K]`` averaged over time, or ``[B, K]``) the top-1 agreement and
``KL(softmax(z_train) || softmax(z_eval))`` averaged over samples; for actions the mean absolute difference. OSR
(Zhu et al., ICLR 2024) argues that online training with per-step batch statistics makes this gap large and that
OSR's renormalisation closes it.

**Membrane** (eval pass): per spiking layer and step, the quantiles of ``(u - theta) / theta``, the fraction
within +-10% of the threshold (where surrogate gradients live) (:class:`~spikenorm.membrane.MembraneRecorder`),
and the fractions of neurons that never and always fired (:class:`~spikenorm.monitoring.FiringRateRecorder`, as
``SpikeMonitor``). MPBN (Guo et al., ICCV 2023) argues that the charged membrane drifts off the threshold's scale
and that a BN on the membrane brings it back.

A network compiled with ``nn.Module.compile`` (the tasks' ``compile`` option) is diagnosed with its eager forward
(the same numbers up to the compiled kernels' rounding).

Read-only: the state dict, every module's train/eval flag and the torch, CUDA, NumPy and Python RNG states are the
same after :func:`diagnose` as before; every buffer a training-mode call changed is written back. Under
``torch.distributed`` every quantity is reduced over processes, so each process gets the diagnosis of the union
of the batches (every process must call it with the same number of batches; ``batches`` counts all of them). The
train pass normalises as distributed training does: spikenorm norms (and MPBN, and OTS with ``ots_eval="dynamic"``)
pool their batch statistics over the processes, so their training-mode output is that of the processes' batches
joined along ``B``, while a torch ``BatchNorm`` (not ``SyncBatchNorm``) uses its own process's batch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.distributed import sum_across_processes
from spikenorm.interop import any_spiking_neurons
from spikenorm.membrane import QUANTILES, MembraneRecorder
from spikenorm.modes import eval_mode
from spikenorm.module_names import excluded
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.neurons import SpikingNeuron, stateful
from spikenorm.norm.stats import PooledMoments
from spikenorm.recalibrate import w2_distance
from spikenorm.statistics_layers import StatisticsLayer, statistics_layers
from spikenorm.statistics_passes import PassContext, ResetFn, take_batches
from spikenorm.validation import check_choice

AREA = "diagnostics"
"""The log-key area of every diagnostic (docs/reference/log-keys.md)."""

Forward = Callable[[nn.Module, Any], Any]

#: what a diagnosed network returns: per-step class logits, or actions (an RL actor)
DiagnosisOutput = Literal["logits", "actions"]


@dataclass
class LayerDiagnosis:
    """One layer with running statistics (see the module doc for each quantity)."""

    kind: str
    mean_error: float
    log_var_ratio: float
    stat_w2: float
    samples: int
    step_stat_w2: list[float]
    step_shift: list[float]
    train_eval_gap: float


@dataclass
class NeuronDiagnosis:
    """One spiking layer: ``(u - theta) / theta`` quantiles (keys ``"q05"``... ``"q95"``) over all steps and per
    step, the near-threshold fractions, firing rate, and the never- and always-firing fractions of its neurons."""

    kind: str
    quantiles: dict[str, float]
    near_threshold: float
    firing_rate: float
    never_firing: float
    always_firing: float
    step_quantiles: list[dict[str, float]]
    step_near_threshold: list[float]


@dataclass
class OutputGap:
    """The network output of the train pass against the eval pass: for logits the top-1 agreement and mean KL, for
    actions the mean absolute difference (the other fields None)."""

    output: str
    top1_agreement: float | None = None
    kl: float | None = None
    action_gap: float | None = None


@dataclass
class NormDiagnosis:
    """What :func:`diagnose` measured; ``histograms`` holds each spiking layer's ``[steps, bins]`` counts of
    ``(u - theta) / theta`` (:mod:`spikenorm.membrane`; not in :meth:`to_dict`)."""

    layers: dict[str, LayerDiagnosis] = field(default_factory=dict)
    neurons: dict[str, NeuronDiagnosis] = field(default_factory=dict)
    output: OutputGap = field(default_factory=functools.partial(OutputGap, "logits"))
    batches: int = 0
    seconds: float = 0.0
    histograms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the histograms, as plain JSON-able data."""
        data = asdict(self)
        data.pop("histograms")
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def scalars(self, per_step: bool = False) -> dict[str, float]:
        """The log keys (area ``diagnostics``): per layer ``<metric>/<layer>``, means over layers ``<metric>``, the
        output gap, and with ``per_step`` also ``<metric>/<layer>/t<t>`` (docs/reference/log-keys.md)."""
        out: dict[str, float] = {}
        layer_metrics = ("mean_error", "log_var_ratio", "stat_w2", "train_eval_gap")
        neuron_metrics = ("near_threshold", "firing_rate", "never_firing", "always_firing")
        for metric in layer_metrics:
            values = {name: getattr(d, metric) for name, d in self.layers.items()}
            _per_layer(out, metric, values)
        for metric in neuron_metrics:
            _per_layer(out, metric, {name: getattr(d, metric) for name, d in self.neurons.items()})
        for name, d in self.neurons.items():
            out[f"{AREA}/membrane_median/{name}"] = d.quantiles["q50"]
            out[f"{AREA}/membrane_spread/{name}"] = d.quantiles["q95"] - d.quantiles["q05"]
        for key in ("top1_agreement", "kl", "action_gap"):
            value = getattr(self.output, key)
            if value is not None:
                out[f"{AREA}/output_{key}" if key != "action_gap" else f"{AREA}/action_gap"] = value
        if per_step:
            for name, d in self.layers.items():
                for t, value in enumerate(d.step_stat_w2):
                    out[f"{AREA}/step_stat_w2/{name}/t{t}"] = value
                for t, value in enumerate(d.step_shift):
                    out[f"{AREA}/step_shift/{name}/t{t}"] = value
            for name, d in self.neurons.items():
                for t, value in enumerate(d.step_near_threshold):
                    out[f"{AREA}/near_threshold/{name}/t{t}"] = value
        return out

    def markdown(self) -> str:
        """Two per-layer tables (norm layers; spiking layers) and the output gap, as Markdown."""
        lines = []
        if self.layers:
            lines += [
                "| norm layer | kind | mean error | log var ratio | stat W2 | train/eval gap | worst step W2 "
                "| samples |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, d in self.layers.items():
                worst = max(d.step_stat_w2) if d.step_stat_w2 else float("nan")
                lines.append(
                    f"| {name} | {d.kind} | {d.mean_error:.4g} | {d.log_var_ratio:.4g} | {d.stat_w2:.4g} | "
                    f"{d.train_eval_gap:.4g} | {worst:.4g} | {d.samples} |"
                )
            lines.append("")
        if self.neurons:
            lines += [
                "| spiking layer | kind | (u-θ)/θ q05 / q50 / q95 | within ±10% of θ | rate | never fired "
                "| always fired |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, d in self.neurons.items():
                q = d.quantiles
                lines.append(
                    f"| {name} | {d.kind} | {q['q05']:.2f} / {q['q50']:.2f} / {q['q95']:.2f} | "
                    f"{d.near_threshold:.3f} | {d.firing_rate:.3f} | {d.never_firing:.3f} | {d.always_firing:.3f} |"
                )
            lines.append("")
        o = self.output
        if o.output == "logits":
            lines.append(f"Output (train-mode norms vs eval): top-1 agreement {o.top1_agreement:.4f}, KL {o.kl:.4g}.")
        else:
            lines.append(f"Output (train-mode norms vs eval): mean absolute action difference {o.action_gap:.4g}.")
        lines.append(f"{self.batches} batch(es), {self.seconds:.2f} s.")
        return "\n".join(lines) + "\n"


def _per_layer(out: dict[str, float], metric: str, values: dict[str, float]) -> None:
    for name, value in values.items():
        out[f"{AREA}/{metric}/{name}"] = value
    if values:
        out[f"{AREA}/{metric}"] = sum(values.values()) / len(values)


def _quantile_key(q: float) -> str:
    return f"q{round(q * 100):02d}"


@torch.no_grad()
def diagnose(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Forward | None = None,
    train_forward: Forward | None = None,
    output: DiagnosisOutput = "logits",
    num_batches: int | None = None,
    reset_fn: ResetFn | None = None,
    time_steps: int | None = None,
    exclude: Iterable[str] = (),
    near: float = 0.1,
) -> NormDiagnosis:
    """Measure the norm health of ``model`` on ``batches`` without changing anything (see the module doc).

    Args:
        model: the network (norm layers and neurons are found by type, as for ``recalibrate_bn``).
        batches: the data; each is passed to ``forward``. Without ``forward``, each batch is the model's input.
        forward: ``forward(model, batch)`` for the eval pass; defaults to ``model(batch)``. Its result (or the first
            element of a tuple) is the output compared between the passes.
        train_forward: the forward of the train pass, as in training (e.g. per step inside
            :func:`~spikenorm.neurons.stateful` for online training); defaults to ``forward``.
        output: ``"logits"`` (top-1 agreement and KL of the time-averaged outputs) or ``"actions"`` (mean
            absolute difference).
        num_batches: use exactly this many batches (all when None).
        reset_fn: clears the state of neurons spikenorm does not know (as for ``recalibrate_bn``).
        time_steps: ``T``, to refuse batch-major tensor batches (as for ``recalibrate_bn``).
        exclude: qualified module names (and everything inside them) not to diagnose, e.g. ``("teacher",)``.
        near: half width of the near-threshold band relative to the threshold (0.1: +-10%).

    Raises:
        ValueError: no batches; a model with neither running statistics nor recognised neurons; a neuron whose
            membrane cannot be read; an unknown ``output``; a non-positive threshold.
        TypeError: without ``forward``, a batch that is a tuple or list.
    """
    check_choice(output, DiagnosisOutput, "output")
    exclude = tuple(exclude)
    layers = {n: layer for n, layer in statistics_layers(model).items() if not excluded(n, exclude)}
    neurons = {n or type(m).__name__: m for n, m in any_spiking_neurons(model) if not excluded(n, exclude)}
    if not layers and not neurons:
        raise ValueError(
            f"{type(model).__name__} has neither a norm layer with running statistics nor a spiking neuron spikenorm "
            "recognises (spikenorm, snnTorch, SpikingJelly); nothing to diagnose"
        )
    ctx = PassContext(model, layers, take_batches(batches, num_batches, "diagnose"), forward, reset_fn)
    ctx.check_batches(time_steps)
    membrane = MembraneRecorder(neurons, near) if neurons else None
    start = time.perf_counter()
    with _preserved(model), _uncompiled(model), eval_mode(model):
        statistics = _StatisticsPass(layers)
        firing = FiringRateRecorder(model, sequence_on_forward=False, exclude=exclude) if neurons else None
        with statistics, membrane or contextlib.nullcontext(), firing or contextlib.nullcontext():
            eval_outputs = []
            for batch in ctx.batches:
                statistics.new_sequence()
                if membrane is not None:
                    membrane.new_sequence()
                    firing.new_sequence()
                ctx.reset()
                eval_outputs.append(_output_tensor(ctx.run(model, batch)))
        gaps = _GapPass(layers, _training_modules(model, layers, exclude))
        train_ctx = PassContext(model, layers, ctx.batches, train_forward or forward, reset_fn)
        buffers = _buffer_copies(model)
        output_sums = _OutputSums(output)
        with gaps:
            for batch, eval_out in zip(ctx.batches, eval_outputs):
                train_ctx.reset()
                output_sums.add(_output_tensor(train_ctx.run(model, batch)), eval_out)
                _write_back(buffers)
        ctx.reset()
    batches = sum_across_processes({"n": torch.tensor([float(len(ctx.batches))], dtype=torch.float64)})["n"]
    diagnosis = NormDiagnosis(output=output_sums.reduced(), batches=int(batches.item()))
    gap_values = gaps.reduced()
    for name, layer in layers.items():
        diagnosis.layers[name] = statistics.layer_diagnosis(name, layer, gap_values[name])
    if membrane is not None:
        membrane.all_reduce()
        firing.all_reduce()
        diagnosis.neurons = _neuron_diagnoses(neurons, membrane, firing)
        diagnosis.histograms = membrane.histograms()
    diagnosis.seconds = time.perf_counter() - start
    return diagnosis


def stepwise_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The forward of online training (without its backward): ``x`` (``[T, B, ...]``) one step at a time inside
    :func:`~spikenorm.neurons.stateful`, the per-step outputs concatenated (``[T, B, ...]``). Pass it as
    ``train_forward`` to diagnose a model trained online, so the train pass normalises each step as training did."""
    with stateful(model):
        return torch.cat([model(x[t : t + 1]) for t in range(x.shape[0])])


def _output_tensor(result: Any) -> Tensor:
    out = result[0] if isinstance(result, (tuple, list)) else result
    if not isinstance(out, Tensor):
        raise TypeError(f"diagnose: the forward returned {type(out).__name__}; expected a tensor (or a tuple of them)")
    return out.detach()


class _StatisticsPass:
    """Forward hooks that pool every layer's inputs over everything and per step (eval pass)."""

    def __init__(self, layers: dict[str, StatisticsLayer]) -> None:
        self.layers = layers
        self.pooled = {name: PooledMoments() for name in layers}
        self.steps: dict[str, list[PooledMoments]] = {name: [] for name in layers}
        self.offsets: dict[str, int] = {}
        self.handles: list[Any] = []

    def new_sequence(self) -> None:
        self.offsets.clear()

    def __enter__(self) -> _StatisticsPass:
        for name, layer in self.layers.items():
            self.handles.append(layer.module.register_forward_hook(self._hook(name, layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str, layer: StatisticsLayer) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[Any, ...], result: Any) -> None:
            x = inputs[0]
            layer.measure(self.pooled[name], x)
            slices = [x[s : s + 1] for s in range(x.shape[0])] if layer.time_major else [x]
            offset = self.offsets.get(name, 0)
            steps = self.steps[name]
            for s, x_s in enumerate(slices):
                if len(steps) <= offset + s:
                    steps.append(PooledMoments())
                steps[offset + s].add(x_s, layer.step_reduce_dims(x_s))
            self.offsets[name] = offset + len(slices)

        return record

    def layer_diagnosis(self, name: str, layer: StatisticsLayer, gap: float) -> LayerDiagnosis:
        pooled = self.pooled[name]
        if pooled.mean is None:
            raise ValueError(f"diagnose: the forward never called layer '{name}' ({type(layer.module).__name__})")
        pooled.all_reduce()
        for m in self.steps[name]:
            m.all_reduce()
        eps = float(getattr(layer.module, "eps", 0.0))
        running = (layer.running_mean.double(), layer.running_var.double())
        mean, var = (s.double() for s in layer.statistics(pooled, unbiased=layer.unbiased))
        scale = (var + eps).clamp_min(torch.finfo(torch.float64).tiny)
        all_steps = PooledMoments()
        step_stats = []
        for m in self.steps[name]:
            all_steps.merge(m.count, m.mean, m.m2)
            step_stats.append((m.mean, m.variance(layer.unbiased)))
        shared = (all_steps.mean, all_steps.variance(layer.unbiased))
        return LayerDiagnosis(
            kind=type(layer.module).__name__,
            mean_error=float(((running[0] - mean).abs() / scale.sqrt()).mean()),
            log_var_ratio=float(torch.log((running[1] + eps).clamp_min(1e-300) / scale).abs().mean()),
            stat_w2=w2_distance(running, (mean, var)),
            samples=pooled.count,
            step_stat_w2=[
                w2_distance(tuple(r.double() for r in layer.running_at(t)), stats) for t, stats in enumerate(step_stats)
            ],
            step_shift=[w2_distance(stats, shared) for stats in step_stats],
            train_eval_gap=gap,
        )


def _training_modules(
    model: nn.Module, layers: dict[str, StatisticsLayer], exclude: tuple[str, ...]
) -> list[nn.Module]:
    """What the train pass puts in training mode: the norm layers, and spikenorm neurons with a threshold stabiliser
    such as OTS (outside ``exclude``)."""
    stabilised = [
        m
        for name, m in model.named_modules()
        if isinstance(m, SpikingNeuron) and m.threshold_stabilizer is not None and not excluded(name, exclude)
    ]
    return [layer.module for layer in layers.values()] + stabilised


class _GapPass:
    """Training mode for the norm layers (and OTS neurons); hooks that compare each norm's training output with its
    eval output on the same input, undoing the buffer updates of each call."""

    def __init__(self, layers: dict[str, StatisticsLayer], training: list[nn.Module]) -> None:
        self.layers = layers
        self.training = training
        self.sums = {name: torch.zeros(2, dtype=torch.float64) for name in layers}  # [sum diff^2, sum eval^2]
        self.handles: list[Any] = []
        self.saved: dict[str, tuple[dict[str, Tensor], dict[str, Any]]] = {}

    def __enter__(self) -> _GapPass:
        for module in self.training:
            module.train(True)
        for name, layer in self.layers.items():
            module = layer.module
            self.handles.append(module.register_forward_pre_hook(self._before(name, module)))
            self.handles.append(module.register_forward_hook(self._after(name, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for module in self.training:
            module.train(False)

    def _before(self, name: str, module: nn.Module) -> Callable[..., None]:
        def save(_: nn.Module, inputs: tuple[Any, ...]) -> None:
            self.saved[name] = _module_state(module)

        return save

    def _after(self, name: str, module: nn.Module) -> Callable[..., None]:
        def compare(_: nn.Module, inputs: tuple[Any, ...], trained: Tensor) -> None:
            buffers, attributes = self.saved.pop(name)
            _, trained_attributes = _module_state(module)  # e.g. the step counter of a per-step norm, advanced
            _restore_module_state(module, (buffers, attributes))  # the eval call sees what the training call saw
            module.training = False
            try:
                evaluated = type(module).forward(module, *inputs)
            finally:  # no buffer update kept; attributes as the training call left them
                _restore_module_state(module, (buffers, trained_attributes))
            diff = (trained.double() - evaluated.double()).pow(2).sum()
            self.sums[name] += torch.stack([diff, evaluated.double().pow(2).sum()]).cpu()

        return compare

    def reduced(self) -> dict[str, float]:
        summed = sum_across_processes({name: s for name, s in self.sums.items()})
        return {name: math.sqrt(float(s[0] / s[1])) if float(s[1]) > 0 else 0.0 for name, s in summed.items()}


def _module_state(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The module's own buffers (copies) and plain attributes (a shallow copy: step counters, flags)."""
    buffers = {k: b.clone() for k, b in module._buffers.items() if b is not None}
    attributes = {k: v for k, v in vars(module).items() if not k.startswith(("_parameters", "_buffers", "_modules"))}
    return buffers, attributes


def _restore_module_state(module: nn.Module, state: tuple[dict[str, Tensor], dict[str, Any]]) -> None:
    buffers, attributes = state
    for k, b in buffers.items():
        module._buffers[k].copy_(b)
    for k in [k for k in vars(module) if k not in attributes and not k.startswith("_")]:
        delattr(module, k)
    module.__dict__.update(attributes)


class _OutputSums:
    """Sums of the output gap over batches (reduced over processes at the end)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.sums = torch.zeros(3, dtype=torch.float64)  # logits: agree, KL, samples; actions: |diff|, elements

    def add(self, trained: Tensor, evaluated: Tensor) -> None:
        if self.output == "actions":
            diff = (trained.double() - evaluated.double()).abs()
            self.sums += torch.tensor([float(diff.sum()), 0.0, float(diff.numel())], dtype=torch.float64)
            return
        if trained.ndim == 3:  # per-step logits [T, B, K]
            trained, evaluated = trained.mean(0), evaluated.mean(0)
        log_p = F.log_softmax(trained.double(), -1)
        log_q = F.log_softmax(evaluated.double(), -1)
        agree = (trained.argmax(-1) == evaluated.argmax(-1)).sum()
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).sum()
        self.sums += torch.tensor([float(agree), float(kl), float(trained.shape[0])], dtype=torch.float64)

    def reduced(self) -> OutputGap:
        s = sum_across_processes({"s": self.sums})["s"]
        if self.output == "actions":
            return OutputGap("actions", action_gap=float(s[0] / s[2]))
        return OutputGap("logits", top1_agreement=float(s[0] / s[2]), kl=float(s[1] / s[2]))


def _neuron_diagnoses(
    neurons: dict[str, nn.Module], membrane: MembraneRecorder, firing: FiringRateRecorder
) -> dict[str, NeuronDiagnosis]:
    quantiles, step_quantiles = membrane.quantiles(), membrane.step_quantiles()
    near, step_near = membrane.near_threshold(), membrane.step_near_threshold()
    rates, never, always = firing.layer_rates(), firing.dead_fractions(), firing.saturated_fractions()

    def keyed(q: dict[float, float]) -> dict[str, float]:
        return {_quantile_key(level): q[level] for level in QUANTILES}

    return {
        name: NeuronDiagnosis(
            kind=type(neuron).__name__,
            quantiles=keyed(quantiles[name]),
            near_threshold=near[name],
            firing_rate=rates[name],
            never_firing=never[name],
            always_firing=always[name],
            step_quantiles=[keyed(q) for q in step_quantiles[name]],
            step_near_threshold=step_near[name],
        )
        for name, neuron in neurons.items()
        if name in quantiles
    }


def _buffer_copies(model: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """A copy of every buffer, with its owner (neuron states such as snnTorch's ``mem`` are buffers too)."""
    return [(m, key, b.clone()) for m in model.modules() for key, b in m._buffers.items() if b is not None]


def _write_back(copies: list[tuple[nn.Module, str, Tensor]]) -> None:
    """Write the copies back: in place where the shape is unchanged, else as the buffer itself."""
    for module, key, saved in copies:
        current = module._buffers.get(key)
        if current is not None and current.shape == saved.shape and current.dtype == saved.dtype:
            current.copy_(saved)
        else:
            module._buffers[key] = saved.clone()


@contextlib.contextmanager
def _uncompiled(model: nn.Module) -> Iterator[None]:
    """Run modules compiled with ``nn.Module.compile`` (a task's ``compile`` option) eagerly for the scope: the
    recorders patch neurons and hook layers, which a compiled graph would not see or would recompile for."""
    compiled = [(m, m._compiled_call_impl) for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    for module, _ in compiled:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, call in compiled:
            module._compiled_call_impl = call


@contextlib.contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore every buffer and the torch, CUDA, NumPy and Python RNG states on exit."""
    buffers = _buffer_copies(model)
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        _write_back(buffers)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
