"""FoldNormalization: folded accuracy and flipped spikes logged during fit, folded model exported at fit end."""

from __future__ import annotations

import pytest
import torch
from helpers import short_trainer
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from test_fold import vgg

from spikenorm.callbacks import FoldNormalization
from spikenorm.datamodules import DigitsDataModule
from spikenorm.fold import fold_model, load_folded
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import SpikingClassifier


def _fit(tmp_path, callbacks, epochs=2):
    seed_everything(0)
    net = vgg(elementwise=True, num_classes=10)  # channel-wise BN and element-wise MPBN
    task = SpikingClassifier(net, time_steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    trainer = short_trainer(6, 3, callbacks, max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path)
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


class FirstEpochBest(Callback):
    """Logs ``marker = -epoch`` at every validation, so a ModelCheckpoint maximising it keeps epoch 0."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("marker", -float(trainer.current_epoch))


def test_the_folded_files_hold_the_best_checkpoints_weights(tmp_path):
    """Issue 25, row 7: the CLI tests the best checkpoint, so the folded files hold its weights, not the final
    ones (``weights="last"`` keeps the final weights)."""
    best, last = FoldNormalization(export=False), FoldNormalization(export=False, weights="last", filename="final")
    keep_first = ModelCheckpoint(monitor="marker", mode="max")
    trainer, task = _fit(tmp_path, [FirstEpochBest(), keep_first, best], epochs=2)
    assert "epoch=0" in keep_first.best_model_path and best.folded_from == keep_first.best_model_path
    last.on_fit_end(trainer, task)
    assert last.folded_from == "the final weights"
    state = torch.load(keep_first.best_model_path, weights_only=True)["state_dict"]
    at_best = SpikingClassifier(vgg(elementwise=True, num_classes=10), time_steps=3)
    at_best.load_state_dict(state)
    x = torch.randn(3, 5, 1, 8, 8)
    assert torch.equal(load_folded(best.saved_paths[0])(x), fold_model(at_best.model)(x))
    assert torch.equal(load_folded(last.saved_paths[0])(x), fold_model(task.model)(x))
    assert not torch.equal(fold_model(at_best.model)(x), fold_model(task.model)(x))  # two sets of weights
    assert f"(weights: {keep_first.best_model_path})" in best.summary_line()
    trainer.test(task, DigitsDataModule(batch_size=32), ckpt_path="best", verbose=False)  # as the CLI does next
    assert f"(weights: {keep_first.best_model_path})" in best.summary_line()  # not forgotten by the restore


def test_an_unfoldable_network_with_warn_runs_without_folding_and_says_why(tmp_path):
    """Issue 25, row 13: ``unfoldable="warn"`` lets a norm that does not fold (tebn) train, with one warning, no
    folded numbers and no files, and a summary line with the reason; ``"error"`` (the default) stops at setup."""
    network = SpikingVGG(
        [8, "A", 16], in_channels=1, num_classes=10, input_size=8, layers=LayerSpec(norm="tebn", time_steps=2)
    )
    callback = FoldNormalization(unfoldable="warn")
    trainer = short_trainer(2, 1, [callback], default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="FoldNormalization cannot fold and save SpikingVGG"):
        trainer.fit(SpikingClassifier(network, time_steps=2), DigitsDataModule(batch_size=32))
    assert trainer.global_step == 2 and "val/acc_folded" not in trainer.callback_metrics
    assert callback.saved_paths == [] and callback.summary_line().startswith("folded model   not foldable: ")
    assert "tebn" in callback.summary_line().lower() or "TEBN" in callback.summary_line()
    with pytest.raises(ValueError, match="unknown unfoldable 'skip'; available: error, warn"):
        FoldNormalization(unfoldable="skip")
