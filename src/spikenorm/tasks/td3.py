"""Online off-policy RL with spiking actors: TD3 and DDPG as a LightningModule over TorchRL primitives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModuleBase

from spikenorm.models.layers import LayerSpec
from spikenorm.models.rl import POPSAN_LAYERS, DDPGCritic, MLPActor, PopSANActor, TwinQCritic
from spikenorm.modes import eval_mode, frozen_parameters
from spikenorm.norm.carebn import ca_bn_updates
from spikenorm.rl import (
    action_bounds,
    action_dim,
    hard_update,
    make_exploration_policy,
    make_policy,
    make_target,
    observation_dim,
    soft_update,
)
from spikenorm.tasks.compilation import CompileOption
from spikenorm.tasks.off_policy import OffPolicyTask
from spikenorm.validation import check_choice

#: the off-policy algorithms: TD3 (twin critics, target noise, delayed actor) or DDPG
Algorithm = Literal["td3", "ddpg"]
#: the actor: PopSAN (spiking) or TD3's ReLU MLP (the ANN baseline)
Actor = Literal["spiking", "ann"]
#: how the targets follow: Polyak averaging every update, or a hard copy every ``hard_update_every`` updates
TargetUpdate = Literal["soft", "hard"]


class SpikingTD3(OffPolicyTask):
    """TD3 (or DDPG) with a spiking actor, trained online on a gymnasium MuJoCo env (the CaRe-BN setting).

    The actor is the population-coded spiking actor (:class:`~spikenorm.models.PopSANActor`, ``actor="spiking"``)
    with the norm its ``actor_layers`` name: ``carebn`` (CaRe-BN), ``tdbn``, ``tebn``, ``tab``, ``bn``, or ``none``
    (the BN-free pop-SAN); or, as the ANN baseline of the CaRe-BN paper, TD3's ReLU MLP
    (:class:`~spikenorm.models.MLPActor`, ``actor="ann"``).

    Each collection batch takes ``frames_per_batch`` environment steps (the policy in eval mode: BN layers use their
    running statistics, so a batch of one works; Gaussian exploration noise, :meth:`explore`; uniform random actions
    for the first ``warmup_steps``), stores them in a TensorDict replay buffer, and then makes ``updates_per_step``
    gradient updates per collected step:

    * critic: ``y = r + gamma (1 - terminated) min(Q1', Q2')(s', clip(actor'(s') + clip(N(0, policy_noise),
      +-noise_clip)))`` (TD3; DDPG: one critic, no target noise), MSE loss;
    * actor, every ``policy_delay`` updates (DDPG: every update): ``-Q1(s, actor(s))``; this is the only
      training-mode actor forward, and it is where CaRe-BN's confidence-adaptive update happens
      (:func:`spikenorm.norm.carebn.ca_bn_updates`). The critic's parameters are frozen in this loss
      (:func:`spikenorm.modes.frozen_parameters`): its backward computes the actor's gradient only, not the critic
      weight gradients the reference code computes and then discards (same values, less work);
    * targets: Polyak averaging with ``tau`` over parameters *and* BN statistics, as the CaRe-BN reference
      code does (TorchRL's ``SoftUpdate`` skips BN buffers), or a hard copy every ``hard_update_every``
      updates. The target actor always runs in eval mode.

    The losses are written here rather than taken from TorchRL's ``TD3Loss``, whose target networks are
    copied and soft-updated inside the loss without BN statistics and evaluated in training mode.

    Budget (env steps), collection, evaluation, logging at env steps and exact resume are the shared ones of
    :class:`~spikenorm.tasks.off_policy.OffPolicyTask`; the logged losses are ``train/critic_loss`` and
    ``train/actor_loss``.

    Args:
        env_name: a gymnasium env id with a bounded continuous action space (MuJoCo v5, or classic control
            such as ``Pendulum-v1``).
        total_env_steps: environment steps to train for (warm-up included): the budget of every fit, resumed
            ones included.
        actor: ``spiking`` (PopSAN) or ``ann`` (TD3's MLP actor; no norm, no time axis: ``actor_layers`` must be
            left at its default or None, and is recorded as None; ``time_steps`` is not used). Checkpoints record
            it, so they rebuild the right network.
        actor_layers: the PopSAN actor's layers (:class:`~spikenorm.models.LayerSpec`, default
            :data:`~spikenorm.models.POPSAN_LAYERS`: norm ``carebn``, neuron ``clif``, surrogate ``rectangle``;
            norm ``bn``, ``tdbn``, ``tebn``, ``tab``, ``none``, ... and their ``norm_kwargs``, e.g.
            ``{"prior": "debiased", "noise": "prior"}`` for CaRe-BN's Kalman variant,
            :func:`spikenorm.norm.carebn.ca_bn_update`). The actor's ``T`` is ``time_steps``. Checkpoints store
            the spec as the dict of its fields (None for the ANN actor).
        hidden: widths of the actor's hidden layers (spiking or ReLU) and of each TD3 critic.
        algorithm: ``td3`` or ``ddpg`` (DDPG's critic, learning rates and tau of the CaRe-BN reference code when
            left at their defaults).
        compile: ``torch.compile`` the actor in place when the trainer configures the model
            (:func:`~spikenorm.tasks.compilation.compile_network`, as ``SpikingClassifier(compile=...)``: True for
            ``{"dynamic": False}``, or a dict of ``torch.compile`` arguments; checked here). The critics and the
            target actor (a copy made before compiling) stay uncompiled; the actor compiles one graph for the
            training batch and one for collection's batch of one.
        batches_per_iteration: collection batches (each with its updates) per Lightning iteration: the same numbers,
            fewer Lightning iterations (:class:`~spikenorm.tasks.off_policy.OffPolicyTask`, Iterations).
        fused_optimizer: fused Adam (default) or torch's default implementation (the reference code's, bit for
            bit): the same update to float round-off (:class:`~spikenorm.tasks.off_policy.OffPolicyTask`).
    """

    #: the replay entries :meth:`update` reads
    sample_keys = ("observation", "action", ("next", "reward"), ("next", "terminated"), ("next", "observation"))

    def __init__(
        self,
        env_name: str = "InvertedPendulum-v5",
        total_env_steps: int = 50_000,
        warmup_steps: int = 5_000,
        algorithm: Algorithm = "td3",
        actor: Actor = "spiking",
        actor_layers: LayerSpec | None = POPSAN_LAYERS,
        time_steps: int = 5,
        hidden: tuple[int, ...] = (256, 256),
        batch_size: int = 256,
        buffer_size: int = 1_000_000,
        frames_per_batch: int = 1,
        updates_per_step: int = 1,
        gamma: float = 0.99,
        tau: float | None = None,
        target_update: TargetUpdate = "soft",
        hard_update_every: int = 1000,
        policy_delay: int = 2,
        exploration_noise: float = 0.1,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        critic_weight_decay: float | None = None,
        eval_every: int = 5_000,
        eval_episodes: int = 10,
        seed: int = 0,
        compile: CompileOption = False,
        batches_per_iteration: int = 1,
        fused_optimizer: bool = True,
    ) -> None:
        check_choice(algorithm, Algorithm, "algorithm")
        check_choice(actor, Actor, "actor")
        if isinstance(actor_layers, Mapping):  # a checkpoint's hyperparameters, or some fields given in Python
            actor_layers = replace(POPSAN_LAYERS, **actor_layers)
        if actor == "ann" and actor_layers not in (None, POPSAN_LAYERS):
            raise ValueError(
                "SpikingTD3(actor='ann') builds TD3's ReLU MLP actor, which has no spiking layers: leave "
                f"actor_layers unset or null (got {actor_layers!r}), or use actor='spiking' for the PopSAN actor"
            )
        if actor == "spiking" and actor_layers is None:
            raise ValueError(
                "SpikingTD3(actor='spiking') needs actor_layers (a LayerSpec; the default is POPSAN_LAYERS); "
                "actor_layers=None is for actor='ann'"
            )
        check_choice(target_update, TargetUpdate, "target_update")
        super().__init__(
            env_name,
            total_env_steps,
            warmup_steps,
            batch_size,
            buffer_size,
            frames_per_batch,
            updates_per_step,
            eval_every,
            eval_episodes,
            seed,
            compile,
            None,
            batches_per_iteration,
            fused_optimizer,
        )
        ddpg = algorithm == "ddpg"
        defaults = {
            "tau": 0.001 if ddpg else 0.005,
            "actor_lr": 1e-4 if ddpg else 3e-4,
            "critic_lr": 1e-3 if ddpg else 3e-4,
            "critic_weight_decay": 0.01 if ddpg else 0.0,
        }
        self.save_hyperparameters()
        # plain data, so that checkpoints load without unpickling code and loggers get actor_layers/<field> keys;
        # None for the ANN actor, which has no spiking layers
        self.record_hyperparameters(actor_layers=asdict(actor_layers) if actor == "spiking" else None)
        for key, value in defaults.items():
            if self.hparams[key] is None:
                self.hparams[key] = value
        obs_dim, act_dim = observation_dim(self.env), action_dim(self.env)
        low, high = action_bounds(self.env)
        self.register_buffer("action_low", low.float())
        self.register_buffer("action_high", high.float())
        max_action = high.float().tolist()
        if actor == "ann":
            self.actor = MLPActor(obs_dim, act_dim, max_action=max_action, hidden=hidden)
        else:
            self.actor = PopSANActor(
                obs_dim, act_dim, max_action=max_action, hidden=hidden, time_steps=time_steps, layers=actor_layers
            )
            self.give_time_steps(self.actor, time_steps)
        self.critic = DDPGCritic(obs_dim, act_dim) if ddpg else TwinQCritic(obs_dim, act_dim, hidden=hidden)
        self.actor_target = make_target(self.actor)  # pinned to eval mode, whatever Lightning sets
        self.critic_target = make_target(self.critic)

    @property
    def policy_network(self) -> nn.Module:
        """The actor."""
        return self.actor

    def collection_policy(self) -> TensorDictModuleBase:
        """The actor with TD3's Gaussian exploration noise (:class:`~spikenorm.rl.TD3GaussianNoise`)."""
        policy = make_exploration_policy(make_policy(self.actor), self.env, sigma=self.hparams.exploration_noise)
        object.__setattr__(self, "_noise", policy[-1])  # for explore; not a submodule (no state dict entries)
        return policy

    def explore(self, observation: Tensor) -> Tensor:
        """What :meth:`collection_policy` computes, on plain tensors: the actor in eval mode, then the noise."""
        with eval_mode(self.actor):
            action = self.actor(observation.unsqueeze(0))[0]
        return self._noise.noisy(action)

    def acting_policy(self) -> TensorDictModuleBase:
        """The deterministic actor."""
        return make_policy(self.actor)

    # -- the algorithm ------------------------------------------------------------------------------------
    def compiled_networks(self) -> list[torch.nn.Module]:
        """The actor (the critics and the target actor stay uncompiled)."""
        return [self.actor]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        actor_opt = self.adam(self.actor.parameters(), lr=self.hparams.actor_lr)
        critic_opt = self.adam(
            self.critic.parameters(), lr=self.hparams.critic_lr, weight_decay=self.hparams.critic_weight_decay
        )
        return [actor_opt, critic_opt]

    def update(self, sample: TensorDict) -> dict[str, Tensor]:
        """One critic update and, every ``policy_delay`` updates, one actor update and target update; returns
        the losses (``critic_loss``, and ``actor_loss`` when the actor was updated)."""
        hp = self.hparams
        actor_opt, critic_opt = self.optimizers()
        obs, action = sample["observation"].float(), sample["action"].float()
        reward = sample["next", "reward"].float().reshape(-1, 1)
        not_done = 1.0 - sample["next", "terminated"].float().reshape(-1, 1)
        next_obs = sample["next", "observation"].float()
        with torch.no_grad():
            next_action = self.actor_target(next_obs)  # eval mode: running statistics
            if hp.algorithm == "td3":
                scale = self.action_high
                noise = (torch.randn_like(next_action) * hp.policy_noise * scale).clamp(
                    -hp.noise_clip * scale, hp.noise_clip * scale
                )
                next_action = torch.maximum(torch.minimum(next_action + noise, self.action_high), self.action_low)
                q1_next, q2_next = self.critic_target(next_obs, next_action)
                q_next = torch.minimum(q1_next, q2_next)
            else:
                q_next = self.critic_target(next_obs, next_action)
            target = reward + hp.gamma * not_done * q_next
        if hp.algorithm == "td3":
            q1, q2 = self.critic(obs, action)
            critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        else:
            critic_loss = F.mse_loss(self.critic(obs, action), target)
        critic_opt.zero_grad()
        self.manual_backward(critic_loss)
        critic_opt.step()
        self.updates += 1
        losses = {"critic_loss": critic_loss.detach()}
        if hp.algorithm == "ddpg" or self.updates % hp.policy_delay == 0:
            with ca_bn_updates(self.actor):  # the only training-mode actor forward: CaRe-BN updates here
                policy_action = self.actor(obs)
            with frozen_parameters(self.critic):  # the actor's gradient only: no weight gradients for the critic
                q = self.critic.q1(obs, policy_action) if hp.algorithm == "td3" else self.critic(obs, policy_action)
            actor_loss = -q.mean()
            actor_opt.zero_grad()
            self.manual_backward(actor_loss)
            actor_opt.step()
            self._update_targets()
            losses["actor_loss"] = actor_loss.detach()
        return losses

    def _update_targets(self) -> None:
        hp = self.hparams
        if hp.target_update == "soft":
            soft_update(self.actor_target, self.actor, hp.tau)
            soft_update(self.critic_target, self.critic, hp.tau)
        elif self.updates % hp.hard_update_every < hp.policy_delay:
            hard_update(self.actor_target, self.actor)
            hard_update(self.critic_target, self.critic)
