"""The supervised parts of ``benchmarks/mechanisms.py``: runs on the bundled digits, each returning one JSON record.

Every run trains one network on digits (CPU) and measures it with :func:`spikenorm.diagnostics.diagnose`
(directly on the test set after training, or at every validation through
:class:`spikenorm.callbacks.NormDiagnostics`, whose logged scalars a :class:`MemoryLogger` keeps).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, quiet_trainer
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from spikenorm.datamodules import DigitsDataModule
from spikenorm.diagnostics import NormDiagnosis, diagnose
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import OnlineTraining, SpikingClassifier

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: coarse membrane histogram kept in the records: (u - theta) / theta on [-HIST_RANGE, HIST_RANGE], bins of HIST_BIN
HIST_RANGE, HIST_BIN = 4.0, 0.1

# -- the networks of each part ---------------------------------------------------------------------------------------
#: the MPBN paper's neuron (LIF decay 0.25, threshold 0.5, hard reset, Dspike), as benchmarks/mpbn_digits.py
MPBN_LAYERS = {"norm": "tdbn", "neuron_kwargs": {"decay": 0.25, "threshold": 0.5}, "surrogate": "dspike"}
MPBN_VARIANTS = {"tdBN": {}, "tdBN + MPBN": {"membrane_norm": "mpbn"}}
TEMPORAL_VARIANTS = {"tdBN": "tdbn", "TEBN": "tebn", "TAB": "tab"}


class MemoryLogger(Logger):
    """A Lightning logger that keeps every ``log_metrics`` row in memory, as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((int(step or 0), {k: float(v) for k, v in metrics.items()}))

    def series(self, prefix: str) -> list[tuple[int, dict[str, float]]]:
        """The rows that hold keys starting with ``prefix``, each reduced to those keys."""
        out = []
        for step, metrics in self.rows:
            kept = {k: v for k, v in metrics.items() if k.startswith(prefix)}
            if kept:
                out.append((step, kept))
        return out


