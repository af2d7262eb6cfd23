"""Membrane Potential Batch Normalization (MPBN; Guo et al., ICCV 2023, arXiv 2308.08359)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from spikenorm.norm.base import NORMS, FoldTarget
from spikenorm.norm.batchnorm import VanillaBN


@NORMS.register("mpbn")
class MPBN(VanillaBN):
    """BN on the membrane potential just before the spike comparison, folded into the threshold.

    Plug it into a neuron as its ``membrane_norm`` (models do this with ``membrane_norm="mpbn"``). At step
    ``t`` the neuron charges ``m_t = decay * m_{t-1}' + x_t``, normalises
    ``u_t = gamma (m_t - mu_t) / sqrt(var_t + eps) + beta`` and fires ``s_t = 1[u_t > theta]``; leak and
    reset act on the un-normalised ``m_t`` (as in the reference code), which is what makes the fold exact.

    Training (as the reference code ``yfguo91/MPBN``): per-step batch statistics ``mu_t, var_t``; one
    ``gamma``, ``beta`` and one running estimate shared by all steps. The neuron calls the layer once per
    step, so the running estimate receives ``T`` EMA updates per forward (momentum 0.1, eps 1e-5): ``bn``'s
    ``running_update="per_call"``; ``"per_batch"`` is refused, as no sequence around the neuron's calls commits it.
    Inference: running statistics; :func:`spikenorm.fold.fold_model` then replaces the layer by the
    threshold ``theta' = mu + (theta - beta) sqrt(var + eps) / gamma`` (sign-flipped where gamma < 0).

    Mixed precision: a neuron keeps its membrane in float32 for a half-precision input
    (:class:`~spikenorm.neurons.SpikingNeuron`), so this layer normalises a float32 membrane with float32
    statistics, and the spike decision is the one float32 arithmetic gives.

    Args:
        num_features: channels ``C``.
        feature_shape: ``None`` or ``(C,)`` for channel-wise statistics (over batch and space, the
            reference code); ``(C, H, W)`` for element-wise statistics (one per neuron, over the batch: the
            paper's variant, which post-conv BN cannot express).
    """

    fold_target: ClassVar[FoldTarget] = "threshold"

    def __init__(self, num_features: int, feature_shape: Sequence[int] | None = None, **kwargs: object) -> None:
        if kwargs.get("running_update", "per_call") != "per_call":
            raise ValueError(
                f"mpbn updates its running statistics once per neuron step (running_update='per_call'), got "
                f"running_update={kwargs['running_update']!r}: the neuron calls the layer once per step, outside the "
                "sequence that 'per_batch' commits at"
            )
        super().__init__(num_features, feature_shape=None if feature_shape is None else tuple(feature_shape), **kwargs)

    @property
    def elementwise(self) -> bool:
        """True when the statistics are per neuron (``feature_shape`` beyond the channel axis)."""
        return len(self.feature_shape) > 1
