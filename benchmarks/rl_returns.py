"""Returns of TD3 with a spiking (CLIF, PopSAN) actor: no BN vs plain BN vs CaRe-BN (long; not in CI).

For every env, actor norm and seed: ``SpikingTD3`` for ``--steps`` env steps after ``--warmup`` random
ones (the paper: 1M after 25k), evaluation every ``--eval-every`` steps; CaRe-BN also gets Re-BN
(``ReplayRecalibration`` every 5000 steps, 100 x 256). Reported per variant: mean ± std over seeds of the
maximum average evaluation return (the paper's metric) and of the last one, plus the step count reached.

    python benchmarks/rl_returns.py --steps 20000          # hours on 2 CPU cores; appends to results/rl_returns.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import publish, stamp
from lightning.pytorch import Trainer, seed_everything

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.tasks import SpikingTD3

VARIANTS = {"no BN": "none", "BN (EMA 0.1)": "bn", "CaRe-BN": "carebn"}


def run(env: str, norm: str, seed: int, steps: int, warmup: int, eval_every: int) -> list[float]:
    seed_everything(seed)
    task = SpikingTD3(env, total_env_steps=warmup + steps, warmup_steps=warmup, actor_norm=norm, neuron="clif",
                      eval_every=eval_every, eval_episodes=10, seed=seed)
    callbacks = [ReplayRecalibration(every_n_env_steps=5000, num_batches=100, batch_size=256)] if norm == "carebn" else []
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", callbacks=callbacks).fit(task)
    return [value for _, value in task.eval_history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for env in args.envs:
        for name, norm in VARIANTS.items():
            histories = [run(env, norm, seed, args.steps, args.warmup, args.eval_every) for seed in range(args.seeds)]
            best = [max(h) for h in histories]
            last = [h[-1] for h in histories]
            spread = (lambda v: f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1
                      else f"{v[0]:.1f}")
            rows.append(f"| {env} | {name} | {spread(best)} | {spread(last)} | {len(histories[0])} |")
            print(rows[-1], flush=True)
    report = "\n".join([
        stamp(torch.device("cpu")), "",
        f"TD3, PopSAN actor with CLIF neurons (T=5), {args.steps} env steps after {args.warmup} random warm-up "
        f"steps (the paper trains 1M after 25k), {args.seeds} seeds, 10 evaluation episodes every "
        f"{args.eval_every} steps; wall {time.perf_counter() - start:.0f} s.", "",
        "| env | actor norm | max eval return (mean ± std) | last eval return | evaluations |",
        "|---|---|---|---|---|", *rows, "",
    ])
    publish("rl_returns", "TD3 returns with spiking actors: no BN vs BN vs CaRe-BN", report, save=not args.no_save)


if __name__ == "__main__":
    main()
