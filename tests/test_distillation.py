"""Knowledge distillation: the loss against a numpy closed form; the teacher frozen, in eval mode, loadable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import seed_everything

from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import SpikingMLP, SpikingVGG
from spikenorm.tasks import Distillation, OnlineTraining, SpikingClassifier
from spikenorm.tasks.distillation import distillation_loss


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl_closed_form(student, teacher, tau):
    """tau^2 * mean over rows of sum_c p_t (log p_t - log p_s), p = softmax(z / tau)."""
    p_s, p_t = softmax(student / tau), softmax(teacher / tau)
    return tau**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), -1))


@pytest.mark.parametrize("teacher_steps", [None, 3])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_distillation_loss_matches_closed_form(teacher_steps, per_step, tau):
    rng = np.random.default_rng(0)
    student = rng.normal(size=(3, 5, 7)) * 2
    teacher = rng.normal(size=(5, 7) if teacher_steps is None else (teacher_steps, 5, 7)) * 2
    got = distillation_loss(torch.from_numpy(student), torch.from_numpy(teacher), tau, per_step).item()
    if per_step:
        targets = np.broadcast_to(teacher, student.shape) if teacher.ndim == 2 else teacher
        expected = np.mean([kl_closed_form(student[t], targets[t], tau) for t in range(3)])
    else:
        expected = kl_closed_form(student.mean(0), teacher if teacher.ndim == 2 else teacher.mean(0), tau)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    same = torch.from_numpy(student)
    assert distillation_loss(same, same if per_step else same.mean(0), tau, per_step).abs().item() < 1e-12


def test_distillation_loss_errors():
    with pytest.raises(ValueError, match="student"):
        distillation_loss(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(torch.zeros(2, 4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(2, 4, 3), torch.zeros(4, 3), temperature=0)


def mlp(seed):
    torch.manual_seed(seed)
    return SpikingMLP(64, 10, hidden=(32,))


def fit(task, data, tmp_path, steps=4):
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(task, data)
    return trainer


def test_teacher_stays_frozen_and_in_eval_mode(tmp_path):
    seed_everything(0)
    teacher = mlp(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    task = SpikingClassifier(mlp(2), time_steps=2, distillation=Distillation(teacher, weight=0.7))
    student_before = {k: v.clone() for k, v in task.model.state_dict().items()}
    data = DigitsDataModule(batch_size=32)
    trainer = fit(task, data, tmp_path)
    assert "train/kd_loss" in trainer.callback_metrics
    trainer.validate(task, data, verbose=False)
    assert modes and not any(modes)  # every teacher call, training steps and validation, in eval mode
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(student_before[k], v) for k, v in task.model.state_dict().items())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert "val/teacher_acc" in trainer.callback_metrics


def test_teacher_trained_on_the_fly_once_and_loaded_from_a_checkpoint(tmp_path):
    seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    teacher = SpikingVGG([8, "A"], in_channels=1, num_classes=10)
    initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = SpikingClassifier(mlp(0), time_steps=2, distillation=Distillation(teacher, epochs=1, lr=1e-2))
    assert not bool(task.teacher_trained)
    trainer = fit(task, data, tmp_path, steps=1)
    assert bool(task.teacher_trained)
    trained = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any(not torch.equal(initial[k], v) for k, v in trained.items())
    fit(task, data, tmp_path, steps=1)  # already trained: not trained again
    assert all(torch.equal(trained[k], v) for k, v in teacher.state_dict().items())

    # a Lightning checkpoint of a classifier whose model is the teacher's architecture loads as a teacher
    source = SpikingClassifier(teacher, time_steps=2)
    path = tmp_path / "teacher.ckpt"
    trainer.strategy.connect(source)
    trainer.save_checkpoint(path, weights_only=True)
    fresh = SpikingVGG([8, "A"], in_channels=1, num_classes=10)
    student = SpikingClassifier(mlp(0), time_steps=2, distillation=Distillation(fresh, checkpoint=str(path)))
    assert all(torch.equal(trained[k], v) for k, v in student.teacher.state_dict().items())
    with pytest.raises(ValueError, match="does not fit"):
        SpikingClassifier(mlp(0), time_steps=2, distillation=Distillation(mlp(0), checkpoint=str(path)))

    # the student's checkpoint needs no teacher file (its weights are in the state dict); the live record keeps it
    trainer.strategy.connect(student)
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    stored = torch.load(tmp_path / "student.ckpt", weights_only=True)["hyper_parameters"]["distillation"]
    assert stored["init_args"]["checkpoint"] is None
    assert student.hparams.distillation["init_args"]["checkpoint"] == str(path)
    path.unlink()
    reloaded = SpikingClassifier.load_from_checkpoint(tmp_path / "student.ckpt")
    assert all(torch.equal(trained[k], v) for k, v in reloaded.teacher.state_dict().items())


def test_distillation_options_are_checked():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Distillation(None)
    with pytest.raises(ValueError, match="weight"):
        Distillation(mlp(1), weight=1.5)
    with pytest.raises(ValueError, match="inputs 'frames'; available: encoded, raw"):
        Distillation(mlp(1), inputs="frames")
    with pytest.raises(ValueError, match="epochs"):
        Distillation(mlp(1), epochs=-1)
    with pytest.raises(ValueError, match="BPTT"):
        SpikingClassifier(mlp(0), distillation=Distillation(mlp(1)), online=OnlineTraining())
