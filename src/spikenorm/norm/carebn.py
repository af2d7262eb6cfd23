"""CaRe-BN: confidence-adaptive BN statistics for spiking actors in online RL (Xu et al., ICLR 2026).

The layer itself is BN with statistics pooled over batch and time; what CaRe-BN changes is how the
inference statistics are estimated: the confidence-adaptive update here (Ca-BN) and periodic exact
re-calibration from the replay buffer (Re-BN, :func:`spikenorm.recalibrate.recalibrate_bn`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import torch
from torch import Tensor, nn

from spikenorm.norm.base import NORMS, FoldTarget, TimeMajorNorm
from spikenorm.norm.stats import batch_moments
from spikenorm.validation import check_choice

CaBNPrior = Literal["innovation", "debiased"]
"""The prior error variance of the Ca-BN gains: the innovation EMA (reference code) or its debiased estimate."""
CaBNNoise = Literal["batch", "prior"]
"""The variance the sampling noise of the Ca-BN gains is evaluated at: the batch's (reference code) or the prior's."""


@dataclass
class CaBNState:
    """Running estimates and innovation variances of the Ca-BN filter (per feature)."""

    mean: Tensor
    var: Tensor
    p_mean: Tensor
    p_var: Tensor


def ca_bn_update(
    state: CaBNState,
    batch_mean: Tensor,
    batch_var: Tensor,
    momentum: float = 0.8,
    sample_count: float = 255.0,
    prior: CaBNPrior = "innovation",
    noise: CaBNNoise = "batch",
) -> tuple[CaBNState, Tensor, Tensor]:
    """One confidence-adaptive update of the running statistics (Ca-BN, as in the reference code xuzijie32/CaRe-BN).

    A Kalman-style fusion of the prior estimate with the batch observation, per feature::

        d_mu = mu_b - mu_hat,   d_v = var_b - var_hat
        P_mu <- m P_mu + (1 - m) d_mu^2,   P_v <- m P_v + (1 - m) d_v^2          (innovation EMA, m = 0.8)
        K_mu = P_mu / (P_mu + s / N),       K_v = P_v / (P_v + 2 s^2 / N)
        mu_hat <- mu_hat + K_mu d_mu,       var_hat <- var_hat + K_v d_v

    ``s / N`` and ``2 s^2 / N`` are the Gaussian sampling variances ``R`` of the batch mean and variance;
    ``N`` is ``sample_count``: 255 in the reference code (batch 256 minus one, ignoring the T time steps
    pooled); pass the pooled count ``B * T`` for the textbook value. The gains lie in [0, 1].

    ``noise`` picks the variance ``s`` that ``R`` is evaluated at. ``"batch"`` (default, the reference
    code) uses the observed ``var_b``. Then the gain depends on the very observation it weighs: a batch
    whose variance happens to be low gets a smaller ``R_v`` and a larger ``K_v``, so ``var_hat`` is pulled
    down more often than up and is noisier. ``"prior"`` evaluates ``R`` at the prior estimate ``var_hat``,
    as an extended Kalman filter evaluates its noise model at the predicted state.

    ``prior="innovation"`` (default, the reference code) uses ``P`` as the prior error variance. But the
    innovation ``d`` contains the batch's own sampling noise, ``E[d^2] = P_prior + R``, so ``P`` is biased
    upward by ``R``, and the gain stays near 1/2 instead of falling to 0 when the statistics are stable (reviewers
    raised this): then ``E[d^2] = R + var(mu_hat) = 2 R / (2 - K)``, and ``K = P / (P + R)`` with ``P = E[d^2]``
    has the fixed point ``K = 2 - sqrt(2) ~ 0.59`` (the noise of the EMA of ``d^2`` lowers the mean gain a little).
    ``prior="debiased"`` uses the Kalman estimate ``P_prior = max(P - R, 0)``, so ``K -> 0`` when the statistics
    are stable and ``K -> 1`` under drift.

    ``prior="debiased", noise="prior"`` is the corrected filter (spikenorm's "Kalman" variant). How the variants
    track drifting statistics is measured by ``benchmarks/bn_tracking.py`` (``benchmarks/results/bn_tracking.md``).
    The defaults reproduce the reference code, whose numbers the paper reports.

    Returns:
        The new state and the gains ``(K_mu, K_v)``.
    """
    check_choice(prior, CaBNPrior, "prior")
    check_choice(noise, CaBNNoise, "noise")
    d_mean, d_var = batch_mean - state.mean, batch_var - state.var
    p_mean = momentum * state.p_mean + (1 - momentum) * d_mean**2
    p_var = momentum * state.p_var + (1 - momentum) * d_var**2
    s = batch_var if noise == "batch" else state.var
    noise_mean, noise_var = s / sample_count, 2 * s**2 / sample_count
    prior_mean, prior_var = p_mean, p_var
    if prior == "debiased":
        prior_mean, prior_var = (p_mean - noise_mean).clamp_min(0), (p_var - noise_var).clamp_min(0)
    tiny = torch.finfo(p_mean.dtype).tiny
    gain_mean = prior_mean / (prior_mean + noise_mean).clamp_min(tiny)
    gain_var = prior_var / (prior_var + noise_var).clamp_min(tiny)
    new = CaBNState(state.mean + gain_mean * d_mean, state.var + gain_var * d_var, p_mean, p_var)
    return new, gain_mean, gain_var


@NORMS.register("carebn")
class CaReBN(TimeMajorNorm):
    """BN pooled over batch and time whose running statistics follow the Ca-BN filter.

    Training forward: ``y = gamma (x - mu_b) / sqrt(var_b + eps) + beta`` with ``mu_b, var_b`` the mean and
    biased variance pooled over all ``(t, b)`` (and spatial) samples, gradients through them as in BN.
    Inside :func:`ca_bn_updates` (the TD3 task enters it for the actor-loss forward only, as the reference
    code does) each training forward then applies :func:`ca_bn_update`; any other training forward leaves
    the running statistics alone. Inference (eval mode: exploration, evaluation, the target actor):
    ``gamma (x - mu_hat) / sqrt(var_hat + eps) + beta``, which folds into the preceding linear layer.

    Mixed precision: for a half-precision input (a bfloat16 linear output under ``torch.autocast``) the batch
    statistics, the Ca-BN filter state (``running_*``, ``p_*``) and the gains are float32, the output has the
    input's dtype (:mod:`spikenorm.norm.base`).

    ``gamma`` and ``beta`` start at ``v_th / 2`` (0.25 for the reference threshold 0.5), so the initial
    output is about N(0.25, 0.25^2). Initial state ``mu_hat = 0``, ``var_hat = 1``, ``P = 0``.

    Discrete control (the DSQN code of the reference, ``discrete_control/dsqn_carebn.py``, used by
    :class:`~spikenorm.models.SpikingQNetwork`): same filter, same constant 255 (although its batch is 128),
    same noise at the batch variance, P updated before the gains; the update happens in the online Q-network's
    loss forward on the sampled current states, once per gradient step. The defaults reproduce it (checked in
    float64 over successive updates by ``tests/test_q_networks.py``), so no separate option is needed. The one
    difference: the reference divides ``P / (P + R)`` unguarded, so a feature with zero batch variance and zero
    innovation gets a NaN gain there and a gain of 0 here.

    Args:
        innovation_momentum: ``m`` of the innovation EMA (0.8 in the reference code).
        sample_count: ``N`` of the gains; ``None`` uses the pooled sample count of each batch (``B T``).
        prior: ``"innovation"`` (the reference code) or ``"debiased"`` (see :func:`ca_bn_update`).
        noise: ``"batch"`` (the reference code) or ``"prior"``: the variance the sampling noise ``R`` of the
            gains is evaluated at (see :func:`ca_bn_update`).
        v_th: threshold of the following neuron, for the initial ``gamma = beta = v_th / 2``.
    """

    fold_target: ClassVar[FoldTarget] = "weights"
    running_var_unbiased: ClassVar[bool] = False

    def __init__(
        self,
        num_features: int,
        innovation_momentum: float = 0.8,
        sample_count: float | None = 255.0,
        prior: CaBNPrior = "innovation",
        noise: CaBNNoise = "batch",
        v_th: float = 0.5,
        **kwargs: object,
    ) -> None:
        super().__init__(num_features, **kwargs)
        if not 0.0 <= innovation_momentum < 1.0:
            raise ValueError(f"innovation_momentum must be in [0, 1), got {innovation_momentum}")
        if sample_count is not None and sample_count <= 0:
            raise ValueError(f"sample_count must be > 0 or None, got {sample_count}")
        self.innovation_momentum = innovation_momentum
        self.sample_count = sample_count
        self.prior = check_choice(prior, CaBNPrior, "prior")
        self.noise = check_choice(noise, CaBNNoise, "noise")
        if self.affine:
            with torch.no_grad():
                self.weight.fill_(v_th / 2)
                self.bias.fill_(v_th / 2)
        self.register_buffer("p_mean", torch.zeros(self.feature_shape))
        self.register_buffer("p_var", torch.zeros(self.feature_shape))
        self.updates_enabled = False
        self.last_gains: tuple[Tensor, Tensor] | None = None

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var, count = batch_moments(x, self.reduce_dims(x, over_time=True))
        if self.updates_enabled:
            self.apply_ca_bn(mean.detach(), var.detach(), count)
        return mean, var

    @torch.no_grad()
    def apply_ca_bn(self, batch_mean: Tensor, batch_var: Tensor, count: int) -> None:
        """One Ca-BN update of the running statistics with a batch's pooled mean and biased variance."""
        state = CaBNState(self.running_mean, self.running_var, self.p_mean, self.p_var)
        n = float(count) if self.sample_count is None else self.sample_count
        new, gain_mean, gain_var = ca_bn_update(
            state, batch_mean, batch_var, self.innovation_momentum, n, self.prior, self.noise
        )
        self.running_mean.copy_(new.mean)
        self.running_var.copy_(new.var)
        self.p_mean.copy_(new.p_mean)
        self.p_var.copy_(new.p_var)
        self.num_batches_tracked += 1
        self.last_gains = (gain_mean, gain_var)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", innovation_momentum={self.innovation_momentum}, sample_count={self.sample_count}, prior={self.prior!r}"
            f", noise={self.noise!r}"
        )


@contextlib.contextmanager
def ca_bn_updates(model: nn.Module) -> Iterator[nn.Module]:
    """Scope in which training-mode forwards of every CaReBN layer in ``model`` apply the Ca-BN update."""
    layers = [m for m in model.modules() if isinstance(m, CaReBN)]
    for layer in layers:
        layer.updates_enabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.updates_enabled = False
