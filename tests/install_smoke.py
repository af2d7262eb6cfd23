"""The smoke subset that ``tests/test_install_envs.py`` runs inside a fresh virtual environment after installing
spikenorm into it: the fused kernels compile, the quickstart trains one epoch through the ``spikenorm`` CLI
(with its fold and spike-for-spike check), and a network is re-calibrated and folded with zero flipped spikes.

Run as ``python install_smoke.py <recipes folder>`` from an empty working folder; prints the versions it ran on
and exits non-zero on the first failure.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torchvision

import spikenorm
from spikenorm import fused
from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import SpikingVGG
from spikenorm.models.layers import LayerSpec
from spikenorm.neurons import LIF
from spikenorm.recalibrate import recalibrate_bn


def fused_equals_eager() -> None:
    """A LIF layer's compiled multi-step kernel (forward and backward) against its eager loop; a compile failure
    (which the library turns into a warning and an eager fallback) fails the smoke."""
    assert fused.compile_available(), "torch.compile is unavailable"
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    outputs, grads = [], []
    assert fused.unsupported_reason(LIF(), x) is None, fused.unsupported_reason(LIF(), x)
    for backend in ("fused", "eager"):
        neuron = LIF(backend=backend)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="spikenorm.fused")
            spikes = neuron(x)
        (grad,) = torch.autograd.grad(spikes.sum(), x)
        outputs.append(spikes)
        grads.append(grad)
    assert torch.equal(outputs[0], outputs[1]), "fused and eager spikes differ"
    assert torch.allclose(grads[0], grads[1], atol=1e-6), "fused and eager gradients differ"


def quickstart_one_epoch(recipes: str) -> None:
    """``spikenorm fit --config quickstart.yaml`` for one epoch, as a user runs it."""
    cli = str(Path(sys.executable).parent / "spikenorm")  # this environment's console script
    command = [cli, "fit", "--config", f"{recipes}/quickstart.yaml", "--trainer.max_epochs", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "test" in done.stdout and "flipped" in done.stdout, "the fit summary is missing"


def recalibrate_and_fold() -> None:
    """Exact BN re-calibration, then the fold, which must flip no spike."""
    torch.manual_seed(0)
    model = SpikingVGG("small", in_channels=1, num_classes=5, layers=LayerSpec(norm="tdbn")).double()
    batches = [torch.randn(2, 8, 1, 8, 8, dtype=torch.float64) for _ in range(3)]
    report = recalibrate_bn(model, batches)
    assert report.layers, "no layer was re-calibrated"
    model.eval()
    folded = fold_model(model)
    equivalence = check_equivalence(model, folded, batches[0])
    assert equivalence.flipped_spikes == 0, equivalence


def main(recipes: str) -> None:
    print(f"torch {torch.__version__} torchvision {torchvision.__version__} spikenorm {spikenorm.__version__}")
    fused_equals_eager()
    recalibrate_and_fold()
    quickstart_one_epoch(recipes)
    print("smoke passed")


if __name__ == "__main__":
    main(sys.argv[1])
