"""TorchRL glue: env factory, BN-aware target updates, and collection with the policy in eval mode.

TorchRL gets two things wrong for normalized (spiking) actors and critics, and this package fixes them:

* ``torchrl.objectives.SoftUpdate`` averages parameters only, so BN running statistics of target
  networks never move. :func:`soft_update` also averages floating-point buffers.
* Collectors never switch the policy to eval mode, so BN layers run on single-sample batches and
  rollouts overwrite their running statistics. :func:`make_collector` runs the policy through
  :class:`EvalModePolicy`.

And one Lightning pitfall: a one-off measurement logged with ``LightningModule.log`` is re-written at every
logging step; :func:`log_event` writes it once, at its env step.

Envs built by :func:`make_env` can be checkpointed mid-episode: :func:`env_state` and :func:`load_env_state`
(through :class:`EpisodeRecorder`) save and restore their RNG and the episode in progress as plain data.

An online loop that takes one env step and one update at a time pays a TorchRL collector's and replay buffer's
per-call work at every step; :class:`EnvStepper` (the collector's transitions, stepping the gymnasium env directly)
and :class:`ReplayRows` (``extend`` of one row and ``sample``, with the same contents and random draws) do the same
for a fraction of it.
"""

from spikenorm.rl.collect import (
    BatchedActor,
    EvalModePolicy,
    TD3GaussianNoise,
    make_collector,
    make_exploration_policy,
    make_policy,
)
from spikenorm.rl.envs import (
    EpisodeRecorder,
    action_bounds,
    action_dim,
    available_mujoco_envs,
    bounds_from_spec,
    env_state,
    load_env_state,
    make_env,
    num_actions,
    observation_dim,
)
from spikenorm.rl.events import log_event
from spikenorm.rl.replay import ReplayRows
from spikenorm.rl.stepper import EnvStepper
from spikenorm.rl.target import hard_update, make_target, soft_update

__all__ = [
    "BatchedActor",
    "EnvStepper",
    "EpisodeRecorder",
    "EvalModePolicy",
    "ReplayRows",
    "TD3GaussianNoise",
    "action_bounds",
    "action_dim",
    "available_mujoco_envs",
    "bounds_from_spec",
    "env_state",
    "hard_update",
    "load_env_state",
    "log_event",
    "make_collector",
    "make_env",
    "make_exploration_policy",
    "make_policy",
    "make_target",
    "num_actions",
    "observation_dim",
    "soft_update",
]
