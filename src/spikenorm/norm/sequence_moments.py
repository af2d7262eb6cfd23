"""One running-statistics update per sequence, from moments accumulated over its time steps.

Norms whose running estimate is updated once per sequence (OSR; ``bn`` with ``running_update="per_batch"``)
see a sequence either as one multi-step (BPTT) forward over ``[T, B, C, ...]`` or, in online training, as the
``T`` single-step forwards inside a :func:`spikenorm.neurons.stateful` scope. Each training forward adds the
per-step batch moments ``mu_t`` and biased ``var_t`` of its steps (``[T', C]``, already pooled across
processes by :func:`~spikenorm.norm.stats.batch_moments`) to float64 sums; the layer reads

* ``mean_t mu_t`` (:meth:`SequenceMoments.mean`),
* ``mean_t var_t``, the mean per-step variance without the between-step spread of ``mu_t``
  (:meth:`SequenceMoments.mean_step_variance`),
* ``mean_t (var_t + mu_t^2) - (mean_t mu_t)^2``, the biased variance pooled over all ``T B H W`` samples
  (:meth:`SequenceMoments.pooled_variance`),

and makes one EMA update when the sequence closes (at once after a forward outside a ``stateful`` scope).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikenorm.sequence import SequenceAware


class SequenceMoments:
    """Float64 sums over the steps of one sequence of ``mu_t``, ``var_t`` and ``var_t + mu_t^2`` (per feature)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.steps = 0
        self._sum_mean: Tensor | None = None
        self._sum_var: Tensor | None = None
        self._sum_square: Tensor | None = None

    @torch.no_grad()
    def add(self, mean_t: Tensor, var_t: Tensor) -> None:
        """Add the moments ``[T', *features]`` of ``T'`` more steps (``var_t`` biased)."""
        mean_t, var_t = mean_t.double(), var_t.double()
        sums = (mean_t.sum(0), var_t.sum(0), (var_t + mean_t**2).sum(0))
        if self.steps:
            sums = (self._sum_mean + sums[0], self._sum_var + sums[1], self._sum_square + sums[2])
        self._sum_mean, self._sum_var, self._sum_square = sums
        self.steps += mean_t.shape[0]

    def _require_steps(self) -> None:
        if not self.steps:
            raise ValueError("no training step has been accumulated in this sequence")

    def mean(self) -> Tensor:
        """``mean_t mu_t`` (float64)."""
        self._require_steps()
        return self._sum_mean / self.steps

    def mean_step_variance(self) -> Tensor:
        """``mean_t var_t``: the average per-step biased variance (float64)."""
        self._require_steps()
        return self._sum_var / self.steps

    def pooled_variance(self) -> Tensor:
        """``mean_t (var_t + mu_t^2) - (mean_t mu_t)^2``: the biased variance of all samples of all steps
        (float64, clamped at 0 against rounding)."""
        mean = self.mean()
        return (self._sum_square / self.steps - mean**2).clamp_min(0)


class PerSequenceRunningUpdate(SequenceAware):
    """Mixin for a :class:`~spikenorm.norm.base.TimeMajorNorm` that updates its running statistics once per
    sequence with :meth:`sequence_statistics` of the accumulated :attr:`sequence_moments`.

    A training forward calls :meth:`accumulate` with its per-step moments, then :meth:`commit_unless_in_sequence`
    (after it has used the running statistics it needs). Inside a ``stateful`` scope the update waits for
    :meth:`end_sequence`; an aborted scope discards the sums.
    """

    def init_sequence_state(self) -> None:
        self._in_sequence = False
        self.sequence_moments = SequenceMoments()

    def begin_sequence(self) -> None:
        self._in_sequence = True
        self.sequence_moments.clear()

    def end_sequence(self) -> None:
        self._in_sequence = False
        self.commit()

    def abort_sequence(self) -> None:
        self._in_sequence = False
        self.sequence_moments.clear()

    def accumulate(self, mean_t: Tensor, var_t: Tensor) -> None:
        """Add per-step statistics ``[T', *features]`` (``var_t`` biased) to the sums of the current sequence."""
        self.sequence_moments.add(mean_t, var_t)

    def sequence_statistics(self) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` fed to the EMA update from :attr:`sequence_moments`; the subclass says which."""
        raise NotImplementedError

    def commit(self) -> None:
        """Apply the once-per-sequence EMA update (a no-op when no step was accumulated)."""
        if self.sequence_moments.steps:
            self.update_running(*self.sequence_statistics())
            self.sequence_moments.clear()

    def commit_unless_in_sequence(self) -> None:
        """Commit now, unless a ``stateful`` scope is open (then its end commits)."""
        if not self._in_sequence:
            self.commit()
