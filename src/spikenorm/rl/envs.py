"""Environment factory: TorchRL envs over gymnasium tasks (MuJoCo v5, classic control), plus spec helpers.

:func:`make_env` builds a seeded ``TransformedEnv(GymWrapper(EpisodeRecorder(gymnasium.make(name))),
Compose(DoubleToFloat(), StepCounter(), RewardSum(), InitTracker()))``. Every MuJoCo task returns float64
observations; ``DoubleToFloat`` casts them (and their specs) to float32 so that actors see ``"observation"``
as float32. ``StepCounter`` writes ``"step_count"``
and ``RewardSum`` writes the running episode return ``"episode_reward"`` (read it at
``("next", "episode_reward")`` where ``("next", "done")`` is True). ``InitTracker`` writes ``"is_init"``
(True on the first step of an episode), which stateful single-step (online) SNN actors use to reset
their state; its presence also keeps TorchRL 0.14 collectors from warning that the env lacks it.

The gymnasium env inside is wrapped in :class:`EpisodeRecorder`, so that :func:`env_state` and
:func:`load_env_state` can save and restore the env exactly (a checkpoint resumes mid-episode).

The helpers :func:`observation_dim`, :func:`action_dim` and :func:`action_bounds` read the env's
*unbatched* specs, so they give the same answer for a single env and for a batched one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    import gymnasium
    from torchrl.data import Bounded, TensorSpec
    from torchrl.envs import (
        Compose,
        DoubleToFloat,
        EnvBase,
        GymWrapper,
        InitTracker,
        RewardSum,
        StepCounter,
        TransformedEnv,
    )

_MUJOCO_ENTRY_PREFIX = "gymnasium.envs.mujoco"


class EpisodeRecorder(gymnasium.Wrapper):
    """A gymnasium wrapper that keeps what reproduces the episode in progress, so that it can be restored.

    A gymnasium env is not serialisable in general (MuJoCo's simulator state, the wrappers' step counters),
    but it is deterministic given its RNG and the actions taken. This wrapper records, at each ``reset``, the
    state of the env's RNG (``np_random``) before the reset and the reset's ``seed``, and then every action.
    :meth:`state_dict` returns that record and the RNG's current state as plain data (no pickled objects);
    :meth:`load_state_dict` on a fresh env of the same id repeats the reset and the actions and then sets the
    RNG, which leaves the env exactly where the recorded one was. Resets with ``options`` are not recorded
    (:meth:`state_dict` refuses them).
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self._reset_rng: dict[str, Any] | None = None
        self._reset_seed: int | None = None
        self._options_used = False
        self._actions: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._reset_rng = self.unwrapped.np_random.bit_generator.state
        self._reset_seed = seed
        self._options_used = options is not None
        self._actions = []
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, ...]:
        self._actions.append(np.array(action, copy=True))
        return super().step(action)

    def state_dict(self) -> dict[str, Any]:
        """``rng`` (the RNG's state now) and ``episode`` (None before the first reset, else the RNG state and seed
        of the episode's reset and its actions as one tensor ``[steps, *action_shape]``)."""
        if self._options_used:
            raise ValueError("EpisodeRecorder cannot record an episode that was reset with options")
        episode = None
        if self._reset_rng is not None:
            shape = self.action_space.shape or ()
            actions = np.stack(self._actions) if self._actions else np.zeros((0, *shape), self.action_space.dtype)
            episode = {"rng": self._reset_rng, "seed": self._reset_seed, "actions": torch.from_numpy(actions)}
        return {"rng": self.unwrapped.np_random.bit_generator.state, "episode": episode}

    def load_state_dict(self, state: dict[str, Any], replay: bool = True) -> None:
        """Restore what :meth:`state_dict` returned: with ``replay``, reset as the recorded episode was reset and
        take its actions again; then set the RNG to its recorded state. Without ``replay`` (an env whose next use
        starts with a reset, e.g. an evaluation env) only the RNG is set."""
        episode = state["episode"]
        if replay and episode is not None:
            self.unwrapped.np_random.bit_generator.state = episode["rng"]
            self.reset(seed=episode["seed"])
            for action in episode["actions"].numpy():
                self.step(action)
        self.unwrapped.np_random.bit_generator.state = state["rng"]


def available_mujoco_envs() -> list[str]:
    """Names of the gymnasium MuJoCo v5 tasks registered in this installation (sorted)."""
    names = []
    for env_id, spec in gymnasium.registry.items():
        entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
        if env_id.endswith("-v5") and entry.startswith(_MUJOCO_ENTRY_PREFIX):
            names.append(env_id)
    return sorted(names)


def _check_env_name(env_name: str) -> None:
    """Raise a ValueError for a name gymnasium does not know, or a MuJoCo task without mujoco."""
    if not isinstance(env_name, str) or not env_name:
        raise ValueError(f"env_name must be a non-empty string such as 'InvertedPendulum-v5', got {env_name!r}")
    try:
        spec = gymnasium.spec(env_name)
    except gymnasium.error.Error as err:
        raise ValueError(
            f"unknown gymnasium environment {env_name!r} ({err}). "
            f"MuJoCo v5 tasks available here: {', '.join(available_mujoco_envs())}"
        ) from err
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    if entry.startswith(_MUJOCO_ENTRY_PREFIX) and importlib.util.find_spec("mujoco") is None:
        raise ValueError(
            f"environment {env_name!r} needs the 'mujoco' package, which is not installed; "
            "install it with `pip install mujoco` (gymnasium>=1.0 MuJoCo v5 tasks need mujoco>=2.3.3)"
        )


