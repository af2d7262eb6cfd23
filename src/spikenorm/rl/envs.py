"""Environment factory: TorchRL ``GymEnv`` over gymnasium MuJoCo v5 tasks, plus spec helpers.

:func:`make_env` builds a seeded ``TransformedEnv(GymEnv(name), Compose(DoubleToFloat(), StepCounter(),
RewardSum(), InitTracker()))``. Every MuJoCo task returns float64 observations; ``DoubleToFloat`` casts them (and their
specs) to float32 so that actors see ``"observation"`` as float32. ``StepCounter`` writes ``"step_count"``
and ``RewardSum`` writes the running episode return ``"episode_reward"`` (read it at
``("next", "episode_reward")`` where ``("next", "done")`` is True). ``InitTracker`` writes ``"is_init"``
(True on the first step of an episode), which stateful single-step (online) SNN actors use to reset
their state; its presence also keeps TorchRL 0.14 collectors from warning that the env lacks it.

The helpers :func:`observation_dim`, :func:`action_dim` and :func:`action_bounds` read the env's
*unbatched* specs, so they give the same answer for a single env and for a batched one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    import gymnasium
    from torchrl.data import Bounded, TensorSpec
    from torchrl.envs import (
        Compose,
        DoubleToFloat,
        EnvBase,
        GymEnv,
        InitTracker,
        RewardSum,
        StepCounter,
        TransformedEnv,
    )

_MUJOCO_ENTRY_PREFIX = "gymnasium.envs.mujoco"


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
        **gym_kwargs: forwarded to ``torchrl.envs.GymEnv`` (and from there to ``gymnasium.make``).

    Returns:
        ``TransformedEnv(GymEnv(env_name), Compose(DoubleToFloat(), StepCounter(), RewardSum(),
        InitTracker()))`` with float32 ``"observation"``, ``"action"``, ``("next", "reward")``,
        ``("next", "done")``, ``"step_count"``, ``"episode_reward"`` and ``"is_init"`` entries.

    Raises:
        ValueError: unknown environment name (the message lists the MuJoCo v5 tasks), mujoco missing
            for a MuJoCo task, or a seed that is not a non-negative int.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _check_env_name(env_name)
    base = GymEnv(env_name, device=device, **gym_kwargs)
    env = TransformedEnv(base, Compose(DoubleToFloat(), StepCounter(), RewardSum(), InitTracker()))
    env.set_seed(seed)
    return env


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
