"""SpikingClassifier: encoding, losses against closed forms, logging, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import quiet_trainer, short_trainer
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.models import SpikingMLP, SpikingVGG
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.tasks import SpikingClassifier, tet_loss


def _task(**kw) -> SpikingClassifier:
    model = SpikingVGG("small", in_channels=1, num_classes=10)
    return SpikingClassifier(model, **{"time_steps": 3, **kw})


def test_repeat_and_frames_encoding():
    task = _task()
    x = torch.randn(5, 1, 8, 8)
    enc = task.encode(x)
    assert enc.shape == (3, 5, 1, 8, 8) and torch.equal(enc[2], x)
    frames = _task(encoding="frames")
    seq = torch.randn(5, 3, 1, 8, 8)
    assert torch.equal(frames.encode(seq)[1], seq[:, 1])
    assert frames(seq).shape == (3, 5, 10)


def test_time_mismatch_and_bad_input_errors():
    with pytest.raises(ValueError, match=r"\[B, T, \.\.\.\] with T=3 .* got shape \(5, 4, 1, 8, 8\) with T=4"):
        _task(encoding="frames")(torch.randn(5, 4, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="val batch 7 .* 1 NaN and 0 Inf"):
        _task().validation_step((x, torch.zeros(2, dtype=torch.long)), 7)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        _task(loss="mse")
    with pytest.raises(ValueError, match="unknown encoding"):
        _task(encoding="poisson")
    with pytest.raises(ValueError, match="per-step logits"):
        SpikingClassifier(torch.nn.Flatten(0, 1), num_classes=10, time_steps=2)(torch.randn(3, 4))


def test_tet_loss_matches_closed_form():
    torch.manual_seed(0)
    o = torch.randn(4, 6, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    eps = 0.05
    on, yn = o.numpy(), y.numpy()
    total = 0.0
    for t in range(4):
        z = on[t] - on[t].max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        ce = -logp[np.arange(6), yn].mean()
        mse = ((on[t] - np.eye(5)[yn]) ** 2).mean()
        total += (1 - eps) * ce + eps * mse
    assert float(tet_loss(o, y, eps)) == pytest.approx(total / 4, rel=1e-12)


def test_firing_rate_recorder_counts_spikes():
    torch.manual_seed(1)
    model = SpikingMLP(8, 3, hidden=(16, 16))
    x = torch.rand(4, 10, 8)
    with FiringRateRecorder(model) as rec:
        model(x)
    first = model.features[0](x).detach()  # spikes of layer 1, computed again outside the recorder
    layer = "features.0.2"
    assert rec.layer_rates()[layer] == pytest.approx(float(first.mean()))
    np.testing.assert_allclose(rec.step_rates()[layer].numpy(), first.mean(dim=(1, 2)).numpy(), rtol=1e-6)
    assert rec.mean_rate() == pytest.approx(np.mean(list(rec.layer_rates().values())))


def test_trains_and_logs_on_a_separable_problem(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    task = SpikingClassifier(
        SpikingMLP(8, 2, hidden=(32,)),
        time_steps=2,
        loss="tet",
        optimizer=lambda params: torch.optim.Adam(params, lr=0.01),
    )
    trainer = quiet_trainer(max_epochs=8, default_root_dir=tmp_path)
    trainer.fit(task, loader, loader)
    metrics = trainer.callback_metrics
    assert float(metrics["val/acc"]) > 0.9
    assert 0.0 < float(metrics["val/firing_rate"]) < 1.0
    assert {"train/loss", "val/loss"} <= set(metrics)


def test_same_seed_gives_identical_training(tmp_path):
    from lightning.pytorch import seed_everything

    from spikenorm.datamodules import DigitsDataModule

    def run():
        seed_everything(3)
        task = SpikingClassifier(SpikingVGG("small", in_channels=1, num_classes=10), time_steps=2)
        trainer = short_trainer(5, 2, deterministic=True, default_root_dir=tmp_path)
        trainer.fit(task, DigitsDataModule(batch_size=32))
        return task.state_dict(), float(trainer.callback_metrics["val/loss"])

    (weights_a, loss_a), (weights_b, loss_b) = run(), run()
    assert loss_a == loss_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_firing_rates_are_an_option_checked_at_setup(tmp_path):
    """A model without spiking neurons: skipped with one warning (None), refused before any step (True)."""
    x = torch.randn(64, 8)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32)

    def fit(model, record):
        task = SpikingClassifier(model, num_classes=2, time_steps=2, record_firing_rates=record)
        trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
        trainer.fit(task, loader, loader)
        return trainer

    with pytest.warns(UserWarning, match=r"Linear has no spiking neurons.*SpikingClassifier logs no firing rate"):
        metrics = fit(torch.nn.Linear(8, 2), None).callback_metrics
    assert "val/acc" in metrics and "val/firing_rate" not in metrics
    with pytest.raises(ValueError, match=r"SpikingClassifier\(record_firing_rates=True\): Linear has no spiking "):
        fit(torch.nn.Linear(8, 2), True)
    spiking = SpikingMLP(8, 2, hidden=(16,))
    assert "val/firing_rate" not in fit(spiking, False).callback_metrics
    assert "val/firing_rate" in fit(spiking, True).callback_metrics
