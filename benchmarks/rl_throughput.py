"""SpikingTD3 throughput against a minimal plain-PyTorch TD3 loop, and Re-BN's share of training time.

Two loops train the same networks with the same math on the same gymnasium env:

* ``plain``: no Lightning, no TorchRL. ``gymnasium.make(env)`` stepped directly, a preallocated numpy
  ring replay buffer, ``PopSANActor`` (CLIF, CaRe-BN, T = 5) and ``TwinQCritic`` with SpikingTD3's
  defaults (batch 256, gamma 0.99, tau 0.005, policy delay 2, exploration / target / clip noise
  0.1 / 0.2 / 0.5 of ``max_action``, Adam 3e-4 for both), the actor in eval mode under ``no_grad`` when
  acting, uniform random actions for the warm-up steps, the actor loss under
  :func:`spikenorm.norm.carebn.ca_bn_updates`, targets by :func:`spikenorm.rl.soft_update` (parameters
  and BN buffers). One update per env step from the last warm-up step on, as SpikingTD3 does.
* ``spikenorm``: :class:`spikenorm.tasks.SpikingTD3` under ``lightning.pytorch.Trainer(max_epochs=1,
  logger=False, ...)`` (TorchRL ``Collector`` with the eval-mode policy, ``TensorDictReplayBuffer``,
  ``self.log`` of losses and throughput), with the :class:`spikenorm.callbacks.ReplayRecalibration`
  callback attached at the paper's rate (every 5000 env steps, 100 x 256; it fires only in runs that
  long). Periodic evaluation is switched off (``eval_every`` beyond the run), the plain loop has none; the
  evaluation of the final policy that ends every fit is one episode (``eval_episodes=1``), after the timed
  post-warm-up part and inside the whole-run wall time.
  Optional extra row ``spikenorm fpb=K`` (``--frames-per-batch K``): K env steps per training
  iteration, then K updates (same number of updates per env step, coarser interleaving).

Timing: every run does ``warmup + steps`` env steps. The headline is steps/s over the post-warm-up part
only: from the end of the iteration of env step ``warmup`` (the first update included) to the end of the
last iteration, i.e. ``steps`` env steps with the policy acting and ``steps`` updates. The whole-run wall
time (construction of env, networks, trainer and collector included) is reported too. The loops alternate
(plain, spikenorm, [spikenorm fpb=K], plain, ...) for ``--repeats`` repeats with seed = ``--seed`` +
repeat in both, so drift from other load is shared; medians are reported. Acceptance: median
spikenorm / plain steps/s >= 0.9.

Re-BN share: after each spikenorm run, one re-calibration as the callback does it (sample 100 x 256
observations from the replay buffer, then :func:`spikenorm.recalibrate.recalibrate_bn`) is timed in each
mode (``exact`` and ``single_pass``) on the trained actor. At the paper's rate (every 5000 env steps):

    share = t_recalibration / (5000 * t_env_step)

with ``t_env_step`` the median post-warm-up seconds per env step of the spikenorm run (collection and one
update). Acceptance: share <= 3 % (exact mode, the default of the callback).

Threads: ``--threads 1`` by default (both loops, same process). The machine these results come from has
2 cores shared with other jobs; with torch's default of 2 intra-op threads, a concurrent process makes
the OpenMP workers spin against each other (an actor update went from ~30 ms to over a second), so the
numbers become noise. ``--threads 0`` keeps torch's default on an idle machine. More threads shrink the
update, not the per-step plumbing, so the ratio is lower with more threads.

A breakdown run (not timed in the table) wraps the collector iterator, replay-buffer extend/sample, the
update, ``self.log`` and ``training_step`` of SpikingTD3 with timers, and the same parts of the plain
loop, to show where the time per env step goes; ``--profile`` adds a cProfile top list of a spikenorm run.

    python benchmarks/rl_throughput.py                          # writes results/rl_throughput.md
    python benchmarks/rl_throughput.py --steps 300 --warmup 300 --repeats 1 --no-save
"""

from __future__ import annotations

