"""Lean collection: one env step at a time, the same transitions as a TorchRL collector, without its per-step work.

A TorchRL ``Collector`` over an env built by :func:`~spikenorm.rl.make_env` spends about 2 ms per env step on one
core (tensordict device casts, the transforms' ``step_and_maybe_reset``, stacking the batch) around a gymnasium
step of about 0.1 ms (MuJoCo Hopper). :class:`EnvStepper` steps the gymnasium env inside such an env directly,
reading its output as the ``GymWrapper``'s readers do (for box actions and array observations without their spec
lookups per step, otherwise with the readers themselves), and does the four transforms of ``make_env`` itself
(``DoubleToFloat``, ``StepCounter``, ``RewardSum``, ``InitTracker``), so that each transition holds the same
entries, with the same values and dtypes, as a single-env collector's frame (``("collector", "traj_ids")``
included): a replay buffer filled from it, and every number computed from that buffer, are the same. Episode
ends reset through the TorchRL env (``env.reset()``), as the collector does.

The step carrier (the latest observation, episode return, step count, ...) can be saved and restored
(:meth:`EnvStepper.state_dict`) in the layout of a TorchRL collector's carrier, so checkpoints written while a
collector was used load here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikenorm.extras import needs_extra
from spikenorm.rl.envs import _recorder

with needs_extra("rl", __name__):
    from torchrl.data import Bounded, Unbounded
    from torchrl.data import tensor_specs as _tensor_specs
    from torchrl.envs import Compose, DoubleToFloat, EnvBase, InitTracker, RewardSum, StepCounter, TransformedEnv
    from torchrl.envs.gym_like import GymLikeEnv
    from torchrl.envs.libs.gym import GymWrapper

__all__ = ["TRANSITION_KEYS", "EnvStepper", "Transition"]

#: one transition, as nested dicts of tensors: the carrier's entries at the root, the env's output under
#: ``"next"``, the trajectory id under ``("collector", "traj_ids")`` (the layout of a collector's frame)
Transition = dict[str, Any]

_TRANSFORMS = (DoubleToFloat, StepCounter, RewardSum, InitTracker)
_FLAGS = ("done", "terminated", "truncated")
_CARRIER_KEYS = ("observation", "step_count", "episode_reward", "is_init", *_FLAGS)
#: the root entries of a :data:`Transition`
TRANSITION_KEYS = (*_CARRIER_KEYS, "action", "next", "collector")


class _ArrayReaders:
    """What a TorchRL ``GymWrapper``'s ``read_action``, ``read_reward`` and ``read_obs`` return for a continuous (box)
    action and a single array observation, without their spec lookups at every step (about a third of a MuJoCo env
    step on one core): ``action.detach().cpu().numpy()``, and ``torch.as_tensor`` with the spec's dtype, reshaped
    to the spec's shape. Anything else (an int or None reward, an observation that is not a plain array) goes to
    the wrapper's own readers. :meth:`for_wrapper` gives None where the wrapper reads differently."""

    def __init__(self, wrapper: GymWrapper, observation_spec: Any) -> None:
        self.wrapper = wrapper
        self._observation = (observation_spec.dtype, observation_spec.shape)
        self._reward = (wrapper.reward_spec.dtype, wrapper.reward_spec.shape)

    @classmethod
    def for_wrapper(cls, wrapper: EnvBase) -> _ArrayReaders | None:
        """The readers for ``wrapper``, or None when it is not a plain GymWrapper over a box action and one array
        observation, or TorchRL checks every encoded value (``CHECK_SPEC_ENCODE``)."""
        if (
            not isinstance(wrapper, GymWrapper)
            or _tensor_specs._CHECK_SPEC_ENCODE
            or getattr(wrapper.read_action, "__func__", None) is not GymWrapper.read_action
            or getattr(wrapper.read_reward, "__func__", None) is not GymLikeEnv.read_reward
            or getattr(wrapper.read_obs, "__func__", None) is not GymLikeEnv.read_obs
            or len(wrapper.action_keys) != 1
            or not isinstance(wrapper.full_action_spec[wrapper.action_keys[0]], (Bounded, Unbounded))
        ):
            return None
        observations = list(wrapper.observation_spec.items(True, True))
        if (
            len(observations) != 1
            or observations[0][0] != "observation"
            or not isinstance(observations[0][1], (Bounded, Unbounded))
        ):
            return None
        return cls(wrapper, observations[0][1])

    def action(self, action: Tensor) -> np.ndarray:
        return action.detach().cpu().numpy()

    def reward(self, reward: Any) -> Tensor:
        if not isinstance(reward, (float, np.floating)):
            return self.wrapper.read_reward(reward)
        dtype, shape = self._reward
        return torch.as_tensor(reward, dtype=dtype).reshape(shape)

    def observation(self, observation: Any) -> Tensor:
        if type(observation) is not np.ndarray or any(stride <= 0 for stride in observation.strides):
            return self.wrapper.read_obs(observation)["observation"]
        dtype, shape = self._observation
        value = torch.as_tensor(observation, dtype=dtype)
        return value if value.shape == shape else value.reshape(shape)


