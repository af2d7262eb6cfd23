"""Baseline batch normalisations for time-major SNN activations ``x`` of shape ``[T, B, C, *spatial]``.

Notation: ``mu_t, var_t`` are the mean and biased variance of step ``t`` over ``(B, *spatial)``; ``mu, var``
pool all steps, i.e. over ``(T, B, *spatial)``; ``n`` is the number of samples a statistic pools; hats are
running estimates; ``m`` is ``momentum`` (torch convention). Running variances are Bessel-corrected
(``var * n / (n - 1)``), as in torch BN, except for ``bn`` with ``running_update="per_batch"`` (biased, as the
reference code of the baseline it reproduces).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor

from spikenorm.distributed import distributed_world_size
from spikenorm.norm.base import NORMS, FoldTarget, StepIndexedNorm, TimeMajorNorm
from spikenorm.norm.sequence_update import PerSequenceRunningUpdate
from spikenorm.norm.stats import batch_moments, unbiased
from spikenorm.validation import check_choice


def require_two_values_per_step(count: int, x: Tensor, name: str, feature_shape: tuple[int, ...]) -> None:
    """Refuse a training batch with one value per feature and step: its variance is 0, every output ``beta``.

    Per-step norms (``bn``, ``bntt``) normalize each time step over ``B * H * W`` values (summed over processes
    under DDP); torch's batch norm refuses the same input.
    """
    if count < 2:
        unit = "channel" if len(feature_shape) == 1 else "feature"
        raise ValueError(
            f"{name} normalizes each time step over the batch, so in training it needs more than 1 value per "
            f"{unit} per step, got input [T, B, C, ...] of shape {tuple(x.shape)} (1 value). Use batch size "
            ">= 2 in training (if only the last batch holds 1 sample, pass drop_last=True to the train "
            "DataLoader), or call .eval() to normalize with the running statistics."
        )


def channelwise_single_process(norm: TimeMajorNorm) -> bool:
    """Statistics per channel (not per element) and no other process to pool with: then statistics pooled over every
    axis but the channels are torch's batch norm (:meth:`~spikenorm.norm.base.TimeMajorNorm.torch_batch_norm`)."""
    return len(norm.feature_shape) == 1 and distributed_world_size() == 1


