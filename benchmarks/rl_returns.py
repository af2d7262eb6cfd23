"""The CaRe-BN paper's main table at CPU scale: TD3 returns of an ANN actor and of spiking actors (long; not in CI).

The rows are those of the CaRe-BN paper's comparison (Xu et al., "CaRe-BN: Precise Moving Statistics for
Stabilizing Spiking Neural Networks in Reinforcement Learning", ICLR 2026; TD3, CLIF neurons), each a
:class:`~spikenorm.tasks.SpikingTD3` setting:

* ANN: ``actor="ann"``, TD3's ReLU MLP 256-256 (:class:`~spikenorm.models.MLPActor`);
* pop-SAN (no BN): the PopSAN actor (CLIF, T = 5, population 10, 256-256) with norm ``none``;
* tdBN, TEBN, TAB: the same actor with norm ``tdbn``, ``tebn``, ``tab`` (running statistics by EMA);
* CaRe-BN: norm ``carebn`` plus Re-BN (``ReplayRecalibration`` every ``--rebn-every`` env steps, 100 x 256).

Every other setting is SpikingTD3's default, which is the paper's (batch 256, Adam 3e-4, tau 0.005, policy delay 2,
exploration noise 0.1). ``recipes/td3_<row>_<env>.yaml`` runs the same row for the paper's 1M steps. For every env,
row and seed: ``--steps`` env steps after ``--warmup`` random ones (the paper: 1M after 25k), 10 evaluation
episodes every ``--eval-every`` steps. Reported per row: mean ± std over seeds of the maximum evaluation return
(the paper's metric) and of the last one, beside the paper's 1M-step number; and a curve plot, one panel per env.

Runs are resumable. Each finished run is appended as one JSON line to ``rl_returns_runs.jsonl`` in the results
folder, keyed by its settings (env, actor, norm, seed, steps, warmup, eval_every, rebn_every); a run whose key is
already stored is not run again, and the report is built from the stored runs. Records of earlier versions of
this benchmark (no ``actor`` or ``rebn_every``: a PopSAN actor, Re-BN every 5000 steps for ``carebn``) count for
the row whose settings they match; the others (e.g. plain ``bn``) stay in the file and are ignored. ``--jobs 2``
runs two runs at a time in separate processes with ``--threads`` (1) torch threads each; ``--jobs 1`` runs them
in this process. ``--envs`` and ``--rows`` choose the table's envs and rows (and so which runs are made), so
the envs can be run one at a time and the full table built by a last call that finds every run stored:

    python benchmarks/rl_returns.py --envs InvertedDoublePendulum-v5 --jobs 2
    python benchmarks/rl_returns.py --envs Hopper-v5 --jobs 2
    python benchmarks/rl_returns.py --jobs 2          # both envs: writes results/rl_returns.md and .png
    python benchmarks/rl_returns.py --steps 300 --warmup 300 --eval-every 150 --rebn-every 150 --seeds 1 \\
        --results-dir /tmp/rl_smoke                   # the whole machinery in minutes
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from common import RESULTS_DIR, benchmark_parser, machine, quiet_trainer, run_each, table_report, write_report

NAME = "rl_returns"
ENVS = ("InvertedDoublePendulum-v5", "Hopper-v5")


@dataclass(frozen=True)
class Row:
    """One row of the table: its label in the paper, its SpikingTD3 settings, and the paper's numbers."""

    label: str
    actor: str  # SpikingTD3(actor=...)
    norm: str  # the PopSAN actor's norm ("none" for the ANN, which has no norm layers)
    paper: dict[str, float]  # env family -> the paper's maximum average return after 1M steps (v4 envs, 5 seeds)

    @property
    def rebn(self) -> bool:
        """Whether the row re-calibrates its statistics from replay (Re-BN): CaRe-BN only."""
        return self.norm == "carebn"

    def settings(self) -> str:
        """The row's SpikingTD3 settings, for the table."""
        if self.actor == "ann":
            return "`actor=ann`"
        return f"`norm={self.norm}`" + (" + Re-BN" if self.rebn else "")


#: the CaRe-BN paper's main table (TD3 + CLIF, maximum average return), keyed as the recipes td3_<key>_<env>.yaml
ROWS = {
    "ann": Row("ANN", "ann", "none", {"InvertedDoublePendulum": 7503, "Hopper": 3410}),
    "popsan": Row("pop-SAN (no BN)", "spiking", "none", {"InvertedDoublePendulum": 9351, "Hopper": 2772}),
    "tdbn": Row("tdBN", "spiking", "tdbn", {"InvertedDoublePendulum": 9346, "Hopper": 3592}),
    "tebn": Row("TEBN", "spiking", "tebn", {"InvertedDoublePendulum": 9349, "Hopper": 3472}),
    "tab": Row("TAB", "spiking", "tab", {"InvertedDoublePendulum": 9348, "Hopper": 3585}),
    "carebn": Row("CaRe-BN", "spiking", "carebn", {"InvertedDoublePendulum": 9348, "Hopper": 3586}),
}


