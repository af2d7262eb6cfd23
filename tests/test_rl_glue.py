"""spikenorm.rl: env factory, BN-aware target updates, and collection with the policy in eval mode."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from torch import nn

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type

from spikenorm.modes import eval_mode, frozen_parameters
from spikenorm.norm import build_norm, ca_bn_updates
from spikenorm.rl import (
    BatchedActor,
    EvalModePolicy,
    TD3GaussianNoise,
    action_bounds,
    action_dim,
    available_mujoco_envs,
    env_state,
    hard_update,
    load_env_state,
    make_collector,
    make_env,
    make_exploration_policy,
    make_policy,
    make_target,
    observation_dim,
    soft_update,
)

ENV = "InvertedPendulum-v5"  # obs_dim 4, act_dim 1, bounds [-3, 3]


# --------------------------------------------------------------------------- envs


def test_make_env_specs_and_rollout():
    env = make_env(ENV, seed=0)
    assert observation_dim(env) == 4 and action_dim(env) == 1
    low, high = action_bounds(env)
    assert torch.equal(low, torch.tensor([-3.0])) and torch.equal(high, torch.tensor([3.0]))
    td = env.rollout(5)
    assert td["observation"].dtype == torch.float32 and td["observation"].shape[-1] == 4
    for key in (
        "step_count",
        "episode_reward",
        "is_init",
        ("next", "reward"),
        ("next", "done"),
    ):
        assert key in td.keys(True, True), key
    assert {"InvertedPendulum-v5", "HalfCheetah-v5", "Hopper-v5"} <= set(available_mujoco_envs())


def test_make_env_is_seeded():
    obs = [make_env(ENV, seed=s).reset()["observation"] for s in (0, 0, 1)]
    assert torch.equal(obs[0], obs[1])
    assert not torch.equal(obs[0], obs[2])


@pytest.mark.parametrize("env_name", [ENV, "HalfCheetah-v5", "Pendulum-v1"])
def test_env_state_restores_an_env_mid_episode_from_plain_data(env_name, tmp_path):
    """A fresh env (another seed) given the saved state steps, ends and resets exactly as the original."""
    env = make_env(env_name, seed=0)
    torch.manual_seed(0)
    env.rollout(30, break_when_any_done=False)  # InvertedPendulum: episodes end and restart on the way
    torch.save(env_state(env), tmp_path / "env.pt")
    fresh = make_env(env_name, seed=7)
    load_env_state(fresh, torch.load(tmp_path / "env.pt", weights_only=True))
    original, restored = env.base_env._env, fresh.base_env._env  # the gymnasium envs
    actions = env.action_spec.rand(torch.Size([40])).numpy()
    for action in actions:
        a, b = original.step(action), restored.step(action)
        assert (a[0] == b[0]).all() and a[1:4] == b[1:4]  # observation, reward, terminated, truncated
        if a[2] or a[3]:
            assert (original.reset()[0] == restored.reset()[0]).all()
    assert (original.reset()[0] == restored.reset()[0]).all()  # the RNG moved on alike


def test_env_state_refuses_a_reset_with_options():
    env = make_env(ENV, seed=0)
    env.base_env._env.reset(options={"anything": 1})
    with pytest.raises(ValueError, match="options"):
        env_state(env)


def test_make_env_errors(monkeypatch):
    with pytest.raises(ValueError, match="InvertedPendulum-v5"):
        make_env("NoSuchEnv-v5")
    with pytest.raises(ValueError, match="seed"):
        make_env(ENV, seed=-1)
    from spikenorm.rl import envs

    real = envs.importlib.util.find_spec
    monkeypatch.setattr(
        envs.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mujoco" else real(name, *a),
    )
    with pytest.raises(ValueError, match="mujoco"):
        make_env(ENV)


def test_action_bounds_rejects_discrete_actions():
    with pytest.raises(ValueError, match="bounded continuous"):
        action_bounds(make_env("CartPole-v1"))


# --------------------------------------------------------------------------- target updates


def tdbn_model() -> nn.Module:
    # time-major [T, B, 3] -> Linear -> [T, B, 4] -> TDBN
    return nn.Sequential(nn.Linear(3, 4), build_norm("tdbn", 4)).double()


def bn1d_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()


def carebn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), build_norm("carebn", 4)).double()


def tdbn_input(g):
    return torch.randn(5, 8, 3, generator=g, dtype=torch.float64) * 2 + 1


def bn1d_input(g):
    return torch.randn(16, 3, generator=g, dtype=torch.float64) * 2 + 1


def drift(model: nn.Module, make_input, seed: int = 0) -> None:
    """Move the source away from its target: train-mode forwards (running stats) and new weights."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with (
        torch.no_grad(),
        ca_bn_updates(model),
    ):  # CaRe-BN moves its statistics only inside this scope
        for _ in range(3):
            model(make_input(g))
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


