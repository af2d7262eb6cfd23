"""Online DQN with a spiking Q-network: the discrete-control half of the CaRe-BN code, on the shared RL base."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
    from torchrl.data import OneHot
    from torchrl.modules import EGreedyModule, QValueModule

from spikenorm.models.layers import LayerSpec
from spikenorm.models.q_networks import DSQN_LAYERS, MLPQNetwork, SpikingQNetwork
from spikenorm.modes import eval_mode
from spikenorm.norm.carebn import ca_bn_updates
from spikenorm.rl import BatchedActor, hard_update, make_target, num_actions, observation_dim, soft_update
from spikenorm.tasks.compilation import CompileOption
from spikenorm.tasks.off_policy import OffPolicyTask
from spikenorm.validation import check_choice

#: the Q-network: the spiking DSQN or a ReLU MLP (the ANN baseline)
QNetworkKind = Literal["spiking", "ann"]
#: how the target network follows: a hard copy every ``target_update_every`` updates, or Polyak averaging
DQNTargetUpdate = Literal["hard", "soft"]
#: the TD loss: mean squared error (the reference code) or Huber (smooth L1)
TDLoss = Literal["mse", "huber"]


def epsilon_at(updates: int, start: float, end: float, decay_updates: int) -> float:
    """The exploration rate after ``updates`` gradient updates: linear from ``start`` to ``end`` over
    ``decay_updates`` updates, then ``end``::

        eps(n) = max(end, start - (start - end) n / decay_updates)

    The CaRe-BN discrete code lowers ``eps`` by ``(start - end) / decay_updates`` after every update (1.0 -> 0.1 over
    200 000 updates, from the end of warm-up on); the closed form is the same schedule without float drift (TorchRL's
    ``EGreedyModule.step`` subtracts in float32 and reaches 0.1033 instead of 0.1 after 200 000 steps) and resumes
    exactly from the update count."""
    if decay_updates <= 0:
        return end
    return max(end, start - (start - end) * updates / decay_updates)


class SpikingDQN(OffPolicyTask):
    """DQN (or double DQN) with a spiking Q-network, trained online on a gymnasium env with discrete actions.

    The Q-network is the DSQN of the CaRe-BN reference code's discrete-control part
    (:class:`~spikenorm.models.SpikingQNetwork`, ``q_network="spiking"``: the observation repeated over ``T``
    steps, ``[Linear -> norm -> neuron]`` per hidden width, the last layer's spike count -> Linear), with the norm
    its ``layers`` name (default :data:`~spikenorm.models.DSQN_LAYERS`: ``carebn``; ``none`` gives
    ``vanilla_dsqn.py``; any registered norm, neuron and surrogate), or a ReLU MLP (``q_network="ann"``, the ANN
    baseline, for which the reference code has none).

    Each collection batch takes ``frames_per_batch`` env steps (the greedy policy in eval mode,
    i.e. with running statistics, through TorchRL's ``QValueModule`` and ``EGreedyModule``; uniformly random
    actions for the first ``warmup_steps``), stores them in the replay buffer and makes ``updates_per_step``
    updates per step:

    * TD target with the target network (eval mode, running statistics)::

          y = r + gamma (1 - d) max_a' Q'(s', a')                                   (DQN)
          y = r + gamma (1 - d) Q'(s', argmax_a' Q(s', a'))                          (double DQN, Q in eval mode)

      with ``d`` = terminated (or terminated or truncated with ``truncation_as_terminal``, as the reference code);
    * loss ``mean((Q(s, a) - y)^2)`` (or Huber) on the online network in training mode: the only training-mode
      forward, and the one in which CaRe-BN's confidence-adaptive update happens
      (:func:`spikenorm.norm.carebn.ca_bn_updates`), as ``dsqn_carebn.py`` updates its statistics in the loss
      forward of the online network on the sampled current states;
    * target: a hard copy of parameters *and* buffers every ``target_update_every`` updates (the reference: 2000),
      or Polyak averaging with ``tau`` after every update (:func:`spikenorm.rl.hard_update`,
      :func:`spikenorm.rl.soft_update`);
    * exploration: epsilon-greedy with ``eps`` = :func:`epsilon_at` of the updates made so far.

    TorchRL's ``DQNLoss`` is not used: it evaluates the target network in the module's current mode (training mode
    during a fit, so the TD target uses batch statistics of ``s'`` and writes into the target's running statistics),
    cannot scope the Ca-BN update to the online forward on ``s``, and its ``HardUpdate``/``SoftUpdate`` copy no BN
    buffers (``HardUpdate`` also copies every ``interval + 1`` calls).

    The reference settings (``dsqn_carebn.py``; recipes ``dqn_*_pong_ram.yaml``): T = 5, hidden 128-128, batch 128,
    Adam lr 1e-4, replay 100 000, 10 000 warm-up steps, one update per env step, plain DQN, MSE, gamma 0.99, hard
    target copy every 2000 updates, eps 1.0 -> 0.1 over 200 000 updates, truncation as terminal, 2 010 000 env steps
    (agent steps; ALE v5 skips 4 frames per step), Re-BN (100 replay batches of 128, single pass) right before every
    evaluation (:class:`~spikenorm.callbacks.ReplayRecalibration` with ``when="before_evaluation"``). The defaults
    here are those settings, except the env (CartPole-v1), the budget, the warm-up (1000 env steps) and
    ``truncation_as_terminal`` (False: a time-limit end is not a terminal state). One more difference: the shared
    base makes the first update at the env step that ends the warm-up (the reference: one step later), so the
    evaluation at that step follows one update.

    Budget, collection, evaluation, logging at env steps and exact resume are the shared ones of
    :class:`~spikenorm.tasks.off_policy.OffPolicyTask`; logged here: ``train/q_loss`` and ``train/epsilon``.

    The arguments not listed here are those of :class:`~spikenorm.tasks.off_policy.OffPolicyTask`.

    Args:
        env_name: a gymnasium env id with discrete actions (``CartPole-v1``, ``Acrobot-v1``; ``ALE/Pong-v5`` with
            ``env_kwargs: {obs_type: ram}`` and the ``atari`` extra).
        q_network: ``spiking`` (DSQN) or ``ann`` (``layers`` must be left at its default or None; recorded as None).
        layers: the spiking layers (:class:`~spikenorm.models.LayerSpec`; checkpoints store its fields).
        time_steps: ``T`` of the spiking Q-network.
        hidden: hidden widths.
        input_scale: the observation is multiplied by it before the network (the reference feeds Atari RAM bytes
            unscaled: 1.0).
        lr: Adam learning rate.
        loss: ``mse`` or ``huber``.
        double_dqn: pick the next action with the online network (eval mode) and value it with the target.
        target_update: ``hard`` or ``soft``.
        target_update_every: updates between hard copies.
        tau: Polyak weight of soft updates.
        epsilon_start: exploration rate before the first update (:func:`epsilon_at`).
        epsilon_end: exploration rate after ``epsilon_decay_updates`` updates.
        epsilon_decay_updates: updates over which the rate falls linearly.
        truncation_as_terminal: end the bootstrap at time-limit truncations too (the reference code).
        batches_per_iteration: collection batches (each with its updates) per Lightning iteration: the same numbers,
            fewer Lightning iterations (:class:`~spikenorm.tasks.off_policy.OffPolicyTask`, Iterations).
        fused_optimizer: fused Adam (default) or torch's default implementation (the reference code's, bit for
            bit): the same update to float round-off (:class:`~spikenorm.tasks.off_policy.OffPolicyTask`).
    """

    diagnosis_output = "logits"
    #: the replay entries :meth:`update` reads
    sample_keys = (
        "observation",
        "action",
        ("next", "reward"),
        ("next", "terminated"),
        ("next", "done"),
        ("next", "observation"),
    )
    #: ALE v5 caps an episode at 108 000 frames, 27 000 agent steps (frameskip 4); shorter envs end themselves
    EVAL_MAX_STEPS = 27_000

    def __init__(
        self,
        env_name: str = "CartPole-v1",
        total_env_steps: int = 50_000,
        warmup_steps: int = 1_000,
        q_network: QNetworkKind = "spiking",
        layers: LayerSpec | None = DSQN_LAYERS,
        time_steps: int = 5,
        hidden: tuple[int, ...] = (128, 128),
        input_scale: float = 1.0,
        batch_size: int = 128,
        buffer_size: int = 100_000,
        frames_per_batch: int = 1,
        updates_per_step: int = 1,
        gamma: float = 0.99,
        lr: float = 1e-4,
        loss: TDLoss = "mse",
        double_dqn: bool = False,
        target_update: DQNTargetUpdate = "hard",
        target_update_every: int = 2000,
        tau: float = 0.005,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.1,
        epsilon_decay_updates: int = 200_000,
        truncation_as_terminal: bool = False,
        eval_every: int = 10_000,
        eval_episodes: int = 10,
        seed: int = 0,
        env_kwargs: dict | None = None,
        compile: CompileOption = False,
        batches_per_iteration: int = 1,
        fused_optimizer: bool = True,
    ) -> None:
        check_choice(q_network, QNetworkKind, "q_network")
        check_choice(loss, TDLoss, "loss")
        check_choice(target_update, DQNTargetUpdate, "target_update")
        if isinstance(layers, Mapping):  # a checkpoint's hyperparameters, or some fields given in Python
            layers = replace(DSQN_LAYERS, **layers)
        if q_network == "ann" and layers not in (None, DSQN_LAYERS):
            raise ValueError(
                "SpikingDQN(q_network='ann') builds a ReLU MLP, which has no spiking layers: leave layers unset or "
                f"null (got {layers!r}), or use q_network='spiking'"
            )
        if q_network == "spiking" and layers is None:
            raise ValueError("SpikingDQN(q_network='spiking') needs layers (a LayerSpec; the default is DSQN_LAYERS)")
        for name, value, low, high in (
            ("epsilon_start", epsilon_start, 0.0, 1.0),
            ("epsilon_end", epsilon_end, 0.0, epsilon_start),
            ("gamma", gamma, 0.0, 1.0),
            ("tau", tau, 1e-12, 1.0),
            ("lr", lr, 1e-300, math.inf),
        ):
            if isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value!r}")
        for name, value, minimum in (
            ("target_update_every", target_update_every, 1),
            ("epsilon_decay_updates", epsilon_decay_updates, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
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
            env_kwargs,
            batches_per_iteration,
            fused_optimizer,
        )
        self.save_hyperparameters()
        # plain data, so that checkpoints load without unpickling code and loggers get layers/<field> keys
        self.record_hyperparameters(layers=asdict(layers) if q_network == "spiking" else None)
        obs_dim, actions = observation_dim(self.env), num_actions(self.env)
        if not isinstance(self.env.full_action_spec_unbatched["action"], OneHot):
            raise ValueError(
                f"SpikingDQN takes one-hot actions (spikenorm.rl.make_env's encoding), got "
                f"{type(self.env.full_action_spec_unbatched['action']).__name__}"
            )
        if q_network == "ann":
            self.q_network: nn.Module = MLPQNetwork(obs_dim, actions, hidden=hidden, input_scale=input_scale)
        else:
            self.q_network = SpikingQNetwork(
                obs_dim, actions, hidden=hidden, time_steps=time_steps, layers=layers, input_scale=input_scale
            )
            self.give_time_steps(self.q_network, time_steps)
        self.q_target = make_target(self.q_network)  # pinned to eval mode, whatever Lightning sets
        # the exploration module of the running collection: not a submodule (no state dict entries; its eps follows
        # epsilon_at of the update count, which the checkpoint holds)
        object.__setattr__(self, "_exploration", None)

    # -- what the base asks for --------------------------------------------------------------------------
    @property
    def policy_network(self) -> nn.Module:
        """The online Q-network."""
        return self.q_network

    def acting_policy(self) -> TensorDictModuleBase:
        """Greedy actions ``argmax_a Q(s, a)`` (one-hot, TorchRL's ``QValueModule``)."""
        spec = self.env.full_action_spec_unbatched["action"]
        q_values = TensorDictModule(BatchedActor(self.q_network), in_keys=["observation"], out_keys=["action_value"])
        return TensorDictSequential(q_values, QValueModule(spec=spec))

    def collection_policy(self) -> TensorDictModuleBase:
        """The greedy policy followed by TorchRL's ``EGreedyModule``, whose ``eps`` :meth:`before_collection` sets."""
        spec = self.env.full_action_spec_unbatched["action"]
        hp = self.hparams
        exploration = EGreedyModule(spec, eps_init=hp.epsilon_start, eps_end=hp.epsilon_end)
        object.__setattr__(self, "_exploration", exploration)
        return TensorDictSequential(self.acting_policy(), exploration)

    @property
    def epsilon(self) -> float:
        """The exploration rate now (:func:`epsilon_at` of the updates made)."""
        hp = self.hparams
        return epsilon_at(self.updates, hp.epsilon_start, hp.epsilon_end, hp.epsilon_decay_updates)

    def before_collection(self) -> None:
        if self._exploration is not None:
            self._exploration.eps.fill_(self.epsilon)

    def compiled_networks(self) -> list[nn.Module]:
        """The online Q-network (the target stays uncompiled)."""
        return [self.q_network]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.adam(self.q_network.parameters(), lr=self.hparams.lr)

    # -- the algorithm ------------------------------------------------------------------------------------
    def update(self, sample: TensorDict) -> dict[str, Tensor]:
        """One TD update of the online Q-network (and the target update it is due); returns ``q_loss`` and the
        ``epsilon`` the next collection uses."""
        hp = self.hparams
        optimizer = self.optimizers()
        obs, next_obs = sample["observation"], sample["next", "observation"]
        action = sample["action"].argmax(-1, keepdim=True)  # one-hot -> index [B, 1]
        reward = sample["next", "reward"].float().reshape(-1)
        end = sample["next", "done" if hp.truncation_as_terminal else "terminated"].float().reshape(-1)
        with torch.no_grad():
            next_q = self.q_target(next_obs)  # eval mode: running statistics
            if hp.double_dqn:
                with eval_mode(self.q_network):
                    next_action = self.q_network(next_obs).argmax(-1, keepdim=True)
                next_value = next_q.gather(1, next_action).squeeze(1)
            else:
                next_value = next_q.max(-1).values
            target = reward + hp.gamma * (1.0 - end) * next_value
        with ca_bn_updates(self.q_network):  # the only training-mode forward: CaRe-BN updates here
            q = self.q_network(obs).gather(1, action).squeeze(1)
        q_loss = F.mse_loss(q, target) if hp.loss == "mse" else F.smooth_l1_loss(q, target)
        optimizer.zero_grad()
        self.manual_backward(q_loss)
        optimizer.step()
        self.updates += 1
        if hp.target_update == "soft":
            soft_update(self.q_target, self.q_network, hp.tau)
        elif self.updates % hp.target_update_every == 0:
            hard_update(self.q_target, self.q_network)
        return {"q_loss": q_loss.detach(), "epsilon": torch.tensor(self.epsilon)}
