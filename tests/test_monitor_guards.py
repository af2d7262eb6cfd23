"""SpikeMonitor and EnergyMonitor attach to neurons of the user's own (neuron_types), fail at setup on a model
they cannot monitor, and say why a model cannot be folded (issue 16 rows 8 and 9)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import quiet_trainer
from peer_models import PeerClassifier, classification_data
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.callbacks.energy_monitor import EnergyMonitor
from spikenorm.callbacks.spike_monitor import SpikeMonitor
from spikenorm.models import LayerSpec, SpikingMLP
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.tasks import SpikingClassifier

T = 3


class HandLIF(nn.Module):
    """A hand-written single-step neuron (no spikenorm, snnTorch or SpikingJelly base class)."""

    def __init__(self) -> None:
        super().__init__()
        self.v: Tensor | float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.v = 0.5 * self.v + x
        spikes = (self.v >= 0.5).to(x.dtype)
        self.v = self.v * (1 - spikes)
        return spikes


class MultiStepHandLIF(HandLIF):
    """The same neuron over all T steps of ``[T, B, ...]`` in one call (SpikingJelly's ``step_mode``)."""

    step_mode = "m"

    def forward(self, x: Tensor) -> Tensor:
        self.v = 0.0
        return torch.stack([super(MultiStepHandLIF, self).forward(x_t) for x_t in x])


class HandNet(nn.Module):
    """fc -> HandLIF -> fc, one call per step over a static input; returns logits and the hidden spikes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.lif, self.fc2 = nn.Linear(8, 12), HandLIF(), nn.Linear(12, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.lif.v = 0.0
        hidden = torch.stack([self.lif(self.fc1(x)) for _ in range(T)])
        return self.fc2(hidden), hidden


class Counting(pl.LightningModule):
    """Holds ``model``; counts the steps it runs, so tests can tell that an error came before the first one."""

    time_steps = T

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.steps = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.steps += 1
        return self(batch[0]).sum()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.steps += 1
        self(batch[0])

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.steps += 1
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def _trainer(tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return quiet_trainer(max_epochs=1, callbacks=callbacks, num_sanity_val_steps=0, default_root_dir=tmp_path)


def test_spike_monitor_records_a_neuron_class_of_the_users_own(tmp_path: Path) -> None:
    module = Counting(HandNet())
    _trainer(tmp_path, [SpikeMonitor(heatmap=False, neuron_types=[HandLIF])]).validate(module, _data())
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    with torch.no_grad():
        hidden = np.concatenate([module.model(x)[1].numpy() for x, _ in _data()], axis=1)  # [T, 16, 12]
    assert metrics["spikes/rate/lif"] == pytest.approx(hidden.mean(), rel=1e-6)
    for t in range(T):  # one call per step: the steps are told apart
        assert metrics[f"spikes/step_rate/lif/t{t}"] == pytest.approx(hidden[t].mean(), rel=1e-6)
    assert metrics["spikes/dead/lif"] == pytest.approx(np.mean(hidden.sum(axis=(0, 1)) == 0))


def test_a_multi_step_custom_neuron_is_read_by_its_step_mode() -> None:
    net = nn.Sequential(nn.Linear(4, 5), MultiStepHandLIF())
    x = torch.randn(T, 6, 4, generator=torch.Generator().manual_seed(0))
    with FiringRateRecorder(net, neuron_types=[MultiStepHandLIF]) as recorder, torch.no_grad():
        spikes = net(x).numpy()
    np.testing.assert_allclose(recorder.step_rates()["1"].numpy(), spikes.mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("callback", [SpikeMonitor, EnergyMonitor])
@pytest.mark.parametrize("entry", ["fit", "validate", "predict"])
def test_unknown_neurons_fail_at_setup_before_any_step(tmp_path: Path, callback: type, entry: str) -> None:
    module = Counting(HandNet())
    trainer = _trainer(tmp_path, [callback()])
    expected = r"HandNet has no spiking neurons to record .*pass neuron_types=\[YourNeuron\]"
    with pytest.raises(ValueError, match=expected):
        getattr(trainer, entry)(module, _data()) if entry != "fit" else trainer.fit(module, _data(), _data())
    assert module.steps == 0


@pytest.mark.parametrize("callback", [SpikeMonitor, EnergyMonitor])
def test_neuron_types_must_be_classes(callback: type) -> None:
    with pytest.raises(TypeError, match=r"neuron_types must list neuron classes .* got HandLIF\(\)"):
        callback(neuron_types=[HandLIF()])


def test_energy_monitor_counts_a_model_with_custom_neurons_and_says_why_it_is_not_folded(tmp_path: Path) -> None:
    module = Counting(HandNet())
    with pytest.warns(
        UserWarning,
        match=r"no \*_folded energy numbers: HandNet holds no spikenorm network to fold "
        r"\(no spikenorm neuron or norm layer\)",
    ):
        _trainer(tmp_path, [EnergyMonitor(neuron_types=[HandLIF])]).validate(module, _data())
    metrics = module.trainer.callback_metrics
    assert float(metrics["energy/macs"]) == pytest.approx(T * 8 * 12)  # fc1 on the analog input
    assert not any("_folded" in k for k in metrics)


def test_folding_a_spikingjelly_model_names_the_real_reason(tmp_path: Path) -> None:
    """It used to warn that the module "holds no network as `model`", although it does."""
    module = PeerClassifier("spikingjelly")
    loader = DataLoader(classification_data(12), batch_size=6)
    reason = (
        r"Sequential holds no spikenorm network to fold \(no spikenorm neuron or norm layer; its neurons are "
        r"2 \(spikingjelly LIFNode\), 6 \(spikingjelly LIFNode\)\); spikenorm.fold.fold_model folds spikenorm "
        r"layers only"
    )
    with pytest.warns(UserWarning, match=reason):
        _trainer(tmp_path, [EnergyMonitor()]).validate(module, loader)
    assert "energy/uj" in module.trainer.callback_metrics
    with pytest.raises(ValueError, match=r"EnergyMonitor\(folded=True\): " + reason):
        _trainer(tmp_path, [EnergyMonitor(folded=True)]).validate(module, loader)


def test_folded_true_raises_what_fold_model_raised_before_training(tmp_path: Path) -> None:
    module = SpikingClassifier(
        SpikingMLP(8, 2, hidden=(16,), layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": T})), time_steps=T
    )
    with pytest.raises(
        ValueError,
        match=r"EnergyMonitor\(folded=True\): spikenorm.fold.fold_model\(SpikingMLP\) "
        r"raised ValueError: cannot fold norm layer",
    ):
        _trainer(tmp_path, [EnergyMonitor(folded=True)]).fit(module, _data(), _data())
    assert module.global_step == 0


def test_a_foldable_model_kept_elsewhere_than_model_is_named(tmp_path: Path) -> None:
    class Elsewhere(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = SpikingMLP(8, 2, hidden=(16,))

        def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            self.net(batch[0].expand(T, *batch[0].shape))

    with pytest.raises(
        ValueError,
        match=r"Elsewhere has no `model` attribute; EnergyMonitor folds and runs "
        r"pl_module.model",
    ):
        _trainer(tmp_path, [EnergyMonitor(folded=True)]).validate(Elsewhere(), _data())