CASES = [(tdbn_model, tdbn_input), (bn1d_model, bn1d_input), (carebn_model, tdbn_input)]


@pytest.mark.parametrize("build, make_input", CASES, ids=["tdbn", "bn1d", "carebn"])
def test_soft_update_averages_parameters_and_statistics(build, make_input):
    torch.manual_seed(0)
    source = build()
    target = make_target(source)
    drift(source, make_input)
    old = {k: v.clone() for k, v in target.state_dict().items()}
    src = source.state_dict()
    assert not torch.equal(old["1.running_mean"], src["1.running_mean"])
    tau = 0.3
    soft_update(target, source, tau)
    new = target.state_dict()
    for key, value in new.items():
        if value.is_floating_point():
            assert value.dtype == torch.float64
            assert torch.equal(value, (1 - tau) * old[key] + tau * src[key]), key
        else:  # num_batches_tracked
            assert torch.equal(value, src[key]), key
    assert {"1.running_mean", "1.running_var"} <= new.keys()
    if build is carebn_model:  # the confidence state P is averaged as well
        assert not torch.equal(old["1.p_mean"], src["1.p_mean"])
        assert {"1.p_mean", "1.p_var"} <= new.keys()


def test_soft_update_parameters_only():
    source = bn1d_model()
    target = make_target(source)
    drift(source, bn1d_input)
    old = {k: v.clone() for k, v in target.state_dict().items()}
    soft_update(target, source, 0.5, include_buffers=False)
    assert torch.equal(target[1].running_mean, old["1.running_mean"])
    assert torch.equal(target[1].num_batches_tracked, old["1.num_batches_tracked"])
    assert torch.equal(target[0].weight, 0.5 * old["0.weight"] + 0.5 * source[0].weight)


def test_hard_update_and_structure_errors():
    source = bn1d_model()
    target = make_target(source)
    drift(source, bn1d_input)
    hard_update(target, source)
    for (k, t), (_, s) in zip(target.state_dict().items(), source.state_dict().items()):
        assert torch.equal(t, s), k
    wider = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    with pytest.raises(ValueError, match="shape"):
        soft_update(wider, source, 0.1)
    with pytest.raises(ValueError, match="structure"):
        hard_update(nn.Sequential(nn.Linear(3, 4)).double(), source)
    with pytest.raises(ValueError, match="tau"):
        soft_update(target, source, 1.5)
    with pytest.raises(ValueError, match="same module"):
        soft_update(source, source, 0.1)


