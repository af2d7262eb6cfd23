"""PackedBinaryExport: the packed 1-bit model is written at fit end and reloads to identical outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import short_trainer
from lightning.pytorch import seed_everything

from spikenorm.binary_packing import load_packed
from spikenorm.callbacks import PackedBinaryExport
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import SpikingClassifier


def trainer(tmp_path, callback):
    return short_trainer(3, 1, [callback], enable_checkpointing=True, default_root_dir=tmp_path)


def test_packed_model_written_and_exact(tmp_path):
    seed_everything(0)
    network = SpikingVGG(
        [8, 8, "A", 16], in_channels=1, num_classes=10, layers=LayerSpec(binary_weights=True, shortcuts="per_layer")
    )
    callback = PackedBinaryExport()
    task = SpikingClassifier(network, time_steps=2)
    trainer(tmp_path, callback).fit(task, DigitsDataModule(batch_size=32))
    assert callback.path is not None and callback.path.exists()
    assert callback.max_abs_diff == 0.0
    assert 0 < callback.size.ratio < 0.5 and callback.size.binary_weights > 0
    fresh = SpikingVGG(
        [8, 8, "A", 16], in_channels=1, num_classes=10, layers=LayerSpec(binary_weights=True, shortcuts="per_layer")
    )
    load_packed(fresh, callback.path)
    x = task.encode(torch.rand(5, 1, 8, 8))
    assert torch.equal(fresh.eval()(x), network.eval()(x))
    assert "packed model" in callback.summary_line()


def test_needs_binary_layers(tmp_path):
    task = SpikingClassifier(SpikingVGG([8, "A"], in_channels=1, num_classes=10), time_steps=2)
    with pytest.raises(ValueError, match="binary-weight layers"):
        trainer(tmp_path, PackedBinaryExport()).fit(task, DigitsDataModule(batch_size=32))
