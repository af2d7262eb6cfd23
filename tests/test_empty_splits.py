"""An empty split is an error at setup, naming the split (issue 25, row 3).

Before, Lightning met an empty training loader with an info line, the fit "finished", and the CLI then tested,
folded and logged as if the model had trained.
"""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import SpikingMLP
from spikenorm.tasks import SpikingClassifier


class EmptiedDigits(DigitsDataModule):
    """Digits whose ``empty`` split has no samples after setup."""

    def __init__(self, empty: str) -> None:
        super().__init__(batch_size=32)
        self.empty = empty

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dataset = getattr(self, f"{self.empty}_dataset")
        setattr(self, f"{self.empty}_dataset", torch.utils.data.Subset(dataset, []))


class StepCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self.batches += 1

    def on_validation_batch_start(self, *args, **kwargs) -> None:
        self.batches += 1


def task() -> SpikingClassifier:
    return SpikingClassifier(SpikingMLP(64, 10, [16]), time_steps=2)


@pytest.mark.parametrize(("empty", "split"), [("train", "train"), ("val", "validation")])
def test_fit_with_an_empty_split_fails_at_setup_naming_it(tmp_path, empty, split):
    counter = StepCounter()
    trainer = quiet_trainer(max_epochs=1, callbacks=[counter], default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=f"the {split} split is empty: EmptiedDigits's {empty}_dataloader"):
        trainer.fit(task(), datamodule=EmptiedDigits(empty))
    assert counter.batches == 0 and trainer.global_step == 0


def test_an_empty_validation_split_switched_off_by_the_user_is_not_an_error(tmp_path):
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task(), datamodule=EmptiedDigits("val"))
    assert trainer.global_step == 2


def test_test_on_an_empty_test_split_fails_at_setup(tmp_path):
    trainer = quiet_trainer(default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="the test split is empty"):
        trainer.test(task(), datamodule=EmptiedDigits("test"))


def test_fit_on_an_empty_loader_given_to_the_trainer_fails(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)), batch_size=8)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="the train split is empty: the loaders given to the trainer"):
        trainer.fit(task(), train_dataloaders=empty)


def test_a_split_smaller_than_a_batch_with_drop_last_counts_as_empty(tmp_path):
    dataset = TensorDataset(torch.zeros(5, 64), torch.zeros(5, dtype=torch.long))
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="the train split is empty"):
        trainer.fit(task(), train_dataloaders=DataLoader(dataset, batch_size=8, drop_last=True))