def test_soft_update_follows_modules_that_changed_since_its_last_call():
    """soft_update reuses its last matching of the two modules only while they hold the same tensors: a reassigned
    buffer, a conversion that replaces buffers, a new source or a new submodule are matched again."""
    source = bn1d_model()
    target = make_target(source)
    soft_update(target, source, 0.5)  # matched and kept
    source[1].running_mean = torch.full((4,), 2.0, dtype=torch.float64)  # a new tensor under the same name
    before = target[1].running_mean.clone()
    soft_update(target, source, 0.5)
    assert torch.equal(target[1].running_mean, 0.5 * before + 1.0)
    target.float()  # replaces every buffer: the averaging must write into the new ones
    soft_update(target, source, 1.0)
    assert torch.equal(target[1].running_mean, torch.full((4,), 2.0))
    other = bn1d_model()
    soft_update(target, other, 1.0)  # another source: its own tensors
    assert torch.equal(target[0].weight, other[0].weight.float())
    other.append(nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="structure"):
        soft_update(target, other, 0.1)


def test_make_target_is_frozen_independent_and_pinned_to_eval():
    source = bn1d_model()
    target = make_target(source)
    assert not target.training and not any(m.training for m in target.modules())
    assert not any(p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in source.parameters())
    assert target[0].weight.data_ptr() != source[0].weight.data_ptr()
    # A parent's .train() (Lightning does this every epoch) must not make the target use batch stats.
    parent = nn.ModuleDict({"actor": source, "target": target})
    parent.train()
    stats = target[1].running_mean.clone()
    x = bn1d_input(torch.Generator().manual_seed(1))
    out = target(x)
    assert not target.training and not target[1].training
    assert torch.equal(target[1].running_mean, stats)
    assert torch.allclose(out, copy.deepcopy(target).eval()(x))
    # copies and pickles keep the pin
    restored = pickle.loads(pickle.dumps(target))
    restored.train()
    restored(x)
    assert not restored[1].training


def test_torchrl_softupdate_ignores_bn_statistics():
    """Documented contrast: TorchRL's SoftUpdate moves the target weights but not its BN statistics."""
    from torchrl.modules import ValueOperator
    from torchrl.objectives import DDPGLoss, SoftUpdate

    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def forward(self, obs, act):
            return self.net(torch.cat([obs, act], -1))

    actor = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    loss = DDPGLoss(
        TensorDictModule(actor, in_keys=["observation"], out_keys=["action"]),
        ValueOperator(Critic(), in_keys=["observation", "action"]),
        delay_actor=True,
        delay_value=True,
    )
    updater = SoftUpdate(loss, tau=0.5)
    target = loss.target_actor_network_params
    with torch.no_grad():
        actor[1].running_mean.fill_(3.0)
        actor[0].weight.add_(1.0)
    weight_before = target["module", "0", "weight"].clone()
    updater.step()
    assert torch.allclose(
        target["module", "0", "weight"] - weight_before,
        torch.full_like(weight_before, 0.5),
    )
    assert torch.equal(target["module", "1", "running_mean"], torch.zeros(4))  # stale: never averaged
    # ours averages both
    ours = make_target(actor)
    with torch.no_grad():
        actor[1].running_mean.fill_(5.0)
    soft_update(ours, actor, 0.5)
    assert torch.allclose(ours[1].running_mean, torch.full((4,), 4.0))


# --------------------------------------------------------------------------- eval mode and collection


def test_eval_mode_restores_mixed_flags_also_on_error():
    model = nn.Sequential(
        nn.Linear(2, 2),
        nn.Sequential(nn.BatchNorm1d(2), nn.Dropout()),
        nn.BatchNorm1d(2),
    )
    model.train()
    model[1][0].eval()  # mixed modes
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
    with pytest.raises(TypeError), eval_mode("not a module"):
        pass


def test_frozen_parameters_pass_input_gradients_skip_weight_gradients_and_restore_flags():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    critic[2].bias.requires_grad_(False)  # mixed flags come back as they were
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(critic(x).sum(), x)[0]
    with frozen_parameters(critic):
        out = critic(x).sum()
    out.backward()
    assert torch.equal(x.grad, expected)  # the same input gradient, bit for bit
    assert all(p.grad is None for p in critic.parameters())  # no weight gradient computed
    assert [p.requires_grad for p in critic.parameters()] == [True, True, True, False]
    with pytest.raises(RuntimeError, match="boom"), frozen_parameters(critic):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in critic.parameters()] == [True, True, True, False]
    with pytest.raises(TypeError), frozen_parameters("not a module"):
        pass


