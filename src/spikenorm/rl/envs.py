"""Environment factory: TorchRL envs over gymnasium tasks (MuJoCo v5, classic control, Atari), plus spec helpers.

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

Atari (the ``atari`` extra, ``pip install 'spikenorm[atari]'``): ids of the ``ALE/`` namespace, e.g.
``make_env("ALE/Pong-v5", obs_type="ram")`` (the setting of the DSQN / CaRe-BN discrete code: frameskip 4, sticky
actions with probability 0.25, the minimal action set, 128 RAM bytes per observation). ``ale_py``, which
registers that namespace with gymnasium, is imported on the first such id; its wheels ship the ROMs, so no
download happens. RAM observations stay **uint8** (``DoubleToFloat`` leaves integer entries alone): the network
casts them (a replay buffer of uint8 observations is 4x smaller than one of float32). Discrete action specs
are one-hot (TorchRL's ``GymWrapper`` default); :func:`num_actions` reads their size.

The helpers :func:`observation_dim`, :func:`action_dim`, :func:`num_actions` and :func:`action_bounds` read the
env's *unbatched* specs, so they give the same answer for a single env and for a batched one.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import torch

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    import gymnasium
    from torchrl.data import Binary, Bounded, Categorical, MultiCategorical, MultiOneHot, OneHot, TensorSpec
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
_ALE_NAMESPACE = "ALE/"


def _atari_env(env: gymnasium.Env) -> Any:
    """The ``ale_py.env.AtariEnv`` under ``env``, or None for any other env (and whenever ale_py is not loaded: an
    AtariEnv cannot exist without it)."""
    ale_env_module = sys.modules.get("ale_py.env")
    if ale_env_module is None:
        return None
    unwrapped = env.unwrapped
    return unwrapped if isinstance(unwrapped, ale_env_module.AtariEnv) else None


def _ale_state_tensor(atari: Any) -> torch.Tensor:
    """The full state of an AtariEnv's emulator, ALE's system RNG included (the RNG of sticky actions), as the
    bytes of ``ALEState.serialize()`` in a uint8 tensor (plain data for ``torch.load(weights_only=True)``)."""
    raw = atari.clone_state(include_rng=True).serialize()
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


def _restore_ale_state(atari: Any, state: torch.Tensor) -> None:
    """Inverse of :func:`_ale_state_tensor`: emulator and ALE RNG as they were."""
    import ale_py  # loaded: ``atari`` is an ale_py env

    atari.restore_state(ale_py.ALEState(state.cpu().numpy().tobytes()))


class EpisodeRecorder(gymnasium.Wrapper):
    """A gymnasium wrapper that keeps what reproduces the episode in progress, so that it can be restored.

    A gymnasium env is not serialisable in general (MuJoCo's simulator state, the wrappers' step counters),
    but it is deterministic given its RNG and the actions taken. This wrapper records, at each ``reset``, the
    state of the env's RNG (``np_random``) before the reset and the reset's ``seed``, and then every action.
    :meth:`state_dict` returns that record and the RNG's current state as plain data (no pickled objects);
    :meth:`load_state_dict` on a fresh env of the same id repeats the reset and the actions and then sets the
    RNG, which leaves the env exactly where the recorded one was. Resets with ``options`` are not recorded
    (:meth:`state_dict` refuses them).

    Atari envs (``ale_py``) have a second RNG: ALE's own system RNG draws the sticky actions
    (``repeat_action_probability``, 0.25 in the v5 ids) and is reseeded only by ``reset(seed=...)``, so it runs on
    across episodes and ``np_random`` does not cover it. For them the record also holds the emulator's full state
    with that RNG (``clone_state(include_rng=True)``, serialised by ``ALEState.serialize()`` into a uint8 tensor of
    about 14 kB): the state before the episode's reset (so that the replay retraces the episode exactly) and the
    state now (restored last, also without replay). Replaying a long episode takes time (raw ALE steps at about
    2500 steps/s on one core: a full 27 000-step Pong episode about 10 s).
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self._reset_rng: dict[str, Any] | None = None
        self._reset_seed: int | None = None
        self._options_used = False
        self._actions: list[np.ndarray] = []
        self._atari = _atari_env(env)
        self._reset_ale: torch.Tensor | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._reset_rng = self.unwrapped.np_random.bit_generator.state
        if self._atari is not None:
            self._reset_ale = _ale_state_tensor(self._atari)
        self._reset_seed = seed
        self._options_used = options is not None
        self._actions = []
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, ...]:
        self._actions.append(np.array(action, copy=True))
        return super().step(action)

    def state_dict(self) -> dict[str, Any]:
        """``rng`` (the RNG's state now) and ``episode`` (None before the first reset, else the RNG state and seed
        of the episode's reset and its actions as one tensor ``[steps, *action_shape]``). For an Atari env also
        ``ale`` (the ALE state now, uint8 tensor) and ``episode["ale"]`` (the ALE state before the episode's
        reset)."""
        if self._options_used:
            raise ValueError("EpisodeRecorder cannot record an episode that was reset with options")
        episode = None
        if self._reset_rng is not None:
            shape = self.action_space.shape or ()
            actions = np.stack(self._actions) if self._actions else np.zeros((0, *shape), self.action_space.dtype)
            episode = {"rng": self._reset_rng, "seed": self._reset_seed, "actions": torch.from_numpy(actions)}
            if self._atari is not None:
                episode["ale"] = self._reset_ale
        state = {"rng": self.unwrapped.np_random.bit_generator.state, "episode": episode}
        if self._atari is not None:
            state["ale"] = _ale_state_tensor(self._atari)
        return state

    def load_state_dict(self, state: dict[str, Any], replay: bool = True) -> None:
        """Restore what :meth:`state_dict` returned: with ``replay``, reset as the recorded episode was reset and
        take its actions again; then set the RNG to its recorded state. Without ``replay`` (an env whose next use
        starts with a reset, e.g. an evaluation env) only the RNG is set. An Atari env also gets its emulator and
        ALE RNG back (with or without ``replay``).

        Raises:
            ValueError: the state is from an Atari env and this env is not one, or the other way round.
        """
        if ("ale" in state) != (self._atari is not None):
            recorded, here = ("an Atari", "not one") if "ale" in state else ("a non-Atari", "an Atari env")
            raise ValueError(
                f"the state is from {recorded} env but this env is {here}; load it into an env of the same id"
            )
        episode = state["episode"]
        if replay and episode is not None:
            self.unwrapped.np_random.bit_generator.state = episode["rng"]
            if self._atari is not None:
                _restore_ale_state(self._atari, episode["ale"])
            self.reset(seed=episode["seed"])
            for action in episode["actions"].numpy():
                self.step(action)
        if self._atari is not None:
            _restore_ale_state(self._atari, state["ale"])
        self.unwrapped.np_random.bit_generator.state = state["rng"]


