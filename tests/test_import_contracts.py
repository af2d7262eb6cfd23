"""The import contracts in pyproject.toml cover the whole core: a new core module is held to them too."""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

import spikenorm

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli below Python 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NOT_CORE = {
    "spikenorm.tasks",
    "spikenorm.callbacks",
    "spikenorm.datamodules",
    "spikenorm.cli",
    "spikenorm.commands",
    "spikenorm.studies",
}


def _contract(name_start: str) -> dict:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_start))


def test_every_core_module_is_a_source_of_the_core_contract():
    contract = _contract("The core never imports")
    modules = {f"spikenorm.{m.name}" for m in pkgutil.iter_modules(spikenorm.__path__)}
    assert set(contract["forbidden_modules"]) == NOT_CORE
    assert set(contract["source_modules"]) == modules - NOT_CORE
