"""FiringRateRecorder on spikenorm, snnTorch and SpikingJelly models against numpy computations of the spikes."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch import Tensor, nn

from spikenorm.energy import OpCounter
from spikenorm.monitoring import FiringRateRecorder
from spikenorm.neurons import IF, LIF

T, IN, HID, OUT = 4, 6, 8, 5


def _with_dead_and_saturated(fc1: nn.Linear, fc2: nn.Linear) -> None:
    """Neurons 0-1 of layer 1 and 0 of layer 2 never fire; neuron 2 of layer 1 and 1 of layer 2 always do."""
    with torch.no_grad():
        fc1.bias[:2] = -50.0
        fc1.bias[2] = 50.0
        fc2.bias[0] = -50.0
        fc2.bias[1] = 50.0


def _expected(spikes: list[np.ndarray]) -> dict[str, object]:
    """Per-step rates, layer rate, dead and saturated fractions of a layer's spikes, batches ``[T, B, N]``."""
    steps = max(s.shape[0] for s in spikes)
    total, count = np.zeros(steps), np.zeros(steps)
    for s in spikes:
        total[: s.shape[0]] += s.sum(axis=(1, 2))
        count[: s.shape[0]] += s.shape[1] * s.shape[2]
    fired = sum((s != 0).sum(axis=(0, 1)) for s in spikes)
    observations = sum(s.shape[0] * s.shape[1] for s in spikes)
    return {
        "step": total / count,
        "rate": total.sum() / count.sum(),
        "dead": np.mean(fired == 0),
        "saturated": np.mean(fired == observations),
    }


def _check(recorder: FiringRateRecorder, reference: dict[str, list[np.ndarray]]) -> None:
    assert set(recorder.layer_rates()) == set(reference)
    for name, spikes in reference.items():
        want = _expected(spikes)
        np.testing.assert_allclose(recorder.step_rates()[name].numpy(), want["step"], rtol=1e-6)
        assert recorder.layer_rates()[name] == pytest.approx(want["rate"], rel=1e-12)
        assert recorder.dead_fractions()[name] == pytest.approx(want["dead"])
        assert recorder.saturated_fractions()[name] == pytest.approx(want["saturated"])
    dead = recorder.dead_fractions()
    saturated = recorder.saturated_fractions()
    assert all(v > 0 for v in dead.values()) and all(v > 0 for v in saturated.values())  # not vacuous
    assert recorder.mean_rate() == pytest.approx(np.mean(list(recorder.layer_rates().values())))


def _batches() -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(T, b, IN, generator=g) * 3 - 1 for b in (3, 5)]


def test_spikenorm_model() -> None:
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(IN, HID), nn.Linear(HID, OUT)
    _with_dead_and_saturated(fc1, fc2)
    net = nn.Sequential(fc1, IF(), fc2, LIF(decay=0.5))
    reference: dict[str, list[np.ndarray]] = {"1": [], "3": []}
    with torch.no_grad(), FiringRateRecorder(net) as recorder:
        for x in _batches():
            net(x)
    with torch.no_grad():  # outside the recorder: multi-step spikenorm neurons start from zero at every call
        for x in _batches():
            s1 = net[1](net[0](x))
            reference["1"].append(s1.numpy())
            reference["3"].append(net[3](net[2](s1)).numpy())
    _check(recorder, reference)


