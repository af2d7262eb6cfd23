r"""Threshold stabilisers: the plug-in a spiking neuron asks for the threshold of each step.

A neuron fires ``s_t = H(u_t - theta_t)`` (:mod:`spikenorm.neurons`). Without a stabiliser ``theta_t`` is its
``threshold`` buffer ``theta``; a :class:`ThresholdStabilizer` held by the neuron (its ``threshold_stabilizer``,
like its ``membrane_norm``) computes ``theta_t`` from the step's membrane instead, and declares what folding,
export and the fused kernels need to know: the fixed threshold that replaces it at inference (or why there is
none), and why the fused kernels, which compare with the fixed buffer, cannot run it.

:class:`OnlineThresholdStabilizer` (OTS; Zhu et al., "Online Stabilization of Spiking Neural Networks", ICLR
2024) keeps the standardised firing quantile of step 1::

    theta_t = mu_t + sigma_t (theta - mu_1) / sigma_1

with ``mu_t, sigma_t`` the mean and unbiased standard deviation of the layer's membrane ``u_t`` over all its
elements (batch and features; all processes under DDP).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from spikenorm.norm.stats import batch_moments, unbiased
from spikenorm.validation import check_choice

__all__ = ["OnlineThresholdStabilizer", "OtsEval", "ThresholdStabilizer"]

State = dict[str, Tensor]
OtsEval = Literal["dynamic", "running"]


class ThresholdStabilizer(nn.Module):
    """Base class of the threshold stabilisers; a subclass defines :meth:`forward` and, where it has them, a fixed
    inference threshold (:meth:`fixed_threshold`) and the checks of :meth:`attach`.

    A neuron calls :meth:`attach` once, from its constructor, and the stabiliser at every step after its membrane
    norm; the stabiliser follows the neuron's ``train()``/``eval()`` as a child module.
    """

    def attach(self, threshold: Tensor) -> None:
        """Take the neuron's ``threshold`` buffer: raise a ValueError if the stabiliser cannot work with it, and
        initialise buffers from it. The base class accepts any threshold."""

    def forward(self, u: Tensor, threshold: Tensor, state: State) -> tuple[Tensor, State]:
        """The threshold ``theta_t`` of one step and the neuron's ``state`` with what the stabiliser carries to the
        next step.

        Args:
            u: the membrane ``u_t`` compared with the threshold, ``[B, *features]`` (after the membrane norm).
            threshold: the neuron's threshold buffer, broadcast against ``u``.
            state: the neuron's state of this step; keys other than the neuron's ``state_names`` may be added.

        Returns:
            ``(theta_t, state)``; ``theta_t`` broadcasts against ``u``. A soft reset subtracts ``theta_t``.
        """
        raise NotImplementedError(f"{type(self).__name__} must define forward(u, threshold, state)")

    def fixed_threshold(self, threshold: Tensor) -> Tensor:
        """The constant threshold that replaces the stabiliser at inference, given the neuron's ``threshold``: what
        :func:`spikenorm.fold.fold_model` writes into the folded neuron and :func:`spikenorm.export.to_nir` exports.

        Raises:
            ValueError: the inference threshold is not constant, with the reason (the base class: none declared).
        """
        raise ValueError(
            f"{type(self).__name__} declares no fixed inference threshold; define "
            f"{type(self).__name__}.fixed_threshold(threshold) if it has one"
        )

    def fused_unsupported_reason(self) -> str:
        """Why the fused kernels (:mod:`spikenorm.fused`) cannot run a neuron holding this stabiliser: they compare
        every step's membrane with the neuron's fixed threshold buffer."""
        return (
            f"{type(self).__name__} sets the threshold of every step, and the fused kernels compare with the "
            "neuron's fixed threshold buffer"
        )


class OnlineThresholdStabilizer(ThresholdStabilizer):
    """OTS: ``theta_t = mu_t + sigma_t (theta - mu_1) / sigma_1`` (module docstring), no gradient through it.

    Args:
        eval_mode: ``"dynamic"`` recomputes ``theta_t`` on every inference batch (the paper; predictions then depend
            on the batch); ``"running"`` uses the buffer ``running_threshold``, an EMA of ``theta_t`` over every
            training step, which makes inference batch-independent and foldable.
        momentum: the EMA's weight of a new ``theta_t`` (the reference code's ``0.1 / T``).
    """

    def __init__(self, eval_mode: OtsEval = "dynamic", momentum: float = 0.025) -> None:
        super().__init__()
        self.eval_mode = check_choice(eval_mode, OtsEval, "ots_eval")
        self.momentum = momentum
        self.register_buffer("running_threshold", torch.tensor(1.0))  # theta, once attached

    def attach(self, threshold: Tensor) -> None:
        """Start the running threshold at ``theta`` (= ``theta_1``), which must be a scalar."""
        if threshold.ndim:
            raise ValueError("OTS adapts one threshold per layer: give a scalar threshold (theta_1), not a tensor")
        self.running_threshold = threshold.detach().clone()

    @torch.no_grad()
    def forward(self, u: Tensor, threshold: Tensor, state: State) -> tuple[Tensor, State]:
        """``theta_t`` (a scalar); step 1's membrane mean and std are kept in ``state["ots_reference"]``."""
        if not self.training and self.eval_mode == "running":
            return self.running_threshold, state
        mean, var, count = batch_moments(u, dims=range(u.ndim))
        std = torch.sqrt(unbiased(var, count)).clamp_min(torch.finfo(u.dtype).tiny)
        reference = state.get("ots_reference")
        if reference is None:  # step 1: theta_1 is the configured threshold
            reference = torch.stack([mean, std])
            state = {**state, "ots_reference": reference}
        theta = mean + std * (threshold - reference[0]) / reference[1]
        if self.training:
            self.running_threshold.lerp_(theta.to(self.running_threshold.dtype), self.momentum)
        return theta, state

    def fixed_threshold(self, threshold: Tensor) -> Tensor:
        """The running threshold with ``eval_mode="running"``; a ValueError with ``"dynamic"``."""
        if self.eval_mode != "running":
            raise ValueError(
                "with ots_eval='dynamic' it is recomputed from every inference batch; train with ots_eval='running' "
                "for a fixed, foldable threshold"
            )
        return self.running_threshold.clone()

    def fused_unsupported_reason(self) -> str:
        return "OTS thresholds depend on batch statistics of each step"

    def extra_repr(self) -> str:
        return f"eval_mode={self.eval_mode!r}, momentum={self.momentum}"