import contextlib
import copy
import cProfile
import io
import logging
import os
import pstats
import statistics
import subprocess
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from common import benchmark_parser, publish, quiet_trainer, stamp
from lightning.pytorch import Callback, Trainer, seed_everything

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.models import LayerSpec
from spikenorm.models.rl import PopSANActor, TwinQCritic
from spikenorm.norm.carebn import ca_bn_updates
from spikenorm.recalibrate import recalibrate_bn
from spikenorm.rl import soft_update
from spikenorm.tasks import SpikingTD3

PAPER_REBN_EVERY = 5000  # env steps between re-calibrations (CaRe-BN)
REBN_BATCHES = 100
REBN_BATCH_SIZE = 256


@dataclass
class HParams:
    """SpikingTD3's TD3 defaults, shared by both loops."""

    batch_size: int = 256
    buffer_size: int = 1_000_000
    gamma: float = 0.99
    tau: float = 0.005
    policy_delay: int = 2
    exploration_noise: float = 0.1
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)
    time_steps: int = 5

    def td3_options(self) -> dict[str, Any]:
        """These settings as :class:`~spikenorm.tasks.SpikingTD3` keyword arguments (``lr`` for actor and critic)."""
        options = asdict(self)
        lr = options.pop("lr")
        return {**options, "actor_lr": lr, "critic_lr": lr}


@dataclass
class Run:
    loop: str
    total_s: float  # whole run, construction included
    post_s: float  # env steps warmup+1 .. warmup+steps (and their updates)
    steps: int
    updates: int
    rebn_in_run_s: list[float] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.post_s


class Timers:
    """Accumulated seconds and calls per named part; ``enabled`` once the post-warm-up part starts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.enabled = False

    @contextlib.contextmanager
    def part(self, name: str):
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


NULL_TIMERS = Timers()


# --- plain PyTorch TD3 -----------------------------------------------------------------------------------


class NumpyReplay:
    """Preallocated ring buffer of transitions; uniform sampling with replacement."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int) -> None:
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros((capacity, 1), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.not_done = np.zeros((capacity, 1), np.float32)
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.ptr
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.not_done[i] = next_obs, 1.0 - float(terminated)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, self.size, n)
        return tuple(
            torch.from_numpy(a[idx]) for a in (self.obs, self.action, self.reward, self.next_obs, self.not_done)
        )


def run_plain(env_name: str, warmup: int, steps: int, seed: int, hp: HParams, timers: Timers = NULL_TIMERS) -> Run:
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    env = gym.make(env_name)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
    high = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    actor = PopSANActor(
        obs_dim,
        act_dim,
        max_action=high.tolist(),
        hidden=hp.hidden,
        time_steps=hp.time_steps,
        layers=LayerSpec(norm="carebn", neuron="clif", surrogate="rectangle"),
    )
    critic = TwinQCritic(obs_dim, act_dim, hidden=hp.hidden)
    actor_target = copy.deepcopy(actor).eval().requires_grad_(False)
    critic_target = copy.deepcopy(critic).eval().requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=hp.lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=hp.lr)
    buffer = NumpyReplay(hp.buffer_size, obs_dim, act_dim, seed)
    updates = 0

    def update() -> None:
        nonlocal updates
        with timers.part("sample"):
            obs, action, reward, next_obs, not_done = buffer.sample(hp.batch_size)
        with timers.part("update"):
            with torch.no_grad():
                next_action = actor_target(next_obs)
                noise = (torch.randn_like(next_action) * hp.policy_noise * high).clamp(
                    -hp.noise_clip * high, hp.noise_clip * high
                )
                next_action = torch.maximum(torch.minimum(next_action + noise, high), low)
                q1_next, q2_next = critic_target(next_obs, next_action)
                target = reward + hp.gamma * not_done * torch.minimum(q1_next, q2_next)
            q1, q2 = critic(obs, action)
            critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()
            updates += 1
            if updates % hp.policy_delay == 0:
                with ca_bn_updates(actor):
                    policy_action = actor(obs)
                actor_loss = -critic.q1(obs, policy_action).mean()
                actor_opt.zero_grad()
                actor_loss.backward()
                actor_opt.step()
                soft_update(actor_target, actor, hp.tau)
                soft_update(critic_target, critic, hp.tau)

    obs, _ = env.reset(seed=seed)
    post_start = time.perf_counter()
    for t in range(1, warmup + steps + 1):
        with timers.part("act"):
            if t <= warmup:
                action = env.action_space.sample()
            else:
                with torch.no_grad():
                    actor.eval()
                    a = actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0]
                    actor.train()
                    a = torch.maximum(torch.minimum(a + torch.randn_like(a) * hp.exploration_noise * high, high), low)
                action = a.numpy()
        with timers.part("env step"):
            next_obs, reward, terminated, truncated, _ = env.step(action)
        with timers.part("buffer add"):
            buffer.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            with timers.part("env step"):
                obs, _ = env.reset()
        if t >= warmup and buffer.size >= hp.batch_size:
            update()
        if t == warmup:
            post_start = time.perf_counter()
            timers.enabled = True
    end = time.perf_counter()
    timers.enabled = False
    env.close()
    return Run("plain", end - start, end - post_start, steps, updates)


