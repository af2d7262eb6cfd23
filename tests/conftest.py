"""Tests run in their own temporary folder and never write into the repository or the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# written by the tools themselves (pytest, Python, pip install -e), not by the tests
TOOL_FILES = {".pytest_cache", "__pycache__", ".coverage"}


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - TOOL_FILES


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts in its own empty folder, so relative paths (logs/, wandb/, MUJOCO_LOG.TXT) land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_into_the_repository():
    """Fail the session if a test left a new file or folder at the repository root or where pytest started."""
    start = Path(os.getcwd())
    before = {folder: _entries(folder) for folder in {ROOT, start}}
    yield
    left = {str(folder / name) for folder, names in before.items() for name in _entries(folder) - names}
    assert not left, f"tests wrote into the repository or the working directory: {sorted(left)}"