def make_env(
    env_name: str = "InvertedPendulum-v5",
    seed: int = 0,
    device: str | torch.device = "cpu",
    **gym_kwargs: Any,
) -> TransformedEnv:
    """Build a seeded TorchRL env over a gymnasium task (MuJoCo v5 by default).

    Args:
        env_name: a registered gymnasium id, e.g. ``"InvertedPendulum-v5"``, ``"HalfCheetah-v5"``.
        seed: seed of the environment's own RNG (initial states). Random warm-up actions drawn by a
            collector come from torch's global RNG: seed that too (``seed_everything``).
        device: device of the tensordicts the env returns.
        **gym_kwargs: forwarded to ``gymnasium.make``.

    Returns:
        ``TransformedEnv(GymWrapper(EpisodeRecorder(gymnasium.make(env_name))), Compose(DoubleToFloat(),
        StepCounter(), RewardSum(), InitTracker()))`` with float32 ``"observation"``, ``"action"``,
        ``("next", "reward")``, ``("next", "done")``, ``"step_count"``, ``"episode_reward"`` and ``"is_init"``
        entries.

    Raises:
        ValueError: unknown environment name (the message lists the MuJoCo v5 tasks), mujoco missing
            for a MuJoCo task, or a seed that is not a non-negative int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _check_env_name(env_name)
    base = GymWrapper(EpisodeRecorder(gymnasium.make(env_name, disable_env_checker=True, **gym_kwargs)), device=device)
    env = TransformedEnv(base, Compose(DoubleToFloat(), StepCounter(), RewardSum(), InitTracker()))
    env.set_seed(seed)
    return env


def _recorder(env: EnvBase) -> EpisodeRecorder:
    base = env.base_env if isinstance(env, TransformedEnv) else env
    recorder = getattr(base, "_env", None)  # the gymnasium env a TorchRL GymWrapper wraps
    if not isinstance(recorder, EpisodeRecorder):
        raise TypeError(f"expected an env built by spikenorm.rl.make_env, got {type(env).__name__} over {base!r}")
    return recorder


def env_state(env: EnvBase) -> dict[str, Any]:
    """The state of an env built by :func:`make_env`, as plain data: its RNG and the episode in progress
    (:meth:`EpisodeRecorder.state_dict`)."""
    return _recorder(env).state_dict()


def load_env_state(env: EnvBase, state: dict[str, Any], replay: bool = True) -> None:
    """Put an env built by :func:`make_env` (with the same id) into the state :func:`env_state` returned: with
    ``replay``, mid-episode where the recorded env was (its reset and actions are repeated); without, only its
    RNG (enough for an env whose next use starts with a reset)."""
    _recorder(env).load_state_dict(state, replay=replay)


def _unbatched(env: EnvBase, name: str) -> TensorSpec:
    if not isinstance(env, EnvBase):
        raise TypeError(f"expected a torchrl.envs.EnvBase, got {type(env).__name__}")
    return getattr(env, f"{name}_unbatched", getattr(env, name))


def observation_dim(env: EnvBase, key: str = "observation") -> int:
    """Size of the flat observation vector ``env`` writes under ``key``.

    Raises a ValueError when the env has no such entry or the entry is not a vector.
    """
    spec = _unbatched(env, "observation_spec")
    if key not in spec.keys(True, True):
        raise ValueError(f"env has no observation entry {key!r}; it has {list(spec.keys(True, True))}")
    shape = spec[key].shape
    if len(shape) != 1:
        raise ValueError(f"observation {key!r} must be a flat vector [obs_dim], got shape {tuple(shape)}")
    return int(shape[0])


def action_dim(env: EnvBase) -> int:
    """Size of the env's flat continuous action vector."""
    shape = _unbatched(env, "action_spec").shape
    if len(shape) != 1:
        raise ValueError(f"action must be a flat vector [act_dim], got spec shape {tuple(shape)}")
    return int(shape[0])


def bounds_from_spec(spec: TensorSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of a bounded continuous action spec, as float tensors of shape ``[act_dim]``.

    Batched specs (``[N, act_dim]``) must have the same bounds in every row; the first row is returned.
    """
    if not isinstance(spec, Bounded) or not spec.dtype.is_floating_point:
        raise ValueError(f"expected a bounded continuous action spec (torchrl.data.Bounded, float dtype), got {spec!r}")
    low, high = spec.space.low, spec.space.high
    if low.ndim > 1:
        low_f, high_f = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
        if not (torch.equal(low_f, low_f[:1].expand_as(low_f)) and torch.equal(high_f, high_f[:1].expand_as(high_f))):
            raise ValueError("batched action spec has different bounds per env; pass one env's spec")
        low, high = low_f[0], high_f[0]
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"action bounds must be finite, got low={low.tolist()}, high={high.tolist()}")
    return low.clone(), high.clone()


def action_bounds(env: EnvBase) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of the env's continuous action box, each of shape ``[act_dim]``.

    Raises a ValueError for discrete or unbounded action spaces.
    """
    return bounds_from_spec(_unbatched(env, "action_spec"))
