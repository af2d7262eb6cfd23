"""Filters on qualified module names (``"features.0.2"``, as ``nn.Module.named_modules`` gives them)."""

from __future__ import annotations

from collections.abc import Sequence


def excluded(name: str, prefixes: Sequence[str]) -> bool:
    """Whether the module ``name`` is one of ``prefixes`` or lies inside one of them: ``"teacher"`` excludes
    ``"teacher"`` and ``"teacher.layer1"``, not ``"teacher2"``."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)
