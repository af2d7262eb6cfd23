"""Temporal Accumulated Batch Normalization (TAB; Jiang et al., "TAB: Temporal Accumulated Batch Normalization in
Spiking Neural Networks", ICLR 2024)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from spikenorm.norm.base import NORMS, FoldTarget, StepIndexedNorm
from spikenorm.norm.batchnorm import require_two_values_per_step
from spikenorm.norm.stats import batch_moments


def accumulate_over_steps(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Accumulated statistics of steps ``0..t`` for every ``t``, from per-step moments over equal sample counts.

    Given the mean ``mu_s`` and biased variance ``var_s`` of each step ``s`` (``[T, *features]``, every step
    pooling the same number of samples), returns the mean and biased variance of all samples of steps ``0..t``::

        mu_<=t  = mean_{s<=t} mu_s
        var_<=t = mean_{s<=t} var_s + mean_{s<=t} (mu_s - mu_<=t)^2

    (within-step plus between-step spread). The step means are taken relative to ``mu_0`` and the between-step
    sum of squares is updated step by step with Welford's recurrence ``D_t = D_{t-1} + (mu_t - mu_<=t-1)(mu_t -
    mu_<=t)``, which avoids the cancellation of ``E[x^2] - E[x]^2`` (in float32 the result is as accurate as the
    per-step moments it is given): ``O(T)`` operations on per-feature tensors, differentiable.
    """
    centred = mean - mean[0]
    means, spreads = [centred[0]], [torch.zeros_like(centred[0])]
    for t in range(1, mean.shape[0]):
        delta = centred[t] - means[-1]
        means.append(means[-1] + delta / (t + 1))
        spreads.append(spreads[-1] + delta * (centred[t] - means[-1]))
    steps = torch.arange(1, mean.shape[0] + 1, dtype=var.dtype, device=var.device)
    steps = steps.reshape(-1, *([1] * (var.ndim - 1)))
    return mean[0] + torch.stack(means), (var.cumsum(0) + torch.stack(spreads)) / steps


def unbiased_accumulated(var: Tensor, count: int) -> Tensor:
    """Bessel-correct accumulated biased variances ``[k, *features]`` whose row ``t`` pools the ``n_t = (t + 1) count``
    samples of steps ``0..t``: ``var_t n_t / (n_t - 1)`` (the running-variance convention of torch BN, as
    :func:`~spikenorm.norm.stats.unbiased` for one pool)."""
    n = count * torch.arange(1, var.shape[0] + 1, dtype=var.dtype, device=var.device)
    n = n.reshape(-1, *([1] * (var.ndim - 1)))
    return var * n / (n - 1).clamp_min(1)


