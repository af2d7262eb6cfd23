"""Small helpers shared by several test files (tests/ is on pytest's pythonpath: ``from helpers import ...``)."""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning.pytorch import Callback, Trainer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# what a test trainer does unless the test asks otherwise: run on the CPU, log, save and print nothing
QUIET_CPU = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

# a TD3 run on InvertedPendulum short enough for a test: 240 env steps, the first 80 random (warm-up)
SHORT_TD3_RUN = {
    "env_name": "InvertedPendulum-v5",
    "total_env_steps": 240,
    "warmup_steps": 80,
    "batch_size": 32,
    "buffer_size": 1000,
    "eval_episodes": 1,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for ``MASTER_PORT`` of a two-process gloo group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_example(name: str, patch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples/<name>.py``; the norms, neurons and surrogates it registers are unregistered when
    ``patch`` is undone."""
    from spikenorm.neurons import NEURONS
    from spikenorm.norm.base import NORMS
    from spikenorm.surrogate import SURROGATES

    for registry in (NORMS, NEURONS, SURROGATES):
        patch.setattr(registry, "_entries", dict(registry._entries))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(patch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as ``benchmark_<name>``, with ``benchmarks/`` on ``sys.path`` (the scripts
    import ``common``) and the module in ``sys.modules`` (dataclasses resolve string annotations there) until
    ``patch`` is undone."""
    patch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    patch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def quiet_trainer(**options) -> Trainer:
    """A Lightning ``Trainer`` with ``QUIET_CPU`` settings; ``options`` (any ``Trainer`` argument) add to or
    override them."""
    return Trainer(**{**QUIET_CPU, **options})


def short_trainer(train_batches: int, val_batches: int, callbacks: Sequence[Callback] = (), **options) -> Trainer:
    """A ``quiet_trainer`` whose epochs (one unless ``max_epochs`` says) stop after ``train_batches`` training and
    ``val_batches`` validation batches."""
    options = {"max_epochs": 1, "limit_train_batches": train_batches, "limit_val_batches": val_batches, **options}
    return quiet_trainer(callbacks=list(callbacks), **options)


def spikenorm_cli(folder: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``python -m spikenorm.commands *args`` (the console script) as a user runs it: a fresh process in ``folder``
    with W&B offline under ``folder`` and ``env`` added to the environment; with ``check``, assert that it succeeded.

    No ``WANDB_*`` variable is inherited: ``WANDB_SERVICE`` would attach the child to this process's W&B service,
    which writes run records relative to the directory it started in.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(
        [sys.executable, "-m", "spikenorm.commands", *args],
        cwd=folder,
        env={**inherited, "WANDB_MODE": "offline", "WANDB_DIR": str(folder), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


@contextlib.contextmanager
def offline_wandb(folder: Path) -> Iterator[None]:
    """An offline W&B environment confined to ``folder`` (no key, no netrc, HOME and every W&B folder inside);
    on exit the W&B service has written every record of the runs started inside, and the environment is back."""
    import wandb

    with pytest.MonkeyPatch.context() as patch:
        for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "NETRC"):
            patch.delenv(var, raising=False)
        for var, value in {
            "HOME": folder,
            "WANDB_MODE": "offline",
            "WANDB_DIR": folder,
            "WANDB_SILENT": "true",
            "WANDB_CACHE_DIR": folder / "cache",
            "WANDB_CONFIG_DIR": folder / "config",
            "WANDB_DATA_DIR": folder / "data",
        }.items():
            patch.setenv(var, str(value))
        wandb.teardown()  # a service left by an earlier test writes relative to its own start directory
        try:
            yield
        finally:
            wandb.teardown()


def eager_and_fused(
    neuron: torch.nn.Module, shape: Sequence[int], dtype: torch.dtype, scale: float
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Set ``neuron`` to its eager loop and return a fused copy, one input ``scale * N(0, 1)`` of ``shape`` and an
    output gradient ``N(0, 1)``, both in ``dtype`` (generator seed 0): the set-up of an eager-vs-fused comparison."""
    neuron.backend = "eager"
    fast = copy.deepcopy(neuron)
    fast.backend = "fused"
    gen = torch.Generator().manual_seed(0)
    x = (scale * torch.randn(shape, generator=gen)).to(dtype)
    grad_out = torch.randn(shape, generator=gen).to(dtype)
    return fast, x, grad_out


#: a callback module for CLI runs: ``KillAtEnvStep(env_steps)`` SIGKILLs the fit's process after the iteration that
#: reaches that env step (no cleanup at all), for the RL resume tests
RL_KILLER = """
import os, signal
from lightning.pytorch import Callback


class KillAtEnvStep(Callback):
    # SIGKILL this process after the iteration that reaches env step ``env_steps``: no cleanup at all

    def __init__(self, env_steps: int) -> None:
        self.env_steps = env_steps

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.env_steps == self.env_steps:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def cli_killed_and_resumed(root: Path, recipe: dict, kill_at: int) -> tuple[Path, Path]:
    """Run ``recipe`` (a parsed RL recipe) through the CLI twice under ``root``: straight through in ``straight/``,
    and in ``crashed/`` SIGKILLed after the iteration that reaches env step ``kill_at`` (:data:`RL_KILLER`) and then
    resumed with ``--ckpt_path last``. Returns the two folders."""
    import signal

    import yaml

    straight, crashed = root / "straight", root / "crashed"
    for folder in (straight, crashed):
        folder.mkdir()
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    spikenorm_cli(straight, "fit", "--config", "recipe.yaml")
    (crashed / "rl_killer.py").write_text(RL_KILLER)
    killed = spikenorm_cli(
        crashed,
        "fit",
        "--config",
        "recipe.yaml",
        "--trainer.callbacks+=rl_killer.KillAtEnvStep",
        f"--trainer.callbacks.env_steps={kill_at}",
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    spikenorm_cli(crashed, "fit", "--config", "recipe.yaml", "--ckpt_path", "last")
    return straight, crashed


#: the logged keys that time something: never equal between two runs
TIMING_KEYS = frozenset({"rl/env_steps_per_s", "recalibration/seconds"})


def logged_rows(folder: Path, version: int = 0) -> list[tuple[int, dict[str, float]]]:
    """The rows of ``CSVLogger(folder, name="csv", version=version)``'s ``metrics.csv`` as ``(step, {key: value})``,
    without empty cells and timings."""
    with open(folder / "csv" / f"version_{version}" / "metrics.csv", newline="") as f:
        return [
            (int(row["step"]), {k: float(v) for k, v in row.items() if v != "" and k not in TIMING_KEYS | {"step"}})
            for row in csv.DictReader(f)
        ]


def cli_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a CLI run folder's ``metrics.csv`` as written (empty cells included), without timings."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(f)]


class StoppedFit(Exception):
    """Raised by :class:`StopAtEnvStep`: the fit stops as a crash would, leaving only its files behind."""


def resumable_rl_fit(task, folder: Path, callbacks: list, ckpt_path: Path | None = None, stop_at: int | None = None):
    """Fit an RL ``task`` with ``callbacks``, logging to ``CSVLogger(folder, name="csv")`` (version 1 when resumed from
    ``ckpt_path``: the CSVLogger would rewrite the stopped fit's file), raising :class:`StoppedFit` after the iteration
    that reaches env step ``stop_at`` (before any checkpoint of that iteration). Returns the trainer."""
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import CSVLogger

    class StopAtEnvStep(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if pl_module.env_steps == stop_at:
                raise StoppedFit

    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[*callbacks, *([StopAtEnvStep()] if stop_at is not None else [])],
        logger=CSVLogger(folder, name="csv", version=int(ckpt_path is not None)),
        enable_checkpointing=True,
        log_every_n_steps=20,
    )
    trainer.fit(task, ckpt_path=ckpt_path)
    return trainer
