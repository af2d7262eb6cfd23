"""A checkpoint taken mid-epoch resumes to the same weights: the train loader of the DataModules is resumable.

Run (a) trains 2 epochs without a break; run (b) is the same run stopped early, writing checkpoints on the
way; each resume from one of them must end with exactly (a)'s weights. The digits train split (1257
images, batch 64) gives 20 steps per epoch, so step 7 is mid-epoch 0, step 20 is the last batch of epoch 0
and step 28 is mid-epoch 1.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset, SequentialSampler

from spikenorm.datamodules import DigitsDataModule
from spikenorm.datamodules.base import EpochShuffleSampler, ResumableDataLoader
from spikenorm.models import LayerSpec, SpikingMLP
from spikenorm.tasks import OnlineTraining, SpikingClassifier

STEPS_PER_EPOCH = 20
NOT_RESUMABLE = "ended before the epoch ended"


def _task(training_mode: str) -> SpikingClassifier:
    if training_mode == "online":  # OSR running statistics and OTS running thresholds must resume too
        model = SpikingMLP(
            64,
            10,
            hidden=(32,),
            layers=LayerSpec(norm="osr", neuron_kwargs={"reset": "soft", "ots": True, "ots_eval": "running"}),
        )
    else:
        model = SpikingMLP(64, 10, hidden=(32,))
    return SpikingClassifier(model, time_steps=2, online=OnlineTraining() if training_mode == "online" else None)


def _fit(training_mode, ckpt_path=None, callbacks=(), **trainer_kw):
    seed_everything(0)
    task, data = _task(training_mode), DigitsDataModule(batch_size=64)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        **trainer_kw,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    assert not [w for w in caught if NOT_RESUMABLE in str(w.message)], "Lightning found the loader not resumable"
    return trainer, {k: v.detach().clone() for k, v in task.state_dict().items()}


@pytest.mark.parametrize("training_mode", ["bptt", "online"])
def test_mid_epoch_checkpoint_resumes_to_the_same_weights(tmp_path, training_mode):
    full_trainer, full = _fit(training_mode, max_epochs=2)
    assert full_trainer.global_step == 2 * STEPS_PER_EPOCH

    every_7 = ModelCheckpoint(dirpath=tmp_path / "every7", every_n_train_steps=7, save_top_k=-1)
    every_10 = ModelCheckpoint(dirpath=tmp_path / "every10", every_n_train_steps=10, save_top_k=-1)
    _fit(training_mode, callbacks=[every_7, every_10], max_epochs=2, max_steps=28)
    checkpoints = {int(p.stem.split("step=")[1]): p for p in (tmp_path / "every7").glob("*.ckpt")}
    checkpoints |= {int(p.stem.split("step=")[1]): p for p in (tmp_path / "every10").glob("*.ckpt")}
    assert {7, 20, 28} <= set(checkpoints)

    saved = torch.load(checkpoints[7], weights_only=False)
    (loader_state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader_state["epoch"], loader_state["batches"]) == (0, 7)
    saved = torch.load(checkpoints[28], weights_only=False)
    (loader_state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader_state["epoch"], loader_state["batches"]) == (1, 8)

    for step in (7, 20, 28):  # mid epoch 0, last batch of epoch 0, mid epoch 1
        trainer, resumed = _fit(training_mode, ckpt_path=checkpoints[step], max_epochs=2)
        assert trainer.global_step == 2 * STEPS_PER_EPOCH, step
        assert resumed.keys() == full.keys()
        different = [k for k in full if not torch.equal(full[k], resumed[k])]
        assert not different, f"resumed from step {step}: {different} differ from the uninterrupted run"


# ------------------------------------------------------------------------------ the loader on its own


def _setup_digits(**kw) -> DigitsDataModule:
    dm = DigitsDataModule(**kw)
    dm.setup("fit")
    return dm


def _labels(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_round_trip_skips_at_the_sampler(num_workers):
    dm = _setup_digits(batch_size=100, num_workers=num_workers)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, EpochShuffleSampler)
    epoch0 = _labels(loader)
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    head = _labels(next(iterator) for _ in range(4))
    state = loader.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 4)
    rest = _labels(iterator)
    assert head + rest != epoch0  # another epoch, another order
    assert loader.state_dict() == {
        **state,
        "epoch": 2,
        "batches": 0,
    }  # a completed pass moves on

    fresh = _setup_digits(batch_size=100, num_workers=num_workers).train_dataloader()
    fresh.load_state_dict(state)
    assert _labels(fresh) == rest
    assert fresh.epoch == 2  # and the next pass is epoch 2's full order
    reference = _setup_digits(batch_size=100).train_dataloader()
    reference.sampler.set_epoch(2)
    assert _labels(fresh) == _labels(reference)


class _Counting(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.loaded.append(i)
        return i


def test_resume_skips_indices_without_loading_them():
    whole = [b.tolist() for b in ResumableDataLoader(_Counting(95), batch_size=10, seed=7)]
    data = _Counting(95)
    loader = ResumableDataLoader(data, batch_size=10, seed=7)
    loader.load_state_dict({"epoch": 0, "batches": 6, "batch_size": 10, "num_replicas": 1, "seed": 7})
    assert [b.tolist() for b in loader] == whole[6:]
    assert sorted(data.loaded) == sorted(i for batch in whole[6:] for i in batch)  # 35 loaded, not 95


def test_checkpoint_at_the_end_of_an_epoch_starts_the_next():
    loader = _setup_digits(batch_size=100).train_dataloader()
    loader.load_state_dict(
        {
            "epoch": 0,
            "batches": len(loader),
            "batch_size": 100,
            "num_replicas": 1,
            "seed": 0,
        }
    )
    reference = _setup_digits(batch_size=100).train_dataloader()
    reference.sampler.set_epoch(1)
    assert loader.epoch == 1 and _labels(loader) == _labels(reference)


def test_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        torch.manual_seed(epoch * 7 + seed)  # the global RNG must not matter
        sampler = EpochShuffleSampler(range(50), seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 0) == order(3, 0) and sorted(order(3, 0)) == list(range(50))
    assert len({tuple(order(s, e)) for s, e in [(3, 0), (3, 1), (4, 0), (4, 1), (2, 1)]}) == 5


def test_ranks_share_one_permutation():
    shards = []
    for rank in range(3):
        sampler = EpochShuffleSampler(range(10), seed=1, num_replicas=3, rank=rank)
        sampler.set_epoch(5)
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set().union(*shards) == set(range(10))
    whole = EpochShuffleSampler(range(10), seed=1)
    whole.set_epoch(5)
    assert shards[0][:3] + shards[1][:3] + shards[2][:3] != list(whole)  # strided, not blocked
    assert [x for trio in zip(*shards, strict=True) for x in trio][:10] == list(whole)


def test_lightning_can_reinstantiate_the_loader_with_another_sampler():
    from lightning.pytorch.utilities.data import (
        _update_dataloader,  # what Lightning calls (overfit_batches)
    )

    loader = _setup_digits(batch_size=32).train_dataloader()
    sequential = _update_dataloader(loader, SequentialSampler(loader.dataset))
    assert type(sequential) is ResumableDataLoader and isinstance(sequential.sampler, SequentialSampler)
    first = [y for _, y in sequential]
    sequential.load_state_dict({**sequential.state_dict(), "batches": 3})  # falls back to fetch-and-drop
    assert all(torch.equal(a, b) for a, b in zip([y for _, y in sequential], first[3:], strict=True))


def test_val_test_and_predict_loaders_stay_plain():
    dm = _setup_digits()
    dm.setup("test")
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert type(loader) is torch.utils.data.DataLoader and isinstance(loader.sampler, SequentialSampler)
