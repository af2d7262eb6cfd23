"""Bad numbers stop training at the first bad batch (issue 16, row 7), with the batch, tensor and counts named."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.models import SpikingMLP
from spikenorm.tasks import OnlineTraining, SpikingClassifier

BATCH = 8


def _loader(bad_batch: int, value: float) -> DataLoader:
    """Five batches of digits-sized inputs; one entry of batch ``bad_batch`` is set to ``value``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5 * BATCH, 64, generator=generator)
    y = torch.randint(0, 10, (5 * BATCH,), generator=generator)
    x[bad_batch * BATCH + 3, 17] = value
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def _fit(task: SpikingClassifier, loader: DataLoader) -> Trainer:
    trainer = quiet_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=loader)
    return trainer


def _all_finite(module: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()
    )


@pytest.mark.parametrize("training_mode", ["bptt", "online"])
def test_nan_input_stops_at_its_batch_by_default(training_mode):
    online = OnlineTraining() if training_mode == "online" else None
    task = SpikingClassifier(SpikingMLP(64, 10, hidden=(16,)), time_steps=2, online=online)
    assert task.hparams.check_finite is True
    with pytest.raises(
        ValueError,
        match=r"train batch 2 \(epoch 0\): the input tensor received non-finite values: "
        r"1 NaN and 0 Inf entries in a tensor of shape \(8, 64\)",
    ):
        _fit(task, _loader(2, float("nan")))
    assert _all_finite(task)  # parameters and BN running statistics were never touched by the bad batch


def test_inf_input_is_counted():
    task = SpikingClassifier(SpikingMLP(64, 10, hidden=(16,)), time_steps=2)
    with pytest.raises(ValueError, match=r"train batch 4 .* 0 NaN and 1 Inf"):
        _fit(task, _loader(4, float("inf")))


class _Overflowing(nn.Module):
    """Per-step logits that overflow float32 for inputs above 1e20 (a finite input, a non-finite loss)."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * x.abs().amax() ** 2


def test_non_finite_loss_from_finite_input_stops_before_the_optimizer_step():
    task = SpikingClassifier(_Overflowing(), time_steps=2)
    with pytest.raises(ValueError, match=r"train batch 1 \(epoch 0\): the loss"):
        _fit(task, _loader(1, 1e30))
    assert _all_finite(task)


def test_opting_out_trains_on_silently():
    """What ``check_finite=False`` (the old default) does: the NaN spreads into the parameters unnoticed."""
    task = SpikingClassifier(SpikingMLP(64, 10, hidden=(16,)), time_steps=2, check_finite=False)
    _fit(task, _loader(2, float("nan")))
    assert not _all_finite(task)


def test_evaluation_batches_are_checked_too():
    task = SpikingClassifier(SpikingMLP(64, 10, hidden=(16,)), time_steps=2)
    trainer = quiet_trainer()
    with pytest.raises(ValueError, match=r"test batch 3 \(epoch 0\): the input tensor .* 1 NaN"):
        trainer.test(task, dataloaders=_loader(3, float("nan")), verbose=False)
