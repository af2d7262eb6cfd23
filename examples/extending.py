"""Extending spikenorm from one file: a new norm, neuron, surrogate and callback, used by name in a stock model.

Each piece declares what the library needs from it (no library file is edited):

* the norm subclasses ``TimeMajorNorm``, gives its training statistics and says how it folds
  (``fold_target``); registering it makes ``LayerSpec(norm="pooled_bn")`` build it in every model, and
  recalibration, DDP pooling, folding and the fused neuron kernels (as a membrane norm) follow;
* the neuron subclasses ``SpikingNeuron`` and declares its charge as a ``LinearCharge``, which gives it the
  eager loop, the fused kernels and its NIR mapping;
* the surrogate subclasses ``Surrogate`` and writes its ``derivative``, which the fused backward uses too;
* the callback finds the network, decides when it is due and checks its task at setup with
  ``spikenorm.callbacks.task_network``, ``.schedules`` and ``.task_protocols``.

    python examples/extending.py --max-epochs 3
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor

from spikenorm.callbacks.schedules import check_every_n_epochs, epoch_due
from spikenorm.callbacks.task_network import task_network
from spikenorm.callbacks.task_protocols import NetworkTask, require_task
from spikenorm.datamodules import DigitsDataModule
from spikenorm.export import to_nir
from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.neurons import NEURONS, SpikingNeuron
from spikenorm.norm import TimeMajorNorm
from spikenorm.norm.base import NORMS, FoldTarget
from spikenorm.norm.stats import batch_moments, unbiased
from spikenorm.recurrence import LinearCharge
from spikenorm.surrogate import SURROGATES, Surrogate
from spikenorm.tasks import SpikingClassifier


# --8<-- [start:norm]
@NORMS.register("pooled_bn")
class PooledBN(TimeMajorNorm):
    """BN with statistics pooled over time and batch: ``y = gamma (x - mu) / sqrt(var + eps) + beta``.

    ``mu, var`` are the mean and biased variance of ``[T, B, C, H, W]`` per channel over ``(T, B, H, W)``
    (pooled across processes under DDP by ``batch_moments``); the running statistics take ``mu`` and the
    unbiased variance. At inference the map is affine per channel, so it folds into the weights before it.
    """

    fold_target: ClassVar[FoldTarget] = "weights"

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var, count = batch_moments(x, self.reduce_dims(x, over_time=True))
        self.update_running(mean, unbiased(var, count))
        return mean, var


# --8<-- [end:norm]


# --8<-- [start:neuron]
@NEURONS.register("decay_input_lif")
class DecayInputLIF(SpikingNeuron):
    """LIF whose input is scaled by the leak: ``h_t = b v_{t-1} + (1 - b) x_t`` (SpikingJelly's
    ``LIFNode(decay_input=True)`` with ``b = 1 - 1/tau``)."""

    def __init__(self, decay: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decay = decay

    def linear_charge(self) -> LinearCharge:
        return LinearCharge(decay=self.decay, input_scale=1 - self.decay)


# --8<-- [end:neuron]


# --8<-- [start:surrogate]
@SURROGATES.register("gaussian")
class Gaussian(Surrogate):
    """The density of a normal distribution of width ``sigma`` as the spike's derivative:
    ``g(x) = exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi))`` (it integrates to 1, like every surrogate here)."""

    def __init__(self, sigma: float = 0.5) -> None:
        super().__init__()
        self.sigma = sigma

    def derivative(self, x: Tensor) -> Tensor:
        return torch.exp(-0.5 * (x / self.sigma) ** 2) / (self.sigma * math.sqrt(2 * math.pi))


# --8<-- [end:surrogate]


# --8<-- [start:callback]
class ThresholdLogger(L.Callback):
    """Logs ``neurons/threshold/<layer>``, the mean firing threshold of every neuron layer, every
    ``every_n_epochs`` training epochs (thresholds change when a fold or OTS writes them)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_task(pl_module, NetworkTask, "ThresholdLogger")  # a clear error before any training

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not epoch_due(trainer, self.every_n_epochs):
            return
        for name, module in task_network(pl_module, "ThresholdLogger").named_modules():
            if isinstance(module, SpikingNeuron):
                pl_module.log(f"neurons/threshold/{name}", module.threshold.float().mean())


# --8<-- [end:callback]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train a spiking VGG made of the pieces above on the bundled digits, then fold it and export it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    L.seed_everything(0)
    # --8<-- [start:use]
    layers = LayerSpec(
        norm="pooled_bn",
        neuron="decay_input_lif",
        surrogate="gaussian",
        neuron_kwargs={"decay": 0.5, "threshold": 0.5},
        surrogate_kwargs={"sigma": 0.4},
    )
    network = SpikingVGG("small", in_channels=1, num_classes=10, layers=layers)
    task = SpikingClassifier(network, time_steps=4, optimizer=functools.partial(torch.optim.Adam, lr=5e-3))
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        callbacks=[ThresholdLogger()],
    )
    trainer.fit(task, DigitsDataModule())
    folded = fold_model(network.eval())  # PooledBN goes into the convolution weights
    x = torch.rand(4, 8, 1, 8, 8)
    report = check_equivalence(network, folded, x, dtype=torch.float64)
    graph = to_nir(folded, x[:, :1])
    # --8<-- [end:use]
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    metrics["flipped_spikes_folded"] = float(report.flipped_spikes)
    metrics["nir_nodes"] = float(len(graph.nodes))
    print(
        f"val/acc {metrics['val/acc']:.3f}; folded model: {report.flipped_spikes} flipped spikes, "
        f"max |output difference| {report.max_abs_diff:.2g} (float64); NIR graph of {len(graph.nodes)} nodes"
    )
    return metrics


if __name__ == "__main__":
    main()
