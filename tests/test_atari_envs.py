"""Discrete-action envs for the spiking DQN: Atari RAM envs through the ``atari`` extra (offline, ale-py ships the
ROMs), an exact mid-episode resume of an Atari env with sticky actions (ALE's own RNG), and :func:`num_actions`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikenorm.rl import env_state, envs, load_env_state, make_env, num_actions, observation_dim

PONG = "ALE/Pong-v5"
ATARI_SKIP = "ale_py is missing: the atari extra is not installed: pip install 'spikenorm[atari]'"


@pytest.fixture(scope="module")
def ale_py():
    return pytest.importorskip("ale_py", reason=ATARI_SKIP)


def _gym(env):
    """The gymnasium env (the EpisodeRecorder) inside an env built by make_env."""
    return env.base_env._env


def test_pong_ram_env_offline(ale_py):
    env = make_env(PONG, seed=0, obs_type="ram")
    atari = _gym(env).unwrapped
    assert isinstance(atari, ale_py.env.AtariEnv)
    assert observation_dim(env) == 128 and num_actions(env) == 6
    spec = _gym(env).spec
    assert spec.kwargs["frameskip"] == 4 and spec.kwargs["repeat_action_probability"] == 0.25
    assert spec.kwargs["full_action_space"] is False and spec.kwargs["max_num_frames_per_episode"] == 108_000
    td = env.rollout(5)
    assert td["observation"].dtype == torch.uint8 and td["observation"].shape == (5, 128)
    assert td["action"].dtype == torch.int64 and td["action"].shape == (5, 6)  # one-hot
    assert td["action"].sum(-1).eq(1).all()
    assert {"step_count", "episode_reward", "is_init", ("next", "reward"), ("next", "done")} <= set(td.keys(True, True))
    assert atari.ale.getEpisodeFrameNumber() == 5 * 4  # frameskip 4


def test_pong_without_ale_py_names_the_atari_extra(monkeypatch):
    import sys

    from spikenorm.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(MissingExtraError, match=r"needs the 'atari' extra: pip install 'spikenorm\[atari\]'"):
        make_env(PONG, obs_type="ram")


def _play(env, actions: np.ndarray) -> list[tuple]:
    """Step the gymnasium env through ``actions`` (resetting after an episode end): (obs, reward, terminated,
    truncated) per step, then the observation of one more reset."""
    out = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            out.append((env.reset()[0].copy(),))
    out.append((env.reset()[0].copy(),))
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x, y) for x, y in zip(u, v, strict=True)) for u, v in zip(a, b, strict=True)
    )


def _load_without_ale(recorder, state: dict, replay: bool) -> None:
    """What the record restores without its ALE entries (np_random, the episode's reset and actions): the
    control."""
    if replay:
        recorder.unwrapped.np_random.bit_generator.state = state["episode"]["rng"]
        recorder.reset(seed=state["episode"]["seed"])
        for action in state["episode"]["actions"].numpy():
            recorder.step(action)
    recorder.unwrapped.np_random.bit_generator.state = state["rng"]


@pytest.mark.parametrize("replay", [True, False])
def test_pong_env_state_restores_sticky_actions_exactly(ale_py, replay, tmp_path, monkeypatch):
    """Mid-episode (after a short episode ended and a new one began), a fresh env of another seed given the saved
    state (through torch.save / weights_only load) gives the same next 50 observations and rewards, sticky
    actions included; a control restored without the ALE state (np_random and the replayed actions only)
    diverges. Without replay (an env whose next use is a reset)
    the reset and the episode after it agree too. With replay, the replayed episode ends in the recorded ALE state
    (bit for bit) before that state is restored."""
    kwargs = {"obs_type": "ram", "max_num_frames_per_episode": 200}  # 50-step episodes
    env = make_env(PONG, seed=0, **kwargs)
    torch.manual_seed(0)
    env.rollout(70, break_when_any_done=False)  # one episode ended, the second is under way
    state = env_state(env)
    assert state["ale"].dtype == torch.uint8 and state["episode"]["ale"].dtype == torch.uint8
    assert len(state["episode"]["actions"]) == 20
    torch.save(state, tmp_path / "env.pt")
    loaded = torch.load(tmp_path / "env.pt", weights_only=True)

    fresh = make_env(PONG, seed=7, **kwargs)
    restores = []  # (ALE state before each restore, the state restored)
    real_restore = envs._restore_ale_state

    def spy(atari, ale_state):
        restores.append((envs._ale_state_tensor(atari), ale_state))
        real_restore(atari, ale_state)

    monkeypatch.setattr(envs, "_restore_ale_state", spy)
    load_env_state(fresh, loaded, replay=replay)
    monkeypatch.undo()
    assert len(restores) == (2 if replay else 1)
    if replay:  # the replay (from the ALE state before the episode's reset) retraced the episode exactly
        assert torch.equal(restores[-1][0], restores[-1][1])
    control = make_env(PONG, seed=7, **kwargs)
    _load_without_ale(_gym(control), loaded, replay)

    actions = np.random.default_rng(1).integers(6, size=50)
    original, restored, other = _gym(env), _gym(fresh), _gym(control)
    if not replay:  # the next use is a reset
        original.reset(), restored.reset(), other.reset()
    expected = _play(original, actions)
    assert _same(_play(restored, actions), expected)
    assert not _same(_play(other, actions), expected)


def test_env_state_refuses_a_state_of_another_kind_of_env(ale_py):
    pong, cartpole = make_env(PONG, obs_type="ram"), make_env("CartPole-v1")
    with pytest.raises(ValueError, match="Atari"):
        load_env_state(cartpole, env_state(pong))
    with pytest.raises(ValueError, match="Atari"):
        load_env_state(pong, env_state(cartpole))


def test_cartpole_env_state_has_no_ale_entry():
    state = env_state(make_env("CartPole-v1"))
    assert set(state) == {"rng", "episode"} and set(state["episode"]) == {"rng", "seed", "actions"}


@pytest.mark.parametrize(("env_name", "n", "obs_dim"), [("CartPole-v1", 2, 4), ("Acrobot-v1", 3, 6)])
def test_num_actions_of_classic_control(env_name, n, obs_dim):
    env = make_env(env_name)
    assert num_actions(env) == n and observation_dim(env) == obs_dim
    assert env.rollout(3)["observation"].dtype == torch.float32


def test_num_actions_of_a_categorical_spec():
    from torchrl.data import Categorical, OneHot

    class Stub(torch.nn.Module):  # anything exposing action_spec_unbatched is read; EnvBase is checked first
        pass

    env = make_env("CartPole-v1")
    env.action_spec = Categorical(5)
    assert num_actions(env) == 5
    env.action_spec = OneHot(4)
    assert num_actions(env) == 4
    with pytest.raises(TypeError, match="EnvBase"):
        num_actions(Stub())


def test_num_actions_refuses_continuous_and_multi_discrete_specs():
    from torchrl.data import MultiOneHot

    with pytest.raises(ValueError, match="discrete action spec.*Bounded"):
        num_actions(make_env("Pendulum-v1"))
    env = make_env("CartPole-v1")
    env.action_spec = MultiOneHot([2, 3])
    with pytest.raises(ValueError, match="MultiOneHot"):
        num_actions(env)
