"""``@traceable``: a model function defined here is one graph node when folded, and the safe folded-file format
saves and loads it by its registered name; an fx-wrapped function that is not registered is refused with the
remedy. Files of the previous release, which name the spikenorm models' functions, still load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import Tensor, nn

from spikenorm.fold import check_equivalence, fold_model, load_folded, save_folded
from spikenorm.neurons import LIF
from spikenorm.norm import build_norm
from spikenorm.traceable import traceable, traceable_function, traceable_functions

RELEASE = Path(__file__).parent / "release_0_1_0"


@traceable
def check_features(x: Tensor, features: int) -> None:
    """Branches on a shape, so fx could not trace through it."""
    if x.shape[-1] != features:
        raise ValueError(f"expected {features} features, got shape {tuple(x.shape)}")


@torch.fx.wrap
def clip_input(x: Tensor) -> Tensor:
    """fx-wrapped but not registered: not a function the safe format may call."""
    return x.clamp(-1, 1)


class Net(nn.Module):
    def __init__(self, clip: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.linear = nn.Linear(3, 4)
        self.norm = build_norm("bn", 4)
        self.neuron = LIF(threshold=0.3)

    def forward(self, x: Tensor) -> Tensor:
        check_features(x, 3)
        if self.clip:
            x = clip_input(x)
        return self.neuron(self.norm(self.linear(x)))


def trained(clip: bool = False) -> Net:
    torch.manual_seed(0)
    net = Net(clip)
    net(torch.randn(4, 16, 3))  # running statistics to fold
    return net.eval()


def test_a_traceable_function_is_one_node_and_round_trips_through_the_safe_format(tmp_path):
    net, x = trained(), torch.randn(4, 8, 3)
    folded = fold_model(net)
    calls = [n for n in folded.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [check_features]
    assert traceable_function(f"{__name__}.check_features") is check_features
    loaded = load_folded(save_folded(folded, tmp_path / "folded.pt"))
    assert [n.target for n in loaded.graph.nodes if n.op == "call_function"] == [check_features]
    assert torch.equal(loaded(x), folded(x)) and check_equivalence(net, loaded, x).exact
    with pytest.raises(ValueError, match="expected 3 features"):
        loaded(torch.randn(4, 8, 5))


def test_an_unregistered_function_is_refused_with_the_remedy(tmp_path):
    folded = fold_model(trained(clip=True))
    message = (
        r"node 'clip_input' calls '.*clip_input', which is not among .*@spikenorm.traceable.traceable.*pickle=True"
    )
    with pytest.raises(ValueError, match=message):
        save_folded(folded, tmp_path / "folded.pt")


def test_only_module_level_functions_are_traceable():
    def local(x: Tensor) -> Tensor:
        return x

    with pytest.raises(TypeError, match="top level of a module"):
        traceable(local)
    with pytest.raises(TypeError, match="top level of a module"):
        traceable(torch.relu)


def test_the_spikenorm_model_functions_are_registered_under_the_names_files_use():
    import spikenorm.binary
    import spikenorm.models  # noqa: F401

    assert {
        "spikenorm.models.layers.check_model_input",
        "spikenorm.models.rl.check_batch_input",
        "spikenorm.models.rl.check_spike_input",
        "spikenorm.models.rl.regular_spike_train",
        "spikenorm.models.transformer.check_spatial_size",
        "spikenorm.binary.binarize_weight",
        "spikenorm.binary._deployed_weight",
    } <= set(traceable_functions())
    assert traceable_function("spikenorm.binary._deployed_weight") is spikenorm.binary._deployed_weight


def test_a_folded_file_of_the_previous_release_loads_and_gives_its_outputs():
    """It names ``spikenorm.models.layers.check_model_input``; what record_outputs.py computed on the fixed input."""
    folded = load_folded(RELEASE / "quickstart_mpbn_folded.pt")
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16
    with torch.no_grad():
        out = folded(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))
    assert torch.equal(out, torch.load(RELEASE / "outputs.pt")["quickstart_mpbn_folded"])


def test_loading_imports_the_spikenorm_module_that_registers_a_named_function():
    """A fresh process that imported only the file format finds check_model_input by importing its module."""
    code = (
        "import sys\n"
        "from spikenorm.folded_files import load_folded\n"
        "assert 'spikenorm.models.layers' not in sys.modules\n"
        f"load_folded({str(RELEASE / 'quickstart_mpbn_folded.pt')!r})\n"
        "assert 'spikenorm.models.layers' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