def pooled_batch_statistics(norm: TimeMajorNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """The training statistics of tdBN and TEBN: mean and biased variance of ``x`` pooled over ``(T, B, *spatial)``
    per feature, with one EMA update of the running statistics (``mu`` and ``var n/(n-1)``)."""
    mean, var, count = batch_moments(x, norm.reduce_dims(x, over_time=True))  # [C] each
    norm.update_running(mean, unbiased(var, count))
    return mean, var


RunningUpdate = Literal["per_call", "per_batch"]


@NORMS.register("bn")
class VanillaBN(TimeMajorNorm, PerSequenceRunningUpdate):
    """Per-step batch statistics, one shared affine and one running estimate ("vanilla BN").

    Training: ``y_t = gamma (x_t - mu_t) / sqrt(var_t + eps) + beta`` for each step ``t``.
    Inference: ``y = gamma (x - mu_hat) / sqrt(var_hat + eps) + beta`` at every step; an affine map per
    channel, so it folds into the preceding weights.

    Running update, ``running_update``:

    * ``"per_call"`` (default): one EMA update per forward call, with the mean of the per-step means and of the
      Bessel-corrected per-step variances, ``mu_hat <- (1 - m) mu_hat + m mean_t(mu_t)``,
      ``var_hat <- (1 - m) var_hat + m mean_t(var_t n/(n-1))``. A multi-step forward makes one update per
      batch; called once per step (online training, or MPBN inside its neuron) it makes ``T`` updates per
      batch, each from one step, so the estimate leans towards the last steps; this is what torch's
      ``BatchNorm2d`` does when a model calls it at every step.
    * ``"per_batch"``: the vanilla-BN baseline of Zhu et al., "Online Stabilization of Spiking Neural
      Networks", ICLR 2024 (``BN_type: old`` in github.com/zhuyaoyu/SNN-online-normalization): one EMA
      update per sequence from the mean over its steps of the per-step mean and BIASED variance, without the
      between-step spread of ``mu_t`` (:class:`~spikenorm.norm.stats.SequenceMoments`),
      ``mu_hat <- (1 - m) mu_hat + m mean_t(mu_t)``, ``var_hat <- (1 - m) var_hat + m mean_t(var_t)``
      (``m = 0.1``, the code's retention 0.9). A multi-step forward is one sequence; online, the sequence is
      the :func:`spikenorm.neurons.stateful` scope: the per-step moments accumulate (float64) and the update
      is made when the scope closes, so online and multi-step training give the same running statistics. The
      reference code makes the same update lazily, at the first step of the next training batch. The running
      variance then estimates a biased variance (:attr:`running_var_unbiased` is False, so exact
      re-calibration writes the biased pooled variance).

    ``"per_call"`` stays the default: it is torch BN's convention (and MPBN's reference code, whose neuron calls
    the layer at every step), and existing checkpoints and results were trained with it.

    Args:
        running_update: ``"per_call"`` or ``"per_batch"`` (above).
    """

    fold_target: ClassVar[FoldTarget] = "weights"

    def __init__(self, num_features: int, running_update: RunningUpdate = "per_call", **kwargs: object) -> None:
        check_choice(running_update, RunningUpdate, "running_update")
        super().__init__(num_features, **kwargs)
        self.running_update = running_update
        self.init_sequence_state()

    @property
    def running_var_unbiased(self) -> bool:
        """``"per_call"`` tracks Bessel-corrected variances (torch convention), ``"per_batch"`` biased ones."""
        return self.running_update == "per_call"

    def uses_torch_batch_norm(self, x: Tensor) -> bool:
        """One step (``T = 1``, e.g. MPBN called by its neuron), channel-wise, one process, one update per call:
        per-step statistics are then torch's batch norm of the step."""
        return x.shape[0] == 1 and self.running_update == "per_call" and channelwise_single_process(self)

    @property
    def records_step_moments(self) -> bool:
        """``"per_call"``: one update per call, from the moments of each step (so MPBN fuses into its neuron)."""
        return self.running_update == "per_call"

    def record_step_moments(self, mean: Tensor, var: Tensor, count: int) -> None:
        """``"per_call"``'s update on a one-step call: ``mu_hat <- (1 - m) mu_hat + m mu``, likewise ``var n/(n-1)``."""
        self.update_running(mean, unbiased(var, count))

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var, count = batch_moments(x, self.reduce_dims(x, over_time=False))  # [T, C] each
        require_two_values_per_step(count, x, "bn", self.feature_shape)
        if self.running_update == "per_call":
            self.update_running(mean.mean(0), unbiased(var, count).mean(0))
        else:
            self.accumulate(mean, var)
            self.commit_unless_in_sequence()
        return mean, var

    def sequence_statistics(self) -> tuple[Tensor, Tensor]:
        """``(mean_t mu_t, mean_t var_t)`` of the steps accumulated in this sequence (``"per_batch"``)."""
        return self.sequence_moments.mean(), self.sequence_moments.mean_step_variance()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", running_update={self.running_update!r}"


@NORMS.register("tdbn")
class TDBN(TimeMajorNorm):
    """Threshold-dependent BN (tdBN, Zheng et al., AAAI 2021): statistics pooled over time and batch.

    Training: ``y = gamma * alpha * v_th * (x - mu) / sqrt(var + eps) + beta`` with ``mu, var`` pooled over
    ``(T, B, *spatial)`` per channel (the paper's Eqs. 5-6; ``gamma`` is its ``lambda``, initialised to 1).
    ``alpha * v_th`` is a constant that scales the normalised pre-activation to the firing threshold
    ``v_th`` of the following neuron. Running update once per forward with ``mu`` and ``var n/(n-1)``.
    Inference: the same map with running statistics; it folds into the preceding weights with the
    effective gain :attr:`effective_weight`.

    Args:
        alpha: tdBN's alpha (1 for plain layers; ``1/sqrt(2)`` before residual additions in the paper).
        v_th: threshold of the following neuron.
    """

    fold_target: ClassVar[FoldTarget] = "weights"

    def __init__(self, num_features: int, alpha: float = 1.0, v_th: float = 1.0, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)
        self.alpha = float(alpha)
        self.v_th = float(v_th)

    @property
    def effective_weight(self) -> Tensor:
        """``gamma * alpha * v_th``: the per-channel gain applied to the normalised input.

        The base property is read through its getter, not ``super().effective_weight``: dynamo cannot trace a
        property reached through ``super()`` and would break the graph here (``torch.compile``)."""
        return TimeMajorNorm.effective_weight.fget(self) * (self.alpha * self.v_th)

    def uses_torch_batch_norm(self, x: Tensor) -> bool:
        """Channel-wise and one process: statistics pooled over ``(T, B, *spatial)`` are torch's batch
        norm of ``x`` with time folded into the batch, with gain ``gamma * alpha * v_th``."""
        return channelwise_single_process(self)

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return pooled_batch_statistics(self, x)

    @property
    def normalization_gain(self) -> float:
        """``alpha * v_th``, applied to the normalised input before ``gamma`` (:meth:`TimeMajorNorm.normalize`)."""
        return self.alpha * self.v_th

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, v_th={self.v_th}"


@NORMS.register("bntt")
class BNTT(StepIndexedNorm):
    """Batch Normalization Through Time (BNTT, Kim & Panda 2021): a separate BN for every time step.

    Training: ``y_t = gamma_t (x_t - mu_t) / sqrt(var_t + eps) + beta_t``; running statistics per step,
    ``mu_hat_t <- (1 - m) mu_hat_t + m mu_t`` (likewise ``var_t n/(n-1)``). Inference uses ``mu_hat_t``,
    ``var_hat_t``: the map depends on ``t``, so BNTT cannot fold into shared weights (``fold_target`` is
    ``"unfoldable"``). The paper learns only ``gamma_t``; ``bias=True`` adds ``beta_t``.

    A training forward needs more than one value per channel and step (``B * H * W > 1``, summed over
    processes under DDP): over a single value the variance is 0 and every output would be ``beta_t``, so
    that input raises a ValueError (as torch's batch norm does), e.g. a batch of 1 sample with no spatial
    dimensions.

    Args:
        time_steps: ``T``; inputs must have exactly this many steps, also inside a ``stateful`` scope (None: given
            later by the task).
        bias: learn ``beta_t`` as well (default False, as in the paper).
    """

    fold_target: ClassVar[FoldTarget] = "unfoldable"
    per_step_statistics: ClassVar[bool] = True
    runs_step_by_step: ClassVar[bool] = False

    def __init__(self, num_features: int, time_steps: int | None = None, bias: bool = False, **kwargs: object) -> None:
        super().__init__(num_features, time_steps, **kwargs)
        if self.affine and not bias:
            self.register_parameter("bias", None)

    def affine_transform(self, x_hat: Tensor) -> Tensor:
        if not self.affine:
            return x_hat
        y = x_hat * self.feature_view(self.weight, x_hat)
        return y if self.bias is None else y + self.feature_view(self.bias, x_hat)

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var, count = batch_moments(x, self.reduce_dims(x, over_time=False))  # [T, C] each
        require_two_values_per_step(count, x, "BNTT", self.feature_shape)
        self.update_running(mean, unbiased(var, count))
        return mean, var

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bias={self.bias is not None}"
