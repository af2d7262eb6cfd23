"""Configuration errors surface before the first training step, not after an epoch (issue 16, row 8).

Each fit below carries a recorder callback after the one under test: the error must come while the trainer has
taken no optimizer step and no loss was back-propagated, and, for what is checked at setup, before any training
batch was started.
"""

from __future__ import annotations

import pytest
import torch
from helpers import short_trainer
from lightning.pytorch import Callback
from test_recalibrate_guards import HandLIF, reset_hand_neurons
from torch import nn

from spikenorm.callbacks import BNRecalibration, FoldNormalization, NIRExport, PackedBinaryExport
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingMLP, SpikingResNet19, SpikingVGG
from spikenorm.neurons import LIF
from spikenorm.tasks import SpikingClassifier


class HookRecorder(Callback):
    """The training hooks the trainer reached."""

    def __init__(self) -> None:
        self.hooks: list[str] = []

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self.hooks.append("on_train_batch_start")

    def on_before_backward(self, *args, **kwargs) -> None:
        self.hooks.append("on_before_backward")


def vgg(**kwargs) -> SpikingVGG:
    return SpikingVGG([8, "A", 16], in_channels=1, num_classes=10, input_size=8, **kwargs)


def fit_fails_before_training(tmp_path, network, callback, match) -> list[str]:
    """Fit ``network`` with ``callback``; assert a ValueError matching ``match`` before any step; the hooks seen."""
    recorder = HookRecorder()
    trainer = short_trainer(2, 1, [callback, recorder], default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=match):
        trainer.fit(SpikingClassifier(network, time_steps=2), datamodule=DigitsDataModule(32))
    assert trainer.global_step == 0 and "on_before_backward" not in recorder.hooks
    return recorder.hooks


def test_bn_recalibration_without_bn_layers_fails_at_setup(tmp_path):
    hooks = fit_fails_before_training(
        tmp_path,
        vgg(layers=LayerSpec(norm="none")),
        BNRecalibration(num_batches=1),
        r"BNRecalibration: SpikingVGG has no BN layer .* remove the callback",
    )
    assert hooks == []


def test_bn_recalibration_asking_more_batches_than_the_loader_has_fails_when_training_starts(tmp_path):
    hooks = fit_fails_before_training(
        tmp_path,
        vgg(),
        BNRecalibration(num_batches=10_000),
        r"num_batches=10000\): the training data gives only \d+ batch\(es\)",
    )
    assert hooks == []


def test_fold_normalization_of_an_unfoldable_model_fails_at_setup(tmp_path):
    network = vgg(layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": 2}))
    hooks = fit_fails_before_training(
        tmp_path,
        network,
        FoldNormalization(),
        r"FoldNormalization cannot fold and save SpikingVGG: cannot fold norm layer "
        r"'features.0.1' \(BNTT\)",
    )
    assert hooks == []


class CustomLIF(LIF):
    """A user's neuron class: it folds, but the safe folded-model format does not rebuild it."""


def test_fold_normalization_of_a_model_the_safe_format_cannot_save_fails_at_setup(tmp_path):
    network = SpikingMLP(64, 10, hidden=(16,))
    network.features[0][2] = CustomLIF()
    hooks = fit_fails_before_training(
        tmp_path,
        network,
        FoldNormalization(),
        r"module 'features.0.2' is a test_setup_checks.CustomLIF; the safe format",
    )
    assert hooks == []


@pytest.mark.parametrize(
    "build",
    [
        lambda: SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="mpbn")),
        lambda: SpikingMLP(20, 4, layers=LayerSpec(norm="mpbn")),
        lambda: SpikingResNet19(num_classes=5, in_channels=2, width=0.0625, layers=LayerSpec(norm="mpbn")),
    ],
)
def test_mpbn_as_the_post_conv_norm_is_refused_when_the_model_is_built(build):
    with pytest.raises(
        ValueError,
        match=r"norm='mpbn' normalizes the membrane potential .* use membrane_norm='mpbn' "
        r"together with a post-conv norm such as norm='tdbn'",
    ):
        build()


def test_nir_export_of_an_unfoldable_model_fails_at_setup(tmp_path):
    hooks = fit_fails_before_training(
        tmp_path,
        vgg(layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": 2})),
        NIRExport(),
        r"NIRExport could not export SpikingVGG to NIR: cannot fold norm layer",
    )
    assert hooks == []


def test_nir_export_of_what_nir_cannot_express_fails_before_the_first_step(tmp_path):
    """Soft reset folds, but NIR cannot express it: found on the first batch (its shapes are needed), before
    the training step of that batch."""
    fit_fails_before_training(
        tmp_path, vgg(layers=LayerSpec(neuron_kwargs={"reset": "soft"})), NIRExport(), r"soft reset"
    )


def test_packed_binary_export_needs_binary_layers_at_setup_and_no_datamodule(tmp_path):
    hooks = fit_fails_before_training(tmp_path, vgg(), PackedBinaryExport(), "binary-weight layers")
    assert hooks == []
    # loaders passed to fit (no datamodule): the reload check runs on the first training batch
    callback = PackedBinaryExport()
    data = DigitsDataModule(32)
    data.setup("fit")
    trainer = short_trainer(2, 1, [callback], enable_checkpointing=True, default_root_dir=tmp_path)
    network = SpikingVGG([8, 8, "A", 16], in_channels=1, num_classes=10, layers=LayerSpec(binary_weights=True))
    trainer.fit(SpikingClassifier(network, time_steps=2), data.train_dataloader(), data.val_dataloader())
    assert callback.path.exists() and callback.max_abs_diff == 0.0


def test_bn_recalibration_of_a_model_whose_neurons_it_cannot_reset_fails_when_training_starts(tmp_path):
    """Row 9 at fit time: a hand-written neuron keeping ``self.v`` is named before the first step; with
    ``reset_fn`` the same fit trains and recalibrates."""

    class DigitsHandNet(nn.Module):
        num_classes = 10

        def __init__(self) -> None:
            super().__init__()
            self.fc, self.bn, self.lif, self.out = nn.Linear(64, 16), nn.BatchNorm1d(16), HandLIF(), nn.Linear(16, 10)

        def forward(self, x):
            return torch.stack([self.out(self.lif(self.bn(self.fc(x_t.flatten(1))))) for x_t in x])

    hooks = fit_fails_before_training(
        tmp_path, DigitsHandNet(), BNRecalibration(num_batches=1), r"'lif' \(HandLIF\.v\).*pass reset_fn="
    )
    assert hooks == []
    callback = BNRecalibration(num_batches=1, reset_fn=reset_hand_neurons)
    trainer = short_trainer(2, 1, [callback], default_root_dir=tmp_path)
    trainer.fit(SpikingClassifier(DigitsHandNet(), time_steps=2), datamodule=DigitsDataModule(32))
    assert callback.recalibrations >= 1
