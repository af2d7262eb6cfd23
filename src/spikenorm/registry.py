"""A small name -> class map shared by the neuron, surrogate and norm registries.

Each registry turns a user-facing name (``"lif"``, ``"atan"``, ``"tdbn"``) into a class, and an unknown
name into a ``ValueError`` that lists every available choice.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to classes of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers the class under ``name``."""

        def decorator(cls: type[T]) -> type[T]:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} name {key!r} is already registered to {self._entries[key]!r}")
            self._entries[key] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; a ValueError listing the choices otherwise."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)
