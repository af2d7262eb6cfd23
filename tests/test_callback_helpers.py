"""What every callback shares: task Protocols and their setup check, batch inputs, output folders, due-ness."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from spikenorm.callbacks.batches import batch_inputs, model_inputs
from spikenorm.callbacks.output_folders import output_folder
from spikenorm.callbacks.schedules import check_every_n_epochs, validation_due
from spikenorm.callbacks.task_network import monitored_network, task_module
from spikenorm.callbacks.task_protocols import (
    ClassificationTaskLike,
    EncodingTask,
    NetworkTask,
    ReplayTaskLike,
    TimeStepsTask,
    protocol_members,
    require_task,
)
from spikenorm.tasks import SpikingClassifier


class ReplayTask(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.policy_network = nn.Linear(3, 1)
        self.replay_buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(8))
        self.replay_buffer.extend(TensorDict({"observation": torch.randn(4, 3)}, [4]))
        self.env_steps = 4


class Doubling(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Identity()

    def encode(self, x: Tensor) -> Tensor:
        return torch.stack([x, x])


def test_the_spikenorm_tasks_offer_what_their_protocols_declare():
    task = SpikingClassifier(nn.Linear(8, 2), num_classes=2, time_steps=3)
    assert isinstance(task, ClassificationTaskLike) and isinstance(task, NetworkTask)
    require_task(task, ClassificationTaskLike, "test")
    assert set(protocol_members(ClassificationTaskLike)) == {"model", "encode", "time_steps"}
    assert protocol_members(ReplayTaskLike)["policy_network"] is nn.Module
    require_task(ReplayTask(), ReplayTaskLike, "test")
    assert not isinstance(ReplayTask(), NetworkTask)


def test_a_missing_member_is_named_with_the_protocol():
    task = ReplayTask()
    del task.replay_buffer
    task.env_steps = None
    with pytest.raises(
        ValueError,
        match=r"^MyCallback needs a LightningModule that offers ReplayTaskLike \(`policy_network`, "
        r"`replay_buffer`, `env_steps`; .*ReplayTask has no `replay_buffer`, "
        r"`env_steps`$",
    ):
        require_task(task, ReplayTaskLike, "MyCallback")


def test_a_member_of_the_wrong_type_is_refused():
    task = ReplayTask()
    del task.policy_network
    task.policy_network = lambda obs: obs
    with pytest.raises(
        TypeError,
        match=r"^MyCallback: ReplayTask.policy_network must be a torch.nn.Module \(ReplayTaskLike\), "
        r"got function$",
    ):
        require_task(task, ReplayTaskLike, "MyCallback")
    task = ReplayTask()
    task.replay_buffer = 3
    with pytest.raises(TypeError, match=r"replay_buffer must be a ReplayBufferLike .* got int"):
        require_task(task, ReplayTaskLike, "MyCallback")


def test_networks_and_inputs():
    task = Doubling()
    assert monitored_network(task) == (task.model, ())
    bare = LightningModule()
    assert monitored_network(bare) == (bare, ("teacher",))
    assert task_module(task, "model", "test") is task.model
    with pytest.raises(ValueError, match=r"^BN\(module='net'\): Doubling has no module `net`$"):
        task_module(task, "net", "BN(module='net')")
    x, y = torch.randn(4, 2), torch.zeros(4)
    assert batch_inputs((x, y)) is x and batch_inputs([x, y]) is x and batch_inputs(x) is x
    assert model_inputs(task, x).shape == (2, 4, 2)
    assert model_inputs(bare, x) is x


def test_a_task_with_time_steps_but_no_encode_is_a_time_steps_task_only():
    stepped = LightningModule()
    stepped.model, stepped.time_steps = nn.Identity(), 4  # like the examples' DigitsTask
    assert isinstance(stepped, TimeStepsTask) and isinstance(stepped, NetworkTask)
    assert not isinstance(stepped, EncodingTask) and not isinstance(stepped, ClassificationTaskLike)
    assert not isinstance(LightningModule(), TimeStepsTask)
    x = torch.randn(4, 2)
    assert model_inputs(stepped, x) is x


def test_output_folder_rules(tmp_path: Path):
    bare = Trainer(default_root_dir=tmp_path / "root", logger=False, enable_checkpointing=False)
    assert output_folder(bare) == tmp_path / "root"
    assert output_folder(bare, beside="logs") == tmp_path / "root"
    assert output_folder(bare, tmp_path / "mine") == tmp_path / "mine" and (tmp_path / "mine").is_dir()
    logged = Trainer(
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path / "logs"),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")],
    )
    assert output_folder(logged) == tmp_path / "ckpt"
    assert output_folder(logged, beside="logs") == Path(logged.log_dir)
    assert output_folder(logged, str(tmp_path / "mine"), beside="logs") == tmp_path / "mine"
    with pytest.raises(ValueError, match="beside"):
        output_folder(bare, beside="run")


def test_due_epochs():
    def trainer(epoch: int, fn: TrainerFn = TrainerFn.FITTING, sanity: bool = False) -> SimpleNamespace:
        return SimpleNamespace(current_epoch=epoch, sanity_checking=sanity, state=SimpleNamespace(fn=fn))

    assert [validation_due(trainer(epoch), 3) for epoch in range(6)] == [False, False, True, False, False, True]
    assert not validation_due(trainer(2, sanity=True), 1)
    assert validation_due(trainer(0, TrainerFn.VALIDATING), 3)
    assert check_every_n_epochs(2) == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every_n_epochs must be an integer >= 1"):
            check_every_n_epochs(bad)
