"""The CaRe-BN part of ``benchmarks/mechanisms.py``: TD3 with the PopSAN actor, statistics error over training.

One run trains :class:`~spikenorm.tasks.SpikingTD3` (the settings of ``benchmarks/rl_returns.py``) with
:class:`~spikenorm.callbacks.NormDiagnostics` measuring the actor every ``diag_every`` env steps on replay states
drawn from the ``recent`` newest ones, and (Ca-BN + Re-BN) :class:`~spikenorm.callbacks.ReplayRecalibration`
after it in the callback list, so a measurement due at the env step of a re-calibration is taken *before* it. A
second ``NormDiagnostics`` placed after ``ReplayRecalibration`` measures again right after each re-calibration,
on the same states (its draw is seeded by the env step). Everything is read back from the rows the callbacks log
(``spikenorm.rl.log_event``) to an in-memory logger.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import quiet_trainer
from lightning.pytorch import seed_everything
from mechanisms_digits import MemoryLogger, stamp_record, threads_set

#: variant -> (actor norm, Re-BN): the CaRe-BN paper's ablation rows. "BN" is BN pooled over batch and time with
#: EMA running statistics (momentum 0.1; spikenorm's ``tdbn``, the paper's tdBN row and recipes/td3_tdbn_*.yaml)
VARIANTS = {"BN (tdBN, EMA)": ("tdbn", False), "Ca-BN": ("carebn", False), "Ca-BN + Re-BN": ("carebn", True)}
BASELINE = "BN (tdBN, EMA)"


def run_carebn(variant: str, seed: int, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train one TD3 run of ``variant`` and return its evaluation returns and diagnostics series."""
    from spikenorm.callbacks import NormDiagnostics, ReplayRecalibration
    from spikenorm.models import LayerSpec
    from spikenorm.tasks import SpikingTD3

    class AfterRecalibration(NormDiagnostics):
        """A second NormDiagnostics, right after Re-BN (its own class: Lightning keys callback state by class)."""

    norm, rebn = VARIANTS[variant]
    previous = threads_set(threads)
    try:
        started = time.perf_counter()
        seed_everything(seed)
        task = SpikingTD3(
            settings["env"],
            total_env_steps=settings["warmup"] + settings["steps"],
            warmup_steps=settings["warmup"],
            eval_every=settings["eval_every"],
            eval_episodes=settings["eval_episodes"],
            seed=seed,
            actor="spiking",
            actor_layers=LayerSpec(norm=norm, neuron="clif", surrogate="rectangle"),
        )
        measure = {
            "num_batches": settings["diag_batches"],
            "batch_size": settings["diag_batch_size"],
            "recent": settings["recent"],
            "histograms": False,
            "plots": False,
        }
        callbacks: list[Any] = [NormDiagnostics(every_n_env_steps=settings["diag_every"], **measure)]
        if rebn:
            callbacks += [
                ReplayRecalibration(every_n_env_steps=settings["rebn_every"], num_batches=100, batch_size=256),
                AfterRecalibration(every_n_env_steps=settings["rebn_every"], **measure),
            ]
        logger = MemoryLogger()
        quiet_trainer(max_epochs=1, callbacks=callbacks, logger=logger, log_every_n_steps=1000).fit(task)
        diagnostics, after_rebn, recalibrations = [], [], []
        recalibrated_at: set[int] = set()
        for step, metrics in logger.rows:  # in the order logged: at a Re-BN step, before / Re-BN / after
            if any(k.startswith("recalibration/") for k in metrics):
                recalibrations.append({"env_step": step, **metrics})
                recalibrated_at.add(step)
            elif any(k.startswith("diagnostics/") for k in metrics):
                row = {"env_step": step, **{k: v for k, v in metrics.items() if k.startswith("diagnostics/")}}
                (after_rebn if step in recalibrated_at else diagnostics).append(row)
        return stamp_record(
            {
                "eval_history": [list(e) for e in task.eval_history],
                "diagnostics": diagnostics,
                "after_rebn": after_rebn,
                "recalibrations": recalibrations,
            },
            started,
        )
    finally:
        torch.set_num_threads(previous)
