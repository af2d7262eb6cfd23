"""recalibrate_bn refuses what would give wrong statistics silently: NaN/Inf activations (issue 16 row 7) and
neuron state its resets do not clear (row 9), and takes ``reset_fn=`` for neurons of the user's own."""

from __future__ import annotations

import datetime
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch import Tensor, nn

from spikenorm.norm import build_norm
from spikenorm.recalibrate import recalibrate_bn
from spikenorm.synapse import TimeDistributed

T, B = 4, 8


def running_stats(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def assert_unchanged(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = running_stats(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


# -- non-finite activations -------------------------------------------------------------------------------
def time_major_net() -> nn.Module:
    """spikenorm BN first (it sees the data itself), then a linear layer and a torch BN."""
    torch.manual_seed(0)
    return nn.Sequential(
        build_norm("bn", 4), TimeDistributed(nn.Linear(4, 3)), TimeDistributed(nn.BatchNorm1d(3))
    ).double()


def batches(n: int = 4) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(T, B, 4, generator=g, dtype=torch.float64) + j for j in range(n)]


@pytest.mark.parametrize("mode", ["exact", "single_pass"])
def test_nan_and_inf_in_the_data_name_the_layer_batch_and_counts(mode: str) -> None:
    model, data = time_major_net(), batches()
    data[2][1, 3, 0] = data[2][0, 0, 2] = data[2][3, 7, 1] = float("nan")
    data[2][2, 2, 2], data[2][0, 1, 3] = float("inf"), -float("inf")
    before = running_stats(model)
    with pytest.raises(
        ValueError,
        match=rf"layer '0' \(VanillaBN\) in batch 2 .* 3 NaN and 2 Inf values among "
        rf"{T * B * 4} elements; no statistics were written",
    ):
        recalibrate_bn(model, data, mode=mode)
    assert_unchanged(model, before)


class Poison(nn.Module):
    """Makes feature 0 NaN, so every output of the next linear layer is NaN."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.clone()
        x[..., 0] = float("nan")
        return x


def _nan_on_one_rank(rank: int, port: int, mode: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a short timeout: a process left waiting for the other in an all-reduce fails the test in 60 s, not 30 min
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        data = batches()[rank::2]
        if rank == 1:
            data[1][0, 0, 0] = float("nan")
        start = time.monotonic()
        try:
            recalibrate_bn(time_major_net(), data, mode=mode)
            message = "no error"
        except Exception as error:  # noqa: BLE001 - the test reads what each process raised
            message = f"{type(error).__name__}: {error}"
        Path(out_dir, f"rank{rank}.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["exact", "single_pass"])
def test_nan_on_one_process_stops_every_process(tmp_path, mode: str) -> None:
    """Under DDP the process that sees the NaN names it; the other raises too instead of waiting for it."""
    mp.spawn(_nan_on_one_rank, args=(free_port(), mode, str(tmp_path)), nprocs=2, join=True)
    seconds0, message0 = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    _, message1 = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert re.search(r"ValueError: .*layer '0' \(VanillaBN\) in batch 1 .* 1 NaN", message1), message1
    assert message0.startswith("ValueError: recalibrate_bn: process(es) [1] found NaN/Inf"), message0
    assert float(seconds0) < 50  # not the 60 s collective timeout


@pytest.mark.parametrize("mode", ["exact", "single_pass"])
def test_nan_made_inside_the_model_names_the_first_layer_that_sees_it(mode: str) -> None:
    """The first BN's statistics are written before the second is measured (exact mode): they are put back."""
    model = time_major_net()
    model.insert(1, Poison())
    before = running_stats(model)
    with pytest.raises(ValueError, match=rf"layer '3.module' \(BatchNorm1d\) in batch 0 .* {T * B * 3} NaN and 0 Inf"):
        recalibrate_bn(model, batches(), mode=mode)
    assert_unchanged(model, before)


def test_float32_overflow_is_refused_too() -> None:
    model = nn.Sequential(nn.BatchNorm1d(2))
    x = torch.tensor([[1e20, 1.0], [-1e20, 2.0], [3e20, 0.0]])
    before = running_stats(model)
    with pytest.raises(ValueError, match=r"layer '0' \(BatchNorm1d\) in batch 0 are finite but so large"):
        recalibrate_bn(model, [x])
    assert_unchanged(model, before)


# -- state the resets do not clear ---------------------------------------------------------------------------
class HandLIF(nn.Module):
    """A hand-written single-step LIF neuron, as users write them: the membrane stays on the module between
    calls (a plain attribute, or a buffer) until ``reset()``; spikenorm knows neither the class nor its reset."""

    def __init__(self, as_buffer: bool = False) -> None:
        super().__init__()
        if as_buffer:
            self.register_buffer("v", torch.zeros(()), persistent=False)
        else:
            self.v = torch.zeros(())

    def reset(self) -> None:
        self.v = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        self.v = 0.5 * self.v + x
        spikes = (self.v >= 0.5).to(x.dtype)
        self.v = self.v * (1 - spikes)
        return spikes


class HandNet(nn.Module):
    """snnTorch style: the time loop in the forward; each BN is called at every step."""

    def __init__(self, reset_in_forward: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.bn1, self.lif1 = nn.Linear(4, 6), nn.BatchNorm1d(6), HandLIF()
        self.fc2, self.bn2, self.lif2 = nn.Linear(6, 3), nn.BatchNorm1d(3), HandLIF(as_buffer=True)
        self.reset_in_forward = reset_in_forward

    def forward(self, x: Tensor) -> Tensor:
        if self.reset_in_forward:
            reset_hand_neurons(self)
        return torch.stack([self.lif2(self.bn2(self.fc2(self.lif1(self.bn1(self.fc1(x_t)))))) for x_t in x])


def reset_hand_neurons(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, HandLIF):
            module.reset()


def numpy_reference(model: nn.Module, data: list[Tensor]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pooled float64 mean and unbiased variance of each BN's inputs over every step of fresh-state forwards."""
    captured: dict[str, list[np.ndarray]] = {"bn1": [], "bn2": []}

    def capture(name: str) -> Callable:
        return lambda module, inputs, output: captured[name].append(inputs[0].numpy())

    handles = [getattr(model, name).register_forward_hook(capture(name)) for name in captured]
    model.eval()
    with torch.no_grad():
        for x in data:
            reset_hand_neurons(model)
            model(x)
    for handle in handles:
        handle.remove()
    pooled = {name: np.concatenate(chunks) for name, chunks in captured.items()}
    return {name: (x.mean(0), x.var(0, ddof=1)) for name, x in pooled.items()}


@pytest.mark.parametrize("mode", ["exact", "single_pass"])
def test_unknown_stateful_neurons_are_refused_by_name(mode: str) -> None:
    model = HandNet().double()
    before = running_stats(model)
    suggestion = "pass reset_fn=lambda model: [m.reset() for m in model.modules() if isinstance(m, (HandLIF,))]"
    with pytest.raises(ValueError, match=r"'lif1' \(HandLIF\.v\), 'lif2' \(HandLIF\.v\).*" + re.escape(suggestion)):
        recalibrate_bn(model, batches(), mode=mode)
    assert_unchanged(model, before)


def test_a_reset_fn_that_misses_a_neuron_is_refused() -> None:
    model = HandNet().double()
    with pytest.raises(ValueError, match=r"SpikingJelly reset\(\), reset_fn\): 'lif2' \(HandLIF\.v\);"):
        recalibrate_bn(model, batches(), reset_fn=lambda m: m.lif1.reset())


def test_reset_fn_gives_the_statistics_of_fresh_state_forwards() -> None:
    data = batches(5)
    model = HandNet().double()
    model(data[-1])  # leave membranes behind, as a training step would
    report = recalibrate_bn(model, data, reset_fn=reset_hand_neurons)
    reference = numpy_reference(model, data)
    for name, (mean, var) in reference.items():
        bn = getattr(model, name)
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-10)
        assert report.layers[name].samples == len(data) * T * B
    # what the carried-over membranes would have given instead (the silent error of row 9)
    leaky = HandNet().double()
    leaky.load_state_dict(model.state_dict())
    leaky.eval()
    captured: list[np.ndarray] = []
    leaky.bn2.register_forward_hook(lambda m, i, o: captured.append(i[0].numpy()))
    with torch.no_grad():
        for x in data:
            leaky(x)
    assert not np.allclose(np.concatenate(captured).var(0, ddof=1), reference["bn2"][1], rtol=1e-3)


def test_a_forward_that_resets_its_own_neurons_passes_the_check() -> None:
    """State that survives the resets but is cleared by the forward itself does not change the statistics."""
    data = batches()
    model = HandNet(reset_in_forward=True).double()
    recalibrate_bn(model, data)
    reference = numpy_reference(model, data)
    np.testing.assert_allclose(model.bn2.running_var.numpy(), reference["bn2"][1], rtol=1e-10)


# -- batch-major batches ----------------------------------------------------------------------------------
def test_batch_major_batches_are_refused_before_any_statistic_is_written() -> None:
    """T known from the time_steps argument (the batch, and every time-major layer's input) or from a model built
    with layers.time_steps: a ``[B, T, ...]`` batch is refused, the statistics unchanged."""
    from spikenorm.models import LayerSpec, SpikingVGG

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(16, T, 1, 8, 8, generator=g) for _ in range(2)]  # batch-major
    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="tdbn"))  # knows no T: needs the argument
    before = running_stats(model)
    batch_major = r"batch 0 expects input laid out \[T, B, \.\.\.\] with T=4, got shape \(16, 4, 1, 8, 8\), which looks"
    with pytest.raises(ValueError, match=batch_major):
        recalibrate_bn(model, data, time_steps=T)
    with pytest.raises(ValueError, match=r"layer 'features\.0\.1' \(TDBN\) expects .* T=4, got shape \(16, 4, 16,"):
        recalibrate_bn(model, [(x, None) for x in data], forward=lambda net, batch: net(batch[0]), time_steps=T)
    assert_unchanged(model, before)
    recalibrate_bn(model, [x.transpose(0, 1) for x in data], time_steps=T)  # time-major: accepted
    built_for_t = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="tdbn", time_steps=T))
    before = running_stats(built_for_t)
    with pytest.raises(ValueError, match=r"SpikingVGG expects .* with T=4, got shape \(16, 4, 1, 8, 8\)"):
        recalibrate_bn(built_for_t, data)
    assert_unchanged(built_for_t, before)
