r"""The linear charge of a spiking neuron, declared as data: one law read by the eager loop, the fused kernel
generator and the NIR exporter.

A neuron whose charge is linear in its state and input declares it as a :class:`LinearCharge` from
:meth:`spikenorm.neurons.SpikingNeuron.linear_charge`. With input scale ``s``, membrane decay ``b`` and the
decays ``a_1 .. a_K`` of ``K`` current (synaptic) stages, one step ``t`` reads::

    i_t   = s x_t                                  (the input current)
    c1_t  = a_1 c1_{t-1} + i_t                     (stage 1; K = 0: no stage)
    ck_t  = a_k ck_{t-1} + c(k-1)_t                (stage k = 2 .. K, each fed by the one before)
    h_t   = b v_{t-1} + cK_t                       (cK_t := i_t when K = 0)

from zero state (``v_0 = c_0 = 0``); ``h_t`` is the membrane before firing (fire and reset are the neuron's,
:mod:`spikenorm.neurons`). IF is ``b = 1``, LIF ``b = decay``, the current-based LIF (CLIF) ``b = decay`` with
one stage ``a_1 = current_decay``; SpikingJelly's ``LIFNode(decay_input=True)`` is ``s = 1 - b``.

:meth:`LinearCharge.charge` computes a step with exactly these floating-point operations in this order, and
:mod:`spikenorm.fused` writes its kernels from the same numbers in the same order, which is why the fused
spikes are bit-identical to the eager loop's. Multiplications by exactly 1.0 (``s = 1``, ``b = 1``, ``a_k = 1``)
are left out by both; they would not change a value.

This module imports nothing from spikenorm, so both :mod:`spikenorm.neurons` and its consumers can import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from spikenorm.extras import needs_extra

if TYPE_CHECKING:
    import nir
    import numpy as np

__all__ = ["LinearCharge"]


@dataclass(frozen=True, slots=True)
class LinearCharge:
    """``h_t = b v_{t-1} + cK_t`` with ``K`` current stages fed by ``s x_t`` (the module docstring's equations).

    Args:
        decay: the membrane decay ``b`` (1: no leak, an integrator).
        input_scale: the gain ``s`` on the input ``x_t``.
        current_decays: ``(a_1, ..., a_K)``, the decays of the current stages, input side first (empty: the
            input charges the membrane directly).

    Frozen and hashable: the fused kernels are cached per value.
    """

    decay: float
    input_scale: float = 1.0
    current_decays: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        decay, scale, stages = float(self.decay), float(self.input_scale), tuple(map(float, self.current_decays))
        if not (math.isfinite(decay) and math.isfinite(scale) and all(map(math.isfinite, stages))):
            raise ValueError(
                f"LinearCharge needs finite numbers, got decay={self.decay}, input_scale="
                f"{self.input_scale}, current_decays={self.current_decays}"
            )
        object.__setattr__(self, "decay", decay)
        object.__setattr__(self, "input_scale", scale)
        object.__setattr__(self, "current_decays", stages)

    def charge(self, x: Tensor, v: Tensor, currents: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One step: the membrane ``h_t`` and the new currents ``(c1_t, ..., cK_t)`` from ``x_t``, ``v_{t-1}`` and
        ``(c1_{t-1}, ..., cK_{t-1})``."""
        if len(currents) != len(self.current_decays):
            raise ValueError(
                f"LinearCharge with {len(self.current_decays)} current stages got {len(currents)} current states"
            )
        current = x if self.input_scale == 1.0 else self.input_scale * x
        updated = []
        for a, previous in zip(self.current_decays, currents):
            current = (previous if a == 1.0 else a * previous) + current
            updated.append(current)
        h = (v if self.decay == 1.0 else self.decay * v) + current
        return h, tuple(updated)

    def nir_node(
        self, threshold: np.ndarray, reset_value: np.ndarray, dt: float, metadata: dict[str, Any], owner: str
    ) -> nir.NIRNode:
        """The NIR node whose forward-Euler step of length ``dt`` is this charge (``v_leak = 0``):

        * ``K = 0``, ``b = 1``: ``IF`` (``dv/dt = R I``), ``r = s/dt``;
        * ``K = 0``, ``b < 1``: ``LIF`` (``tau dv/dt = -v + R I``), ``tau = dt/(1 - b)``, ``r = s tau/dt``;
        * ``K = 1``: ``CubaLIF`` (``tau_syn dI/dt = -I + w_in S``, ``tau_mem dv/dt = -v + R I``),
          ``tau_syn = dt/(1 - a_1)``, ``w_in = s tau_syn/dt``, ``tau_mem = dt/(1 - b)``, ``r = tau_mem/dt``.

        The Euler step of ``tau dv/dt = -v + R I`` is ``v_t = (1 - dt/tau) v_{t-1} + (dt R/tau) I_t``: decay
        ``1 - dt/tau``, input gain ``dt R/tau``. ``threshold`` and ``reset_value`` are arrays of the per-sample
        feature shape; ``owner`` (the neuron's class name) names the neuron in errors.

        Raises:
            ValueError: more than one current stage, ``b > 1``, or a leak-free CubaLIF (``a_1 = 1`` or
                ``b = 1``: an infinite time constant); override the neuron's ``nir_node`` for these.
        """
        import numpy as np

        with needs_extra("export", f"{owner}.nir_node"):
            import nir

        def full(value: float) -> np.ndarray:
            return np.full(threshold.shape, value, dtype=np.float64)

        b, s = self.decay, self.input_scale
        common = {"v_threshold": threshold, "v_reset": reset_value, "metadata": metadata}
        if len(self.current_decays) > 1:
            raise ValueError(
                f"{owner} declares no NIR mapping for {len(self.current_decays)} current stages (NIR's "
                f"IF/LIF/CubaLIF hold at most one); override {owner}.nir_node"
            )
        if self.current_decays:
            a = self.current_decays[0]
            if b >= 1 or a >= 1:
                raise ValueError(
                    f"a {owner} without leak (decay={b}, current_decay={a}) needs an infinite NIR time constant"
                )
            tau_mem, tau_syn = dt / (1 - b), dt / (1 - a)
            return nir.CubaLIF(
                tau_syn=full(tau_syn),
                tau_mem=full(tau_mem),
                r=full(tau_mem / dt),
                v_leak=full(0.0),
                w_in=full(s * tau_syn / dt),
                **common,
            )
        if b < 1:
            tau = dt / (1 - b)
            return nir.LIF(tau=full(tau), r=full(s * tau / dt), v_leak=full(0.0), **common)
        if b == 1:
            return nir.IF(r=full(s / dt), **common)
        raise ValueError(
            f"{owner} has decay {b} > 1 (a growing membrane), which no NIR neuron expresses; override {owner}.nir_node"
        )
