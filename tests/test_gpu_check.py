"""The GPU check without a GPU: the gpu marker's deselection and refusal (tests/conftest.py), the test_gpu module,
benchmarks/gpu_throughput.py at a tiny size on CPU, and benchmarks/gpu_check.sh's dry run writing its report."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CUDA = torch.cuda.is_available()
TINY = ["--device", "cpu", "--samples", "8", "--batch-size", "4", "--warmup-batches", "1"]

GPU_AND_PLAIN_TESTS = """
import pytest

@pytest.mark.gpu
def test_on_cuda():
    pass

def test_anywhere(device):
    assert device.type in ("cpu", "cuda")
"""


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports benchmarks/common.py
    spec = importlib.util.spec_from_file_location("benchmark_gpu_throughput", BENCHMARKS / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def run_pytest(folder: Path, basetemp: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest on ``folder``, in it, with its temporary folders under ``basetemp`` (which exists already, so the
    conftest's check of ``folder.parent`` sees nothing new)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *args, str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def table_rows(report: str) -> list[list[str]]:
    """The data rows of the markdown table in ``report`` (header and separator left out), as cells."""
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


# two pytest processes (~16 s): slow; a conftest.py that stopped deselecting GPU tests would fail the default suite
# on every CPU machine anyway
@pytest.mark.slow
def test_gpu_tests_are_deselected_without_cuda_and_refused_when_asked_for(tmp_path):
    """A conftest.py identical to the suite's, beside one gpu test and one device test."""
    suite, basetemp = tmp_path / "suite", tmp_path / "basetemp"
    suite.mkdir()
    basetemp.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_marked.py").write_text(GPU_AND_PLAIN_TESTS)
    plain = run_pytest(suite, basetemp, "-v")
    asked = run_pytest(suite, basetemp, "-m", "gpu")
    excluded = run_pytest(suite, basetemp, "-m", "not gpu")  # -m deselects before the conftest looks: no error
    assert excluded.returncode == 0 and "1 deselected" in excluded.stdout, excluded.stdout + excluded.stderr
    if CUDA:
        assert plain.returncode == 0 and "3 passed" in plain.stdout, plain.stdout  # device test on cpu and cuda
        assert asked.returncode == 0 and "1 passed" in asked.stdout, asked.stdout
        return
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "1 passed, 1 deselected" in plain.stdout and "test_anywhere[cpu] PASSED" in plain.stdout
    assert "cuda: not available: device tests run on cpu only, tests marked gpu are deselected" in plain.stdout
    assert "skipped" not in plain.stdout
    assert asked.returncode == pytest.ExitCode.USAGE_ERROR
    assert "-m 'gpu' selects 1 tests marked gpu, but torch.cuda.is_available() is False" in asked.stderr


def test_the_gpu_module_imports_and_every_test_in_it_is_marked_gpu():
    import test_gpu

    assert test_gpu.pytestmark.name == "gpu"
    assert len([name for name in vars(test_gpu) if name.startswith("test_")]) == 4


def test_throughput_report_on_cpu(throughput, tmp_path):
    out = tmp_path / "nested" / "throughput.md"
    report = throughput.main([*TINY, "--cases", "resnet19_mpbn", "--output", str(out)])
    assert out.read_text() == report
    assert report.startswith("Device: ") and "8 synthetic samples per epoch" in report
    rows = table_rows(report)
    assert [row[:6] for row in rows] == [
        ["resnet19_mpbn", "SpikingResNet19", "2", "bptt", "4", precision] for precision in ("fp32", "bf16")
    ]
    for row in rows:
        assert float(row[6]) > 0 and float(row[7]) > 0  # samples/s, epoch seconds
        assert row[9] == "n/a (CPU)"


def test_throughput_arguments_are_checked_before_anything_runs(throughput, capsys):
    for args, message in [
        (["--cases", "resnet50"], "unknown ['resnet50']"),
        (["--precisions", "fp8"], "unknown ['fp8']"),
        (["--cases", "vggsnn_osr", "--network-arg", "SpikingResNet19.width=0.5"], "no selected case builds"),
        (["--network-arg", "width=0.5"], "expected CLASS.ARG=VALUE"),
        (["--samples", "4"], "need more than --warmup-batches"),
    ]:
        with pytest.raises(SystemExit):
            throughput.main([*TINY, *args])
        assert message in capsys.readouterr().err
    case = throughput.load_case("vggsnn_osr")
    assert (case.network, case.batch_size, case.seed) == ("SpikingVGG", 128, 1)  # from the recipe
    throughput.apply_network_args([case], [throughput.network_arg("SpikingVGG.cfg=[8, A, 16]")])
    assert case.task_args["model"]["init_args"]["cfg"] == [8, "A", 16]


def test_gpu_check_script_is_valid_bash_and_executable():
    script = BENCHMARKS / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow  # runs the whole script's flow (each step's pytest / benchmark start-up) in about 20 s
def test_gpu_check_dry_run_writes_its_report(tmp_path):
    script = BENCHMARKS / "gpu_check.sh"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1"}
    refused = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "needs an OUTPUT path" in refused.stderr
    out = tmp_path / "gpu.md"
    done = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    report = out.read_text()
    assert done.returncode == 0, report
    assert report.startswith("# GPU check\n") and "GPU: none (dry run on the CPU)" in report
    assert f"torch {torch.__version__}" in report
    sections = [line for line in report.splitlines() if line.startswith("## (")]
    assert sections == [
        "## (a) gpu tests and the device tests on cpu",
        "## (b) compare.py on cpu",
        "## (c) one-epoch throughput: vggsnn_osr on cpu",
    ]
    assert report.count("Passed in ") == 3 and report.rstrip().endswith("All steps passed.")
    assert "1 passed, 32 deselected" in report  # (a): test_gpu.py collected, its gpu tests deselected
    assert "#### " in report  # (b): compare.py's report, its headings moved down under the section
    assert [row[:6] for row in table_rows(report.split("## (c)")[1])] == [
        ["vggsnn_osr", "SpikingVGG", "4", "online", "4", precision] for precision in ("fp32", "bf16")
    ]
