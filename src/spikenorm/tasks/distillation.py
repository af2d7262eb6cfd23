"""Knowledge distillation for spiking classifiers (the KD-based training of SEI-BWSNN: Meng et al., "A Self-Ensemble
Inspired Approach for Effective Training of Binary-Weight Spiking Neural Networks", arXiv 2508.12609, 2025).

The SEI-BWSNN abstract fixes only that training is "knowledge-distillation based"; the loss below (a
ReActNet/Hinton-style KL on softened outputs from a frozen full-precision teacher) is spikenorm's
inference of it, with the per-step option that follows the paper's self-ensemble view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn


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