def test_batched_actor_shapes_and_errors():
    actor = BatchedActor(nn.Linear(4, 2))
    assert actor(torch.zeros(4)).shape == (2,)
    assert actor(torch.zeros(5, 4)).shape == (5, 2)
    assert actor(torch.zeros(2, 3, 4)).shape == (2, 3, 2)

    class Bad(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(ValueError, match=r"\[B, obs_dim\] -> \[B, act_dim\]"):
        BatchedActor(Bad())(torch.zeros(3, 4))


class RecordingActor(nn.Module):
    """BN actor ``[B, 4] -> [B, 1]`` in [-3, 3] that records its mode and batch size at every call."""

    def __init__(self, const: float | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))
        self.const = const
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, obs):
        self.calls.append((self.training, self.net[1].training, obs.shape[0]))
        out = 3.0 * torch.tanh(self.net(obs))
        return out if self.const is None else torch.full_like(out, self.const)


def exploring_collector(actor: nn.Module, seed: int, **frames: int):
    """``make_collector`` over ENV seeded ``seed``, with ``actor`` behind TD3 exploration noise of sigma 0.1."""
    policy = make_exploration_policy(make_policy(actor), make_env(ENV), sigma=0.1)
    return make_collector(lambda: make_env(ENV, seed=seed), policy, **frames)


def test_collection_runs_in_eval_mode_with_single_sample_bn():
    torch.manual_seed(0)
    actor = RecordingActor()
    actor.train()
    stats = actor.net[1].running_mean.clone()
    collector = exploring_collector(actor, seed=0, frames_per_batch=50, total_frames=100)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    assert len(actor.calls) >= 100
    assert all(not training and not bn_training for training, bn_training, _ in actor.calls)
    assert all(batch == 1 for *_, batch in actor.calls)  # one env: batches of one sample
    assert actor.training and actor.net[1].training  # back in train mode
    assert torch.equal(actor.net[1].running_mean, stats)  # rollouts did not touch the statistics


def test_plain_torchrl_collector_fails_with_bn_actor_in_train_mode():
    """Documented contrast: TorchRL's Collector leaves the BN actor in train mode."""
    from torchrl.collectors import Collector

    actor = RecordingActor().train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        collector = Collector(
            make_env(ENV, seed=0),
            make_policy(actor),
            frames_per_batch=10,
            total_frames=10,
            auto_register_policy_transforms=False,
        )
        next(iter(collector))


def test_random_warmup_frames_and_clipped_noise():
    torch.manual_seed(0)
    actor = RecordingActor(const=10.0)  # far outside [-3, 3]
    collector = exploring_collector(actor, seed=0, frames_per_batch=100, total_frames=200, init_random_frames=100)
    calls_at_start = len(actor.calls)
    it = iter(collector)
    warmup = next(it)
    assert len(actor.calls) == calls_at_start  # the policy was not called during warm-up
    a = warmup["action"]
    assert a.shape == (100, 1)
    assert ((a >= -3) & (a <= 3)).all() and a.std() > 0.5  # uniform over the box
    policy_batch = next(it)
    collector.shutdown()
    assert torch.equal(policy_batch["action"], torch.full((100, 1), 3.0))  # noisy 10.0 clipped to high


def test_exploration_noise_is_td3_gaussian():
    torch.manual_seed(0)
    policy = make_exploration_policy(make_policy(RecordingActor(const=0.0)), make_env(ENV), sigma=0.1)
    td = TensorDict({"observation": torch.zeros(20000, 4)}, batch_size=[20000])
    with eval_mode(policy):
        noisy = policy(td.clone())["action"]
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            clean = policy(td.clone())["action"]
    assert torch.equal(clean, torch.zeros(20000, 1))
    assert abs(noisy.mean().item()) < 0.01
    assert abs(noisy.std().item() - 0.1 * 3.0) < 0.01  # std = sigma * max_action


