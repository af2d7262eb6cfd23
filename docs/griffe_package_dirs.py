"""Griffe extension for the docs build: load subpackages that setuptools installs from other folders.

``callbacks/`` and ``datamodules/`` install as ``spikenorm.callbacks`` and ``spikenorm.datamodules`` (the
``package-dir`` table of ``pyproject.toml``). Griffe finds ``spikenorm`` in ``src/`` and would not see them, so
this extension asks the import system where the installed subpackages live, parses those folders and attaches
them to the loaded package under their installed names. Only the parent package's ``__init__`` is imported (to
locate them); the subpackages themselves are read statically.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe


class PackageDirs(griffe.Extension):
    """Attach each of ``subpackages`` (dotted names, e.g. ``spikenorm.callbacks``) to its parent package."""

    def __init__(self, subpackages: list[str]) -> None:
        self.subpackages = subpackages

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for dotted_name in self.subpackages:
            parent_path, _, name = dotted_name.rpartition(".")
            if parent_path == pkg.path:
                pkg.set_member(name, _visit_package(name, _installed_folder(dotted_name), pkg, loader))


def _installed_folder(dotted_name: str) -> Path:
    spec = importlib.util.find_spec(dotted_name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{dotted_name} is not an installed package: run `pip install -e .[docs]` first")
    return Path(spec.submodule_search_locations[0])


def _visit_package(name: str, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    package = _visit_module(name, folder / "__init__.py", parent, loader)
    for path in sorted(folder.iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            package.set_member(path.stem, _visit_module(path.stem, path, package, loader))
        elif (path / "__init__.py").is_file():
            package.set_member(path.name, _visit_package(path.name, path, package, loader))
    return package


def _visit_module(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    code = path.read_text(encoding="utf-8")
    loader.lines_collection[path] = code.splitlines()
    return griffe.visit(
        name,
        path,
        code,
        parent=parent,
        extensions=loader.extensions,
        docstring_parser=loader.docstring_parser,
        docstring_options=loader.docstring_options,
        lines_collection=loader.lines_collection,
        modules_collection=loader.modules_collection,
    )
