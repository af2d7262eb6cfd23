"""SpikingTD3 against a plain PyTorch TD3 loop and the CaRe-BN paper's script, with the ANN and the spiking actor.

Three loops train TD3 (batch 256, gamma 0.99, tau 0.005, policy delay 2, exploration / target / clip noise
0.1 / 0.2 / 0.5 of ``max_action``, Adam 3e-4, twin-Q critic 256-256) on the same gymnasium env, each with two actors:
TD3's ReLU MLP (``ann``) and the PopSAN actor with CaRe-BN (``spiking``: CLIF neurons, T = 5, populations of 10):

* ``plain``: no Lightning, no TorchRL. ``gymnasium.make(env)`` stepped directly, a preallocated numpy ring
  replay buffer, spikenorm's ``MLPActor`` / ``PopSANActor`` and ``TwinQCritic``, the actor in eval mode under
  ``no_grad`` when acting, the actor loss under :func:`spikenorm.norm.carebn.ca_bn_updates`, targets by
  :func:`spikenorm.rl.soft_update`. One update per env step from the last warm-up step on, as SpikingTD3 does, with
  SpikingTD3's arithmetic: fused Adam and the critic's parameters frozen in the actor loss
  (:func:`spikenorm.modes.frozen_parameters`), so that spikenorm / plain measures the loop alone.
* ``spikenorm``: :class:`spikenorm.tasks.SpikingTD3` (``actor="ann"`` or the default PopSAN actor) under
  ``lightning.pytorch.Trainer(max_epochs=1, logger=False, ...)``, with the
  :class:`spikenorm.callbacks.ReplayRecalibration` callback attached at the paper's rate (every 5000 env steps,
  100 x 256; it fires only in runs that long). Periodic evaluation is off (``eval_every`` beyond the run); the
  evaluation of the final policy that ends every fit is one episode, after the timed part. With the ANN actor a
  second row, ``spikenorm bpi=K`` (``--batches-per-iteration K``, default 10), runs K env steps (each with its
  update, in the same order: the same numbers) per Lightning iteration, which saves Lightning's own per-iteration
  cost; callbacks then see every K-th env step. A third ANN row, ``spikenorm default Adam``, runs SpikingTD3 with
  ``fused_optimizer=False`` (torch's default Adam, the official script's): it separates what the fused optimizer
  gains from what the loop costs.
* ``official``: the paper's ``continuous_control/main.py`` (xuzijie32/CaRe-BN), given with ``--official PATH``
  (a folder outside this repository, e.g. ``git archive`` of a clone; its code is never copied here), run as a
  subprocess through ``official_carebn.py`` with ``--policy TD3 --spiking_neurons ANN`` or ``CLIF`` (CaRe-BN on),
  ``--start_timesteps`` = warm-up, ``--max_trainsteps`` = timed steps, ``--eval_freq`` beyond the run (its only
  evaluation is the untrained policy's, 10 episodes before the first env step, outside the timed part) and
  torch's threads set as for the other loops. ``official_carebn.py`` drops the ``BN=`` keyword the script passes
  to its ``ANN_Actor`` (which takes none: ``--spiking_neurons ANN`` crashes with TD3 otherwise) and timestamps
  every env step (after its replay ``add``, or after its update when it made one). Without ``--official`` the
  loop is left out.

Timing: every run does ``warmup + steps`` env steps and records the time at the end of each env step (plain and
official: in the loop; spikenorm: at the end of each Lightning iteration, which for ``bpi=K`` is the end of its
K-th env step). Post-warm-up env steps/s (the headline)
is ``steps`` / (end of env step ``warmup + steps`` - end of env step ``warmup``): ``steps`` env steps with the
policy acting and ``steps`` updates in all three loops (spikenorm and plain make their first update at env step
``warmup``, the official script one step later: in all three that update is outside the window). The loop's own
cost is the mean time per env step over warm-up steps 100 .. ``warmup`` (random actions, no network call, no
update): env step, bookkeeping, replay write and, for spikenorm, the Lightning loop. Loops and actors alternate
(for each repeat: for each actor: plain, spikenorm, [spikenorm bpi=K], official) for ``--repeats`` repeats with
seed = ``--seed`` + repeat, so drift from other load is shared; medians are reported.

Re-BN share: after each spiking spikenorm run, one re-calibration as the callback does it (sample 100 x 256
observations from the replay buffer, then :func:`spikenorm.recalibrate.recalibrate_bn`) is timed in each mode
(``exact`` and ``single_pass``) on the trained actor; at the paper's rate (every 5000 env steps) its share of
training time is ``t_recalibration / (5000 * t_env_step)``.

Threads: ``--threads 1`` by default (every loop, the subprocess too). More threads shrink the update, not the
per-step plumbing. A breakdown run (not timed in the tables) wraps the parts of one SpikingTD3 run with the ANN
actor with timers; ``--profile`` adds a cProfile top list of one.

    git clone https://github.com/xuzijie32/CaRe-BN /tmp/carebn   # outside the repository
    python benchmarks/rl_throughput.py --official /tmp/carebn/CaRe-BN/continuous_control --official-version "<commit>"
                                                                  # writes results/rl_throughput.md
    python benchmarks/rl_throughput.py --steps 300 --warmup 300 --repeats 1 --actors ann --no-save
"""

