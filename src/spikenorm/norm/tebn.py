"""Temporal Effective Batch Normalization (TEBN; Duan et al., "Temporal Effective Batch Normalization in Spiking
Neural Networks", NeurIPS 2022)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from spikenorm.norm.base import NORMS, FoldTarget, StepIndexedNorm
from spikenorm.norm.batchnorm import channelwise_single_process, pooled_batch_statistics
from spikenorm.precision import accumulation_dtype


@NORMS.register("tebn")
class TEBN(StepIndexedNorm):
    """Statistics pooled over time and batch, as tdBN, and a learnable scale per time step after the affine map.

    Training, for ``x`` of shape ``[T, B, C, *spatial]``, with ``mu, var`` the mean and biased variance of each
    channel pooled over ``(T, B, *spatial)``::

        x_hat_t = (x_t - mu) / sqrt(var + eps)
        y_t = scale_t (gamma x_hat_t + beta)

    ``gamma, beta`` (``[C]``, init 1 / 0) are shared by all steps; ``scale`` (``[T]``, init 1) holds one scalar per
    step, shared by all channels. Gradients flow through ``mu, var`` as in BN. Running statistics (``[C]``): one
    EMA update per forward, ``mu_hat <- (1 - m) mu_hat + m mu`` and ``var_hat <- (1 - m) var_hat + m var n/(n-1)``
    with ``n = T B prod(spatial)`` (torch convention, ``m = 0.1``, ``eps = 1e-5``). Under DDP the statistics pool
    every process's batch (:func:`~spikenorm.norm.stats.batch_moments`).

    Inference: ``y_t = scale_t (gamma (x_t - mu_hat) / sqrt(var_hat + eps) + beta)``. Each step has its own factor
    ``scale_t``, so no shared weights absorb the map: ``fold_target`` is ``"unfoldable"``.

    Reference code: ChaotengDuan/TEBN (``models.py``, class ``TEBN``): one ``BatchNorm3d`` over the time-stacked
    input, times ``p`` of shape ``[T, 1, 1, 1, 1]``; SpikingJelly 2.0's ``TemporalEffectiveBatchNorm2d`` does the
    same (``scale`` of shape ``[T]``). Notes on paper and code:

    * the scale comes after the affine map, so it also multiplies ``beta`` (per-step affine ``scale_t gamma``,
      ``scale_t beta``); both implementations hold one scalar per step, not one per step and channel;
    * the reference code hard-codes ``T = 4`` and broadcasts a 1-step input to 4 outputs; here the input must have
      ``T = time_steps`` steps (a ValueError otherwise);
    * SpikingJelly's older single-step TEBN always used ``scale[0]`` (its step counter never advanced); here, in
      eval mode inside a :func:`spikenorm.neurons.stateful` scope, the call covering step ``t`` uses ``scale_t``.

    Online (single-step) training is refused with a ValueError: every step is normalised with statistics pooled
    over all ``T`` steps of the batch, which a call that sees one step cannot have (``tab``'s accumulated
    statistics are causal and train online).

    Args:
        time_steps: ``T``; inputs must have exactly this many steps (or be consecutive steps of a ``stateful``
            scope in eval mode); None: given later by the task.
        **kwargs: ``eps`` (1e-5), ``momentum`` (0.1) and ``affine`` (True: learn
            ``gamma, beta``; ``scale`` is always learnt) of :class:`~spikenorm.norm.base.TimeMajorNorm`.
    """

    fold_target: ClassVar[FoldTarget] = "unfoldable"
    unfoldable_reason: ClassVar[str] = (
        "its inference map y_t = scale_t (gamma x_hat_t + beta) multiplies each time step t by its own learnt "
        "scale_t, so no shared weights can absorb it"
    )

    def __init__(self, num_features: int, time_steps: int | None = None, **kwargs: object) -> None:
        super().__init__(num_features, time_steps, **kwargs)
        self.register_step_parameter("scale", fill=1.0)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        if self.training and self.in_sequence and x.shape[0] != self.time_steps:
            raise ValueError(
                f"TEBN normalises every step with statistics pooled over all T={self.time_steps} steps of the "
                f"batch, which an online training call cannot see (got {x.shape[0]} step(s) at step "
                f"{self.first_step()} of a stateful sequence, shape {tuple(x.shape)}). Train TEBN multi-step "
                "(BPTT), or use norm='tab', whose accumulated statistics are causal; in eval mode TEBN runs step "
                "by step"
            )

    def uses_torch_batch_norm(self, x: Tensor) -> bool:
        """Channel-wise, one process, and a full-precision ``x``: the statistics are torch's batch norm of ``x``
        with time folded into the batch, and the scale is one more multiply (a half-precision ``x`` takes the
        reference path, so the output is rounded to its dtype once, not twice)."""
        return channelwise_single_process(self) and accumulation_dtype(x.dtype) == x.dtype

    def torch_batch_norm(self, x: Tensor) -> Tensor:
        return super().torch_batch_norm(x) * self.step_view(self.scale, x)

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return pooled_batch_statistics(self, x)

    def affine_transform(self, x_hat: Tensor) -> Tensor:
        """``scale_t (gamma x_hat_t + beta)`` for the steps of ``x_hat``."""
        return super().affine_transform(x_hat) * self.step_view(self.scale, x_hat)
