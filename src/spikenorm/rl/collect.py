"""Collection with the policy in eval mode, TD3 exploration noise, and the actor adapter.

TorchRL collectors never call ``policy.eval()``: a policy whose actor holds BN layers runs its rollouts
in whatever mode the training loop left it in, i.e. train mode. With one environment the BN then sees
a batch of a single sample (``nn.BatchNorm1d`` raises "Expected more than 1 value per channel when
training"; time-major SNN norms normalize by that one sample's own statistics), and every environment
step overwrites the running statistics with rollout data. :class:`EvalModePolicy` fixes this: it enters
:func:`~spikenorm.modes.eval_mode` around every call, so the actor acts with its running statistics and
leaves them untouched, and the train/eval flag of every submodule is restored exactly afterwards.
:func:`make_collector` applies it to any policy it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spikenorm.extras import needs_extra
from spikenorm.modes import eval_mode
from spikenorm.rl.envs import bounds_from_spec

with needs_extra("rl", __name__):
    from tensordict import TensorDictBase
    from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
    from torchrl.collectors import Collector
    from torchrl.data import TensorSpec
    from torchrl.envs import EnvBase
    from torchrl.envs.utils import ExplorationType
    from torchrl.modules import AdditiveGaussianModule

__all__ = [
    "BatchedActor",
    "EvalModePolicy",
    "TD3GaussianNoise",
    "make_collector",
    "make_exploration_policy",
    "make_policy",
]


class BatchedActor(nn.Module):
    """Adapter letting an actor ``[B, obs_dim] -> [B, act_dim]`` take any leading batch shape.

    A single environment hands the policy an unbatched observation ``[obs_dim]``; batched or stacked
    envs hand ``[N, obs_dim]`` or ``[N, M, obs_dim]``. The adapter flattens the leading dimensions into
    one batch dimension, calls the actor, and restores them on the action.
    """

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        if not isinstance(actor, nn.Module):
            raise TypeError(f"actor must be a torch.nn.Module, got {type(actor).__name__}")
        self.actor = actor

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if observation.ndim == 0:
            raise ValueError("observation must have shape [..., obs_dim], got a scalar")
        lead = observation.shape[:-1]
        flat = observation.reshape(-1, observation.shape[-1])
        action = self.actor(flat)
        if not isinstance(action, torch.Tensor) or action.ndim != 2 or action.shape[0] != flat.shape[0]:
            got = tuple(action.shape) if isinstance(action, torch.Tensor) else type(action).__name__
            raise ValueError(
                f"actor must map [B, obs_dim] -> [B, act_dim]; for input {tuple(flat.shape)} it returned {got}"
            )
        return action.reshape(*lead, action.shape[-1])


def make_policy(actor: nn.Module, in_key: str = "observation", out_key: str = "action") -> TensorDictModule:
    """Wrap a plain actor ``[B, obs_dim] -> [B, act_dim]`` as a TensorDictModule ``in_key -> out_key``.

    The actor is wrapped in :class:`BatchedActor`, so it also serves an unbatched single env.
    """
    return TensorDictModule(BatchedActor(actor), in_keys=[in_key], out_keys=[out_key])


class TD3GaussianNoise(AdditiveGaussianModule):
    """TD3's exploration noise: ``a <- clip(a + N(0, (sigma * max_action)^2), low, high)``.

    A ``torchrl.modules.AdditiveGaussianModule`` with a constant ``sigma`` (no annealing) whose
    per-dimension noise std is ``max_action = (high - low) / 2`` (TD3's ``max_action`` for the symmetric
    MuJoCo boxes), taken from the action spec; the noisy action is projected (clamped) into
    ``[low, high]``. The spec may be given later: setting ``.spec`` (a TorchRL collector does this for
    exploration modules built with ``spec=None``) also sets the noise scale. The noise is added only
    under ``ExplorationType.RANDOM`` (a collector's default) or with no exploration type set; under
    ``set_exploration_type(ExplorationType.DETERMINISTIC)`` the module is the identity.

    Args:
        sigma: noise std as a fraction of ``max_action`` (TD3: 0.1).
        spec: the env's bounded continuous action spec, or ``None`` to set it later.
        action_key: the entry the noise is added to.
    """

    def __init__(
        self,
        sigma: float = 0.1,
        spec: TensorSpec | None = None,
        action_key: str = "action",
    ) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0.0:
            raise ValueError(f"sigma must be a non-negative float, got {sigma!r}")
        self._bounds: tuple[torch.Tensor, torch.Tensor] | None = None  # (low, high) of the spec, once it is set
        super().__init__(
            spec=None,
            sigma_init=float(sigma),
            sigma_end=float(sigma),
            annealing_num_steps=1,
            mean=0.0,
            std=1.0,
            action_key=action_key,
        )
        if spec is not None:
            self.spec = spec

    def noisy(self, action: torch.Tensor) -> torch.Tensor:
        """``action`` plus the noise, projected into the spec's box: what ``forward`` writes under random exploration
        (the same random draw), on a plain tensor."""
        return self._add_noise(action)

    def _add_noise(self, action: torch.Tensor) -> torch.Tensor:
        """TorchRL's computation (``normal(mean, std)``, times ``sigma``, added, then ``Bounded.project``: a clamp
        to the box, the identity inside it) without its per-call spec lookups."""
        if self._bounds is None:
            raise RuntimeError("TD3GaussianNoise has no action spec yet: pass spec=... or set .spec")
        noise = torch.normal(mean=self.mean.expand(action.shape), std=self.std.expand(action.shape))
        low, high = (bound.to(action.device) for bound in self._bounds)
        return torch.clamp(action + noise.to(action.device) * self.sigma, low, high)

    @property
    def spec(self) -> TensorSpec | None:
        return self._spec

    @spec.setter
    def spec(self, value: TensorSpec) -> None:
        AdditiveGaussianModule.spec.fset(self, value)  # wraps a leaf spec into Composite
        low, high = bounds_from_spec(self._spec[self.action_key])
        # the parent draws N(mean, std) * sigma: a per-dimension std of max_action gives TD3's noise
        self.std = ((high - low) / 2).to(self.std.device)
        self._bounds = (low, high)


def make_exploration_policy(
    policy: TensorDictModuleBase | nn.Module,
    action_spec: TensorSpec | EnvBase | None = None,
    sigma: float = 0.1,
    action_key: str = "action",
) -> TensorDictSequential:
    """Append TD3's exploration noise (:class:`TD3GaussianNoise`) to ``policy``.

    Args:
        policy: a TensorDict policy writing ``action_key`` (e.g. from :func:`make_policy`), or a plain
            actor ``[B, obs_dim] -> [B, act_dim]``, which is wrapped with :func:`make_policy`.
        action_spec: the env's bounded action spec, or the env itself; ``None`` leaves it to the
            collector (:func:`make_collector` sets it from its env).
        sigma: noise std as a fraction of ``max_action`` (TD3: 0.1).
        action_key: the entry the noise is added to.
    """
    policy = _as_policy(policy, out_key=action_key)
    if isinstance(action_spec, EnvBase):
        action_spec = getattr(action_spec, "action_spec_unbatched", action_spec.action_spec)
    return TensorDictSequential(policy, TD3GaussianNoise(sigma, spec=action_spec, action_key=action_key))


def _as_policy(policy: TensorDictModuleBase | nn.Module, out_key: str = "action") -> TensorDictModuleBase:
    """A TensorDict policy as is; a plain actor module wrapped with :func:`make_policy`."""
    if isinstance(policy, TensorDictModuleBase):
        return policy
    if isinstance(policy, nn.Module):
        return make_policy(policy, out_key=out_key)
    raise TypeError(
        "policy must be a tensordict.nn.TensorDictModuleBase or a plain actor nn.Module "
        f"([B, obs_dim] -> [B, act_dim], see make_policy), got {type(policy).__name__}"
    )


class EvalModePolicy(TensorDictModuleBase):
    """A TensorDict policy that always runs its wrapped policy in eval mode.

    ``forward`` enters :func:`eval_mode` around the call: BN layers normalize with their running
    statistics and do not update them, dropout is off, and afterwards every submodule is back in the
    mode it was in (the training loop's ``actor.train()`` is not undone). Parameters are shared with
    the wrapped policy, so weight updates of the online actor are seen by the next rollout.
    """

    def __init__(self, policy: TensorDictModuleBase) -> None:
        super().__init__()
        if not isinstance(policy, TensorDictModuleBase):
            raise TypeError(
                "policy must be a tensordict.nn.TensorDictModuleBase (wrap a plain actor with make_policy), "
                f"got {type(policy).__name__}"
            )
        self.policy = policy
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with eval_mode(self.policy):
            return self.policy(tensordict)


def make_collector(
    env_fn: Callable[[], EnvBase] | EnvBase,
    policy: TensorDictModuleBase | nn.Module,
    frames_per_batch: int,
    total_frames: int = -1,
    init_random_frames: int = 0,
    exploration_sigma: float | None = None,
    device: str | torch.device | None = None,
    exploration_type: ExplorationType = ExplorationType.RANDOM,
    **collector_kwargs: Any,
) -> Collector:
    """A ``torchrl.collectors.Collector`` whose policy runs in eval mode for every rollout step.

    Args:
        env_fn: an env constructor (e.g. ``functools.partial(make_env, "Hopper-v5", seed=0)``) or an env.
        policy: a TensorDict policy (e.g. ``make_exploration_policy(make_policy(actor), env)``) or a
            plain actor ``[B, obs_dim] -> [B, act_dim]`` (wrapped with :func:`make_policy`). The result is
            wrapped in :class:`EvalModePolicy` unless it already is one.
        frames_per_batch: environment steps per yielded batch.
        total_frames: total steps before the collector stops; ``-1`` for an endless collector.
            Must be a multiple of ``frames_per_batch``.
        init_random_frames: the first ``init_random_frames`` steps take uniformly random actions from the
            env's action spec (torch's global RNG) instead of calling the policy. Must be a multiple of
            ``frames_per_batch`` (TorchRL decides per batch and would silently round up).
        exploration_sigma: if given, append :class:`TD3GaussianNoise` with this ``sigma`` (its action
            spec is taken from the collector's env). ``None``: collect with ``policy`` as it is.
        device: device of policy, env and output (``None``: leave as they are).
        exploration_type: exploration mode during collection; ``RANDOM`` adds the exploration noise.
        **collector_kwargs: forwarded to ``Collector`` (``max_frames_per_traj``, ``storing_device``, ...);
            ``auto_register_policy_transforms`` defaults to ``False`` (the collector never edits the env).

    Iterate over the result to get TensorDicts of batch size ``[frames_per_batch]`` (single env) with
    ``"observation"``, ``"action"``, ``("next", "reward")``, ``("next", "done")``, ...; call
    ``collector.shutdown()`` when done.
    """
    for name, value, minimum in (
        ("frames_per_batch", frames_per_batch, 1),
        ("init_random_frames", init_random_frames, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if (
        isinstance(total_frames, bool)
        or not isinstance(total_frames, int)
        or not (total_frames == -1 or total_frames > 0)
    ):
        raise ValueError(f"total_frames must be -1 (endless) or a positive int, got {total_frames!r}")
    if total_frames > 0 and total_frames % frames_per_batch:
        raise ValueError(f"total_frames ({total_frames}) must be a multiple of frames_per_batch ({frames_per_batch})")
    if init_random_frames % frames_per_batch:
        raise ValueError(
            f"init_random_frames ({init_random_frames}) must be a multiple of frames_per_batch "
            f"({frames_per_batch}): the collector switches from random actions to the policy between batches"
        )
    if not isinstance(env_fn, EnvBase) and not callable(env_fn):
        raise TypeError(f"env_fn must be an EnvBase or a callable returning one, got {type(env_fn).__name__}")
    if not isinstance(policy, EvalModePolicy):
        policy = _as_policy(policy)
        if exploration_sigma is not None:
            policy = make_exploration_policy(policy, None, sigma=exploration_sigma)
        policy = EvalModePolicy(policy)
    elif exploration_sigma is not None:
        raise ValueError("exploration_sigma cannot be added to a policy that is already an EvalModePolicy")
    # TorchRL 0.14 warns (and from 0.15 mutates the env) about recurrent-policy transforms; our
    # policies carry no state across calls, so never let the collector edit the env.
    collector_kwargs.setdefault("auto_register_policy_transforms", False)
    return Collector(
        env_fn,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        init_random_frames=init_random_frames or None,
        device=device,
        exploration_type=exploration_type,
        **collector_kwargs,
    )
