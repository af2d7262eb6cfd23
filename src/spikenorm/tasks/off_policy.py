"""The base of spikenorm's online off-policy RL tasks (:class:`~spikenorm.tasks.SpikingTD3`,
:class:`~spikenorm.tasks.SpikingDQN`): everything that is not the algorithm.

* budget: ``total_env_steps`` env steps in one epoch (``Trainer(max_steps=...)`` refused at setup), warm-up with
  uniformly random actions for ``warmup_steps``;
* collection: ``frames_per_batch`` env steps at a time (:class:`spikenorm.rl.EnvStepper`: the transitions of a
  TorchRL collector, without its per-step work), the policy acting in eval mode with the task's exploration in
  front of it (:meth:`OffPolicyTask.explore`);
* the replay buffer (a TensorDict buffer over ``LazyTensorStorage``, written and sampled through
  :class:`spikenorm.rl.ReplayRows`) and ``updates_per_step`` updates per collected env step; ``batches_per_iteration``
  collection batches (each with its updates) per Lightning iteration;
* evaluation of the deterministic policy every ``eval_every`` env steps and at the end of the fit, logging at env
  steps (each value written once, :func:`spikenorm.rl.log_event`);
* exact resume: replay buffer, RNG, envs and the collection's step in the checkpoint, as plain data;
* what callbacks see (:class:`~spikenorm.callbacks.task_protocols.ReplayTaskLike`): ``policy_network`` (the network
  that acts, whose norms are re-calibrated and diagnosed), ``diagnosis_output``, ``replay_buffer``, ``env_steps``,
  ``total_env_steps``; callbacks with a ``before_policy_evaluation(trainer, task)`` method are called right before
  every evaluation (:class:`~spikenorm.callbacks.ReplayRecalibration` with ``when="before_evaluation"``, the
  order of the CaRe-BN discrete-control code).

A subclass builds its networks after ``super().__init__`` and calls ``save_hyperparameters()`` in its own
``__init__``; it provides :attr:`policy_network`, :meth:`collection_policy`, :meth:`acting_policy`,
:meth:`update` and ``configure_optimizers`` (``automatic_optimization`` is off), and may override
:meth:`before_collection`, :meth:`explore` (the collection policy's action on plain tensors, to save its TensorDict
work) and :attr:`sample_keys` (the replay entries :meth:`update` reads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Iterator, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from spikenorm.extras import needs_extra

with needs_extra("rl", __name__):
    from tensordict import NestedKey, TensorDict
    from tensordict.nn import TensorDictModuleBase
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.envs.utils import ExplorationType, set_exploration_type

from spikenorm.modes import eval_mode
from spikenorm.rl import EvalModePolicy, env_state, load_env_state, log_event, make_env
from spikenorm.rl.replay import ReplayRows
from spikenorm.rl.stepper import TRANSITION_KEYS, EnvStepper, Transition
from spikenorm.tasks.base import SpikingTask
from spikenorm.tasks.compilation import CompileOption

#: what the policy network outputs, for :func:`spikenorm.diagnostics.diagnose`: actions (continuous control) or
#: one value per discrete action (read like logits: the top-1 agreement is the greedy-action agreement)
DiagnosisOutput = Literal["actions", "logits"]
#: the env step count's key in the logs and in ``trainer.callback_metrics``
ENV_STEPS = "rl/env_steps"


class _Ticks(IterableDataset):
    """One integer per training iteration still to run (Lightning needs a loader; the data is the env).

    ``remaining`` is asked each time iteration starts, so a run resumed from a checkpoint runs only the
    iterations its budget has left."""

    def __init__(self, remaining: Callable[[], range]) -> None:
        self.remaining = remaining

    def __iter__(self) -> Iterator[int]:
        return iter(self.remaining())


class OffPolicyTask(SpikingTask):
    """Online off-policy RL on one gymnasium env (see the module docstring).

    Budget. A fit takes ``total_env_steps`` env steps (the iterations its budget has left, when resumed) in one
    epoch and then stops, whatever ``max_epochs`` says. ``Trainer(max_steps=...)`` is refused at setup
    (``ValueError``): Lightning counts optimizer steps there (and in ``trainer.global_step``, its checkpoint names
    and ``every_n_train_steps``): one per optimizer and update, none during warm-up.
    ``limit_train_batches`` counts iterations of ``frames_per_batch * batches_per_iteration`` env steps. Every fit
    ends with an evaluation
    of the final policy (in ``on_train_epoch_end``, so also after an early stop), unless the last periodic one
    was at the same env step.

    Checkpoints. Besides networks, optimizers and counters, a full checkpoint (not ``save_weights_only``)
    holds the filled part of the replay buffer, torch's RNG, both envs (:func:`spikenorm.rl.env_state`: their
    RNGs and the episode in progress) and the collection's current step (:meth:`spikenorm.rl.EnvStepper.state_dict`,
    the layout of a TorchRL collector's carrier, so checkpoints of versions that used one resume too), as plain
    data: a fit resumed from it continues exactly as the uninterrupted one (same env steps, updates, evaluations,
    logs and weights).

    Logging. Every row is written straight to the loggers against the number of env steps taken (the CSV
    ``step`` column, W&B's ``trainer/global_step``, the x-axis of its charts), so evaluations,
    re-calibrations and training curves share one axis and each value is logged exactly once:

    * every ``eval_every`` env steps and at the end of the fit, the mean return of ``eval_episodes`` episodes of
      the deterministic policy (:meth:`acting_policy`, eval mode) on a separate env seeded ``seed + 100``:
      ``rl/eval_return``, with the best so far as ``rl/best_eval_return`` (the paper's metric);
    * after each collection batch in which training episodes ended, their mean return: ``rl/train_return``;
    * every ``log_every_n_steps`` iterations (Lightning's cadence) and after the last one: ``rl/env_steps``,
      ``rl/env_steps_per_s``, and the latest value of each loss :meth:`update` returns, as ``train/<name>``.

    The latest value of each key is also in ``trainer.callback_metrics`` (for checkpoint monitors and the CLI
    summary; ``rl/env_steps`` is kept current there at every iteration, for checkpoint file names such as
    ``"env_steps={rl/env_steps:.0f}"``), and the returns and throughput are shown in the progress bar.

    Iterations. A Lightning iteration runs ``batches_per_iteration`` collection batches, each of ``frames_per_batch``
    env steps followed by its updates; evaluations happen at their env steps inside it. Any value of it gives the
    same env steps, random draws, updates, evaluations and training returns; callbacks (``on_train_batch_end``),
    the periodic scalars and ``limit_train_batches`` see the task once per iteration, so a callback schedule in env
    steps that is a multiple of an iteration's env steps acts at the same env steps as with 1. Above 1 it saves
    Lightning's own cost per iteration (about 0.15-0.3 ms on one core), which matters when updates are cheap.

    Args:
        env_name: a registered gymnasium id (:func:`spikenorm.rl.make_env`).
        total_env_steps: environment steps to train for (warm-up included): the budget of every fit, resumed
            ones included.
        warmup_steps: the first env steps take uniformly random actions and make no update; a multiple of
            ``frames_per_batch`` and below ``total_env_steps``.
        batch_size: transitions per update.
        buffer_size: replay capacity.
        frames_per_batch: env steps collected per training iteration.
        updates_per_step: updates per collected env step (after warm-up).
        eval_every: env steps between evaluations.
        eval_episodes: episodes per evaluation, on a separate env seeded ``seed + 100``.
        seed: seed of the training env (the evaluation env: ``seed + 100``).
        compile: ``torch.compile`` option of :class:`~spikenorm.tasks.base.SpikingTask`.
        env_kwargs: keyword arguments of ``gymnasium.make`` (e.g. ``{"obs_type": "ram"}`` for ALE).
        batches_per_iteration: collection batches (with their updates) per Lightning iteration (see Iterations).
        fused_optimizer: build the Adam optimizers with ``fused=True`` (:meth:`adam`): one kernel over all of a
            network's parameters instead of a handful of small operations per tensor; on one CPU core TD3's critic
            step takes about a third of the time. The update is the same to float round-off, not bit for bit
            (about 1e-8 apart after 50 steps in float32); False: torch's default implementation, which the CaRe-BN
            reference code uses. A fit resumed from a checkpoint continues with the implementation its optimizer
            state records (``fused`` is one of the state's hyperparameters), so resumes stay exact, including those
            of checkpoints written before this option (torch's default).
    """

    _PROGRESS_BAR = frozenset({"rl/eval_return", "rl/train_return", "rl/env_steps_per_s"})
    #: what :attr:`policy_network` outputs (see :data:`DiagnosisOutput`)
    diagnosis_output: ClassVar[DiagnosisOutput] = "actions"
    #: the longest evaluation episode, in env steps
    EVAL_MAX_STEPS: ClassVar[int] = 1000
    #: the replay entries :meth:`update` reads (a sample holds only these; a subclass whose update reads others
    #: extends it, or sets None: all entries)
    sample_keys: ClassVar[tuple[NestedKey, ...] | None] = None

    def __init__(
        self,
        env_name: str,
        total_env_steps: int,
        warmup_steps: int,
        batch_size: int,
        buffer_size: int,
        frames_per_batch: int,
        updates_per_step: int,
        eval_every: int,
        eval_episodes: int,
        seed: int,
        compile: CompileOption = False,
        env_kwargs: dict[str, Any] | None = None,
        batches_per_iteration: int = 1,
        fused_optimizer: bool = True,
    ) -> None:
        super().__init__(compile)
        if not isinstance(fused_optimizer, bool):
            raise TypeError(f"fused_optimizer must be a bool, got {fused_optimizer!r}")
        self._fused_optimizer = fused_optimizer
        for name, value in (
            ("total_env_steps", total_env_steps),
            ("batch_size", batch_size),
            ("buffer_size", buffer_size),
            ("frames_per_batch", frames_per_batch),
            ("batches_per_iteration", batches_per_iteration),
            ("updates_per_step", updates_per_step),
            ("eval_every", eval_every),
            ("eval_episodes", eval_episodes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
        if warmup_steps % frames_per_batch:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be a multiple of frames_per_batch ({frames_per_batch})"
            )
        if warmup_steps >= total_env_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be below total_env_steps ({total_env_steps})")
        self.automatic_optimization = False
        env_kwargs = dict(env_kwargs or {})
        self.env = make_env(env_name, seed=seed, **env_kwargs)
        self.eval_env = make_env(env_name, seed=seed + 100, **env_kwargs)
        self.replay_buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(buffer_size), batch_size=batch_size)
        self.env_steps = 0
        self.updates = 0
        self._last_eval = 0
        self.eval_history: list[tuple[int, float]] = []  # (env steps, mean evaluation return)
        self._losses: dict[str, Tensor] = {}  # the latest value of each loss, logged every log_every_n_steps
        self._stepper: EnvStepper | None = None  # collection during a fit (the training env's steps)
        self._replay = ReplayRows(self.replay_buffer)  # one-row writes and samples at a fraction of the cost
        # collection_policy() of the running fit, in eval mode: not a submodule (no state dict entries)
        object.__setattr__(self, "_exploring", None)
        self._clock = time.perf_counter()
        self._fit_start_env_steps = 0
        self._resume: dict[str, Any] | None = None  # what on_fit_start restores into the envs and the collection
        self._resume_rng: dict[str, Tensor] | None = None  # what the first training step restores

    # -- what the algorithm provides ----------------------------------------------------------------------
    @property
    def policy_network(self) -> nn.Module:
        """The network that acts (the one callbacks re-calibrate and diagnose)."""
        raise NotImplementedError

    def collection_policy(self) -> TensorDictModuleBase:
        """The TensorDict policy that collects after warm-up, exploration included (it runs in eval mode)."""
        raise NotImplementedError

    def acting_policy(self) -> TensorDictModuleBase:
        """The deterministic TensorDict policy of evaluations and diagnosis rollouts (run it in eval mode)."""
        raise NotImplementedError

    def update(self, sample: TensorDict) -> dict[str, Tensor]:
        """One gradient update on a replay sample; returns the losses by name (logged as ``train/<name>``)."""
        raise NotImplementedError

    def adam(self, parameters: Iterator[nn.Parameter], **options: Any) -> torch.optim.Adam:
        """``torch.optim.Adam(parameters, **options)``, fused unless the task was built with
        ``fused_optimizer=False`` (for ``configure_optimizers``)."""
        return torch.optim.Adam(parameters, fused=self._fused_optimizer or None, **options)

    def before_collection(self) -> None:
        """Called before each iteration's collection (e.g. to set the exploration schedule); nothing here."""

    def explore(self, observation: Tensor) -> Tensor:
        """The action collection takes after warm-up on ``observation`` (the current one, on the task's device),
        exploration included; called under ``torch.no_grad()``.

        Here: :meth:`collection_policy` in eval mode (:class:`~spikenorm.rl.EvalModePolicy`) on the step carrier as
        a TensorDict (observation, ``is_init``, ``step_count``, ...), under ``ExplorationType.RANDOM``, as a TorchRL
        collector calls it. A subclass may compute the same action on plain tensors (same values, same random
        draws), which saves the TensorDict work of every env step."""
        carrier = self._carrier_tensordict()
        carrier["observation"] = observation
        with set_exploration_type(ExplorationType.RANDOM):
            return self._exploring(carrier)["action"]

    def _carrier_tensordict(self) -> TensorDict:
        """What a collector's policy sees before the next env step, on the task's device."""
        return TensorDict(self._stepper.carrier(), batch_size=[]).to(self.device)

    @property
    def total_env_steps(self) -> int:
        """Environment steps this task trains for (callbacks such as ``ReplayRecalibration`` check their
        schedule against it)."""
        return self.hparams.total_env_steps

    # -- Lightning plumbing -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Refuse ``Trainer(max_steps=...)`` for fitting: the budget is ``total_env_steps``."""
        if stage == "fit" and self.trainer.max_steps != -1 and not self.trainer.fast_dev_run:
            raise ValueError(
                f"{type(self).__name__} counts its budget in environment steps: set total_env_steps (now "
                f"{self.total_env_steps}; CLI: --model.init_args.total_env_steps) instead of "
                f"trainer.max_steps={self.trainer.max_steps}, which counts Lightning optimizer steps (one per "
                "optimizer and update, none during warm-up) and would stop at an unrelated env step"
            )

    def _remaining_iterations(self) -> range:
        steps = self.hparams.frames_per_batch * self.hparams.batches_per_iteration  # env steps per iteration
        return range(self.env_steps // steps, -(-self.total_env_steps // steps))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(self._remaining_iterations), batch_size=None)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A batch is an iteration's tick (an int): nothing to move (saves Lightning's collection walk per
        iteration)."""
        return batch

    def on_fit_start(self) -> None:
        self._stepper = EnvStepper(self.env)
        object.__setattr__(self, "_exploring", EvalModePolicy(self.collection_policy()))
        with torch.no_grad():  # a TorchRL collector calls its policy once when built (to learn its outputs): the
            self._exploring(self._carrier_tensordict())  # same call here keeps the same random draws after it
        if self._resume is not None:
            self._restore_collection(self._resume)
            self._resume = None
        self._clock = time.perf_counter()
        self._fit_start_env_steps = self.env_steps

    def on_fit_end(self) -> None:
        self._stepper = None
        object.__setattr__(self, "_exploring", None)

    # -- one iteration -------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self._resume_rng is not None:  # here, so that nothing between the restore and this step draws from it
            torch.set_rng_state(self._resume_rng["cpu"])
            if "cuda" in self._resume_rng:
                torch.cuda.set_rng_state(self._resume_rng["cuda"], self.device)
            self._resume_rng = None
        for collected in range(self.hparams.batches_per_iteration):
            if collected and self.env_steps - self._last_eval >= self.hparams.eval_every:
                self._evaluate_and_log()  # at its env step (the iteration's last one is due after the logging below)
            if self.env_steps >= self.total_env_steps:
                break
            self._collect_and_update()
        if self._logging_step(batch_idx):
            elapsed = time.perf_counter() - self._clock
            self._log_at_env_step(
                {
                    **{f"train/{key}": value for key, value in self._losses.items()},
                    ENV_STEPS: self.env_steps,
                    "rl/env_steps_per_s": (self.env_steps - self._fit_start_env_steps) / max(elapsed, 1e-9),
                }
            )
        self._publish_env_steps()
        if self.env_steps - self._last_eval >= self.hparams.eval_every:
            self._evaluate_and_log()
        if self.env_steps >= self.total_env_steps:
            self.trainer.should_stop = True  # no further (empty) epochs

    def _collect_and_update(self) -> None:
        """Collect ``frames_per_batch`` env steps, then make ``updates_per_step`` updates per env step (after
        warm-up, once the buffer holds a batch)."""
        self.before_collection()
        transitions = [self._collect() for _ in range(self.hparams.frames_per_batch)]
        self._log_episodes(transitions)
        if self.env_steps >= self.hparams.warmup_steps and len(self.replay_buffer) >= self.hparams.batch_size:
            for _ in range(len(transitions) * self.hparams.updates_per_step):
                self._losses.update(self.update(self._replay.sample(self.hparams.batch_size, self.sample_keys)))

    @torch.no_grad()
    def _collect(self) -> Transition:
        """One env step (uniformly random actions during warm-up, :meth:`explore` after), its transition written to
        the replay buffer."""
        stepper = self._stepper
        if self.env_steps < self.hparams.warmup_steps:
            action = stepper.random_action()
        else:
            action = self.explore(stepper.observation.to(self.device)).cpu()
        transition = stepper.step(action)
        self._replay.add(transition)
        self.env_steps += 1
        return transition

    def _publish_env_steps(self) -> None:
        """Put the env step count into ``trainer.callback_metrics`` (checkpoint names such as
        ``"env_steps={rl/env_steps:.0f}"``, monitors, the CLI summary) as ``self.log(..., logger=False)`` would, at
        a fraction of its cost per iteration; it is never passed to ``self.log``, whose stale value would overwrite
        it."""
        # the dict behind trainer.callback_metrics: the property merges every logged result into it on each access
        self.trainer._logger_connector._callback_metrics[ENV_STEPS] = torch.tensor(float(self.env_steps))

    def on_train_epoch_end(self) -> None:
        """Evaluate the final policy, unless the last periodic evaluation was at this very env step."""
        if self._last_eval != self.env_steps:
            self._evaluate_and_log()

    def _evaluate_and_log(self) -> None:
        """Evaluate the policy now and log the result; under ``fast_dev_run`` (a smoke test) one episode of at most
        10 steps, which exercises the same code. Callbacks with a ``before_policy_evaluation`` method run first."""
        for callback in self.trainer.callbacks:
            hook = getattr(callback, "before_policy_evaluation", None)
            if callable(hook):
                hook(self.trainer, self)
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
            if key != ENV_STEPS:  # kept in callback_metrics by _publish_env_steps
                self.log(key, value, logger=False, prog_bar=key in self._PROGRESS_BAR)

    def _log_episodes(self, transitions: list[Transition]) -> None:
        returns = [t["next"]["episode_reward"] for t in transitions if bool(t["next"]["done"])]
        if returns:
            self._log_at_env_step({"rl/train_return": torch.cat(returns).float().mean()})

    @torch.no_grad()
    def evaluate(self, episodes: int | None = None, max_steps: int | None = None) -> float:
        """Mean return of deterministic episodes on the evaluation env (:meth:`acting_policy` in eval mode, no
        exploration), each at most ``max_steps`` env steps (default :attr:`EVAL_MAX_STEPS`)."""
        policy = self.acting_policy()
        returns = []
        with eval_mode(self.policy_network):
            for _ in range(episodes or self.hparams.eval_episodes):
                rollout = self.eval_env.rollout(
                    max_steps or self.EVAL_MAX_STEPS, policy=policy, break_when_any_done=True
                )
                returns.append(float(rollout["next", "reward"].sum()))
        return sum(returns) / len(returns)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store, besides the counters and evaluations, everything a resumed fit needs to continue exactly as
        the uninterrupted one: the filled part of the replay buffer and its write position, torch's RNG, both
        envs (:func:`~spikenorm.rl.env_state`: RNG and the episode in progress) and the collection's current
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
        if self._stepper is not None:  # mid-fit: the training env and the collection's step can be resumed
            state["env"] = env_state(self.env)
            state["carrier"] = self._stepper.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` stored: counters and replay buffer now, the envs and the
        collection's step when the fit starts, torch's RNG at the first training step. Checkpoints of older versions
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
            if replay["size"]:  # without the policy outputs a TorchRL collector also stored (e.g. action values)
                rows = TensorDict.from_dict(replay["rows"], batch_size=[replay["size"]])
                self.replay_buffer.extend(rows.select(*TRANSITION_KEYS, strict=False))
            self.replay_buffer.writer.load_state_dict(replay["writer"])
        self._resume_rng = state.get("rng")
        self._resume = {key: state[key] for key in ("env", "eval_env", "carrier") if key in state} or None

    def _restore_collection(self, state: dict[str, Any]) -> None:
        """Put the envs and the fresh collection where the checkpointed run was (see :meth:`on_save_checkpoint`)."""
        if "eval_env" in state:
            load_env_state(self.eval_env, state["eval_env"], replay=False)
        if "env" in state and "carrier" in state:
            load_env_state(self.env, state["env"])
            self._stepper.load_state_dict(state["carrier"])
