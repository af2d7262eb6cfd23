"""SpikingTransformer: shapes, gradients, spikes, batch independence in eval, binary MLP, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikenorm.models import LayerSpec, SpikingTransformer
from spikenorm.neurons import SpikingNeuron

TINY = {"in_channels": 2, "num_classes": 5, "embed_dim": 16, "depth": 2, "num_heads": 2}


@pytest.mark.parametrize("input_size,patch_size", [(8, 2), (16, 4)])
@pytest.mark.parametrize("T", [1, 2])
def test_shape_dtype_and_gradients_reach_every_parameter(T, input_size, patch_size):
    torch.manual_seed(0)
    model = SpikingTransformer(input_size=input_size, patch_size=patch_size, **TINY)
    assert model.num_tokens == (input_size // patch_size) ** 2
    out = model(torch.rand(T, 3, 2, input_size, input_size))
    assert out.shape == (T, 3, 5) and out.dtype == torch.float32
    out.sum().backward()
    params = dict(model.named_parameters())
    assert params
    missing = [name for name, p in params.items() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    bad = [name for name, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"


def test_architecture_matches_input_and_patch_size():
    model = SpikingTransformer(input_size=16, patch_size=4, **TINY)
    # two 2x2 poolings take 16x16 to 4x4 = 16 tokens of 16 features
    pools = [m for m in model.patch_embed.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2 and model.patch_embed.grid_size == 4
    tokens = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: tokens.setdefault("x", o))
    model(torch.rand(2, 1, 2, 16, 16))
    assert tokens["x"].shape == (2, 1, 16, 16)
    names = dict(model.named_modules())
    for i in range(2):
        assert type(names[f"blocks.{i}.mlp.fc1"]) is nn.Linear and names[f"blocks.{i}.mlp.fc1"].out_features == 32
        assert type(names[f"blocks.{i}.mlp.fc2"]) is nn.Linear and names[f"blocks.{i}.mlp.fc2"].in_features == 32
    assert type(model.classifier) is nn.Linear and model.classifier.out_features == 5


def test_every_neuron_outputs_binary_spikes():
    torch.manual_seed(1)
    model = SpikingTransformer(input_size=8, patch_size=2, **TINY)
    outputs: dict[str, torch.Tensor] = {}
    neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingNeuron)]
    # SPS: 1 conv stage; per block: q, k, v, attention, projection, fc1, fc2
    assert len(neurons) == 1 + 2 * 7
    for name, m in neurons:
        m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out))
    model(3.0 * torch.rand(2, 4, 2, 8, 8))
    assert set(outputs) == {name for name, _ in neurons}
    for name, out in outputs.items():
        values = set(out.unique().tolist())
        assert values <= {0.0, 1.0}, f"{name} emitted {sorted(values)[:5]}"
    assert any(out.sum() > 0 for out in outputs.values()), "no neuron fired at all"


def test_eval_forward_is_independent_of_the_batch():
    torch.manual_seed(2)
    model = SpikingTransformer(input_size=8, patch_size=2, **TINY)
    x = torch.rand(2, 4, 2, 8, 8)
    model.train()
    for _ in range(3):  # move the running statistics away from their initial values
        model(torch.rand(2, 8, 2, 8, 8))
    model.eval()
    with torch.no_grad():
        full = model(x)
        for b in range(4):
            torch.testing.assert_close(model(x[:, b : b + 1]), full[:, b : b + 1], rtol=1e-5, atol=1e-5)


def test_binary_weights_binarize_exactly_the_mlp_layers_and_trains():
    from spikenorm import binary

    torch.manual_seed(3)
    model = SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=LayerSpec(binary_weights=True))
    binary_names = {name for name, m in model.named_modules() if isinstance(m, binary.BinaryLinear)}
    expected = {f"blocks.{i}.mlp.fc{j}" for i in range(2) for j in (1, 2)}
    assert binary_names == expected
    assert set(model.binary_layers) == expected
    others = [name for name, m in model.named_modules() if isinstance(m, binary.BinaryLayer) and name not in expected]
    assert not others

    torch.manual_seed(4)
    x = torch.rand(2, 16, 2, 8, 8)
    y = torch.randint(0, 5, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x).mean(0), y)

    with torch.no_grad():
        initial = float(loss_fn())
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(loss_fn())
    assert math.isfinite(final) and final < initial, (initial, final)


def test_clear_errors():
    with pytest.raises(ValueError, match="input_size must be divisible by patch_size"):
        SpikingTransformer(input_size=10, patch_size=4)
    with pytest.raises(ValueError, match="patch_size must be a power of 2"):
        SpikingTransformer(input_size=12, patch_size=3)
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        SpikingTransformer(embed_dim=10, num_heads=4)
    model = SpikingTransformer(input_size=8, patch_size=2, **TINY)
    with pytest.raises(ValueError, match="rank-5"):
        model(torch.rand(2, 1, 2, 8, 8, 1))
    with pytest.raises(ValueError, match="rank >= 5"):
        model(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="C=2"):
        model(torch.rand(2, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="built for 8x8 input"):
        model(torch.rand(2, 1, 2, 16, 16))


def test_membrane_norm_reaches_every_neuron_and_trace_and_shortcuts_are_refused():
    from spikenorm.norm import MPBN

    model = SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=LayerSpec(membrane_norm="mpbn"))
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    assert neurons and all(isinstance(n.membrane_norm, MPBN) for n in neurons)
    assert model(torch.rand(2, 3, 2, 8, 8)).shape == (2, 3, 5)
    with pytest.raises(ValueError, match=r"SpikingTransformer does not support layers\.trace=True"):
        SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=LayerSpec(trace=True))
    with pytest.raises(ValueError, match=r"layers\.shortcuts='per_layer'"):
        SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=LayerSpec(shortcuts="per_layer"))


def test_element_wise_membrane_norm_is_refused_instead_of_given_per_feature_statistics():
    elementwise = LayerSpec(membrane_norm="mpbn", membrane_norm_kwargs={"elementwise": True})
    with pytest.raises(ValueError, match="SpikingTransformer does not support element-wise membrane norms"):
        SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=elementwise)
    per_feature = LayerSpec(membrane_norm="mpbn", membrane_norm_kwargs={"elementwise": False})
    model = SpikingTransformer(input_size=8, patch_size=2, **TINY, layers=per_feature)
    assert model(torch.rand(1, 2, 2, 8, 8)).shape == (1, 2, 5)
