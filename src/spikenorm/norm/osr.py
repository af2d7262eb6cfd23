"""Online Spiking Renormalization (OSR; Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR 2024).

"The reference code" below is the authors' release, github.com/zhuyaoyu/SNN-online-normalization.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from spikenorm.norm.base import NORMS, FoldTarget, TimeMajorNorm
from spikenorm.norm.sequence_update import PerSequenceRunningUpdate
from spikenorm.norm.stats import batch_moments
from spikenorm.validation import check_choice

GammaGrad = Literal["paper", "code"]
"""The gradient of gamma: the paper's Eq. 11 or the reference code's (without the ratio ``r``); see :class:`OSR`."""
FallbackGrad = Literal["exact", "code"]
"""The gradient on a fallback step: plain BN's or the reference code's renormalised one; see :class:`OSR`."""


@NORMS.register("osr")
class OSR(TimeMajorNorm, PerSequenceRunningUpdate):
    """Batch renormalization per time step: the same statistics in training and test.

    Forward, in training and inference alike (Zhu et al., ICLR 2024; its Eqs. 10-12 give the gradients), with
    running ``mu_hat, var_hat``:
    ``y = gamma (x - mu_hat) / sqrt(var_hat + eps) + beta``. In training the value is computed exactly so
    (bit-identical to eval mode) while the gradient is that of the paper's stop-gradient form, with
    ``mu_t, var_t`` the batch statistics of step ``t``::

        x_hat = (x - mu_t) / sqrt(var_t + eps)
        r = sg(sqrt(var_t + eps) / sqrt(var_hat + eps)),   d = sg((mu_t - mu_hat) / sqrt(var_hat + eps))
        y = gamma (x_hat r + d) + beta

    so ``dL/dx = BN-backward(dL/dy gamma r)`` through ``(mu_t, var_t)`` (Eq. 10), ``dL/dbeta = sum dL/dy``
    (Eq. 12) and ``dL/dgamma = sum dL/dy (x_hat r + d)`` (Eq. 11, ``gamma_grad="paper"``). The reference
    code omits ``r`` in the gamma gradient: ``gamma_grad="code"`` gives ``sum dL/dy (x_hat + d)``. The paper's
    form is the default because it is the true gradient of the forward written above.

    Running statistics ("all-time", Eq. 15): over the ``T`` steps of a sequence the layer accumulates
    ``S_mu = mean_t mu_t`` and ``S_v = mean_t (var_t + mu_t^2)`` (float64), so ``S_v - S_mu^2`` is the biased
    variance pooled over all ``T B H W`` samples; at the end of the sequence one EMA update
    ``mu_hat <- mu_hat + m (S_mu - mu_hat)``, ``var_hat <- var_hat + m (S_v - S_mu^2 - var_hat)`` (``m`` = 0.1).
    A multi-step (BPTT) forward is one sequence; in online training the sequence is the
    :func:`spikenorm.neurons.stateful` scope, and the update happens when it closes (at ``t = T``, as in the
    paper; the reference code applies it lazily at the next batch's first step).

    Safeguard (reference code only, not in the paper): when ``max(sigma_t / sigma_hat, sigma_hat / sigma_t)``
    exceeds ``fallback_ratio`` for any channel at step ``t`` (typically right after initialisation, where
    ``mu_hat = 0, var_hat = 1``), that step is normalised with its batch statistics instead:
    ``y_t = gamma x_hat_t + beta``. The code uses 20 for static data and 50 for DVS; ``None`` disables it.
    The gradient on such a step is a choice (``fallback_grad``):

    * ``"exact"`` (default): plain batch norm's gradient, the true gradient of the forward actually used
      (``r = 1, d = 0`` on that step): ``dL/dx = (gamma / sigma_t) (g - mean g - x_hat mean(g x_hat))`` with
      ``g = dL/dy`` and means over ``(B, *spatial)``, ``dL/dgamma = sum g x_hat``;
    * ``"code"``: the reference code's gradient, which keeps the renormalised form on fallback steps (it saves
      no fallback flag for its backward): ``dL/dx = (gamma / sigma_hat) (g - mean g - x_hat mean(g x_hat))``,
      i.e. ``r`` times the exact one, and ``dL/dgamma`` with the ``d`` term (``sum g (x_hat + d)`` with
      ``gamma_grad="code"``, ``sum g (x_hat r + d)`` with ``"paper"``).

    ``"exact"`` is the default because it is the gradient of the function computed; choose ``"code"`` (with
    ``gamma_grad="code"``) to train as the reference code does.

    Inference is a fixed affine map per channel, so ``fold_model`` folds it into the preceding weights.

    Args:
        eps: 1e-4 as in the reference code's configuration.
        momentum: 0.1 (the paper's EMA factor 0.9).
        fallback_ratio: threshold of the safeguard, or None.
        gamma_grad: ``"paper"`` (Eq. 11) or ``"code"`` (without the ratio ``r``).
        fallback_grad: ``"exact"`` (plain BN gradient on fallback steps) or ``"code"`` (the renormalised
            gradient, as the reference code).
    """

    fold_target: ClassVar[FoldTarget] = "weights"
    running_var_unbiased: ClassVar[bool] = False  # the paper's all-time variance is the pooled biased one

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-4,
        momentum: float = 0.1,
        fallback_ratio: float | None = 20.0,
        gamma_grad: GammaGrad = "paper",
        fallback_grad: FallbackGrad = "exact",
        **kwargs: object,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        check_choice(gamma_grad, GammaGrad, "gamma_grad")
        check_choice(fallback_grad, FallbackGrad, "fallback_grad")
        if fallback_ratio is not None and fallback_ratio <= 1:
            raise ValueError(f"fallback_ratio must be > 1 or None, got {fallback_ratio}")
        self.fallback_ratio = fallback_ratio
        self.gamma_grad = gamma_grad
        self.fallback_grad = fallback_grad
        self.init_sequence_state()

    def sequence_statistics(self) -> tuple[Tensor, Tensor]:
        """The all-time statistics ``(S_mu, S_v - S_mu^2)`` (Eq. 15) of the steps accumulated so far in this
        sequence (float64): the mean and biased variance pooled over all its samples."""
        return self.sequence_moments.mean(), self.sequence_moments.pooled_variance()

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The renormalised ``x`` in the dtype of ``x``; statistics and arithmetic in float32 for a half-precision
        ``x`` (:mod:`spikenorm.norm.base`: mixed precision), the all-time sums in float64."""
        self.check_input(x)
        if not self.training:
            return super().forward(x)
        return self._renormalize(x).to(x.dtype)

    def _renormalize(self, x: Tensor) -> Tensor:
        """The training forward of the class docstring (value of the eval map, gradient of the renormalisation)."""
        mean_t, var_t, _ = batch_moments(x, self.reduce_dims(x, over_time=False))  # [T', C]
        self.accumulate(mean_t, var_t)
        running_std = torch.sqrt(self.running_var + self.eps)
        batch_std = torch.sqrt(var_t + self.eps)
        x_hat = (x - self.feature_view(mean_t, x)) / self.feature_view(batch_std, x)
        r = (batch_std / running_std).detach()
        d = ((mean_t - self.running_mean) / running_std).detach()
        exact = self.normalize(x, self.running_mean, self.running_var)  # the eval transform's value
        if self.fallback_ratio is not None:
            fallback = (torch.maximum(r, 1 / r) > self.fallback_ratio).any(dim=1)  # per step [T']
            if self.fallback_grad == "exact":  # plain BN's gradient; "code" keeps the renormalised one
                r = torch.where(fallback[:, None], torch.ones_like(r), r)
                d = torch.where(fallback[:, None], torch.zeros_like(d), d)
            step_view = fallback.reshape(-1, *([1] * (x.ndim - 1)))
            exact = torch.where(step_view, x_hat, exact)
        renormalized = x_hat * self.feature_view(r, x) + self.feature_view(d, x)
        z = exact.detach() + (renormalized - renormalized.detach())  # value: exact; gradient: renormalized
        self.commit_unless_in_sequence()
        if not self.affine:
            return z
        if self.gamma_grad == "paper" and self.fallback_grad == "exact":
            return self.affine_transform(z)  # dL/dgamma = sum dL/dy z: Eq. 11, and plain BN's on fallback steps
        # dL/dgamma = sum dL/dy (x_hat r + d) (paper) or (x_hat + d) (code), r and d kept on fallback steps
        gamma_factor = renormalized if self.gamma_grad == "paper" else x_hat + self.feature_view(d, x)
        weight = self.feature_view(self.weight, x)
        gamma_term = (weight - weight.detach()) * gamma_factor.detach()  # value 0, gradient gamma_factor
        return z * weight.detach() + gamma_term + self.feature_view(self.bias, x)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", fallback_ratio={self.fallback_ratio}, gamma_grad={self.gamma_grad!r}, "
            f"fallback_grad={self.fallback_grad!r}"
        )
