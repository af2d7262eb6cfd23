"""The per-sequence protocol of modules that keep state over the T steps of one batch."""

from __future__ import annotations


class SequenceAware:
    """Mixin for modules that keep per-sequence state inside a :func:`stateful` scope (besides neurons):
    ``begin_sequence()`` is called on entry, ``end_sequence()`` on a normal exit (e.g. to commit statistics
    accumulated over the T steps of a batch), ``abort_sequence()`` when the scope exits with an error."""

    def begin_sequence(self) -> None: ...

    def end_sequence(self) -> None: ...

    def abort_sequence(self) -> None:
        self.begin_sequence()
