"""Synapses: the stateless layers between spiking neurons, applied to time-major tensors ``[T, B, ...]``.

:class:`TimeDistributed` runs any stateless layer (a convolution, a pool) on every step at once;
:class:`TraceSynapse` gives a synaptic layer OTTT's presynaptic-trace weight gradient (Xiao et al., "Online
Training Through Time for Spiking Neural Networks", NeurIPS 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from spikenorm.sequence import SequenceAware
from spikenorm.validation import check_time_major


class TimeDistributed(nn.Module):
    """Apply a stateless module to every step of ``[T, B, ...]`` at once by folding ``T`` into the batch.

    Layout: a 2-d convolution on CPU gets its input in channels-last (NHWC) layout unless
    ``channels_last=False``. oneDNN's convolutions on NCHW input reorder to a blocked layout and back on
    every call; on NHWC they do not (``benchmarks/compare.py`` measures both layouts: its ``[eager, NCHW]``
    row). The output stays channels-last, and so do the norms, neurons
    (:mod:`spikenorm.fused` included) and pools after it, so only a network's input is converted once.
    ``channels_last=True`` forces the layout on any device for 4-d inputs; the default leaves CUDA inputs
    as they are (not measured there), and so does it while ``torch.compile`` or ``torch.export`` traces the
    model (the compiler picks layouts itself; a layout conversion on a dynamic batch size fails to export).
    Values are the same up to the rounding order of the convolution's sums.
    """

    def __init__(self, module: nn.Module, channels_last: bool | None = None) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        check_time_major(x, f"TimeDistributed({type(self.module).__name__})")
        folded = x.flatten(0, 1)
        if folded.ndim == 4 and self._wants_channels_last(folded):
            folded = folded.contiguous(memory_format=torch.channels_last)
        return self.module(folded).unflatten(0, x.shape[:2])

    def _wants_channels_last(self, x: Tensor) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return isinstance(self.module, nn.Conv2d) and x.device.type == "cpu" and not torch.compiler.is_compiling()


class TraceSynapse(nn.Module, SequenceAware):
    """A synaptic layer whose weight gradient uses the presynaptic trace instead of the spikes.

    With spikes ``s_t`` entering the layer ``f(.; W)``, the trace is ``a_t = decay * sg(a_{t-1}) + s_t`` (the
    previous trace detached: online training) and, in training,

        ``y_t = f(s_t; sg(W)) + f(sg(a_t); W) - sg(f(sg(a_t); W))``

    whose value is exactly ``f(s_t; W)`` while ``dL/dW`` is that of ``f(a_t; W)``, i.e.
    ``sum_t dL_t/du_t a_t^T`` (OTTT's eligibility), and ``dL/ds_t`` is the usual ``W^T dL/dy_t``. In eval mode
    it is the plain layer. Inside a :func:`spikenorm.neurons.stateful` scope the trace carries over
    from one single-step call to the next; a multi-step call starts from a zero trace.

    Args:
        layer: the synaptic layer (a Linear, or a time-distributed conv) mapping ``[T, B, ...]`` inputs.
        decay: the trace decay, the neuron leak ``1 - 1/tau`` in OTTT.
    """

    def __init__(self, layer: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"trace decay must be in [0, 1], got {decay}")
        self.layer = layer
        self.decay = float(decay)
        self._carried: Tensor | None = None
        self._in_sequence = False

    def begin_sequence(self) -> None:
        self._carried, self._in_sequence = None, True

    def end_sequence(self) -> None:
        self._carried, self._in_sequence = None, False

    def forward(self, spikes: Tensor) -> Tensor:
        if not self.training:
            return self.layer(spikes)
        check_time_major(spikes, "TraceSynapse")
        with torch.no_grad():
            trace = self._carried
            traces = []
            for s_t in spikes.unbind(0):
                trace = s_t if trace is None else self.decay * trace + s_t
                traces.append(trace)
            if self._in_sequence:
                self._carried = trace
            traces_t = torch.stack(traces)
        frozen = {name: p.detach() for name, p in self.layer.named_parameters()}
        through_spikes = functional_call(self.layer, frozen, (spikes,))
        through_trace = self.layer(traces_t)
        return through_spikes + (through_trace - through_trace.detach())

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
