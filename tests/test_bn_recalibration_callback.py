"""BNRecalibration in Lightning fits: schedule, statistics of the batches it drew, logs, DDP, errors."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from peer_models import PeerClassifier, classification_data
from test_recalibrate_interop import bn_layers, numpy_statistics
from torch.utils.data import DataLoader, Subset

from spikenorm.callbacks import BNRecalibration
from spikenorm.callbacks.bn_recalibration import forward_inputs
from spikenorm.recalibrate import recalibrate_bn


class RecordingRecalibration(BNRecalibration):
    """Remembers the batches each forward of the recalibration saw, in order."""

    def __init__(self, **kwargs):
        self.seen = []
        super().__init__(forward=self._record, **kwargs)

    def _record(self, pl_module, batch):
        self.seen.append(batch)
        return forward_inputs(pl_module, batch)


def trainer(tmp_path, callback, **kwargs):
    options = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return Trainer(callbacks=[callback], **options)


def loaders(batch_size=8):
    data = classification_data()
    return DataLoader(data, batch_size=batch_size, shuffle=True), DataLoader(data, batch_size=batch_size)


@pytest.mark.parametrize("library", ["snntorch", "spikingjelly", "spikenorm"])
def test_fit_ends_with_exact_statistics_of_the_drawn_batches(tmp_path, library):
    callback = RecordingRecalibration(num_batches=3)
    task = PeerClassifier(library)
    trainer(tmp_path, callback).fit(task, *loaders())
    assert callback.recalibrations == 3  # before each of the 2 validations and at train end
    assert [n for n, m in task.named_modules() if not m.training] == []  # train flags restored
    last = callback.seen[-3:]  # the final pass of the last recalibration runs over all of its batches
    assert all(len(b[0]) == 8 for b in last)
    assert len({tuple(b[1].tolist()) for b in last}) == 3  # three different batches
    reference = numpy_statistics(library, task.model, [b[0].transpose(0, 1) for b in last])
    for name, layer in bn_layers(task.model).items():
        np.testing.assert_allclose(layer.running_mean.numpy(), reference[name][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), reference[name][1], rtol=1e-10)


def test_logs_shift_per_layer_and_time(tmp_path):
    callback = BNRecalibration(num_batches=2, at_train_end=False)
    fit = trainer(tmp_path, callback)
    fit.fit(PeerClassifier("snntorch"), *loaders())
    with open(fit.logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("recalibration/seconds")]
    assert len(logged) == 2 and all(float(r["recalibration/seconds"]) > 0 for r in logged)
    for layer in ("bn1", "bn2"):
        shifts = [float(r[f"recalibration/stat_error/{layer}"]) for r in logged]
        assert shifts[0] > 0 and all(np.isfinite(shifts))


def test_every_n_epochs_and_no_validation_schedule(tmp_path):
    callback = BNRecalibration(num_batches=2, every_n_epochs=2, before_validation=False, at_train_end=False)
    trainer(tmp_path, callback, max_epochs=4, limit_val_batches=0).fit(PeerClassifier("snntorch"), loaders()[0])
    assert callback.recalibrations == 2


def test_draws_a_different_shuffled_subset_each_epoch(tmp_path):
    callback = RecordingRecalibration(num_batches=2, mode="single_pass", at_train_end=False)
    trainer(tmp_path, callback).fit(PeerClassifier("snntorch"), *loaders())
    first, second = callback.seen[:2], callback.seen[-2:]
    assert not torch.equal(first[0][0], second[0][0])
    ordered = classification_data().tensors[0][:8]
    assert not torch.equal(first[0][0], ordered)


def test_errors(tmp_path):
    for kwargs, message in [
        ({"num_batches": 0}, "num_batches must be >= 1"),
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1"),
        ({"mode": "fast"}, "unknown recalibration mode 'fast'"),
    ]:
        with pytest.raises(ValueError, match=message):
            BNRecalibration(**kwargs)
    with pytest.raises(ValueError, match=r"num_batches=7\): the training data gives only 6 batch"):
        trainer(tmp_path, BNRecalibration(num_batches=7)).fit(PeerClassifier("snntorch"), *loaders())
    empty = DataLoader(Subset(classification_data(), []), batch_size=4)
    callback = BNRecalibration(num_batches=1, dataloader=empty)
    with pytest.raises(ValueError, match="it is empty"):
        trainer(tmp_path, callback).fit(PeerClassifier("snntorch"), *loaders())
    task = PeerClassifier("snntorch")
    task.model.bn1 = torch.nn.Identity()
    task.model.bn2 = torch.nn.Identity()
    with pytest.raises(ValueError, match="no BN layer"):
        trainer(tmp_path, BNRecalibration(num_batches=1)).fit(task, *loaders())
    with pytest.raises(ValueError, match="has no module `encoder`"):
        trainer(tmp_path, BNRecalibration(num_batches=1, module="encoder")).fit(PeerClassifier("snntorch"), *loaders())


# variables that would make the script's Lightning join another launch, resume a W&B run or reuse a seed
# that an earlier test left in os.environ (seed_everything sets PL_GLOBAL_SEED, which seeds DDP's samplers)
_INHERITED = (
    "WANDB_",
    "PL_",
    "MASTER_",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_",
    "SLURM_",
)
# A hang guard, not a speed limit: the test takes 15 s on an idle 2-core machine but took 257 s at load 12 (other
# runs sharing the cores), so the former 300 s limit failed correct runs on a busy machine.
_HANG_GUARD_S = 1800


def run_ddp_script(out_dir: Path) -> None:
    """Run ddp_bn_recalibration.py as users run DDP (one command; Lightning starts rank 1 itself), with this
    process's PYTHONPATH. On failure the message holds the run's output, and the whole process
    group (rank 1 included) is killed, so no rank outlives the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, str(Path(__file__).parent / "ddp_bn_recalibration.py"), str(out_dir)]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as run:

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)

        try:
            output = run.communicate(timeout=_HANG_GUARD_S)[0]
        except subprocess.TimeoutExpired:
            kill_group()
            output = f"killed after {_HANG_GUARD_S} s; its output:\n{run.communicate()[0]}"
        finally:
            kill_group()
    assert run.returncode == 0, f"the DDP run failed (exit code {run.returncode}):\n{output[-6000:]}"


def test_ddp_two_processes_identical_and_equal_to_one_process_over_the_union(tmp_path):
    """Lightning DDP (2 CPU processes, gloo) of an snnTorch model, run as a script as users run DDP."""
    run_ddp_script(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    stats = [k for k in ranks[0]["state"] if "running" in k]
    assert len(stats) == 4
    for key in stats:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    first = {tuple(b[1].tolist()) for b in ranks[0]["batches"]}
    assert first.isdisjoint(tuple(b[1].tolist()) for b in ranks[1]["batches"])  # each rank drew its own
    single = PeerClassifier("snntorch")
    single.model.load_state_dict(ranks[0]["state"])
    union = ranks[0]["batches"] + ranks[1]["batches"]
    recalibrate_bn(single.model, union, forward=lambda _, batch: forward_inputs(single, batch))
    for key in stats:
        np.testing.assert_allclose(
            ranks[0]["state"][key].numpy(), single.model.state_dict()[key].numpy(), rtol=1e-12, atol=1e-14
        )