def test_short_collection_keys_and_shapes():
    torch.manual_seed(0)
    actor = RecordingActor()
    collector = exploring_collector(actor, seed=0, frames_per_batch=200, total_frames=200)
    (batch,) = list(collector)
    collector.shutdown()
    assert batch.batch_size == (200,)
    assert batch["observation"].shape == (200, 4) and batch["observation"].dtype == torch.float32
    assert batch["action"].shape == (200, 1)
    assert batch["next", "reward"].shape == (200, 1)
    assert batch["next", "done"].shape == (200, 1) and batch["next", "done"].dtype == torch.bool
    assert batch["next", "done"].any()  # InvertedPendulum episodes end quickly under a random actor
    assert isinstance(collector.policy, EvalModePolicy)


def test_make_collector_argument_errors():
    policy = make_policy(nn.Linear(4, 1))

    def env_fn():
        return make_env(ENV)

    with pytest.raises(ValueError, match="multiple of frames_per_batch"):
        make_collector(
            env_fn,
            policy,
            frames_per_batch=64,
            total_frames=128,
            init_random_frames=100,
        )
    with pytest.raises(ValueError, match="total_frames"):
        make_collector(env_fn, policy, frames_per_batch=64, total_frames=100)
    with pytest.raises(ValueError, match="frames_per_batch"):
        make_collector(env_fn, policy, frames_per_batch=0)
    with pytest.raises(TypeError, match="make_policy"):
        make_collector(env_fn, "not a policy", frames_per_batch=10)
    with pytest.raises(TypeError, match="make_policy"):
        make_exploration_policy(lambda obs: obs, make_env(ENV))
    with pytest.raises(ValueError, match="exploration_sigma"):
        make_collector(env_fn, EvalModePolicy(policy), frames_per_batch=10, exploration_sigma=0.1)
    with pytest.raises(ValueError, match="sigma"):
        TD3GaussianNoise(-0.1)


def test_plain_actor_with_exploration_sigma_gets_spec_from_collector_env():
    """make_collector(env, actor_module, exploration_sigma=...) wraps the actor and sizes the noise."""
    torch.manual_seed(0)
    actor = RecordingActor(const=0.0)
    env = make_env(ENV, seed=0)
    collector = make_collector(env, actor, frames_per_batch=200, total_frames=200, exploration_sigma=0.1)
    noise = [m for m in collector.policy.modules() if isinstance(m, TD3GaussianNoise)]
    assert len(noise) == 1 and torch.equal(noise[0].std, torch.tensor([3.0]))  # max_action of the env
    (batch,) = list(collector)
    collector.shutdown()
    assert 0.25 < batch["action"].std().item() < 0.35  # sigma * max_action = 0.3
    assert all(not training for training, *_ in actor.calls)


def test_td3_noise_spec_can_be_set_later():
    noise = TD3GaussianNoise(0.2)
    assert noise.spec is None
    env = make_env("HalfCheetah-v5")  # bounds [-1, 1] in 6 dimensions
    noise.spec = env.action_spec
    assert torch.equal(noise.std, torch.ones(6))


def test_collection_is_deterministic_under_seeds():
    def collect() -> TensorDict:
        torch.manual_seed(0)
        actor = RecordingActor()
        collector = exploring_collector(actor, seed=3, frames_per_batch=50, total_frames=100, init_random_frames=50)
        data = torch.cat(list(collector))
        collector.shutdown()
        return data

    first, second = collect(), collect()
    for key in ("observation", "action", ("next", "reward"), ("next", "done")):
        assert torch.equal(first[key], second[key]), key
