"""SpikeMonitor and EnergyMonitor in short Lightning runs: logged values, W&B and TensorBoard heatmaps, errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import offline_wandb, quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.callbacks.energy_monitor import EnergyMonitor
from spikenorm.callbacks.spike_monitor import SpikeMonitor
from spikenorm.loggers import WandbLogger
from spikenorm.models import LayerSpec, SpikingMLP
from spikenorm.neurons import IF
from spikenorm.tasks import SpikingClassifier
from spikenorm.wandb_runs import read_offline_run

T = 3


def _data(n: int = 24, features: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], logger: object = False, epochs: int = 1) -> pl.Trainer:
    return quiet_trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )


def _tensorboard_tags(log_dir: str) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events.Tags()


def test_spiking_classifier_logs_to_wandb_and_tensorboard(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = SpikingMLP(8, 2, hidden=(16,), layers=LayerSpec(membrane_norm="mpbn"))
    task = SpikingClassifier(model, time_steps=T)
    tb_logger = TensorBoardLogger(tmp_path / "tb", name="run")
    callbacks = [SpikeMonitor(every_n_epochs=2), EnergyMonitor(per_layer=True)]
    with offline_wandb(tmp_path):
        wandb_logger = WandbLogger(save_dir=tmp_path / "logs")
        trainer = _trainer(tmp_path, callbacks, [wandb_logger, tb_logger], epochs=2)
        try:
            trainer.fit(task, _data(), _data())
        finally:
            wandb_logger.experiment.finish()

    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    history = read_offline_run(run_dir)["history"]
    assert len([r for r in history if "val/acc" in r]) == 2
    (spikes,) = [r for r in history if "spikes/mean_rate" in r]  # every_n_epochs=2: the second epoch only
    energy = [r for r in history if "energy/uj" in r]
    assert len(energy) == 2
    (image_row,) = [r for r in history if "spikes/heatmap" in r]
    image = image_row["spikes/heatmap"]  # log_image logs a list of images: one here
    assert image["_type"] == "images/separated" and image["count"] == 1 and image["format"] == "png"
    (png,) = image["filenames"]
    assert (run_dir / "files" / png).read_bytes().startswith(b"\x89PNG")

    # the logged rates are those of the final model on the validation data, computed here with numpy
    task.eval()
    with torch.no_grad():
        layer_spikes = [model.features[0](task.encode(x)).numpy() for x, _ in _data()]
    fired = sum((s != 0).sum(axis=(0, 1)) for s in layer_spikes)
    total = sum(s.sum() for s in layer_spikes)
    neuron_steps = sum(s.size for s in layer_spikes)
    assert spikes["spikes/rate/features.0.2"] == pytest.approx(total / neuron_steps, rel=1e-6)
    assert spikes["spikes/dead/features.0.2"] == pytest.approx(np.mean(fired == 0))
    assert spikes["spikes/saturated/features.0.2"] == pytest.approx(np.mean(fired == 24 * T))
    per_step = sum(s.sum(axis=(1, 2)) for s in layer_spikes) / (24 * 16)
    for t in range(T):
        assert spikes[f"spikes/step_rate/features.0.2/t{t}"] == pytest.approx(per_step[t], rel=1e-6)

    last = energy[-1]
    # live: input layer dense (T*8*16 MACs), tdbn and MPBN one MAC per element (2*T*16), readout on spikes;
    # folded: the same without the norms
    assert last["energy/macs/features.0.0"] == T * 8 * 16
    assert last["energy/macs"] - last["energy/macs_folded"] == pytest.approx(2 * T * 16)
    assert last["energy/macs_folded"] == pytest.approx(T * 8 * 16)
    assert last["energy/sops"] == pytest.approx(total * 2 / 24, rel=1e-6)  # readout 16 -> 2 on the spikes
    assert last["energy/uj"] == pytest.approx((4.6 * last["energy/macs"] + 0.9 * last["energy/sops"]) * 1e-6, rel=1e-6)
    assert last["energy/ann_uj"] == pytest.approx(4.6 * (8 * 16 + 16 * 2) * 1e-6, rel=1e-6)

    tags = _tensorboard_tags(tb_logger.log_dir)
    assert "spikes/heatmap" in tags["images"]
    assert {"spikes/rate/features.0.2", "energy/uj", "energy/uj_folded"} <= set(tags["scalars"])


def test_test_step_rates_are_the_per_step_rates_averaged_over_layers(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = SpikingMLP(8, 2, hidden=(16, 12))
    task = SpikingClassifier(model, time_steps=T)
    monitor = SpikeMonitor(heatmap=False, test_step_rates=True)
    trainer = _trainer(tmp_path, [monitor])
    trainer.validate(task, _data())
    assert not any(k.startswith("test/spikes/") for k in trainer.callback_metrics)  # validation: spikes/ only
    trainer.test(task, _data())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    # the same rates computed here with numpy: per layer and step, then averaged over the two layers
    task.eval()
    with torch.no_grad():
        first = [model.features[0](task.encode(x)) for x, _ in _data()]  # spikes [T, batch, 16]
        second = [model.features[1](spikes) for spikes in first]  # [T, batch, 12]
    per_step = np.mean([torch.cat(spikes, 1).mean((1, 2)).numpy() for spikes in (first, second)], axis=0)
    assert per_step.min() > 0
    for t in range(T):
        assert metrics[f"test/spikes/step_rate/t{t}"] == pytest.approx(per_step[t], rel=1e-6)
    assert f"test/spikes/step_rate/t{T}" not in metrics
    assert metrics["test/spikes/first_step_ratio"] == pytest.approx(per_step[0] / per_step[1:].mean(), rel=1e-6)

    trainer = _trainer(tmp_path, [SpikeMonitor(heatmap=False)])  # off by default
    trainer.test(task, _data())
    assert not any(k.startswith("test/spikes/") for k in trainer.callback_metrics)


class SnnTorchClassifier(nn.Module):
    """fc -> Leaky(init_hidden) -> fc -> Leaky, one call per time step over a static input."""

    def __init__(self) -> None:
        import snntorch as snn

        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 2)
        self.lif1 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True)
        self.lif2 = snn.Leaky(beta=0.5, threshold=0.5, init_hidden=True, output=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.lif1.reset_mem()
        self.lif2.reset_mem()
        hidden, out = [], []
        for _ in range(T):
            hidden.append(self.lif1(self.fc1(x)))
            out.append(self.lif2(self.fc2(hidden[-1]))[1])
        return torch.stack(out), torch.stack(hidden)


class SnnTorchModule(pl.LightningModule):
    """Holds its network as ``net`` (not ``model``) and a snnTorch ``teacher`` that must not be monitored."""

    time_steps = T

    def __init__(self) -> None:
        import snntorch as snn

        super().__init__()
        torch.manual_seed(0)
        self.net = SnnTorchClassifier()
        self.teacher = snn.Leaky(beta=0.9)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, _ = self.net(x)
        self.log("val/acc", (logits.mean(0).argmax(-1) == y).float().mean())


def test_snntorch_module_without_model_attribute(tmp_path: Path) -> None:
    module = SnnTorchModule()
    callbacks = [SpikeMonitor(heatmap=False), EnergyMonitor()]
    with pytest.warns(
        UserWarning,
        match=r"SnnTorchModule holds no spikenorm network to fold .*its neurons are "
        r"net.lif1 \(snntorch Leaky\), net.lif2 \(snntorch Leaky\)\)",
    ):
        _trainer(tmp_path, callbacks).validate(module, _data())
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    assert not any("teacher" in k for k in metrics)
    assert not any("_folded" in k for k in metrics)
    with torch.no_grad():
        hidden = np.concatenate([module.net(x)[1].numpy() for x, _ in _data()], axis=1)  # [T, 24, 12]
    assert metrics["spikes/rate/net.lif1"] == pytest.approx(hidden.mean(), rel=1e-6)
    for t in range(T):
        assert metrics[f"spikes/step_rate/net.lif1/t{t}"] == pytest.approx(hidden[t].mean(), rel=1e-6)
    assert f"spikes/step_rate/net.lif1/t{T}" not in metrics
    assert metrics["energy/macs"] == pytest.approx(T * 8 * 12)  # fc1 on analog input
    assert metrics["energy/sops"] == pytest.approx(hidden.sum() / 24 * 2, rel=1e-6)  # fc2 on spikes
    assert metrics["energy/ann_uj"] == pytest.approx(4.6 * (8 * 12 + 12 * 2) * 1e-6, rel=1e-6)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        SpikeMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        EnergyMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="e_mac_pj"):
        EnergyMonitor(e_mac_pj=-4.6)
    with pytest.raises(ValueError, match="e_ac_pj"):
        EnergyMonitor(e_ac_pj=-0.9)
    with pytest.raises(ValueError, match="time_steps"):
        EnergyMonitor(time_steps=0)
    with pytest.raises(ValueError, match="Linear has no spiking neurons"):
        _trainer(tmp_path, [SpikeMonitor()]).validate(PlainModule(nn.Linear(8, 2)), _data())
    with pytest.raises(ValueError, match="no Linear, Conv or norm layer"):
        _trainer(tmp_path, [EnergyMonitor()]).validate(PlainModule(IF()), _data())


class PlainModule(pl.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.model(batch[0])