from __future__ import annotations

import contextlib
import copy
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning
import numpy as np
import torch
import torch.nn.functional as F
import torchrl
from common import benchmark_parser, markdown_table, publish, quiet_trainer, stamp
from lightning.pytorch import Callback, Trainer, seed_everything

from spikenorm.callbacks import ReplayRecalibration
from spikenorm.models.rl import POPSAN_LAYERS, MLPActor, PopSANActor, TwinQCritic
from spikenorm.modes import frozen_parameters
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


#: the actors every loop trains: TD3's ReLU MLP and the PopSAN actor with CaRe-BN
ACTORS = ("ann", "spiking")
#: warm-up env steps skipped before the loop's own cost is measured (start-up effects)
COST_FROM = 100


@dataclass
class Run:
    loop: str
    actor: str
    total_s: float  # whole run, construction included
    step_ends: list[float]  # seconds at the end of env step 1, 2, ... (any origin)
    warmup: int
    updates: int
    rebn_in_run_s: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.step_ends) - self.warmup

    @property
    def post_s(self) -> float:
        """Seconds from the end of env step ``warmup`` to the end of the last env step."""
        return self.step_ends[-1] - self.step_ends[self.warmup - 1]

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.post_s

    @property
    def loop_cost_ms(self) -> float:
        """Milliseconds per env step over warm-up steps ``COST_FROM`` .. ``warmup`` (random actions, no update)."""
        first = min(COST_FROM, self.warmup // 2)
        return (self.step_ends[self.warmup - 1] - self.step_ends[first - 1]) / (self.warmup - first) * 1e3


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


def make_actor(kind: str, obs_dim: int, act_dim: int, max_action: list[float], hp: HParams) -> torch.nn.Module:
    """TD3's ReLU MLP (``ann``) or the PopSAN actor with CaRe-BN (``spiking``), SpikingTD3's defaults."""
    if kind == "ann":
        return MLPActor(obs_dim, act_dim, max_action=max_action, hidden=hp.hidden)
    return PopSANActor(
        obs_dim, act_dim, max_action=max_action, hidden=hp.hidden, time_steps=hp.time_steps, layers=POPSAN_LAYERS
    )


def run_plain(env_name: str, actor_kind: str, warmup: int, steps: int, seed: int, hp: HParams) -> Run:
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    env = gym.make(env_name)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
    high = torch.as_tensor(env.action_space.high, dtype=torch.float32)
    actor = make_actor(actor_kind, obs_dim, act_dim, high.tolist(), hp)
    critic = TwinQCritic(obs_dim, act_dim, hidden=hp.hidden)
    actor_target = copy.deepcopy(actor).eval().requires_grad_(False)
    critic_target = copy.deepcopy(critic).eval().requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=hp.lr, fused=True)  # SpikingTD3's default
    critic_opt = torch.optim.Adam(critic.parameters(), lr=hp.lr, fused=True)
    buffer = NumpyReplay(hp.buffer_size, obs_dim, act_dim, seed)
    updates = 0

    def update() -> None:
        nonlocal updates
        obs, action, reward, next_obs, not_done = buffer.sample(hp.batch_size)
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
            with frozen_parameters(critic):
                actor_loss = -critic.q1(obs, policy_action).mean()
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            soft_update(actor_target, actor, hp.tau)
            soft_update(critic_target, critic, hp.tau)

    obs, _ = env.reset(seed=seed)
    step_ends = []
    for t in range(1, warmup + steps + 1):
        if t <= warmup:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                actor.eval()
                a = actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0]
                actor.train()
                a = torch.maximum(torch.minimum(a + torch.randn_like(a) * hp.exploration_noise * high, high), low)
            action = a.numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if t >= warmup and buffer.size >= hp.batch_size:
            update()
        step_ends.append(time.perf_counter())
    env.close()
    return Run("plain", actor_kind, time.perf_counter() - start, step_ends, warmup, updates)


