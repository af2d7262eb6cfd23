"""The lean online-RL loop: EnvStepper and ReplayRows give what a TorchRL collector and replay buffer give, TD3's
tensor-level exploration equals its TensorDict policy, and several collection batches per Lightning iteration keep
every number of the fit."""

from __future__ import annotations

import pytest
import torch
from helpers import logged_rows, quiet_trainer
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.loggers import CSVLogger

pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule, TensorDictSequential  # noqa: E402
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer  # noqa: E402
from torchrl.envs import GymEnv  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402
from torchrl.modules import AdditiveGaussianModule, EGreedyModule, QValueModule  # noqa: E402

from spikenorm.callbacks import ReplayRecalibration  # noqa: E402
from spikenorm.models import MLPActor, MLPQNetwork  # noqa: E402
from spikenorm.rl import (  # noqa: E402
    BatchedActor,
    EvalModePolicy,
    TD3GaussianNoise,
    env_state,
    load_env_state,
    make_collector,
    make_env,
    make_exploration_policy,
    make_policy,
)
from spikenorm.rl.replay import ReplayRows  # noqa: E402
from spikenorm.rl.stepper import EnvStepper  # noqa: E402
from spikenorm.tasks import SpikingTD3  # noqa: E402


def _policy(env_name: str):
    """An exploring policy: TD3 noise over a small MLP (continuous), or epsilon-greedy Q-values (discrete)."""
    env = make_env(env_name)
    obs_dim = env.observation_spec["observation"].shape[0]
    if "CartPole" not in env_name:
        actor = MLPActor(obs_dim, 1, max_action=[3.0], hidden=(8,))
        return make_exploration_policy(make_policy(actor), env, sigma=0.5)
    spec = env.full_action_spec_unbatched["action"]
    q_values = TensorDictModule(BatchedActor(MLPQNetwork(obs_dim, 2, hidden=(8,))), ["observation"], ["action_value"])
    return TensorDictSequential(q_values, QValueModule(spec=spec), EGreedyModule(spec, eps_init=0.5, eps_end=0.5))


@pytest.mark.parametrize("env_name", ["InvertedPendulum-v5", "CartPole-v1"])
def test_env_stepper_gives_the_collector_frames(env_name):
    """Entry by entry (values, dtypes, shapes), over several episodes, random warm-up and policy steps alike (a
    collector also stores the policy's other outputs, e.g. Q-values: not a transition's entries)."""
    policy, steps, random_steps = _policy(env_name), 60, 20
    torch.manual_seed(1)
    collector = make_collector(make_env(env_name, seed=3), policy, frames_per_batch=1, init_random_frames=random_steps)
    frames = [frame.reshape(-1)[0] for _, frame in zip(range(steps), collector)]
    collector.shutdown()

    stepper = EnvStepper(make_env(env_name, seed=3))
    # box actions take the stepper's own readers, discrete ones the wrapper's: both must give the collector's frames
    assert (stepper._readers is not None) == ("CartPole" not in env_name)
    acting = EvalModePolicy(policy)
    torch.manual_seed(1)
    with torch.no_grad():  # a collector calls its policy once when it is built
        acting(TensorDict(stepper.carrier(), []))
    for step, frame in enumerate(frames):
        if step < random_steps:
            action = stepper.random_action()
        else:
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                action = acting(TensorDict(stepper.carrier(), []))["action"]
        transition = TensorDict(stepper.step(action), [])
        expected = frame.exclude("index", "action_value", "chosen_action_value")
        assert set(transition.keys(True, True)) == set(expected.keys(True, True))
        for key, value in expected.items(True, True):
            got = transition.get(key)
            assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value), (step, key)
    assert sum(bool(frame["next", "done"]) for frame in frames) >= 2  # episodes ended and the env was reset


def test_env_stepper_readers_read_as_the_gym_wrapper_reads():
    import numpy as np

    wrapper = make_env("Hopper-v5").base_env
    readers = EnvStepper(make_env("Hopper-v5"))._readers
    action = torch.tensor([0.25, -1.0, 0.5])
    assert np.array_equal(readers.action(action), wrapper.read_action(action))
    observation = np.linspace(-1.0, 1.0, 11)
    for value in (observation, observation[::-1], observation.astype(np.float32)):  # a negative stride, a cast
        ours, theirs = readers.observation(value), wrapper.read_obs(value)["observation"]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and torch.equal(ours, theirs)
    for reward in (0.75, np.float64(-2.5), np.float32(1.5), 0, 3):
        ours, theirs = readers.reward(reward), wrapper.read_reward(reward)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and torch.equal(ours, theirs), reward


def test_env_stepper_state_restores_the_step_carrier():
    env = make_env("InvertedPendulum-v5", seed=0)
    stepper = EnvStepper(env)
    torch.manual_seed(0)
    for _ in range(7):
        stepper.step(stepper.random_action())
    saved, saved_env = stepper.state_dict(), env_state(env)
    actions = [stepper.random_action() for _ in range(30)]
    expected = [TensorDict(stepper.step(action), []) for action in actions]

    env2 = make_env("InvertedPendulum-v5", seed=5)
    resumed = EnvStepper(env2)
    load_env_state(env2, saved_env)
    resumed.load_state_dict(saved)
    for action, transition in zip(actions, expected):
        assert (TensorDict(resumed.step(action), []) == transition).all()


def test_env_stepper_refuses_an_env_not_built_by_make_env():
    with pytest.raises(TypeError, match="make_env"):
        EnvStepper(GymEnv("InvertedPendulum-v5"))