@NORMS.register("tab")
class TAB(StepIndexedNorm):
    """Step ``t`` normalised with the statistics accumulated over steps ``0..t``, then a per-step affine map.

    Training, for ``x`` of shape ``[T, B, C, *spatial]``, with ``mu_<=t, var_<=t`` the mean and biased variance of
    each channel pooled over ``(steps 0..t, B, *spatial)`` (:func:`accumulate_over_steps`; the variance includes the
    spread between the steps' means)::

        x_hat_t = (x_t - mu_<=t) / sqrt(var_<=t + eps)
        y_t = p_t^2 (gamma_t x_hat_t + beta_t)

    ``gamma, beta``: ``[T, C]`` (init 1 / 0); ``p``: ``[T]`` (init 1), one scalar per step shared by all channels,
    used squared. Gradients flow into ``x_0..x_t`` through ``mu_<=t, var_<=t``. Running statistics ``[T, C]``: per
    step, the accumulated ones, one EMA update per forward, ``mu_hat_t <- (1 - m) mu_hat_t + m mu_<=t`` and
    ``var_hat_t <- (1 - m) var_hat_t + m var_<=t n_t/(n_t - 1)`` with ``n_t = (t + 1) B prod(spatial)`` (torch
    convention, ``m = 0.1``, ``eps = 1e-5``). Under DDP the per-step moments pool every process's batch
    (:func:`~spikenorm.norm.stats.batch_moments`), so the accumulated ones do too.

    Inference: ``y_t = p_t^2 (gamma_t (x_t - mu_hat_t) / sqrt(var_hat_t + eps) + beta_t)``: a different map per
    step, so ``fold_target`` is ``"unfoldable"``.

    Reference code: HaiyanJiang/SNN-TAB (``models.py``, ``TAB_Layer``): ``T`` separate ``BatchNorm3d`` layers, the
    ``t``-th applied to the window ``x[:, 0:t+1]`` (``O(T^2)`` work; here ``O(T)`` from per-step moments, the same
    values), keeping slice ``t``, times ``p_t^2`` (``_prob_check`` squares ``p``; a comment in the code shows that
    ``p`` itself was used before). The abstract's "temporal accumulated statistics" are this window. The paper's
    symbol and shape for ``p_t^2`` could not be checked against its text; the code's is followed. The input must
    have ``T = time_steps`` steps, as the code asserts.

    Online (single-step) mode: the statistics are causal, so inside a :func:`spikenorm.neurons.stateful` scope the
    layer may be called one step at a time. It keeps the earlier steps' per-step moments, detached, normalises
    ``x_t`` with the accumulated statistics of steps ``0..t`` (the same values as the multi-step forward) and makes
    the running update when the scope closes (only for the steps it saw). The online gradient of ``x_t`` omits
    the earlier steps' contribution through ``mu_<=t, var_<=t``, as online training cuts every gradient path
    across steps (the membrane is detached too).

    A training forward needs more than one value per channel at step 0 (``B prod(spatial) > 1``, summed over
    processes): step 0's statistics pool that step alone (a ValueError otherwise).

    Args:
        time_steps: ``T``; inputs must have exactly this many steps (or be consecutive steps of a ``stateful``
            scope); None: given later by the task.
        **kwargs: ``eps`` (1e-5), ``momentum`` (0.1) and ``affine`` (True: learn
            ``gamma_t, beta_t``; ``p`` is always learnt) of :class:`~spikenorm.norm.base.TimeMajorNorm`.
    """

    fold_target: ClassVar[FoldTarget] = "unfoldable"
    unfoldable_reason: ClassVar[str] = (
        "step t is normalised with its own accumulated running statistics (steps 0..t) and its own gamma_t, "
        "beta_t and p_t^2, so no shared weights can absorb it"
    )
    accumulates_over_time: ClassVar[bool] = True
    per_step_statistics: ClassVar[bool] = True

    def __init__(self, num_features: int, time_steps: int | None = None, **kwargs: object) -> None:
        super().__init__(num_features, time_steps, **kwargs)
        self.register_step_parameter("p", fill=1.0)
        self._earlier: tuple[Tensor, Tensor, int] | None = None  # per-step moments (detached) and count so far

    # -- sequence protocol ------------------------------------------------------------------------------
    def begin_sequence(self) -> None:
        super().begin_sequence()
        self._earlier = None

    def end_sequence(self) -> None:
        if self._earlier is not None:
            mean_t, var_t, count = self._earlier
            self.update_accumulated(*accumulate_over_steps(mean_t, var_t), count)
        self._earlier = None
        super().end_sequence()

    def abort_sequence(self) -> None:
        self._earlier = None
        super().abort_sequence()

    # -- statistics -------------------------------------------------------------------------------------
    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The accumulated statistics ``[T', C]`` of the steps of ``x`` (with the earlier steps of the sequence)."""
        mean_t, var_t, count = batch_moments(x, self.reduce_dims(x, over_time=False))  # [T', C] each
        require_two_values_per_step(count, x, "TAB", self.feature_shape)
        if not self.in_sequence:
            mean, var = accumulate_over_steps(mean_t, var_t)
            self.update_accumulated(mean.detach(), var.detach(), count)
            return mean, var
        if self._earlier is not None:
            earlier_mean, earlier_var, earlier_count = self._earlier
            if earlier_count != count:
                raise ValueError(
                    f"TAB accumulates statistics over the steps of one batch, but this step pools {count} values "
                    f"per channel and the earlier steps of the sequence {earlier_count} (shape {tuple(x.shape)})"
                )
            mean_t, var_t = torch.cat([earlier_mean, mean_t]), torch.cat([earlier_var, var_t])
        self._earlier = (mean_t.detach(), var_t.detach(), count)
        mean, var = accumulate_over_steps(mean_t, var_t)
        steps = x.shape[0]
        return mean[-steps:], var[-steps:]

    def running_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.step_rows(self.running_mean, x), self.step_rows(self.running_var, x)

    @torch.no_grad()
    def update_accumulated(self, mean: Tensor, var: Tensor, count: int) -> None:
        """EMA update of the first ``k`` rows of the running statistics with accumulated statistics ``[k, C]``
        (biased ``var``, Bessel-corrected by :func:`unbiased_accumulated`)."""
        k = mean.shape[0]
        self.running_mean[:k].lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_var[:k].lerp_(unbiased_accumulated(var, count).to(self.running_var.dtype), self.momentum)
        self.num_batches_tracked += 1

    def affine_transform(self, x_hat: Tensor) -> Tensor:
        """``p_t^2 (gamma_t x_hat_t + beta_t)`` for the steps of ``x_hat``."""
        y = x_hat
        if self.affine:
            weight, bias = self.step_rows(self.weight, x_hat), self.step_rows(self.bias, x_hat)
            y = x_hat * self.feature_view(weight, x_hat) + self.feature_view(bias, x_hat)
        return y * self.step_view(self.p, x_hat).square()