def threads_set(threads: int) -> int:
    """Set torch's thread count (0: leave it) and return the previous one."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return previous


def vgg(layers: dict[str, Any], time_steps: int) -> SpikingVGG:
    return SpikingVGG("small", in_channels=1, num_classes=10, input_size=8, layers=LayerSpec(**layers))


def classifier(net: nn.Module, time_steps: int, epochs: int, **options: Any) -> SpikingClassifier:
    """Adam 5e-3 with cosine decay over ``epochs`` (the digits benchmarks' optimiser)."""
    return SpikingClassifier(
        net,
        time_steps=time_steps,
        optimizer=lambda p: torch.optim.Adam(p, lr=5e-3),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
        **options,
    )


def fit(
    task: LightningModule, data: DigitsDataModule, settings: dict[str, Any], callbacks: list = (), logger: Any = False
) -> Any:
    """Train for ``settings["epochs"]`` epochs (``limit_train_batches`` from the settings in smoke mode)."""
    trainer = quiet_trainer(
        max_epochs=settings["epochs"],
        limit_train_batches=settings.get("limit_train_batches") or 1.0,
        deterministic=True,
        callbacks=list(callbacks),
        logger=logger,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, data)
    return trainer


def test_batches(data: DigitsDataModule, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data.setup("test")
    batches = list(data.test_dataloader())
    return batches[:limit] if limit else batches


def accuracy(forward: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            out = forward(x)
            out = out.mean(0) if out.ndim == 3 else out
            correct += int((out.argmax(-1) == y).sum())
            total += len(y)
    return correct / total


def coarse_histogram(counts: torch.Tensor) -> list[float]:
    """A ``[steps, bins]`` histogram of :mod:`spikenorm.membrane` summed over steps and re-binned to ``HIST_BIN`` on
    ``[-HIST_RANGE, HIST_RANGE]`` (values beyond in the edge bins), as fractions of all values."""
    from spikenorm.membrane import BIN_WIDTH, RANGE

    total = counts.sum(0).double()
    edges = torch.arange(total.numel(), dtype=torch.float64) * BIN_WIDTH - RANGE + BIN_WIDTH / 2  # bin centres
    index = ((edges.clamp(-HIST_RANGE, HIST_RANGE - 1e-9) + HIST_RANGE) / HIST_BIN).floor().long()
    out = torch.zeros(round(2 * HIST_RANGE / HIST_BIN), dtype=torch.float64).index_add_(0, index, total)
    return (out / total.sum()).tolist()


def diagnosis_record(d: NormDiagnosis, histograms: bool = False) -> dict[str, Any]:
    """The parts of a diagnosis a record keeps: per norm layer, per spiking layer, the output gap (and, with
    ``histograms``, each spiking layer's coarse membrane histogram)."""
    record = d.to_dict()
    record.pop("seconds", None)
    if histograms:
        record["histograms"] = {name: coarse_histogram(h) for name, h in d.histograms.items()}
    return record


def stamp_record(record: dict[str, Any], started: float) -> dict[str, Any]:
    return {
        **record,
        "wall_s": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "machine": machine(torch.device("cpu")),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# -- MPBN: the membrane relative to the threshold ------------------------------------------------------------------
def run_mpbn(variant: str, seed: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """tdBN or tdBN + MPBN at ``settings["time_steps"]``: diagnose the trained network on the test set."""
    previous = threads_set(threads)
    try:
        started = time.perf_counter()
        seed_everything(seed)
        t = settings["time_steps"]
        task = classifier(vgg({**MPBN_LAYERS, **MPBN_VARIANTS[variant]}, t), t, settings["epochs"])
        data = DigitsDataModule(batch_size=64)
        fit(task, data, settings)
        task.eval()
        batches = test_batches(data, settings.get("diagnose_batches"))
        d = diagnose(task.model, [task.encode(x) for x, _ in batches], time_steps=t)
        return stamp_record(
            {"acc": accuracy(task, batches), "diagnosis": diagnosis_record(d, histograms=True)}, started
        )
    finally:
        torch.set_num_threads(previous)


# -- TEBN / TAB vs tdBN: per-step statistics -----------------------------------------------------------------------
def run_temporal(variant: str, seed: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """tdBN, TEBN or TAB (BPTT, T = ``settings["time_steps"]``): diagnose the trained network on the test set."""
    previous = threads_set(threads)
    try:
        started = time.perf_counter()
        seed_everything(seed)
        t = settings["time_steps"]
        layers = {**MPBN_LAYERS, "norm": TEMPORAL_VARIANTS[variant], "time_steps": t}
        task = classifier(vgg(layers, t), t, settings["epochs"])
        data = DigitsDataModule(batch_size=64)
        fit(task, data, settings)
        task.eval()
        batches = test_batches(data, settings.get("diagnose_batches"))
        d = diagnose(task.model, [task.encode(x) for x, _ in batches], time_steps=t)
        return stamp_record({"acc": accuracy(task, batches), "diagnosis": diagnosis_record(d)}, started)
    finally:
        torch.set_num_threads(previous)


# -- OSR / OTS: train/eval gap and statistics error over epochs (online training) -----------------------------------
def osr_variants() -> dict[str, dict[str, Any]]:
    """The online-training variants of benchmarks/osr_digits.py without OTTT (no norm, nothing to diagnose)."""
    from osr_digits import VARIANTS

    return {name: VARIANTS[name] for name in ("vanilla BN", "OSR", "OSR + OTS")}


def run_osr(variant: str, seed: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Online training as benchmarks/osr_digits.py (T = 4, TET, Adam 5e-3 cosine); :class:`NormDiagnostics` measures
    the network on ``settings["diagnose_batches"]`` validation batches at every validation (each epoch's end)."""
    from osr_digits import NEURON

    from spikenorm.callbacks import NormDiagnostics

    previous = threads_set(threads)
    try:
        started = time.perf_counter()
        seed_everything(seed)
        options = {"neuron_kwargs": NEURON, **osr_variants()[variant]}
        layers = {"surrogate": "sigmoid", "surrogate_kwargs": {"alpha": 4.0}, **options}
        net = SpikingVGG("small", in_channels=1, num_classes=10, layers=LayerSpec(**layers))
        t = settings["time_steps"]
        task = classifier(net, t, settings["epochs"], loss="tet", tet_mse_weight=0.05, online=OnlineTraining())
        data = DigitsDataModule(batch_size=64)
        logger = MemoryLogger()
        diagnostics = NormDiagnostics(
            every_n_validations=1, num_batches=settings["diagnose_batches"], histograms=False, plots=False
        )
        fit(task, data, settings, callbacks=[diagnostics], logger=logger)
        task.eval()
        batches = test_batches(data, None)
        epochs = [metrics for _, metrics in logger.series("diagnostics/")]
        return stamp_record({"acc": accuracy(task, batches), "epochs": epochs}, started)
    finally:
        torch.set_num_threads(previous)


# -- attach: SpikingJelly and snnTorch example networks -------------------------------------------------------------
def load_example(name: str) -> Any:
    """``examples/<name>.py`` as a module (examples/ on ``sys.path``: it imports ``digits_task``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    module_name = f"mechanisms_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


ATTACH_VARIANTS = {
    "SpikingJelly (examples/spikingjelly_digits.py)": "spikingjelly_digits",
    "snnTorch (examples/snntorch_digits.py)": "snntorch_digits",
}


def run_attach(variant: str, seed: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """The example's ``DigitsSNN`` (its network builder, Adam 2e-3), trained ``settings["epochs"]`` epochs as the
    example does (without its logger and monitors), then diagnosed on the test set through the task's forward."""
    previous = threads_set(threads)
    try:
        started = time.perf_counter()
        example = load_example(ATTACH_VARIANTS[variant])
        seed_everything(seed)
        task = example.DigitsSNN()
        data = DigitsDataModule()
        fit(task, data, settings)
        task.eval()
        batches = test_batches(data, settings.get("diagnose_batches"))
        d = diagnose(task.model, [x for x, _ in batches], forward=lambda model, x: task(x))
        return stamp_record({"acc": accuracy(task, batches), "diagnosis": diagnosis_record(d)}, started)
    finally:
        torch.set_num_threads(previous)


RUNNERS = {"osr": run_osr, "mpbn": run_mpbn, "temporal": run_temporal, "attach": run_attach}