# --- SpikingTD3 ------------------------------------------------------------------------------------------


class StepClock(Callback):
    """Timestamps the end of the iteration that reaches env step ``warmup`` and of the last iteration."""

    def __init__(self, warmup: int, timers: Timers) -> None:
        self.warmup, self.timers = warmup, timers
        self.post_start: float | None = None
        self.end = 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self.post_start is None and pl_module.env_steps >= self.warmup:
            self.post_start = now
            self.timers.enabled = True
        self.end = now


class TimedReplayRecalibration(ReplayRecalibration):
    """The callback, recording the seconds of every re-calibration it makes during the run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        before, start = self.recalibrations, time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.recalibrations > before:
            self.durations.append(time.perf_counter() - start)


def instrument(task: SpikingTD3, timers: Timers) -> None:
    """Wrap the parts of one SpikingTD3 iteration with timers (instance attributes; the class is untouched)."""
    task.replay_buffer.extend = timers.wrap("buffer extend", task.replay_buffer.extend)
    task.replay_buffer.sample = timers.wrap("buffer sample", task.replay_buffer.sample)
    task.update = timers.wrap("update (incl. self.log)", task.update)
    task.log = timers.wrap("self.log", task.log)
    task._log_episodes = timers.wrap("_log_episodes", task._log_episodes)
    task.training_step = timers.wrap("training_step", task.training_step)
    on_fit_start = task.on_fit_start

    def wrapped_on_fit_start() -> None:
        on_fit_start()
        iterator = task._collector_iter

        class TimedIter:
            def __iter__(self):
                return self

            def __next__(self):
                with timers.part("collector next"):
                    return next(iterator)

        task._collector_iter = TimedIter()

    task.on_fit_start = wrapped_on_fit_start


def run_spikenorm(
    env_name: str,
    warmup: int,
    steps: int,
    seed: int,
    hp: HParams,
    frames_per_batch: int = 1,
    timers: Timers = NULL_TIMERS,
    label: str = "spikenorm",
) -> tuple[Run, SpikingTD3]:
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    total = warmup + steps
    task = SpikingTD3(
        env_name=env_name,
        total_env_steps=total,
        warmup_steps=warmup,
        algorithm="td3",
        frames_per_batch=frames_per_batch,
        eval_every=total + 1,
        eval_episodes=1,
        seed=seed,
        actor_layers=LayerSpec(norm="carebn", neuron="clif", surrogate="rectangle"),
        **hp.td3_options(),
    )
    if timers is not NULL_TIMERS:
        instrument(task, timers)
    rebn = TimedReplayRecalibration(
        every_n_env_steps=PAPER_REBN_EVERY, num_batches=REBN_BATCHES, batch_size=REBN_BATCH_SIZE
    )
    clock = StepClock(warmup, timers)
    # ReplayRecalibration refuses a schedule that never runs: attach it only to runs long enough to trigger it
    callbacks = [rebn, clock] if total >= PAPER_REBN_EVERY else [clock]
    quiet_trainer(max_epochs=1, devices=1, callbacks=callbacks).fit(task)
    end = time.perf_counter()
    timers.enabled = False
    run = Run(label, end - start, clock.end - clock.post_start, task.env_steps - warmup, task.updates, rebn.durations)
    return run, task


def time_rebn(task: SpikingTD3, mode: str) -> tuple[float, float]:
    """(seconds of one re-calibration as the callback makes it, of which recalibrate_bn alone)."""
    start = time.perf_counter()
    batches = [task.replay_buffer.sample(REBN_BATCH_SIZE)["observation"].float() for _ in range(REBN_BATCHES)]
    report = recalibrate_bn(task.actor, batches, mode=mode)
    return time.perf_counter() - start, report.seconds


# --- report ----------------------------------------------------------------------------------------------


def code_state() -> str:
    """Commit of the checkout and the library files that differ from it (results depend on them)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "callbacks"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "code state unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {commit}" + (f" with uncommitted changes in {', '.join(changed)}" if changed else "")


