"""Griffe extension for the docs build: render the reST bits of spikenorm's docstrings as Markdown.

The docstrings are Google style with two reST habits: Sphinx roles (``:func:`~spikenorm.fold.fold_model```) and
literal blocks introduced by ``::``. mkdocstrings reads Markdown, so a role becomes inline code (the last
component when the target starts with ``~``, as Sphinx shows it) and ``text::`` becomes ``text:``; the indented
block that follows is already a Markdown code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SPHINX_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")
LITERAL_BLOCK_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _inline_code(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if shorten else target}`"


def markdown_from_rest(text: str) -> str:
    """``text`` with Sphinx roles as inline code and ``::`` literal-block markers as a plain colon."""
    return LITERAL_BLOCK_MARKER.sub(":", SPHINX_ROLE.sub(_inline_code, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring as soon as its object is created."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_from_rest(obj.docstring.value)
