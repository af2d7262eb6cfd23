"""benchmarks/rl_throughput.py: the official script runs from a folder given to it (here a stand-in with its
interface: never its code) with one timestamp per env step, and the timing split is the documented one."""

from __future__ import annotations

import textwrap

import pytest
from helpers import load_benchmark

# The stand-in: main.py's loop shape (random actions for start_timesteps, then select_action, train from
# t >= start_timesteps, an untrained evaluation first), utils.ReplayBuffer.add, actor_critic.TD3/DDPG.train, and
# SAN.ANN_Actor without a BN argument (what the official TD3 passes it).
FAKE = {
    "SAN.py": """
        class ANN_Actor:
            def __init__(self, state_dim, action_dim, max_action):
                self.max_action = max_action
    """,
    "utils.py": """
        class ReplayBuffer:
            def __init__(self):
                self.size = 0
            def add(self, *transition):
                self.size += 1
    """,
    "actor_critic.py": """
        import SAN
        class TD3:
            def __init__(self, spiking_neurons):
                if spiking_neurons == "ANN":
                    self.actor = SAN.ANN_Actor(3, 1, 1.0, BN=True)
                self.total_it = 0
            def train(self, replay_buffer):
                self.total_it += 1
        class DDPG(TD3):
            pass
    """,
    "main.py": """
        import argparse
        from utils import ReplayBuffer
        from actor_critic import TD3
        parser = argparse.ArgumentParser()
        parser.add_argument("--spiking_neurons", default="DN")
        parser.add_argument("--start_timesteps", type=int)
        parser.add_argument("--max_trainsteps", type=int)
        parser.add_argument("--eval_freq", type=int)
        args = parser.parse_known_args()[0]
        policy, buffer = TD3(args.spiking_neurons), ReplayBuffer()
        for t in range(args.max_trainsteps + args.start_timesteps):
            buffer.add(t)
            if t >= args.start_timesteps:
                policy.train(buffer)
    """,
}


@pytest.fixture
def bench(monkeypatch):
    return load_benchmark(monkeypatch, "rl_throughput")


def test_the_official_script_runs_from_its_folder_with_a_time_per_env_step(bench, tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    run = bench.run_official(str(tmp_path), "Hopper-v5", "ann", warmup=300, steps=40, seed=0)
    assert (run.loop, run.actor, run.warmup, run.steps, run.updates) == ("official", "ann", 300, 40, 40)
    assert run.step_ends == sorted(run.step_ends) and run.post_s > 0 and run.loop_cost_ms > 0


def test_the_timing_split(bench):
    """Post-warm-up: end of env step ``warmup`` to the end of the last; the loop's own cost: warm-up steps 100 ..
    ``warmup``."""
    ends = [0.002 * step for step in range(1, 301)] + [0.6 + 0.01 * step for step in range(1, 51)]
    run = bench.Run("plain", "ann", total_s=1.0, step_ends=ends, warmup=300, updates=51)
    assert run.steps == 50
    assert run.post_s == pytest.approx(0.5)
    assert run.steps_per_s == pytest.approx(100.0)
    assert run.loop_cost_ms == pytest.approx(2.0)
