"""Classification losses on per-step logits ``o`` of shape ``[T, B, classes]``."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

#: the classification losses a task offers: ``ce`` (:func:`mean_logit_ce`) or ``tet`` (:func:`tet_loss`)
Loss = Literal["ce", "tet"]


def mean_logit_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the time-averaged logits: ``CE(mean_t o[t], y)``."""
    return F.cross_entropy(logits.mean(0), target)


def tet_loss(logits: Tensor, target: Tensor, mse_weight: float = 0.05) -> Tensor:
    """TET-style per-step loss (Deng et al., "Temporal Efficient Training of Spiking Neural Network via Gradient
    Re-weighting", ICLR 2022) as used by OSR (Zhu et al., "Online Stabilization of Spiking Neural Networks",
    ICLR 2024):

    ``L = (1/T) sum_t [ (1 - eps) CE(o[t], y) + eps MSE(o[t], onehot(y)) ]``

    with ``eps = mse_weight`` (0.05 for static data, 0.001 for DVS in the OSR paper) and MSE averaged over
    batch and classes.
    """
    T, B, C = logits.shape
    flat = logits.reshape(T * B, C)
    target_t = target.repeat(T)
    ce = F.cross_entropy(flat, target_t)
    mse = F.mse_loss(flat, F.one_hot(target_t, C).to(flat.dtype))
    return (1 - mse_weight) * ce + mse_weight * mse
