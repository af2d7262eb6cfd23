"""run.json (spikenorm.run_status): what a fit leaves in its run folder when it crashes, is interrupted or is
resumed, and how the file is read. The finished case through the CLI is in tests/test_cli_workflow.py."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from spikenorm.run_status import RUN_STATUS_FILE, RunStatus, RunStatusRecorder, read_run_status, write_run_status


class RaiseAt(Callback):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 2:
            raise self.error


def _fit(folder, *callbacks) -> Trainer:
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=CSVLogger(folder, name="run", version="v"),
        callbacks=[RunStatusRecorder(), *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(BoringModel())
    return trainer


def test_a_fit_that_raises_is_marked_crashed_with_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="diverged"):
        _fit(tmp_path, RaiseAt(RuntimeError("diverged")))
    status = read_run_status(tmp_path / "run" / "v")
    assert status.status == "crashed" and status.error == "RuntimeError: diverged" and status.ended


def test_a_resumed_run_keeps_its_start_and_counts_the_resume(tmp_path):
    folder = tmp_path / "run" / "v"
    write_run_status(folder, RunStatus("interrupted", started="2026-01-01T00:00:00+00:00", resumes=1))
    _fit(tmp_path)  # no CLI: nothing calls finish(), so the status stays running
    status = read_run_status(folder)
    assert (status.status, status.started, status.resumes) == ("running", "2026-01-01T00:00:00+00:00", 2)


def test_status_files_round_trip_refuse_garbage_and_ignore_unknown_keys(tmp_path):
    assert read_run_status(tmp_path) is None
    written = RunStatus("finished", started="s", ended="e", results={"test/acc": 0.5}, best_checkpoint="/b.ckpt")
    write_run_status(tmp_path, written)
    assert read_run_status(tmp_path) == written
    data = json.loads((tmp_path / RUN_STATUS_FILE).read_text()) | {"added_by_a_later_version": 1}
    (tmp_path / RUN_STATUS_FILE).write_text(json.dumps(data))
    assert read_run_status(tmp_path) == written
    (tmp_path / RUN_STATUS_FILE).write_text('{"status": "exploded", "started": "s"}')
    with pytest.raises(ValueError, match="not a spikenorm run status file.*exploded"):
        read_run_status(tmp_path)
    (tmp_path / RUN_STATUS_FILE).write_text("{")
    with pytest.raises(ValueError, match="not a spikenorm run status file"):
        read_run_status(tmp_path)


def test_a_fast_dev_run_leaves_no_status_file(tmp_path):
    trainer = Trainer(
        fast_dev_run=True,
        default_root_dir=tmp_path,
        callbacks=[RunStatusRecorder()],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(BoringModel())
    assert not list(tmp_path.rglob(RUN_STATUS_FILE))
