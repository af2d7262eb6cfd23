"""FoldNormalization: folded accuracy and flipped spikes logged during fit, folded model exported at fit end."""

from __future__ import annotations

import pytest
import torch
from helpers import short_trainer
from lightning.pytorch import LightningModule, Trainer, seed_everything
from test_fold import vgg

from spikenorm.callbacks import FoldNormalization
from spikenorm.datamodules import DigitsDataModule
from spikenorm.fold import fold_model, load_folded
from spikenorm.tasks import SpikingClassifier


def _fit(tmp_path, callback, epochs=2):
    seed_everything(0)
    net = vgg(elementwise=True, num_classes=10)  # channel-wise BN and element-wise MPBN
    task = SpikingClassifier(net, time_steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    trainer = short_trainer(6, 3, [callback], max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(task, DigitsDataModule(batch_size=32))
    return trainer, task


def test_logs_folded_accuracy_and_exports(tmp_path):
    callback = FoldNormalization()
    trainer, task = _fit(tmp_path, callback)
    metrics = trainer.callback_metrics
    assert float(metrics["val/flipped_spikes_folded"]) == 0.0
    assert float(metrics["val/max_abs_diff_folded"]) < 1e-9
    assert abs(float(metrics["val/acc_folded"]) - float(metrics["val/acc"])) < 0.02
    names = sorted(p.name for p in callback.saved_paths)
    assert names == ["folded_model.pt", "folded_model.pt2"]
    x = torch.randn(3, 5, 1, 8, 8)
    expected = fold_model(task.model)(x)
    assert torch.equal(load_folded(callback.saved_paths[0])(x), expected)
    program = torch.export.load(str(callback.saved_paths[1]))
    assert torch.equal(program.module()(x), expected)
    assert FoldNormalization().load_state_dict(callback.state_dict()) is None


def test_every_n_epochs_skips_epochs(tmp_path):
    trainer, _ = _fit(tmp_path, FoldNormalization(every_n_epochs=5, save_on_fit_end=False), epochs=1)
    assert "val/acc_folded" not in trainer.callback_metrics


def test_bad_arguments_and_modules():
    with pytest.raises(ValueError, match="every_n_epochs"):
        FoldNormalization(every_n_epochs=0)
    with pytest.raises(ValueError, match="check_dtype"):
        FoldNormalization(check_dtype="float16")

    class NoModel(LightningModule):
        pass

    with pytest.raises(
        ValueError,
        match=r"FoldNormalization needs a LightningModule that offers NetworkTask "
        r"\(`model`; .*NoModel has no `model`",
    ):
        FoldNormalization().setup(Trainer(), NoModel(), "fit")
