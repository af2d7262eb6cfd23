"""Tests run in their own temporary folder and never write into the repository or the working directory.

Devices. The ``device`` fixture runs a numerical test once per device present: on ``cpu`` always, and also on
``cuda`` when ``torch.cuda.is_available()``; a CPU machine therefore collects each such test once and reports
nothing skipped. CUDA-only assertions (Triton path taken, fp16, Lightning ``16-mixed``) carry the ``gpu``
marker (they live in ``test_gpu.py``). Without CUDA they are deselected, and the header says so; asking for
them explicitly (a ``-m`` expression naming ``gpu``, e.g. ``pytest -m gpu``) is a usage error (exit code 4),
so a GPU check run on the wrong machine fails instead of passing with nothing run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

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


CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"] if CUDA else ["cpu"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device present (see the module docstring); put the test's tensors and modules on it."""
    return torch.device(request.param)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes sharing the cores (pyproject addopts)
        # one thread each, for torch and for the processes the tests start (DDP, the CLI): OpenMP threads that spin
        # on an oversubscribed core make the parallel suite slower than the serial one
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    config.addinivalue_line(
        "markers", "gpu: CUDA-only assertion; deselected without CUDA, and -m gpu there is a usage error"
    )


def pytest_report_header(config: pytest.Config) -> str:
    if CUDA:
        return (
            f"cuda: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda}): "
            "device tests run on cpu and cuda, gpu tests run"
        )
    return "cuda: not available: device tests run on cpu only, tests marked gpu are deselected"


@pytest.hookimpl(trylast=True)  # after -m has deselected what it deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without CUDA, deselect the gpu tests; refuse a ``-m`` expression that asks for them by name."""
    if CUDA:
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    markexpr = config.getoption("markexpr")
    if re.search(r"\bgpu\b", markexpr):
        raise pytest.UsageError(
            f"-m {markexpr!r} selects {len(gpu)} tests marked gpu, but torch.cuda.is_available() is False here: "
            "run them on a CUDA machine (benchmarks/gpu_check.sh) or drop gpu from -m"
        )
    items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
    config.hook.pytest_deselected(items=gpu)


@pytest.fixture
def count_fused(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The class names of the neurons whose forward took the fused path (``spikenorm.fused.fused_forward``), in
    call order."""
    from spikenorm import fused

    calls: list[str] = []
    real = fused.fused_forward

    def spy(neuron, x, *args, **kwargs):
        calls.append(type(neuron).__name__)
        return real(neuron, x, *args, **kwargs)

    monkeypatch.setattr(fused, "fused_forward", spy)
    return calls