@dataclass(frozen=True)
class RunSpec:
    """The settings that identify a stored run (``rebn_every`` is 0 for rows without Re-BN)."""

    env: str
    actor: str
    norm: str
    seed: int
    steps: int
    warmup: int
    eval_every: int
    rebn_every: int

    @classmethod
    def of(cls, row: Row, env: str, seed: int, steps: int, warmup: int, eval_every: int, rebn_every: int) -> RunSpec:
        return cls(env, row.actor, row.norm, seed, steps, warmup, eval_every, rebn_every if row.rebn else 0)

    @classmethod
    def of_record(cls, record: dict[str, object]) -> RunSpec:
        """The key of a stored record; records of earlier versions lack ``actor`` and ``rebn_every``."""
        defaults = {"actor": "spiking", "rebn_every": 5000 if record["norm"] == "carebn" else 0}
        return cls(**{name: record.get(name, defaults.get(name)) for name in cls.__dataclass_fields__})


def run(spec: RunSpec, threads: int) -> dict[str, object]:
    """Train one SpikingTD3 run; its settings, evaluation history ``[(env steps, mean return), ...]``, wall time
    and machine. ``threads``: torch threads during the run (0: leave as is)."""
    from lightning.pytorch import seed_everything

    from spikenorm.callbacks import ReplayRecalibration
    from spikenorm.models import LayerSpec
    from spikenorm.tasks import SpikingTD3

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seed_everything(spec.seed)
        started = time.perf_counter()
        spiking = spec.actor == "spiking"
        task = SpikingTD3(
            spec.env,
            total_env_steps=spec.warmup + spec.steps,
            warmup_steps=spec.warmup,
            eval_every=spec.eval_every,
            eval_episodes=10,
            seed=spec.seed,
            actor=spec.actor,
            actor_layers=LayerSpec(norm=spec.norm, neuron="clif", surrogate="rectangle") if spiking else None,
        )
        callbacks = (
            [ReplayRecalibration(every_n_env_steps=spec.rebn_every, num_batches=100, batch_size=256)]
            if spec.rebn_every
            else []
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
    finally:
        torch.set_num_threads(previous_threads)


def stored_runs(path: Path) -> dict[RunSpec, dict[str, object]]:
    """The runs stored in the JSON-lines file ``path``, by their settings (the last record of a key wins)."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {RunSpec.of_record(r): r for r in records}


def run_missing(
    todo: list[RunSpec], jobs: int, threads: int, store: Path | None
) -> tuple[dict[RunSpec, dict[str, object]], dict[RunSpec, str]]:
    """Run ``todo`` (``jobs`` at a time; ``jobs == 1``: in this process), appending each finished run to ``store``
    as it finishes; returns the records and the errors of the runs that failed."""
    records: dict[RunSpec, dict[str, object]] = {}
    errors: dict[RunSpec, str] = {}

    def keep(spec: RunSpec, result: Callable[[], dict[str, object]]) -> None:
        try:
            record = result()
        except Exception as error:  # noqa: BLE001 - one failed run must not lose the others' results
            errors[spec] = f"{type(error).__name__}: {error}"
            print(f"{spec}: FAILED {errors[spec]}", flush=True)
            return
        records[spec] = record
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            with store.open("a") as f:
                f.write(json.dumps(record) + "\n")
        returns = [round(r) for _, r in record["eval_history"]]
        print(f"{spec.env} {spec.actor} {spec.norm} seed {spec.seed}: {returns}, {record['wall_s']:.0f} s", flush=True)

    run_each(todo, run, jobs, threads, keep)
    return records, errors


def spread(values: list[float]) -> str:
    """``mean ± std`` over seeds (no std for one seed), or ``—`` for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def env_family(env: str) -> str:
    """``Hopper-v5`` -> ``Hopper`` (the paper used the v4 envs)."""
    return env.rsplit("-v", 1)[0]


def table_rows(runs: dict[tuple[str, str], list[dict[str, object]]], envs: list[str], rows: list[str]) -> list[str]:
    """One table row per env and row of ``runs`` ((env, row key) -> stored records)."""
    lines = []
    for env, key in itertools.product(envs, rows):
        row, records = ROWS[key], runs[(env, key)]
        histories = [r["eval_history"] for r in records]
        best = [max(value for _, value in h) for h in histories]
        last = [h[-1][1] for h in histories]
        paper = row.paper.get(env_family(env))
        minutes = f"{statistics.median(r['wall_s'] for r in records) / 60:.1f}" if records else "—"
        lines.append(
            f"| {env} | {row.label} | {row.settings()} | {spread(best)} | {spread(last)} | "
            f"{' / '.join(f'{v:.0f}' for v in best) or 'no runs'} | {paper if paper is not None else '—'} | "
            f"{minutes} |"
        )
    return lines


def plot(runs: dict[tuple[str, str], list[dict[str, object]]], envs: list[str], rows: list[str], path: Path) -> None:
    """Evaluation return against env steps: one panel per env, one line per row (mean over seeds, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for key in rows:
            histories = [r["eval_history"] for r in runs[(env, key)]]
            if not histories:
                continue
            steps = torch.tensor([s for s, _ in histories[0]], dtype=torch.float64)
            returns = torch.tensor([[value for _, value in h] for h in histories], dtype=torch.float64)
            ax.plot(steps, returns.mean(0), label=f"{ROWS[key].label} ({len(histories)} seeds)")
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
    parser.add_argument("--envs", nargs="+", default=list(ENVS), help="envs of the table (default: both)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows of the table")
    parser.add_argument("--seeds", type=int, default=3)
    # the defaults are the budget of results/rl_returns.md (about two hours of compute per env on 2 cores)
    parser.add_argument("--steps", type=int, default=7_500, help="env steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2_500, help="random-action env steps first")
    parser.add_argument("--eval-every", type=int, default=2_500, help="env steps between evaluations")
    parser.add_argument("--rebn-every", type=int, default=5_000, help="env steps between CaRe-BN's re-calibrations")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the report, plot and runs go")
    args = parser.parse_args()
    schedules = [("--eval-every", args.eval_every)]
    schedules += [("--rebn-every", args.rebn_every)] if any(ROWS[key].rebn for key in args.rows) else []
    for option, every in schedules:
        if not 0 < every <= args.warmup + args.steps:
            parser.error(f"{option} must lie in [1, warmup + steps = {args.warmup + args.steps}], got {every}")
    store = args.results_dir / f"{NAME}_runs.jsonl"
    specs = {
        (env, key, seed): RunSpec.of(ROWS[key], env, seed, args.steps, args.warmup, args.eval_every, args.rebn_every)
        for env, key, seed in itertools.product(args.envs, args.rows, range(args.seeds))
    }
    done = stored_runs(store)
    todo = [spec for spec in specs.values() if spec not in done]
    print(f"{len(specs)} runs, {len(specs) - len(todo)} already stored in {store}", flush=True)
    started = time.perf_counter()
    records, errors = run_missing(todo, args.jobs, args.threads, None if args.no_save else store)
    done.update(records)
    runs = {
        (env, key): [done[spec] for (e, k, _), spec in specs.items() if (e, k) == (env, key) and spec in done]
        for env, key in itertools.product(args.envs, args.rows)
    }
    stored = [record for records_of in runs.values() for record in records_of]
    machines = sorted({str(r["machine"]) for r in stored})
    finished = sorted(str(r["finished"]) for r in stored)
    description = (
        f"TD3, **{args.steps} env steps** after {args.warmup} random warm-up steps (the paper: 1M after 25k), "
        f"{args.seeds} seeds, 10 evaluation episodes every {args.eval_every} env steps; CaRe-BN re-calibrates "
        f"(Re-BN, 100 x 256 replay states) every {args.rebn_every} env steps. Spiking rows: PopSAN actor, CLIF "
        "neurons, T = 5, population 10, 256-256; ANN: ReLU MLP 256-256. Best = maximum evaluation return over the "
        "run (the paper's metric), last = the final one, each mean ± std over seeds. Paper: the CaRe-BN paper's "
        "main table (TD3 + CLIF, maximum average return after 1M steps on the v4 envs, 5 seeds). Runs on "
        f"{'; '.join(machines) or 'no machine yet'}, finished {finished[0] if finished else '—'} to "
        f"{finished[-1] if finished else '—'}, {args.jobs} at a time with {args.threads or 'default'} torch "
        f"thread(s) each (stored in `{store.name}`); this invocation's wall {time.perf_counter() - started:.0f} s."
    )
    header = (
        "env | row | settings | best eval return | last eval return | best per seed | paper, 1M steps, v4 | "
        "min / run (median)"
    )
    notes = []
    if not args.no_save:
        png = args.results_dir / f"{NAME}.png"
        plot(runs, args.envs, args.rows, png)
        notes.append(f"Learning curves (mean over seeds, band min to max): `{png.name}`.")
    if errors:
        notes.append(f"{len(errors)} run(s) failed: " + "; ".join(f"{s}: {e}" for s, e in errors.items()))
    rows = table_rows(runs, args.envs, args.rows)
    report = table_report(torch.device("cpu"), description, header, rows, notes=notes)
    print(report)
    if not args.no_save:
        write_report(args.results_dir / f"{NAME}.md", "TD3 returns: the CaRe-BN table's rows at CPU scale", report)
    if errors:
        raise SystemExit(f"{len(errors)} run(s) failed; the others are stored, run again to retry")


if __name__ == "__main__":
    main()
