"""Knowledge distillation for spiking classifiers (the KD-based training of SEI-BWSNN: Meng et al., "A Self-Ensemble
Inspired Approach for Effective Training of Binary-Weight Spiking Neural Networks", arXiv 2508.12609, 2025): the
:class:`Distillation` part a :class:`~spikenorm.tasks.SpikingClassifier` is given, and its loss.

The SEI-BWSNN abstract fixes only that training is "knowledge-distillation based"; the loss below (a
ReActNet/Hinton-style KL on softened outputs from a frozen full-precision teacher) is spikenorm's
inference of it, with the per-step option that follows the paper's self-ensemble view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikenorm.config import RecordsInit
from spikenorm.validation import check_choice

#: what the teacher is fed: the encoded batch ``[T, B, ...]`` like the student, or the raw batch
TeacherInput = Literal["encoded", "raw"]


class Distillation(RecordsInit):
    """Knowledge distillation from a frozen teacher: ``loss = (1 - weight) task_loss + weight KD`` with
    ``KD`` = :func:`distillation_loss`.

    A :class:`~spikenorm.tasks.SpikingClassifier` given this part (``distillation=Distillation(...)``; CLI: the
    ``distillation:`` section of the task's ``init_args``) holds the teacher as its ``teacher`` submodule (always in
    eval mode, never optimized), logs ``train/kd_loss`` and ``val/teacher_acc``, and implements BPTT training only.

    Args:
        teacher: the teacher (any module: an ANN on the raw batch or an SNN on the encoded one, see ``inputs``).
        checkpoint: weights for the teacher: a Lightning checkpoint of a SpikingClassifier (its ``model.*`` entries,
            e.g. from a full-precision recipe's run) or a plain state_dict file (:func:`load_teacher_weights`).
        inputs: ``encoded`` (the teacher gets ``[T, B, ...]`` like the student and returns ``[T, B, C]``) or ``raw``
            (the un-encoded batch, returns ``[B, C]``).
        epochs: train the teacher at fit start for this many epochs over the datamodule's training data
            (:func:`fit_teacher`: Adam with ``lr``, cross-entropy) when no ``checkpoint`` is given; its trained
            state is saved in the task's checkpoints, so a resumed run does not train it again.
        lr: the teacher's learning rate for ``epochs``.
        weight: ``alpha`` of ``loss = (1 - alpha) task_loss + alpha KD`` (1: distillation only, ReActNet).
        temperature: softening temperature ``tau`` of :func:`distillation_loss`.
        per_step: distil every time step's logits (each step a self-ensemble member) instead of the time-averaged
            ones.
    """

    def __init__(
        self,
        teacher: nn.Module,
        checkpoint: str | None = None,
        inputs: TeacherInput = "encoded",
        epochs: int = 0,
        lr: float = 1e-3,
        weight: float = 0.5,
        temperature: float = 4.0,
        per_step: bool = False,
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"Distillation(teacher=...) must be a torch.nn.Module, got {type(teacher).__name__}")
        check_choice(inputs, TeacherInput, "Distillation inputs")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"Distillation weight must be in [0, 1], got {weight}")
        if epochs < 0:
            raise ValueError(f"Distillation epochs must be >= 0, got {epochs}")
        self.teacher = teacher
        self.checkpoint = checkpoint
        self.inputs = inputs
        self.epochs = epochs
        self.lr = lr
        self.weight = weight
        self.temperature = temperature
        self.per_step = per_step

    @property
    def needs_training(self) -> bool:
        """Whether the teacher is trained at fit start (``epochs`` > 0 and no ``checkpoint``)."""
        return self.epochs > 0 and self.checkpoint is None

    def mixed_loss(self, task_loss: Tensor, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """``((1 - weight) task_loss + weight KD, KD)`` for the student's per-step logits and the teacher's."""
        kd = distillation_loss(student, teacher, self.temperature, self.per_step)
        return (1 - self.weight) * task_loss + self.weight * kd, kd


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float = 4.0, per_step: bool = False) -> Tensor:
    """KL divergence of the student's softened prediction from the teacher's, scaled by ``tau^2``.

    ``student``: per-step logits ``[T, B, C]``. ``teacher``: ``[B, C]`` (e.g. an ANN) or per-step ``[T, B, C]``
    (an SNN; averaged over time unless ``per_step``). With ``p = softmax(z / tau)``::

        time-averaged:  tau^2 * KL(p(z_teacher) || p(mean_t z_student[t]))
        per_step:       tau^2 * (1/T) sum_t KL(p(z_teacher[t]) || p(z_student[t]))

    KL is summed over classes and averaged over the batch. ``per_step`` treats every time step as one
    member of the self-ensemble and distils each member; a ``[B, C]`` teacher is then the target of every
    step. The ``tau^2`` keeps the gradient scale independent of ``tau`` (Hinton et al. 2015).
    """
    if student.ndim != 3:
        raise ValueError(f"student logits must be [T, B, C], got shape {tuple(student.shape)}")
    if teacher.ndim not in (2, 3) or teacher.shape[-2:] != student.shape[-2:]:
        raise ValueError(
            f"teacher logits must be [B, C] or [T, B, C] matching the student's "
            f"{tuple(student.shape)}, got {tuple(teacher.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if per_step:
        target = teacher.expand_as(student) if teacher.ndim == 2 else teacher
        s, t = student.flatten(0, 1), target.flatten(0, 1)
    else:
        s, t = student.mean(0), teacher.mean(0) if teacher.ndim == 3 else teacher
    kl = F.kl_div(
        F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean"
    )
    return temperature**2 * kl


def load_teacher_weights(teacher: nn.Module, path: str | Path) -> None:
    """Load ``teacher``'s weights from a Lightning checkpoint of a :class:`~spikenorm.tasks.SpikingClassifier`
    (its ``model.*`` entries) or from a plain ``state_dict`` file, strictly."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"teacher checkpoint {path} does not fit the teacher module: {error}") from error


def fit_teacher(
    teacher: nn.Module,
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    forward: Callable[[Tensor], Tensor],
    epochs: int,
    lr: float,
) -> float:
    """Train ``teacher`` with Adam on the cross-entropy of its (time-averaged) logits for ``epochs`` passes over
    ``batches()``; returns the training accuracy of the last epoch. ``forward`` maps an input batch to logits
    ``[B, C]`` or ``[T, B, C]``."""
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr)
    teacher.train()
    accuracy = 0.0
    for epoch in range(epochs):
        correct = seen = 0
        for x, y in batches():
            logits = forward(x)
            logits = logits.mean(0) if logits.ndim == 3 else logits
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(-1) == y).sum())
            seen += y.numel()
        accuracy = correct / max(seen, 1)
        rank_zero_info(f"teacher epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, train accuracy {accuracy:.4f}")
    return accuracy