class SnnTorchNet(nn.Module):
    """fc -> Leaky -> fc -> Leaky looped over T inside forward; returns both layers' spike records."""

    def __init__(self, init_hidden: bool) -> None:
        import snntorch as snn

        super().__init__()
        self.init_hidden = init_hidden
        self.fc1, self.fc2 = nn.Linear(IN, HID), nn.Linear(HID, OUT)
        self.lif1 = snn.Leaky(beta=0.5, init_hidden=init_hidden)
        self.lif2 = snn.Leaky(beta=0.5, init_hidden=init_hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spk1, spk2 = [], []
        if self.init_hidden:  # the membranes live on the neurons: clear them for this sequence
            self.lif1.reset_mem()
            self.lif2.reset_mem()
            for x_t in x:
                spk1.append(self.lif1(self.fc1(x_t)))
                spk2.append(self.lif2(self.fc2(spk1[-1])))
        else:  # explicit state, neurons return (spikes, membrane)
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            for x_t in x:
                s1, mem1 = self.lif1(self.fc1(x_t), mem1)
                s2, mem2 = self.lif2(self.fc2(s1), mem2)
                spk1.append(s1)
                spk2.append(s2)
        return torch.stack(spk1), torch.stack(spk2)


@pytest.mark.parametrize("init_hidden", [True, False])
def test_snntorch_model(init_hidden: bool) -> None:
    torch.manual_seed(1)
    net = SnnTorchNet(init_hidden)
    _with_dead_and_saturated(net.fc1, net.fc2)
    reference: dict[str, list[np.ndarray]] = {"lif1": [], "lif2": []}
    with torch.no_grad(), FiringRateRecorder(net) as recorder:
        for x in _batches():
            s1, s2 = net(x)
            reference["lif1"].append(s1.numpy())
            reference["lif2"].append(s2.numpy())
    _check(recorder, reference)


def _spikingjelly_net(step_mode: str) -> nn.Sequential:
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(2)
    net = nn.Sequential(
        layer.Linear(IN, HID, step_mode=step_mode),
        neuron.LIFNode(step_mode=step_mode),
        layer.Linear(HID, OUT, step_mode=step_mode),
        neuron.IFNode(step_mode=step_mode),
    )
    _with_dead_and_saturated(net[0], net[2])
    return net


def _capture(net: nn.Sequential, names: tuple[str, ...]) -> tuple[dict[str, list[Tensor]], list]:
    """Plain forward hooks appending each neuron's output (the test's own record of the spikes)."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [
        net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach())) for n in names
    ]
    return seen, handles


def test_spikingjelly_multi_step() -> None:
    from spikingjelly.activation_based import functional

    net = _spikingjelly_net("m")
    seen, handles = _capture(net, ("1", "3"))
    with torch.no_grad(), FiringRateRecorder(net) as recorder:
        for x in _batches():
            functional.reset_net(net)
            net(x)
    for h in handles:
        h.remove()
    _check(recorder, {n: [s.numpy() for s in spikes] for n, spikes in seen.items()})


def test_spikingjelly_single_step_user_loop() -> None:
    from spikingjelly.activation_based import functional

    net = _spikingjelly_net("s")
    seen, handles = _capture(net, ("1", "3"))
    per_batch = FiringRateRecorder(net, sequence_on_forward=False)
    per_call = FiringRateRecorder(net)  # default: every forward of net starts a sequence
    with torch.no_grad(), per_batch, per_call:
        for x in _batches():
            functional.reset_net(net)
            per_batch.new_sequence()
            for x_t in x:  # the network is called once per time step
                net(x_t)
    for h in handles:
        h.remove()
    # the hooks saw T outputs [B, N] per batch, in order: stack each batch's steps into [T, B, N]
    reference = {
        name: [np.stack([s.numpy() for s in steps[i : i + T]]) for i in range(0, len(steps), T)]
        for name, steps in seen.items()
    }
    _check(per_batch, reference)
    assert all(r.numel() == T for r in per_batch.step_rates().values())
    # restarting at every call puts every step at index 0: one step, the same overall rate
    assert all(r.numel() == 1 for r in per_call.step_rates().values())
    assert per_call.layer_rates() == pytest.approx(per_batch.layer_rates())
    assert per_call.dead_fractions() == per_batch.dead_fractions()


def test_errors_and_reset() -> None:
    with pytest.raises(ValueError, match="no spiking neurons"):
        FiringRateRecorder(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ValueError, match="outside"):
        FiringRateRecorder(nn.ModuleDict({"teacher": IF()}), exclude=("teacher",))
    net = nn.Sequential(nn.Linear(3, 4), IF())
    with FiringRateRecorder(net) as recorder:
        net(torch.rand(2, 1, 3))
        with pytest.raises(ValueError, match="fixed feature shape"):
            nn.Sequential(nn.Linear(3, 6), net[1])(torch.rand(2, 1, 3))
    recorder.reset()
    assert recorder.layer_rates() == {} and np.isnan(recorder.mean_rate())


def test_a_deepcopy_of_the_watched_model_is_not_recorded() -> None:
    """deepcopy copies forward hooks; another callback's copy (e.g. a fold check) must not add to the totals."""
    net = nn.Sequential(nn.Linear(3, 4), IF(threshold=0.1))
    x = torch.rand(2, 1, 3)
    with torch.no_grad(), FiringRateRecorder(net) as recorder, OpCounter(net) as counter:
        copy.deepcopy(net)(x)
        counter.add_samples(1)
        assert recorder.layer_rates() == {} and counter.report().layers == {}
        net(x)
    assert set(recorder.layer_rates()) == {"1"} and counter.report().macs == 2 * 3 * 4


# --- reduction across processes -----------------------------------------------------------------------


def _shards() -> list[Tensor]:
    """Rank 0 sees a batch of 2 samples over 3 steps, rank 1 one of 3 samples over 5 steps."""
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 2, IN, generator=g) * 3 - 1, torch.rand(5, 3, IN, generator=g) * 3 - 1]


def _net() -> nn.Sequential:
    torch.manual_seed(3)
    fc1, fc2 = nn.Linear(IN, HID), nn.Linear(HID, OUT)
    _with_dead_and_saturated(fc1, fc2)
    return nn.Sequential(fc1, IF(), fc2, LIF())


def _record(net: nn.Sequential, batches: list[Tensor]) -> dict[str, object]:
    recorder, counter = FiringRateRecorder(net), OpCounter(net)
    with torch.no_grad(), recorder, counter:
        for x in batches:
            net(x)
            counter.add_samples(x.shape[1])
    recorder.all_reduce()
    counter.all_reduce()
    report = counter.report()
    return {
        "step": recorder.step_rates(),
        "dead": recorder.dead_fractions(),
        "saturated": recorder.saturated_fractions(),
        "sops": report.sops,
        "macs": report.macs,
        "samples": counter.samples,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(_record(_net(), [_shards()[rank]]), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_sum_to_one_process_on_all_the_data(tmp_path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _record(_net(), _shards())
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["samples"] == single["samples"] == 5
        assert result["sops"] == single["sops"] and result["macs"] == single["macs"]
        assert result["dead"] == single["dead"] and result["saturated"] == single["saturated"]
        for name, rates in single["step"].items():
            assert rates.numel() == 5
            np.testing.assert_allclose(result["step"][name].numpy(), rates.numpy(), rtol=1e-6)
