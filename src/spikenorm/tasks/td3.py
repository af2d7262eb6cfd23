"""Online off-policy RL with spiking actors: TD3 and DDPG as a LightningModule over TorchRL primitives."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    from tensordict import TensorDict, TensorDictBase
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from spikenorm.models.layers import LayerSpec
from spikenorm.models.rl import POPSAN_LAYERS, DDPGCritic, MLPActor, PopSANActor, TwinQCritic
from spikenorm.modes import eval_mode
from spikenorm.norm.carebn import ca_bn_updates
from spikenorm.rl import (
    action_bounds,
    action_dim,
    env_state,
    hard_update,
    load_env_state,
    log_event,
    make_collector,
    make_env,
    make_policy,
    make_target,
    observation_dim,
    soft_update,
)
from spikenorm.tasks.base import SpikingTask
from spikenorm.tasks.compilation import CompileOption
from spikenorm.validation import check_choice


class _Ticks(IterableDataset):
    """One integer per training iteration still to run (Lightning needs a loader; the data is the env).

    ``remaining`` is asked each time iteration starts, so a run resumed from a checkpoint runs only the
    iterations its budget has left."""

    def __init__(self, remaining: Callable[[], range]) -> None:
        self.remaining = remaining

    def __iter__(self) -> Iterator[int]:
        return iter(self.remaining())


#: the off-policy algorithms: TD3 (twin critics, target noise, delayed actor) or DDPG
Algorithm = Literal["td3", "ddpg"]
#: the actor: PopSAN (spiking) or TD3's ReLU MLP (the ANN baseline)
Actor = Literal["spiking", "ann"]
#: how the targets follow: Polyak averaging every update, or a hard copy every ``hard_update_every`` updates
TargetUpdate = Literal["soft", "hard"]


class SpikingTD3(SpikingTask):
    """TD3 (or DDPG) with a spiking actor, trained online on a gymnasium MuJoCo env (the CaRe-BN setting).

    The actor is the population-coded spiking actor (:class:`~spikenorm.models.PopSANActor`, ``actor="spiking"``)
    with the norm its ``actor_layers`` name: ``carebn`` (CaRe-BN), ``tdbn``, ``tebn``, ``tab``, ``bn``, or ``none``
    (the BN-free pop-SAN); or, as the ANN baseline of the CaRe-BN paper, TD3's ReLU MLP
    (:class:`~spikenorm.models.MLPActor`, ``actor="ann"``).

    Each training iteration collects ``frames_per_batch`` environment steps with a TorchRL ``Collector``
    (the policy in eval mode: BN layers use their running statistics, so a batch of one works; Gaussian
    exploration noise; uniform random actions for the first ``warmup_steps``), stores them in a TensorDict
    replay buffer, and then makes ``updates_per_step`` gradient updates per collected step:

    * critic: ``y = r + gamma (1 - terminated) min(Q1', Q2')(s', clip(actor'(s') + clip(N(0, policy_noise),
      +-noise_clip)))`` (TD3; DDPG: one critic, no target noise), MSE loss;
    * actor, every ``policy_delay`` updates (DDPG: every update): ``-Q1(s, actor(s))``; this is the only
      training-mode actor forward, and it is where CaRe-BN's confidence-adaptive update happens
      (:func:`spikenorm.norm.carebn.ca_bn_updates`);
    * targets: Polyak averaging with ``tau`` over parameters *and* BN statistics, as the CaRe-BN reference
      code does (TorchRL's ``SoftUpdate`` skips BN buffers), or a hard copy every ``hard_update_every``
      updates. The target actor always runs in eval mode.

    The losses are written here rather than taken from TorchRL's ``TD3Loss``, whose target networks are
    copied and soft-updated inside the loss without BN statistics and evaluated in training mode.

    Budget. A fit takes ``total_env_steps`` env steps (the iterations its budget has left, when resumed) in one
    epoch and then stops, whatever ``max_epochs`` says. ``Trainer(max_steps=...)`` is refused at setup
    (``ValueError``): Lightning counts optimizer steps there (and in ``trainer.global_step``, its checkpoint names
    and ``every_n_train_steps``): one per critic and one per actor update, none during warm-up.
    ``limit_train_batches`` counts iterations of ``frames_per_batch`` env steps. Every fit ends with an evaluation
    of the final actor (in ``on_train_epoch_end``, so also after an early stop), unless the last periodic one
    was at the same env step.

    Checkpoints. Besides networks, optimizers and counters, a full checkpoint (not ``save_weights_only``)
    holds the filled part of the replay buffer, torch's RNG, both envs (:func:`spikenorm.rl.env_state`: their
    RNGs and the episode in progress) and the collector's current step, as plain data: a fit resumed from it
    continues exactly as the uninterrupted one (same env steps, updates, evaluations, logs and weights).

    Logging. Every row is written straight to the loggers against the number of env steps taken (the CSV
    ``step`` column, W&B's ``trainer/global_step``, the x-axis of its charts), so evaluations,
    re-calibrations and training curves share one axis and each value is logged exactly once:

    * every ``eval_every`` env steps and at the end of the fit, the mean return of ``eval_episodes`` episodes of
      the deterministic actor (eval mode) on a separate env seeded ``seed + 100``: ``rl/eval_return``, with the
      best so far as ``rl/best_eval_return`` (the paper's metric);
    * after each iteration in which training episodes ended, their mean return: ``rl/train_return``;
    * every ``log_every_n_steps`` iterations (Lightning's cadence) and after the last one: ``rl/env_steps``,
      ``rl/env_steps_per_s``, and the latest ``train/critic_loss`` and ``train/actor_loss``.

    The latest value of each key is also in ``trainer.callback_metrics`` (for checkpoint monitors and the CLI
    summary; ``rl/env_steps`` is kept current there at every iteration, for checkpoint file names such as
    ``"env_steps={rl/env_steps:.0f}"``), and the returns and throughput are shown in the progress bar.

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
    """

    _PROGRESS_BAR = frozenset({"rl/eval_return", "rl/train_return", "rl/env_steps_per_s"})

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
    ) -> None:
        super().__init__(compile)
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
        if warmup_steps % frames_per_batch:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be a multiple of frames_per_batch ({frames_per_batch})"
            )
        if warmup_steps >= total_env_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be below total_env_steps ({total_env_steps})")
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
        self.automatic_optimization = False
        self.env = make_env(env_name, seed=seed)
        self.eval_env = make_env(env_name, seed=seed + 100)
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
        self.replay_buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(buffer_size), batch_size=batch_size)
        self.env_steps = 0
        self.updates = 0
        self._last_eval = 0
        self.eval_history: list[tuple[int, float]] = []  # (env steps, mean evaluation return)
        self._losses: dict[str, Tensor] = {}  # the latest value of each loss, logged every log_every_n_steps
        self._collector = None
        self._collector_iter: Iterator[TensorDict] | None = None
        self._clock = time.perf_counter()
        self._fit_start_env_steps = 0
        self._resume: dict[str, Any] | None = None  # what on_fit_start restores into the envs and the collector
        self._resume_rng: dict[str, Tensor] | None = None  # what the first training step restores

    @property
    def total_env_steps(self) -> int:
        """Environment steps this task trains for (callbacks such as ``ReplayRecalibration`` check their
        schedule against it)."""
        return self.hparams.total_env_steps

    # -- Lightning plumbing -----------------------------------------------------------------------------
    def compiled_networks(self) -> list[torch.nn.Module]:
        """The actor (the critics and the target actor stay uncompiled)."""
        return [self.actor]

    def setup(self, stage: str) -> None:
        """Refuse ``Trainer(max_steps=...)`` for fitting: the budget is ``total_env_steps``."""
        if stage == "fit" and self.trainer.max_steps != -1 and not self.trainer.fast_dev_run:
            raise ValueError(
                f"{type(self).__name__} counts its budget in environment steps: set total_env_steps (now "
                f"{self.total_env_steps}; CLI: --model.init_args.total_env_steps) instead of "
                f"trainer.max_steps={self.trainer.max_steps}, which counts Lightning optimizer steps (one per critic "
                "and one per actor update, none during warm-up) and would stop at an unrelated env step"
            )

    def _remaining_iterations(self) -> range:
        frames = self.hparams.frames_per_batch
        return range(self.env_steps // frames, -(-self.total_env_steps // frames))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(self._remaining_iterations), batch_size=None)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.hparams.actor_lr)
        critic_opt = torch.optim.Adam(
            self.critic.parameters(), lr=self.hparams.critic_lr, weight_decay=self.hparams.critic_weight_decay
        )
        return [actor_opt, critic_opt]

    def on_fit_start(self) -> None:
        remaining_warmup = max(0, self.hparams.warmup_steps - self.env_steps)
        self._collector = make_collector(
            self.env,
            self.actor,
            frames_per_batch=self.hparams.frames_per_batch,
            total_frames=-1,
            init_random_frames=remaining_warmup,
            exploration_sigma=self.hparams.exploration_noise,
        )
        self._collector_iter = iter(self._collector)
        if self._resume is not None:
            self._restore_collection(self._resume)
            self._resume = None
        self._clock = time.perf_counter()
        self._fit_start_env_steps = self.env_steps

    def on_fit_end(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector, self._collector_iter = None, None

    # -- one iteration -------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self._resume_rng is not None:  # here, so that nothing between the restore and this step draws from it
            torch.set_rng_state(self._resume_rng["cpu"])
            if "cuda" in self._resume_rng:
                torch.cuda.set_rng_state(self._resume_rng["cuda"], self.device)
            self._resume_rng = None
        frames = next(self._collector_iter)
        frames = frames.reshape(-1)
        self.replay_buffer.extend(frames.cpu())
        self.env_steps += frames.numel()
        self._log_episodes(frames)
        if self.env_steps >= self.hparams.warmup_steps and len(self.replay_buffer) >= self.hparams.batch_size:
            for _ in range(frames.numel() * self.hparams.updates_per_step):
                self._losses.update(self.update(self.replay_buffer.sample()))
        if self._logging_step(batch_idx):
            elapsed = time.perf_counter() - self._clock
            self._log_at_env_step(
                {
                    **{f"train/{key}": value for key, value in self._losses.items()},
                    "rl/env_steps": self.env_steps,
                    "rl/env_steps_per_s": (self.env_steps - self._fit_start_env_steps) / max(elapsed, 1e-9),
                }
            )
        else:  # keep the count current for checkpoint names ("env_steps={rl/env_steps:.0f}") and monitors
            self.log("rl/env_steps", float(self.env_steps), logger=False)
        if self.env_steps - self._last_eval >= self.hparams.eval_every:
            self._evaluate_and_log()
        if self.env_steps >= self.total_env_steps:
            self.trainer.should_stop = True  # no further (empty) epochs

    def on_train_epoch_end(self) -> None:
        """Evaluate the final policy, unless the last periodic evaluation was at this very env step."""
        if self._last_eval != self.env_steps:
            self._evaluate_and_log()

    def _evaluate_and_log(self) -> None:
        """Evaluate the actor now and log the result; under ``fast_dev_run`` (a smoke test) one episode of at most
        10 steps, which exercises the same code."""
        self._last_eval = self.env_steps
        smoke = {"episodes": 1, "max_steps": 10} if self.trainer.fast_dev_run else {}
        self.eval_history.append((self.env_steps, self.evaluate(**smoke)))
        self._log_at_env_step(
            {
                "rl/eval_return": self.eval_history[-1][1],
                "rl/best_eval_return": max(r for _, r in self.eval_history),
            }
        )

    def _logging_step(self, batch_idx: int) -> bool:
        """Whether this iteration logs the periodic scalars: every ``log_every_n_steps`` iterations, and the
        last one (so the logs and ``callback_metrics`` end with the final env step count)."""
        flush = (batch_idx + 1) % max(self.trainer.log_every_n_steps, 1) == 0
        return flush or self.env_steps >= self.total_env_steps

    def _log_at_env_step(self, metrics: dict[str, float | Tensor]) -> None:
        """Write ``metrics`` once to every logger at the current env step and keep them in ``callback_metrics``
        (``self.log(..., logger=False)``: logged through Lightning they would be written again at every
        ``log_every_n_steps`` flush, at Lightning's batch count instead of the env step)."""
        metrics = {key: float(value) for key, value in metrics.items()}
        log_event(self.trainer, metrics, self.env_steps)
        for key, value in metrics.items():
            self.log(key, value, logger=False, prog_bar=key in self._PROGRESS_BAR)

    def _log_episodes(self, frames: TensorDict) -> None:
        done = frames["next", "done"].reshape(-1)
        if bool(done.any()):
            returns = frames["next", "episode_reward"].reshape(-1)[done]
            self._log_at_env_step({"rl/train_return": returns.float().mean()})

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

    @torch.no_grad()
    def evaluate(self, episodes: int | None = None, max_steps: int = 1000) -> float:
        """Mean return of deterministic episodes on the evaluation env (actor in eval mode, no noise)."""
        policy = make_policy(self.actor)
        returns = []
        with eval_mode(self.actor):
            for _ in range(episodes or self.hparams.eval_episodes):
                rollout = self.eval_env.rollout(max_steps, policy=policy, break_when_any_done=True)
                returns.append(float(rollout["next", "reward"].sum()))
        return sum(returns) / len(returns)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store, besides the counters and evaluations, everything a resumed fit needs to continue exactly as
        the uninterrupted one: the filled part of the replay buffer and its write position, torch's RNG, both
        envs (:func:`~spikenorm.rl.env_state`: RNG and the episode in progress) and the collector's current
        step (observation, episode return and step count), all as plain data (``weights_only`` loading).
        A weights-only checkpoint (Lightning's ``save_weights_only``, which cannot resume a fit) keeps only the
        counters and evaluations, so it stays small."""
        super().on_save_checkpoint(checkpoint)
        state: dict[str, Any] = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "last_eval": self._last_eval,
            "eval_history": self.eval_history,
        }
        checkpoint["spikenorm_rl"] = state
        if "optimizer_states" not in checkpoint:  # weights only
            return
        filled = len(self.replay_buffer)
        state["losses"] = {key: value.detach().cpu() for key, value in self._losses.items()}
        state["rng"] = {"cpu": torch.get_rng_state()}
        state["replay"] = {
            "size": filled,
            # a copy: a view would save the whole preallocated storage (buffer_size rows)
            "rows": self.replay_buffer.storage[:filled].clone().to_dict() if filled else None,
            "writer": self.replay_buffer.writer.state_dict(),
        }
        state["eval_env"] = env_state(self.eval_env)
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self._collector is not None:  # mid-fit: the training env and the collector's step can be resumed
            state["env"] = env_state(self.env)
            state["carrier"] = _carrier(self._collector).to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` stored: counters and replay buffer now, the envs and the
        collector when the fit starts, torch's RNG at the first training step. Checkpoints of older versions
        (counters only) load too; a fit resumed from them starts a new episode with an empty buffer."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("spikenorm_rl", {})
        self.env_steps = state.get("env_steps", 0)
        self.updates = state.get("updates", 0)
        self._last_eval = state.get("last_eval", 0)
        self.eval_history = [tuple(e) for e in state.get("eval_history", [])]
        self._losses = dict(state.get("losses", {}))
        self.replay_buffer.empty()
        replay = state.get("replay")
        if replay is not None:
            if replay["size"]:
                self.replay_buffer.extend(TensorDict.from_dict(replay["rows"], batch_size=[replay["size"]]))
            self.replay_buffer.writer.load_state_dict(replay["writer"])
        self._resume_rng = state.get("rng")
        self._resume = {key: state[key] for key in ("env", "eval_env", "carrier") if key in state} or None

    def _restore_collection(self, state: dict[str, Any]) -> None:
        """Put the envs and the fresh collector where the checkpointed run was (see :meth:`on_save_checkpoint`)."""
        if "eval_env" in state:
            load_env_state(self.eval_env, state["eval_env"], replay=False)
        if "env" in state and "carrier" in state:
            load_env_state(self.env, state["env"])
            carrier = _carrier(self._collector)
            carrier.update(TensorDict.from_dict(state["carrier"], batch_size=carrier.batch_size))


def _carrier(collector: Any) -> TensorDict:
    """The tensordict a TorchRL collector carries from one env step to the next (the env's latest output)."""
    carrier = getattr(collector, "_carrier", None)
    if not isinstance(carrier, TensorDictBase):
        raise TypeError(
            f"{type(collector).__name__} has no step carrier (_carrier) to checkpoint: this torchrl version "
            "is not supported by SpikingTD3's resume"
        )
    return carrier