def _rows(count: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "observation": torch.randn(3, generator=g),
            "action": torch.randn(2, generator=g),
            "next": {"reward": torch.randn(1, generator=g), "done": torch.rand(1, generator=g) < 0.5},
        }
        for _ in range(count)
    ]


def test_replay_rows_write_as_extend_and_sample_as_the_buffer():
    """Also after the storage wrapped around; samples with the same random draw, all entries or some."""
    fast, slow = (TensorDictReplayBuffer(storage=LazyTensorStorage(8), batch_size=4) for _ in range(2))
    rows = ReplayRows(fast)
    for row in _rows(13):
        rows.add(row)
        slow.extend(TensorDict(row, []).unsqueeze(0))
        assert len(fast) == len(slow)
        assert fast.writer.state_dict() == slow.writer.state_dict()
        filled = len(slow)  # the rest of a lazy storage is uninitialised memory
        assert (fast.storage._storage[:filled] == slow.storage._storage[:filled]).all()
    for keys in (None, ("observation", ("next", "reward"))):
        torch.manual_seed(3)
        got = rows.sample(4, keys)
        torch.manual_seed(3)
        expected = slow.sample()
        expected = expected.exclude("index") if keys is None else expected.select(*keys)
        assert (got.exclude("index") == expected).all()
        assert set(got.keys(True, True)) - {"index"} == set(expected.keys(True, True))


def test_replay_rows_refuse_a_buffer_they_cannot_mirror():
    from torchrl.data import PrioritizedSampler

    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(8), sampler=PrioritizedSampler(8, 0.7, 0.5))
    with pytest.raises(TypeError, match="RandomSampler|random sampler"):
        ReplayRows(buffer)


def test_td3_noise_is_torchrls_noise_with_the_same_draws():
    noise = TD3GaussianNoise(0.5, spec=make_env("InvertedPendulum-v5").action_spec)
    action = torch.tensor([2.9])  # near the bound: some noisy actions are clamped
    torch.manual_seed(0)
    got = torch.stack([noise.noisy(action) for _ in range(50)])
    torch.manual_seed(0)
    expected = torch.stack([AdditiveGaussianModule._add_noise(noise, action) for _ in range(50)])
    assert torch.equal(got, expected) and bool((got == 3.0).any())


def test_td3_explore_is_its_collection_policy_on_tensors():
    task = SpikingTD3(env_name="Pendulum-v1", hidden=(8, 8), time_steps=2)
    policy = EvalModePolicy(task.collection_policy())
    observation = torch.tensor([0.5, -0.5, 0.1])
    torch.manual_seed(0)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        expected = [policy(TensorDict({"observation": observation}, []))["action"] for _ in range(5)]
    torch.manual_seed(0)
    with torch.no_grad():
        got = [task.explore(observation) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


class _EnvStepsSeen(Callback):
    """At every iteration's end: the env step count and what trainer.callback_metrics says about it."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []
        self.state_keys: set[str] = set()  # of the task mid-fit (what a checkpoint saves)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen.append((pl_module.env_steps, float(trainer.callback_metrics["rl/env_steps"])))
        self.state_keys = set(pl_module.state_dict())


def _fit(tmp_path, batches_per_iteration: int):
    seed_everything(0)
    task = SpikingTD3(
        env_name="Pendulum-v1",
        total_env_steps=60,
        warmup_steps=12,
        batch_size=8,
        buffer_size=200,
        hidden=(8, 8),
        time_steps=2,
        eval_every=30,
        eval_episodes=1,
        batches_per_iteration=batches_per_iteration,
    )
    task.EVAL_MAX_STEPS = 20  # short evaluations (Pendulum's episodes are 200 steps)
    seen = _EnvStepsSeen()
    rebn = ReplayRecalibration(every_n_env_steps=20, num_batches=2, batch_size=8)
    logger = CSVLogger(tmp_path / str(batches_per_iteration), name="csv", version=0)
    quiet_trainer(max_epochs=1, callbacks=[rebn, seen], logger=logger).fit(task)
    return task, seen, rebn


def test_several_batches_per_iteration_keep_every_number(tmp_path):
    """Re-BN every 20 env steps (a multiple of 4), evaluations every 30 (at their env steps anyway): the same
    weights, evaluations, training returns and re-calibrations; callbacks see every 4th env step."""
    one, seen_one, rebn_one = _fit(tmp_path, 1)
    four, seen_four, rebn_four = _fit(tmp_path, 4)
    assert (one.env_steps, one.updates) == (four.env_steps, four.updates) == (60, 49)
    assert one.eval_history == four.eval_history and [s for s, _ in one.eval_history] == [30, 60]
    assert rebn_one.recalibrations == rebn_four.recalibrations == 3
    expected, got = one.state_dict(), four.state_dict()
    assert not [key for key in expected if not torch.equal(expected[key], got[key])]
    assert [steps for steps, _ in seen_four.seen] == list(range(4, 61, 4))
    assert all(steps == metric for steps, metric in seen_one.seen + seen_four.seen)  # current at every iteration
    assert seen_one.state_keys == set(expected)  # collection adds nothing to what a mid-fit checkpoint saves

    def events(folder):
        keys = ("rl/train_return", "rl/eval_return")
        return [
            (step, {k: v for k, v in row.items() if k in keys})
            for step, row in logged_rows(folder)
            if any(k in row for k in keys)
        ]

    assert events(tmp_path / "1") == events(tmp_path / "4")