# --- SpikingTD3 ------------------------------------------------------------------------------------------


class StepClock(Callback):
    """The time at the end of every iteration, once per env step it took (``frames_per_batch`` 1: one each)."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.step_ends += [now] * (pl_module.env_steps - len(self.step_ends))


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
    """Wrap the parts of one SpikingTD3 iteration with timers (instance attributes and the task module's sampler;
    the class is untouched). Timers start counting after the warm-up."""
    task._collect = timers.wrap("collect (act, env step, replay write)", task._collect)
    task._replay.sample = timers.wrap("replay sample", task._replay.sample)
    task.update = timers.wrap("update", task.update)
    task.log = timers.wrap("self.log", task.log)
    task._log_episodes = timers.wrap("_log_episodes", task._log_episodes)
    task.training_step = timers.wrap("training_step", task.training_step)


class TimersOn(Callback):
    """Switch the timers on at the end of the iteration that reaches env step ``warmup``."""

    def __init__(self, warmup: int, timers: Timers) -> None:
        self.warmup, self.timers = warmup, timers

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.timers.enabled = pl_module.env_steps >= self.warmup


def run_spikenorm(
    env_name: str,
    actor_kind: str,
    warmup: int,
    steps: int,
    seed: int,
    hp: HParams,
    timers: Timers = NULL_TIMERS,
    batches_per_iteration: int = 1,
    fused_optimizer: bool = True,
) -> tuple[Run, SpikingTD3]:
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    total = warmup + steps
    actor = {"actor": "ann", "actor_layers": None} if actor_kind == "ann" else {"actor_layers": POPSAN_LAYERS}
    task = SpikingTD3(
        env_name=env_name,
        total_env_steps=total,
        warmup_steps=warmup,
        algorithm="td3",
        eval_every=total + 1,
        eval_episodes=1,
        seed=seed,
        batches_per_iteration=batches_per_iteration,
        fused_optimizer=fused_optimizer,
        **actor,
        **hp.td3_options(),
    )
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    if timers is not NULL_TIMERS:
        instrument(task, timers)
        callbacks.append(TimersOn(warmup, timers))
    rebn = TimedReplayRecalibration(
        every_n_env_steps=PAPER_REBN_EVERY, num_batches=REBN_BATCHES, batch_size=REBN_BATCH_SIZE
    )
    # ReplayRecalibration refuses a schedule that never runs: attach it only to runs long enough to trigger it
    if actor_kind == "spiking" and total >= PAPER_REBN_EVERY:
        callbacks.insert(0, rebn)
    quiet_trainer(max_epochs=1, devices=1, callbacks=callbacks).fit(task)
    timers.enabled = False
    loop = "spikenorm" if batches_per_iteration == 1 else f"spikenorm bpi={batches_per_iteration}"
    if not fused_optimizer:
        loop += " default Adam"
    run = Run(loop, actor_kind, time.perf_counter() - start, clock.step_ends, warmup, task.updates)
    run.rebn_in_run_s = rebn.durations
    return run, task


def run_official(folder: str, env_name: str, actor_kind: str, warmup: int, steps: int, seed: int) -> Run:
    """The paper's ``main.py`` from ``folder`` through ``official_carebn.py``, in a temporary working folder."""
    runner = Path(__file__).resolve().parent / "official_carebn.py"
    arguments = [
        *("--policy", "TD3", "--env", env_name, "--seed", str(seed)),
        *("--spiking_neurons", "ANN" if actor_kind == "ann" else "CLIF"),
        *("--start_timesteps", str(warmup), "--max_trainsteps", str(steps), "--eval_freq", str(10**9)),
    ]
    threads = str(torch.get_num_threads())
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(
            [sys.executable, str(runner), folder, threads, *arguments],
            cwd=work,
            env=environment,
            capture_output=True,
            text=True,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(
            f"the official script failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    result = json.loads(lines[-1][len("RESULT ") :])
    return Run("official", actor_kind, time.perf_counter() - start, result["step_ends"], warmup, result["updates"])


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
    run_spikenorm(env_name, "ann", warmup, steps, seed, hp)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def throughput_table(runs: dict[tuple[str, str], list[Run]], actors: list[str]) -> list[str]:
    """One row per actor and loop: medians, per-repeat values, the loop's own cost and the ratios."""
    median = {key: statistics.median(x.steps_per_s for x in v) for key, v in runs.items()}
    rows = []
    for actor in actors:
        for loop in [loop for a, loop in runs if a == actor]:
            v = runs[(actor, loop)]
            sps = median[(actor, loop)]
            ratios = [
                f"{sps / median[(actor, other)]:.3f}x" if (actor, other) in median else "-"
                for other in ("plain", "official")
            ]
            rows.append(
                f"| {actor} | {loop} | {sps:.1f} | {', '.join(f'{x.steps_per_s:.1f}' for x in v)} | "
                f"{1e3 / sps:.2f} | {statistics.median(x.loop_cost_ms for x in v):.3f} | "
                f"{statistics.median(x.total_s for x in v):.1f} | {v[0].updates} | {' | '.join(ratios)} |"
            )
    return markdown_table(
        "actor | loop | post-warm-up env steps/s (median) | per repeat | ms / env step | loop's own cost, ms / env "
        "step (warm-up) | whole-run s (median) | updates | vs plain | vs official",
        rows,
    )


def verdicts(runs: dict[tuple[str, str], list[Run]], actors: list[str]) -> list[str]:
    """The acceptance lines: spikenorm / official (ANN >= 1.0, spiking ahead) and spikenorm / plain, per actor."""
    median = {key: statistics.median(x.steps_per_s for x in v) for key, v in runs.items()}
    lines = []
    for actor in actors:
        parts = []
        for loop in [loop for a, loop in runs if a == actor and loop.startswith("spikenorm")]:
            ours = median[(actor, loop)]
            if (actor, "official") in median:
                ratio = ours / median[(actor, "official")]
                target = ">= 1.0" if actor == "ann" else "> 1.0"
                passed = ratio >= 1.0 if actor == "ann" else ratio > 1.0
                parts.append(f"{loop} / official = {ratio:.3f} (target {target}): {'PASS' if passed else 'FAIL'}")
            parts.append(f"{loop} / plain = {ours / median[(actor, 'plain')]:.3f}")
        loop_cost = {loop: statistics.median(x.loop_cost_ms for x in v) for (a, loop), v in runs.items() if a == actor}
        costs = ", ".join(f"{loop} {ms:.3f}" for loop, ms in loop_cost.items())
        lines.append(f"- **{actor} actor**: {'; '.join(parts)}. Loop's own cost (ms / env step): {costs}.")
    return lines


def rebn_lines(runs: list[Run], rebn: dict[str, list[tuple[float, float]]], repeats: int) -> list[str]:
    """Re-BN's time per re-calibration and its share of training time at the paper's rate (spiking actor)."""
    t_step = 1.0 / statistics.median(x.steps_per_s for x in runs)
    lines = [
        (
            f"Re-BN (one re-calibration as `ReplayRecalibration` makes it: sample {REBN_BATCHES} x {REBN_BATCH_SIZE} "
            f"observations from the replay buffer, then `recalibrate_bn` on the trained spiking actor), median of "
            f"{repeats}. Share at the paper's rate = t_recalibration / ({PAPER_REBN_EVERY} x t_env_step), "
            f"t_env_step = {t_step * 1e3:.2f} ms (median spikenorm spiking post-warm-up):"
        ),
        "",
    ]
    rows = []
    for mode, v in rebn.items():
        sec, inner = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
        share = sec / (PAPER_REBN_EVERY * t_step)
        rows.append(f"| {mode} | {sec:.3f} | {inner:.3f} | {share:.2%} | {'PASS' if share <= 0.03 else 'FAIL'} |")
    lines += markdown_table(
        "mode | s / re-calibration | of which recalibrate_bn | share of training time | target <= 3%", rows
    )
    in_run = [d for x in runs for d in x.rebn_in_run_s]
    if in_run:
        lines += [
            "",
            f"In-run re-calibrations (every {PAPER_REBN_EVERY} env steps): " + ", ".join(f"{d:.3f} s" for d in in_run),
        ]
    return lines


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--warmup", type=int, default=500, help="random-action env steps before the timed part")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps (one update each) after warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--actors", nargs="+", choices=ACTORS, default=list(ACTORS))
    parser.add_argument("--official", help="folder of the CaRe-BN code's continuous_control/main.py (a checkout)")
    parser.add_argument("--official-version", default="", help="what to call that code in the report (e.g. its commit)")
    parser.add_argument(
        "--batches-per-iteration",
        type=int,
        default=10,
        help="extra SpikingTD3 row (ANN actor) with this batches_per_iteration (same numbers, fewer Lightning "
        "iterations; 1: none)",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-part timer run")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile top list of a spikenorm run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads for every loop (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 2 * COST_FROM:
        parser.error(f"--warmup must be at least {2 * COST_FROM} (the loop's own cost is timed over its steps)")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    hp = HParams()
    load_before = os.getloadavg()
    runs: dict[tuple[str, str], list[Run]] = defaultdict(list)
    rebn: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in range(args.repeats):
        seed = args.seed + r
        for actor in args.actors:
            runs[(actor, "plain")].append(run_plain(args.env, actor, args.warmup, args.steps, seed, hp))
            run, task = run_spikenorm(args.env, actor, args.warmup, args.steps, seed, hp)
            runs[(actor, "spikenorm")].append(run)
            if actor == "spiking":
                for mode in ("exact", "single_pass"):
                    rebn[mode].append(time_rebn(task, mode))
            del task
            if args.batches_per_iteration > 1 and actor == "ann":
                run, _ = run_spikenorm(
                    args.env, actor, args.warmup, args.steps, seed, hp, batches_per_iteration=args.batches_per_iteration
                )
                runs[(actor, run.loop)].append(run)
            if actor == "ann":
                run, _ = run_spikenorm(args.env, actor, args.warmup, args.steps, seed, hp, fused_optimizer=False)
                runs[(actor, run.loop)].append(run)
            if args.official:
                runs[(actor, "official")].append(
                    run_official(args.official, args.env, actor, args.warmup, args.steps, seed)
                )
            print(
                f"repeat {r} {actor}: "
                + " | ".join(f"{k[1]}: {v[-1].steps_per_s:.1f} env steps/s" for k, v in runs.items() if k[0] == actor),
                flush=True,
            )
    load_after = os.getloadavg()

    official = "no official script (no `--official`)"
    if args.official:
        official = f"the official script ({args.official_version or 'version not given'})"
    lines = [
        stamp(torch.device("cpu")),
        "",
        (
            f"`{args.env}`, TD3, {args.warmup} warm-up env steps (random actions) + {args.steps} timed env steps with "
            f"one update each (batch {hp.batch_size}, twin-Q critic {list(hp.hidden)}); actors: `ann` (ReLU MLP "
            f"{list(hp.hidden)}) and `spiking` (PopSAN, CLIF/CaRe-BN, T={hp.time_steps}); loops plain, spikenorm "
            f"(SpikingTD3) and {official}; alternated, {args.repeats} repeats (seeds {args.seed}.."
            f"{args.seed + args.repeats - 1}), medians. Env steps/s over the post-warm-up part (end of env step "
            f"{args.warmup} to end of the last); the loop's own cost = ms per env step over warm-up steps "
            f"{COST_FROM}..{args.warmup} (no network call, no update). Load average (1/5/15 min) before "
            f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
            f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} ({os.cpu_count()} cores), torch threads "
            f"{torch.get_num_threads()}; torch {torch.__version__}, lightning {lightning.__version__}, torchrl "
            f"{torchrl.__version__}, gymnasium {gym.__version__}; {code_state()}."
        ),
        "",
        *throughput_table(runs, args.actors),
        "",
        *verdicts(runs, args.actors),
    ]
    if rebn:
        lines += ["", *rebn_lines(runs[("spiking", "spikenorm")], rebn, args.repeats)]
    if not args.no_breakdown:
        timers = Timers()
        spike, _ = run_spikenorm(args.env, "ann", args.warmup, args.steps, args.seed, hp, timers=timers)
        ts = timers.seconds
        outside = spike.post_s - ts["training_step"]
        inside = ts["training_step"] - sum(v for k, v in ts.items() if k != "training_step")
        lines += [
            "",
            (
                f"Where SpikingTD3's time goes with the ANN actor (one extra instrumented run, seed {args.seed}, "
                f"post-warm-up part, {spike.steps_per_s:.1f} env steps/s). `training_step` holds `collect`, "
                "`replay sample`, `update`, `_log_episodes` and the `self.log` calls; the rest of the wall time is "
                "Lightning's loop and the callbacks."
            ),
            "",
            *markdown_table(
                "loop | part | calls | ms / env step | share of wall",
                [
                    *breakdown_rows("spikenorm", timers, spike.post_s, spike.steps),
                    f"| spikenorm | Lightning loop + callbacks (wall - training_step) | | "
                    f"{outside / spike.steps * 1e3:.3f} | {outside / spike.post_s:.1%} |",
                    f"| spikenorm | rest of training_step | | {inside / spike.steps * 1e3:.3f} | "
                    f"{inside / spike.post_s:.1%} |",
                ],
            ),
        ]
    lines.append("")
    publish(
        "rl_throughput",
        "RL throughput: SpikingTD3 vs a plain PyTorch TD3 loop and the CaRe-BN paper's script",
        "\n".join(lines),
        save=not args.no_save,
    )
    if args.profile:
        print(profile_spikenorm(args.env, args.warmup, args.steps, args.seed, hp, top=45))


if __name__ == "__main__":
    main()
