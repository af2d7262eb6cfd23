"""PredictionWriter: one file per predict dataloader, never over an existing file."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.callbacks import PredictionWriter
from spikenorm.models import SpikingMLP
from spikenorm.tasks import SpikingClassifier


def _loader(n: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 64)), batch_size=4)


def _predict(tmp_path, loaders) -> PredictionWriter:
    writer = PredictionWriter(dirpath=tmp_path)
    trainer = Trainer(logger=False, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(SpikingClassifier(SpikingMLP(64, 10, hidden=(8,)), time_steps=3), dataloaders=loaders)
    return writer


def test_every_predict_dataloader_gets_its_file_with_all_its_samples(tmp_path):
    writer = _predict(tmp_path, [_loader(10), _loader(6)])
    assert [p.name for p in writer.written] == ["predictions-dataloader0.pt", "predictions-dataloader1.pt"]
    for path, count in zip(writer.written, (10, 6)):
        saved = torch.load(path, weights_only=True)
        assert saved["logits"].shape == (count, 3, 10) and saved["class"].shape == (count,)
        assert torch.equal(saved["class"], saved["probabilities"].argmax(-1))
        assert torch.equal(saved["batch_indices"], torch.arange(count))  # which sample each row is


def test_an_existing_file_is_not_overwritten(tmp_path):
    (tmp_path / "predictions.pt").write_text("the user's own file")
    writer = _predict(tmp_path, _loader(5))
    assert [p.name for p in writer.written] == ["predictions-1.pt"]
    assert (tmp_path / "predictions.pt").read_text() == "the user's own file"