def breakdown_rows(label: str, timers: Timers, post_s: float, steps: int) -> list[str]:
    rows = []
    for name, sec in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {label} | {name} | {timers.calls[name]} | {sec / steps * 1e3:.3f} | {sec / post_s:.1%} |")
    return rows


def profile_spikenorm(env_name: str, warmup: int, steps: int, seed: int, hp: HParams, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run_spikenorm(env_name, warmup, steps, seed, hp)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--warmup", type=int, default=500, help="random-action env steps before the timed part")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps (one update each) after warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--frames-per-batch", type=int, default=10, help="extra SpikingTD3 row with this frames_per_batch (0: none)"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-part timer run")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile top list of a spikenorm run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both loops (0: torch's default); see the module doc",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.frames_per_batch and (args.warmup % args.frames_per_batch or args.steps % args.frames_per_batch):
        parser.error("--warmup and --steps must be multiples of --frames-per-batch")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    hp = HParams()
    device = torch.device("cpu")
    load_before = os.getloadavg()
    runs: dict[str, list[Run]] = defaultdict(list)
    rebn: dict[str, list[tuple[float, float]]] = defaultdict(list)
    fpb_label = f"spikenorm fpb={args.frames_per_batch}"
    for r in range(args.repeats):
        seed = args.seed + r
        runs["plain"].append(run_plain(args.env, args.warmup, args.steps, seed, hp))
        run, task = run_spikenorm(args.env, args.warmup, args.steps, seed, hp)
        runs["spikenorm"].append(run)
        for mode in ("exact", "single_pass"):
            rebn[mode].append(time_rebn(task, mode))
        del task
        if args.frames_per_batch > 1:
            run, _ = run_spikenorm(args.env, args.warmup, args.steps, seed, hp, args.frames_per_batch, label=fpb_label)
            runs[fpb_label].append(run)
        print(" | ".join(f"{k}: {v[-1].steps_per_s:.1f} steps/s" for k, v in runs.items()), flush=True)
    load_after = os.getloadavg()

    median_sps = {k: statistics.median(x.steps_per_s for x in v) for k, v in runs.items()}
    ratio = median_sps["spikenorm"] / median_sps["plain"]
    t_step = 1.0 / median_sps["spikenorm"]
    rebn_med = {
        mode: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for mode, v in rebn.items()
    }
    share = {mode: sec / (PAPER_REBN_EVERY * t_step) for mode, (sec, _) in rebn_med.items()}
    in_run = [d for x in runs["spikenorm"] for d in x.rebn_in_run_s]

    lines = [
        stamp(device),
        "",
        (
            f"`{args.env}`, {args.warmup} warm-up env steps (random actions) + {args.steps} timed env steps with one "
            f"TD3 update each (batch {hp.batch_size}, PopSAN actor CLIF/CaRe-BN T={hp.time_steps}, twin-Q critic "
            f"{list(hp.hidden)}); loops alternated, {args.repeats} repeats "
            f"(seeds {args.seed}..{args.seed + args.repeats - 1}),"
            f" medians. Steps/s over the post-warm-up part only (timestamps at the end of env step {args.warmup} and"
            f" of the last step); whole-run wall time includes construction. Load average (1/5/15 min) before "
            f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
            f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} ({os.cpu_count()} cores), "
            f"torch threads {torch.get_num_threads()}; {code_state()}."
        ),
        "",
        "| loop | post-warm-up steps/s (median) | per repeat | ms / env step | whole-run s (median) | updates "
        "| vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in runs.items():
        per = ", ".join(f"{x.steps_per_s:.1f}" for x in v)
        lines.append(
            f"| {k} | {median_sps[k]:.1f} | {per} | {1e3 / median_sps[k]:.2f} | "
            f"{statistics.median(x.total_s for x in v):.1f} | {v[0].updates} | "
            f"{median_sps[k] / median_sps['plain']:.3f}x |"
        )
    verdict = "PASS" if ratio >= 0.9 else "FAIL"
    lines += [
        "",
        f"**Throughput ratio spikenorm / plain = {ratio:.3f} (target >= 0.9): {verdict}.**",
        "",
        (
            f"Re-BN (one re-calibration as `ReplayRecalibration` makes it: sample {REBN_BATCHES} x {REBN_BATCH_SIZE} "
            f"observations from the replay buffer, then `recalibrate_bn` on the trained actor), median of "
            f"{args.repeats}. Share at the paper's rate = t_recalibration / ({PAPER_REBN_EVERY} x t_env_step), "
            f"t_env_step = {t_step * 1e3:.2f} ms (median spikenorm post-warm-up):"
        ),
        "",
        "| mode | s / re-calibration | of which recalibrate_bn | share of training time | target <= 3% |",
        "|---|---|---|---|---|",
    ]
    for mode, (sec, inner) in rebn_med.items():
        lines.append(
            f"| {mode} | {sec:.3f} | {inner:.3f} | {share[mode]:.2%} | {'PASS' if share[mode] <= 0.03 else 'FAIL'} |"
        )
    if in_run:
        lines += [
            "",
            f"In-run re-calibrations by the callback (every {PAPER_REBN_EVERY} env steps): "
            + ", ".join(f"{d:.3f} s" for d in in_run),
        ]
    else:
        lines += [
            "",
            (
                f"(The runs are shorter than {PAPER_REBN_EVERY} env steps, so the attached callback did not "
                "fire; the share above is computed from the timed re-calibrations.)"
            ),
        ]

    if not args.no_breakdown:
        seed = args.seed
        t_plain, t_spike = Timers(), Timers()
        plain = run_plain(args.env, args.warmup, args.steps, seed, hp, timers=t_plain)
        spike, _ = run_spikenorm(args.env, args.warmup, args.steps, seed, hp, timers=t_spike)
        lines += [
            "",
            (
                f"Where the time goes (one extra instrumented run each, seed {seed}, post-warm-up part: plain "
                f"{plain.steps_per_s:.1f} steps/s, spikenorm {spike.steps_per_s:.1f} steps/s). Parts nest for "
                "spikenorm: `training_step` holds `collector next`, `buffer extend`, `buffer sample`, "
                "`update (incl. self.log)`, `_log_episodes` and the throughput `self.log` calls; "
                "the rest of the wall time is Lightning's loop (and the callbacks)."
            ),
            "",
            "| loop | part | calls | ms / env step | share of wall |",
            "|---|---|---|---|---|",
            *breakdown_rows("plain", t_plain, plain.post_s, plain.steps),
            *breakdown_rows("spikenorm", t_spike, spike.post_s, spike.steps),
        ]
        ts = t_spike.seconds
        outside = spike.post_s - ts["training_step"]
        in_step_other = ts["training_step"] - sum(
            ts[k]
            for k in ("collector next", "buffer extend", "buffer sample", "update (incl. self.log)", "_log_episodes")
        )
        lines += [
            (
                f"| spikenorm | Lightning loop + callbacks (wall - training_step) | | "
                f"{outside / spike.steps * 1e3:.3f} | "
                f"{outside / spike.post_s:.1%} |"
            ),
            (
                f"| spikenorm | rest of training_step (throughput self.log, ...) | | "
                f"{in_step_other / spike.steps * 1e3:.3f} | {in_step_other / spike.post_s:.1%} |"
            ),
        ]
    lines.append("")
    report = "\n".join(lines)
    publish(
        "rl_throughput",
        "RL throughput: SpikingTD3 vs a plain PyTorch TD3 loop, and Re-BN's share",
        report,
        save=not args.no_save,
    )
    if args.profile:
        print(profile_spikenorm(args.env, args.warmup, args.steps, args.seed, hp, top=45))


if __name__ == "__main__":
    main()
