"""Returns of TD3 with a spiking (CLIF, PopSAN) actor: no BN vs plain BN vs CaRe-BN (long; not in CI).

For every env, actor norm and seed: ``SpikingTD3`` for ``--steps`` env steps after ``--warmup`` random
ones (the paper: 1M after 25k), evaluation (10 episodes) every ``--eval-every`` steps; CaRe-BN also gets
Re-BN (``ReplayRecalibration`` every 5000 steps, 100 x 256). All other settings are SpikingTD3's
defaults (the paper's: batch 256, Adam 3e-4, tau 0.005, policy delay 2). Reported per variant: mean ± std
over seeds of the maximum evaluation return (the paper's metric) and of the last one, and the wall time.

Each finished run is appended as one JSON line to ``results/rl_returns_runs.jsonl`` (settings, evaluation
history, wall time, machine). A re-run with the same settings skips the runs already there, so the
benchmark can be stopped and resumed; the report is built from the stored runs. ``--jobs 2`` runs two
seeds at a time in separate processes (one torch thread each), which is what 2 cores allow.

    python benchmarks/rl_returns.py --steps 20000 --jobs 2   # hours on 2 CPU cores: writes results/rl_returns.md
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
from common import RESULTS_DIR, benchmark_parser, machine, publish, quiet_trainer, table_report

VARIANTS = {"no BN": "none", "BN (EMA 0.1)": "bn", "CaRe-BN": "carebn"}
RUNS_FILE = RESULTS_DIR / "rl_returns_runs.jsonl"


@dataclass(frozen=True)
class RunSpec:
    env: str
    norm: str
    seed: int
    steps: int
    warmup: int
    eval_every: int


def run(spec: RunSpec, threads: int) -> dict[str, object]:
    """Train one SpikingTD3 run; its evaluation history ``[(env steps, mean return), ...]`` and wall time."""
    from lightning.pytorch import seed_everything

    from spikenorm.callbacks import ReplayRecalibration
    from spikenorm.models import LayerSpec
    from spikenorm.tasks import SpikingTD3

    if threads:
        torch.set_num_threads(threads)
    seed_everything(spec.seed)
    started = time.perf_counter()
    task = SpikingTD3(
        spec.env,
        total_env_steps=spec.warmup + spec.steps,
        warmup_steps=spec.warmup,
        eval_every=spec.eval_every,
        eval_episodes=10,
        seed=spec.seed,
        actor_layers=LayerSpec(norm=spec.norm, neuron="clif", surrogate="rectangle"),
    )
    callbacks = (
        [ReplayRecalibration(every_n_env_steps=5000, num_batches=100, batch_size=256)] if spec.norm == "carebn" else []
    )
    quiet_trainer(max_epochs=1, callbacks=callbacks).fit(task)
    return {
        **asdict(spec),
        "eval_history": [list(e) for e in task.eval_history],
        "wall_s": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "machine": machine(torch.device("cpu")),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def stored_runs() -> dict[RunSpec, dict[str, object]]:
    if not RUNS_FILE.exists():
        return {}
    records = [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]
    return {RunSpec(**{k: r[k] for k in RunSpec.__dataclass_fields__}): r for r in records}


def plot(curves: dict[tuple[str, str], list[list[list[float]]]], path) -> None:
    """Evaluation return against env steps: one panel per env, mean over seeds with min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({env for env, _ in curves})
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for name in VARIANTS:
            histories = curves.get((env, name))
            if not histories:
                continue
            steps = torch.tensor([s for s, _ in histories[0]], dtype=torch.float64)
            returns = torch.tensor([[r for _, r in h] for h in histories], dtype=torch.float64)
            ax.plot(steps, returns.mean(0), label=f"{name} ({len(histories)} seeds)")
            ax.fill_between(steps, returns.min(0).values, returns.max(0).values, alpha=0.2)
        ax.set_title(env)
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return (10 episodes)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    args = parser.parse_args()
    specs = [
        RunSpec(env, norm, seed, args.steps, args.warmup, args.eval_every)
        for env, norm, seed in itertools.product(args.envs, VARIANTS.values(), range(args.seeds))
    ]
    done = stored_runs()
    todo = [s for s in specs if s not in done]
    print(f"{len(specs)} runs, {len(specs) - len(todo)} already stored in {RUNS_FILE.name}", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run, spec, args.threads): spec for spec in todo}
        for future in futures:
            record = future.result()
            done[futures[future]] = record
            if not args.no_save:
                RUNS_FILE.parent.mkdir(parents=True, exist_ok=True)
                with RUNS_FILE.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            print(
                f"{record['env']} {record['norm']} seed {record['seed']}: returns "
                f"{[round(r) for _, r in record['eval_history']]}, {record['wall_s']:.0f} s",
                flush=True,
            )

    def spread(values: list[float]) -> str:
        return (
            f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
        )

    rows, curves = [], {}
    for env, (name, norm) in itertools.product(args.envs, VARIANTS.items()):
        records = [done[s] for s in specs if s.env == env and s.norm == norm]
        histories = [r["eval_history"] for r in records]
        curves[(env, name)] = histories
        best, last = [max(r for _, r in h) for h in histories], [h[-1][1] for h in histories]
        minutes = statistics.median(r["wall_s"] for r in records) / 60
        rows.append(
            f"| {env} | {name} | {spread(best)} | {spread(last)} | "
            f"{' / '.join(f'{v:.0f}' for v in best)} | {minutes:.1f} |"
        )
    plot_note = []
    if not args.no_save:
        png = RESULTS_DIR / "rl_returns.png"
        plot(curves, png)
        plot_note = [f"Learning curves (mean over seeds, band min-max): `{png.name}`.", ""]
    description = (
        f"TD3, PopSAN actor with CLIF neurons (T=5), **{args.steps} env steps** after {args.warmup} random warm-up"
        f" steps (the paper trains 1M after 25k), {args.seeds} seeds, 10 evaluation episodes every"
        f" {args.eval_every} steps; {args.jobs} run(s) at a time, {args.threads or 'default'} torch thread(s) each;"
        f" this invocation's wall {time.perf_counter() - started:.0f} s (runs are in `{RUNS_FILE.name}`)."
    )
    header = "env | actor norm | max eval return (mean ± std) | last eval return | max per seed | min / run (median)"
    report = table_report(torch.device("cpu"), description, header, rows, notes=plot_note)
    publish("rl_returns", "TD3 returns with spiking actors: no BN vs BN vs CaRe-BN", report, save=not args.no_save)


if __name__ == "__main__":
    main()