def available_mujoco_envs() -> list[str]:
    """Names of the gymnasium MuJoCo v5 tasks registered in this installation (sorted)."""
    names = []
    for env_id, spec in gymnasium.registry.items():
        entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
        if env_id.endswith("-v5") and entry.startswith(_MUJOCO_ENTRY_PREFIX):
            names.append(env_id)
    return sorted(names)


def _register_namespace(env_name: str) -> None:
    """Import the package that registers ``env_name``'s namespace with gymnasium: ``ale_py`` for ``ALE/`` ids.

    Raises:
        spikenorm.extras.MissingExtraError: an ``ALE/`` id without ale_py (the ``atari`` extra).
    """
    if env_name.startswith(_ALE_NAMESPACE):
        with needs_extra("atari", __name__):
            import ale_py  # noqa: F401  (registers the ALE/ ids)


def _check_env_name(env_name: str) -> None:
    """Raise a ValueError for a name gymnasium does not know, or a MuJoCo task without mujoco (a MissingExtraError
    for an Atari id without ale_py)."""
    if not isinstance(env_name, str) or not env_name:
        raise ValueError(f"env_name must be a non-empty string such as 'InvertedPendulum-v5', got {env_name!r}")
    _register_namespace(env_name)
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
        env_name: a registered gymnasium id, e.g. ``"InvertedPendulum-v5"``, ``"HalfCheetah-v5"``,
            ``"CartPole-v1"``, or an Atari id ``"ALE/Pong-v5"`` (with the ``atari`` extra; ``ale_py`` is imported
            then).
        seed: seed of the environment's own RNG (initial states). Random warm-up actions drawn by a
            collector come from torch's global RNG: seed that too (``seed_everything``).
        device: device of the tensordicts the env returns.
        **gym_kwargs: forwarded to ``gymnasium.make``, e.g. ``obs_type="ram"`` for an Atari id.

    Returns:
        ``TransformedEnv(GymWrapper(EpisodeRecorder(gymnasium.make(env_name))), Compose(DoubleToFloat(),
        StepCounter(), RewardSum(), InitTracker()))`` with ``"observation"`` (float32, or the env's integer
        dtype: uint8 for Atari RAM), ``"action"`` (one-hot int64 for discrete actions), ``("next", "reward")``,
        ``("next", "done")``, ``"step_count"``, ``"episode_reward"`` and ``"is_init"`` entries.

    Raises:
        ValueError: unknown environment name (the message lists the MuJoCo v5 tasks), mujoco missing
            for a MuJoCo task, or a seed that is not a non-negative int.
        spikenorm.extras.MissingExtraError: an ``ALE/`` id without the ``atari`` extra.
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


def num_actions(env: EnvBase) -> int:
    """Number of discrete actions of ``env``: ``n`` of its unbatched action spec, one-hot (``OneHot``, shape
    ``[n]``, TorchRL's ``GymWrapper`` default) or an index (``Categorical``, shape ``[]``).

    Raises:
        ValueError: the action spec is not a single discrete choice (continuous, multi-discrete or binary); the
            message shows the spec.
    """
    spec = _unbatched(env, "action_spec")
    if isinstance(spec, (MultiOneHot, MultiCategorical, Binary)) or not isinstance(spec, (OneHot, Categorical)):
        raise ValueError(f"num_actions needs a discrete action spec (OneHot or Categorical), got {spec!r}")
    if (isinstance(spec, OneHot) and len(spec.shape) != 1) or (
        isinstance(spec, Categorical) and spec.shape.numel() != 1
    ):
        raise ValueError(f"num_actions needs a single discrete action, got spec shape {tuple(spec.shape)}: {spec!r}")
    return int(spec.space.n)


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
