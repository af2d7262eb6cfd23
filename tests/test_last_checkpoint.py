"""LastCheckpoint: last.ckpt at epoch ends (after validation) and every N steps, always under that one name."""

from __future__ import annotations

import torch
from helpers import short_trainer
from lightning.pytorch import seed_everything

from spikenorm.callbacks import LastCheckpoint
from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import SpikingMLP
from spikenorm.tasks import SpikingClassifier


def _fit(folder, max_epochs: int, every: int, ckpt_path=None) -> dict:
    seed_everything(0)
    task = SpikingClassifier(SpikingMLP(64, 10, hidden=(16,)), time_steps=2)
    checkpoint = LastCheckpoint(every_n_train_steps=every, dirpath=folder)
    trainer = short_trainer(
        10,
        2,
        [checkpoint],
        max_epochs=max_epochs,
        deterministic=True,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_epoch_end_save_follows_a_step_save_at_the_same_step_and_resumes_exactly(tmp_path):
    """10 steps an epoch, a step save every 5: the step-10 save comes before validation; the epoch-end save
    must still be written, or the resumed run validates epoch 0 again and ends elsewhere."""
    straight = _fit(tmp_path / "a", 2, 5)
    _fit(tmp_path / "b", 1, 5)
    first = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 10
    resumed = _fit(tmp_path / "b", 2, 5, ckpt_path=tmp_path / "b" / "last.ckpt")
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


def test_a_resume_with_another_interval_keeps_writing_last_ckpt(tmp_path):
    _fit(tmp_path, 1, 0)
    _fit(tmp_path, 2, 3, ckpt_path=tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 20


def test_an_env_step_interval_needs_a_task_that_counts_env_steps(tmp_path):
    """RL schedules count env steps (``every_n_env_steps``, used by the RL recipes and tests/test_rl_resume.py);
    a task without ``env_steps`` is refused at setup, and a negative interval at construction."""
    import pytest

    trainer = short_trainer(
        2, 1, [LastCheckpoint(every_n_env_steps=10)], enable_checkpointing=True, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"every_n_env_steps=10\): SpikingClassifier counts no env_steps"):
        trainer.fit(SpikingClassifier(SpikingMLP(64, 10, [16]), time_steps=2), DigitsDataModule(batch_size=32))
    with pytest.raises(ValueError, match="every_n_env_steps must be >= 0"):
        LastCheckpoint(every_n_env_steps=-1)
