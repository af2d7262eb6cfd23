"""CUDA-only assertions (marker ``gpu``): deselected where CUDA is absent (tests/conftest.py); run on a GPU
machine by benchmarks/gpu_check.sh.

- The fused neuron kernels take the compiled (Triton) path under ``backend="auto"`` without falling back, and
  agree with the eager loop: spikes except where the membrane lies within rounding of the threshold (Triton may
  contract ``a * b + c`` into an FMA, see spikenorm.fused), input gradients of the other neurons.
- fp16 and bf16 autocast training steps of a small SpikingVGG are finite and close to float32.
- ``torch.compile`` of a whole model trains, and evaluates like the eager model, on CUDA.
- A Lightning ``precision="16-mixed"`` fit of the quickstart classifier.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import quiet_trainer
from test_fused_neurons import assert_spikes_agree, margins

from spikenorm import fused
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import CLIF, LIF
from spikenorm.tasks import SpikingClassifier

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def small_vgg() -> SpikingVGG:
    """The network of the issue's compile report: conv32 - pool - conv64, tdBN, LIF; 16 x 16 inputs."""
    torch.manual_seed(0)
    return SpikingVGG(
        [32, "A", 64], in_channels=3, num_classes=10, input_size=16, layers=LayerSpec(norm="tdbn", neuron="lif")
    )


def cifar_like_batch(seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 16, 3, 16, 16, generator=g, dtype=dtype)  # [T, B, C, H, W]
    return x.to(CUDA), torch.randint(10, (16,), generator=g).to(CUDA)


def train_steps(model: torch.nn.Module, dtype: torch.dtype, steps: int = 3) -> list[float]:
    """``steps`` SGD steps on one batch under ``torch.autocast("cuda", dtype)`` (float32: no autocast), with a
    gradient scaler for float16 as a user's loop has; returns the losses."""
    x, y = cifar_like_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x).mean(0), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["lif", "clif"])
def test_auto_backend_runs_the_compiled_kernel_and_agrees_with_eager(kind, monkeypatch):
    assert importlib.util.find_spec("triton") is not None  # inductor's code generator for CUDA
    neuron = (LIF(decay=0.5, threshold=1.0) if kind == "lif" else CLIF()).to(CUDA)  # backend="auto"
    eager = copy.deepcopy(neuron)
    eager.backend = "eager"
    g = torch.Generator().manual_seed(0)
    x = (0.8 * torch.randn(4, 32, 64, 16, 16, generator=g) + 0.3).to(CUDA)  # a conv layer's 2M membranes
    grad_out = torch.randn(x.shape, generator=g).to(CUDA)
    assert x.numel() >= fused.AUTO_MIN_NUMEL["cuda"] and fused.use_fused(neuron, x, "auto")
    calls = []
    real = fused.fused_forward
    monkeypatch.setattr(fused, "fused_forward", lambda n, t, **kw: calls.append(n) or real(n, t, **kw))

    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sf = neuron(xf)
        (sf * grad_out).sum().backward()
    assert calls, "backend='auto' did not take the fused path"
    assert not [w for w in caught if "torch.compile failed" in str(w.message)], [str(w.message) for w in caught]
    assert fused.unsupported_reason(neuron, x) is None  # the configuration was not marked broken
    se = eager(xe)
    (se * grad_out).sum().backward()
    assert 0.01 < se.mean() < 0.5
    agree = assert_spikes_agree(se, sf, margins(eager, x))
    print(f"{kind}: {int((~agree).sum())} of {agree.numel()} neurons flipped a spike at the threshold")
    assert (~agree).sum() <= 1e-4 * agree.numel()
    torch.testing.assert_close(xf.grad[:, agree], xe.grad[:, agree], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_training_steps_are_finite_and_close_to_float32(dtype):
    """Half-precision convolutions, float32 norm statistics and neuron state: the losses of three steps within
    2% of float32's, the weight update pointing the same way (cosine > 0.95; spikes that flip at the threshold
    make it differ a little)."""
    initial = small_vgg().to(CUDA)
    reference, model = copy.deepcopy(initial), copy.deepcopy(initial)
    expected, got = train_steps(reference, torch.float32), train_steps(model, dtype)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for e, v in zip(expected, got):
        assert abs(v - e) <= 0.02 * abs(e), (expected, got)
    update = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), initial.parameters())])
    reference_update = torch.cat([(p - q).flatten() for p, q in zip(reference.parameters(), initial.parameters())])
    assert F.cosine_similarity(update, reference_update, dim=0) > 0.95
    for (name, buffer), expected_buffer in zip(model.named_buffers(), reference.buffers()):
        assert buffer.dtype == expected_buffer.dtype, name  # running statistics stay float32


def test_torch_compile_trains_and_evaluates_like_eager():
    model = small_vgg().to(CUDA)
    eager = copy.deepcopy(model)
    x, y = cifar_like_batch()
    loss = F.cross_entropy(torch.compile(model)(x).mean(0), y)
    loss.backward()
    eager_loss = F.cross_entropy(eager(x).mean(0), y)
    assert torch.isfinite(loss) and abs(loss.item() - eager_loss.item()) <= 1e-2 * eager_loss.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    # evaluation in float64, where a reordered or contracted sum cannot move a membrane across the threshold
    model64 = small_vgg().to(CUDA, torch.float64).eval()
    x64, _ = cifar_like_batch(seed=2, dtype=torch.float64)
    with torch.no_grad():
        expected = model64(x64)
        torch.testing.assert_close(torch.compile(model64)(x64), expected, rtol=1e-9, atol=1e-9)
    assert expected.abs().sum() > 0


def test_lightning_16_mixed_fit_of_the_quickstart_classifier():
    recipe = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    task = SpikingClassifier(**recipe["model"]["init_args"])
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = quiet_trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, DigitsDataModule(**recipe["data"]["init_args"]))
    assert trainer.global_step == 5
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0 <= float(trainer.callback_metrics["val/acc"]) <= 1
    after = task.model.state_dict()
    assert any(not torch.equal(before[k], v.cpu()) for k, v in after.items() if v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in task.parameters())  # float32 master weights
    for name, buffer in task.model.named_buffers():
        if "running" in name:
            assert buffer.dtype == torch.float32 and torch.isfinite(buffer).all(), name