class EnvStepper:
    """Steps one env built by :func:`~spikenorm.rl.make_env`, one transition at a time (see the module docstring).

    Construction resets the env (``env.reset()``, as a collector does when it is built). :meth:`random_action`
    draws from the action spec as a collector's random warm-up frames do (torch's global RNG), :meth:`step` takes
    an action tensor (continuous, or one-hot for discrete actions) and returns the transition; at an episode's end
    the env is reset and the next trajectory id taken.

    Raises:
        TypeError: ``env`` is not an env built by :func:`~spikenorm.rl.make_env` (the transforms are checked).
    """

    def __init__(self, env: EnvBase) -> None:
        transforms = env.transform if isinstance(env, TransformedEnv) else None
        if not isinstance(transforms, Compose) or tuple(type(t) for t in transforms) != _TRANSFORMS:
            raise TypeError(
                "EnvStepper steps envs built by spikenorm.rl.make_env (transforms DoubleToFloat, StepCounter, "
                f"RewardSum, InitTracker), got {env!r}"
            )
        self.env = env
        self._wrapper = env.base_env
        self._readers = _ArrayReaders.for_wrapper(self._wrapper)
        self._gym = _recorder(env)
        self._action_spec = env.input_spec["full_action_spec"]["action"]
        self._observation_dtype = env.observation_spec["observation"].dtype
        self._traj_id = torch.zeros((), dtype=torch.int64)
        self._last_action: Tensor | None = None
        self._carrier = self._reset()

    @property
    def observation(self) -> Tensor:
        """The observation the next action acts on."""
        return self._carrier["observation"]

    def carrier(self) -> dict[str, Any]:
        """The entries a collector's policy sees before the next step: the observation, ``is_init``,
        ``step_count``, ``episode_reward``, the done flags and ``("collector", "traj_ids")``."""
        return {**self._carrier, "collector": {"traj_ids": self._traj_id}}

    def random_action(self) -> Tensor:
        """A uniformly random action from the env's action spec (torch's global RNG, as a collector draws it)."""
        return self._action_spec.rand(torch.Size([]))

    def step(self, action: Tensor) -> Transition:
        """Take ``action`` and return the transition; reset the env when the episode ends."""
        readers = self._readers
        if readers is None:
            observation, reward, terminated, truncated, _ = self._gym.step(self._wrapper.read_action(action))
            reward = self._wrapper.read_reward(reward)
        else:
            observation, reward, terminated, truncated, _ = self._gym.step(readers.action(action))
            reward = readers.reward(reward)
        terminated, truncated = bool(terminated), bool(truncated)
        carrier = self._carrier
        following = {
            "observation": self._observation(observation),
            "step_count": carrier["step_count"] + 1,
            "episode_reward": carrier["episode_reward"] + reward,
            "is_init": torch.zeros(1, dtype=torch.bool),
            "reward": reward,
            "done": torch.tensor([terminated or truncated]),
            "terminated": torch.tensor([terminated]),
            "truncated": torch.tensor([truncated]),
        }
        transition = {**carrier, "action": action, "next": following, "collector": {"traj_ids": self._traj_id}}
        self._last_action = action
        if terminated or truncated:
            self._carrier = self._reset()
            self._traj_id = self._traj_id + 1
        else:
            self._carrier = {key: following[key] for key in carrier}
        return transition

    def _observation(self, observation: Any) -> Tensor:
        """The wrapper's reading of a gymnasium observation, cast as ``DoubleToFloat`` casts it."""
        if self._readers is None:
            value = self._wrapper.read_obs(observation)["observation"]
        else:
            value = self._readers.observation(observation)
        return value.to(self._observation_dtype) if value.dtype != self._observation_dtype else value.clone()

    def _reset(self) -> dict[str, Tensor]:
        """Reset through the TorchRL env (its transforms write the carrier's first entries)."""
        with torch.no_grad():
            reset = self.env.reset()
        return {key: reset[key] for key in _CARRIER_KEYS}

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step carrier as plain data, in the layout of a TorchRL collector's carrier (``.to_dict()``)."""
        state: dict[str, Any] = {key: value.clone() for key, value in self._carrier.items()}
        state["collector"] = {"traj_ids": self._traj_id.clone()}
        if self._last_action is not None:
            state["action"] = self._last_action.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a carrier :meth:`state_dict` (or a TorchRL collector's carrier) saved; the env itself is
        restored separately (:func:`~spikenorm.rl.load_env_state`)."""
        self._carrier = {key: torch.as_tensor(state[key]).clone() for key in self._carrier}
        self._traj_id = torch.as_tensor(state["collector"]["traj_ids"]).clone().reshape(())
        action = state.get("action")
        self._last_action = None if action is None else torch.as_tensor(action).clone()
