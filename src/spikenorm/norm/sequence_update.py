"""One running-statistics update per sequence, from moments accumulated over its time steps.

Norms whose running estimate is updated once per sequence (OSR; ``bn`` with ``running_update="per_batch"``)
see a sequence either as one multi-step (BPTT) forward over ``[T, B, C, ...]`` or, in online training, as the
``T`` single-step forwards inside a :func:`spikenorm.neurons.stateful` scope. Each training forward adds the
per-step batch moments of its steps to a :class:`~spikenorm.norm.stats.SequenceMoments`, and the layer makes one
EMA update when the sequence closes (at once after a forward outside a ``stateful`` scope).
"""

from __future__ import annotations

from torch import Tensor

from spikenorm.norm.stats import SequenceMoments
from spikenorm.sequence import SequenceAware


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
