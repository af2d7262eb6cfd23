"""An empty or truncated checkpoint file is named as such, in Python and on the CLI (issue 25, row 11).

Before, a zero-byte checkpoint gave an ``EOFError`` with an empty message in Python and "cannot mmap an empty
file" on the CLI.
"""

from __future__ import annotations

import sys

import pytest
import torch

from spikenorm.checkpoint_files import check_checkpoint_file
from spikenorm.models import SpikingMLP
from spikenorm.tasks import SpikingClassifier


@pytest.fixture
def checkpoint(tmp_path):
    task = SpikingClassifier(SpikingMLP(64, 10, [16]), time_steps=2)
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def test_a_whole_checkpoint_passes(checkpoint):
    check_checkpoint_file(checkpoint)
    check_checkpoint_file(checkpoint.parent / "not-there.ckpt")  # left to the loader, which names a missing file


@pytest.mark.parametrize("task", ["SpikingClassifier", "SpikingTD3"])
def test_an_empty_checkpoint_is_named_empty_when_loaded(tmp_path, task):
    import spikenorm.tasks

    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=rf"checkpoint {empty} is empty \(0 bytes\)"):
        getattr(spikenorm.tasks, task).load_from_checkpoint(empty)


def test_a_truncated_checkpoint_is_named_truncated(checkpoint):
    cut = checkpoint.with_name("cut.ckpt")
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"checkpoint {cut} is truncated or not a checkpoint"):
        SpikingClassifier.load_from_checkpoint(cut)


def test_the_cli_names_an_empty_checkpoint(tmp_path, monkeypatch):
    """``spikenorm test --ckpt_path <empty file>``, in this process: the error comes before anything is built."""
    from spikenorm.cli import main

    monkeypatch.setenv("SPIKENORM_MALLOC", "default")  # leave this process's malloc settings alone
    monkeypatch.setattr(sys, "argv", ["spikenorm"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.ckpt").touch()
    with pytest.raises(ValueError, match=r"checkpoint empty.ckpt is empty \(0 bytes\)"):
        main(["test", "--ckpt_path", "empty.ckpt", "--trainer.logger=false"])
