"""The attach/detach life cycle shared by the hook-based recorders (firing rates, operation counts)."""

from __future__ import annotations

from torch.utils.hooks import RemovableHandle
from typing_extensions import Self


class HookSession:
    """Holds forward hooks between :meth:`start` and :meth:`stop`; usable as a context manager.

    Subclasses implement :meth:`attach`, returning the handles of the hooks they register; what the hooks
    recorded stays after :meth:`stop`.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def attach(self) -> list[RemovableHandle]:
        raise NotImplementedError

    def start(self) -> Self:
        """Attach the hooks (what ``with`` does on entry); a running session is restarted."""
        self.stop()
        self._handles = self.attach()
        return self

    def stop(self) -> None:
        """Remove the hooks; what they recorded stays."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
