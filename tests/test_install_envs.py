"""``pip install spikenorm`` beside the torch a user already has keeps that torch, and the package works there.

Each case makes a fresh virtual environment holding one torch (and, where given, its torchvision), installs a copy
of this repository into it with ``pip`` (the core only: the smoke needs no extra), checks that torch was not
replaced, and runs ``install_smoke.py`` there: the fused kernels against the eager loop, exact re-calibration and
a fold with zero flipped spikes, and the quickstart for one epoch through the ``spikenorm`` CLI. Where torch allows
it, a second ``pip install`` adds every extra, torch is checked again and the extras' modules are imported.

Slow (minutes per case, most of it unpacking torch and its CUDA libraries, gigabytes each) and it needs the
package registry: ``python -m pytest -m slow tests/test_install_envs.py -s`` prints each step's wall time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SMOKE = Path(__file__).resolve().parent / "install_smoke.py"
#: what a wheel of the package is built from
SOURCES = ("pyproject.toml", "README.md", "src", "callbacks", "datamodules")

#: (torch, torchvision already beside it or None, whether the extras go in too): the oldest supported torch (the
#: ``rl`` extra needs torch >= 2.7: only the core there); 2.11.0, the torch of our GPU machines; 2.15.0, the newest,
#: installed alone (torchvision >= 0.29 is built on torch's stable ABI and accepts it)
ENVIRONMENTS = [("2.4.0", "0.19.0", False), ("2.11.0", "0.26.0", True), ("2.15.0", None, True)]

FEATURE_IMPORTS = (
    "import spikenorm.rl, spikenorm.tasks.td3, spikenorm.tasks.dqn, spikenorm.export, "
    "spikenorm.datamodules.neuromorphic, ale_py"
)


def timed(command: list[str], timeout: float, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    return done, time.perf_counter() - start


def torch_version(python: Path) -> str:
    done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("torch_release", "torchvision_release", "with_extras"), ENVIRONMENTS, ids=[t for t, _, _ in ENVIRONMENTS]
)
def test_install_keeps_the_users_torch_and_runs(tmp_path, torch_release, torchvision_release, with_extras):
    # the machine-wide pip constraints may cap torch below the release under test: this test asks what pip does
    # with spikenorm's own ranges
    env = {**os.environ, "PIP_CONSTRAINT": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    preinstalled = [f"torch=={torch_release}"]
    if torchvision_release:
        preinstalled.append(f"torchvision=={torchvision_release}")
    done, preinstall_s = timed([*pip, *preinstalled], 1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    before = torch_version(python)

    source = tmp_path / "spikenorm"  # a copy: pip builds in the source folder, and the repository stays clean
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    done, install_s = timed([*pip, str(source)], 1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch_version(python) == before

    work = tmp_path / "work"
    work.mkdir()
    done, smoke_s = timed([python, SMOKE, str(REPO / "recipes")], 1800, cwd=work, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "smoke passed" in done.stdout

    print(f"\ntorch {before} kept; preinstall {preinstall_s:.0f} s, install {install_s:.0f} s, smoke {smoke_s:.0f} s")
    if not with_extras:
        return
    done, extras_s = timed([*pip, f"{source}[all]"], 1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch_version(python) == before
    imported = subprocess.run([python, "-c", FEATURE_IMPORTS], capture_output=True, text=True, cwd=work)
    assert imported.returncode == 0, imported.stderr[-3000:]
    print(f"extras installed in {extras_s:.0f} s, torch {before} kept")
