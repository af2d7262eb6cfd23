"""Models: time-major in, per-step logits out, every norm/neuron/surrogate by name, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from spikenorm.models import LayerSpec, SpikingMLP, SpikingResNet19, SpikingVGG
from spikenorm.neurons import CLIF, spiking_neurons
from spikenorm.norm import BNTT, TDBN, available_norms
from spikenorm.synapse import TimeDistributed


@pytest.mark.parametrize("norm", ["none", "bn", "tdbn", "bntt", "tebn", "tab"])
@pytest.mark.parametrize("neuron", ["if", "lif", "clif"])
def test_vgg_every_norm_and_neuron(norm, neuron):
    torch.manual_seed(0)
    kwargs = {"time_steps": 3} if norm in ("bntt", "tebn", "tab") else {}
    model = SpikingVGG(
        "small", in_channels=1, num_classes=7, layers=LayerSpec(norm=norm, norm_kwargs=kwargs, neuron=neuron)
    )
    x = torch.randn(3, 2, 1, 8, 8)
    out = model(x)
    assert out.shape == (3, 2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_and_resnet_shapes_and_options():
    mlp = SpikingMLP(
        64, 10, hidden=(32,), layers=LayerSpec(neuron="clif", neuron_kwargs={"threshold": 0.4}, surrogate="dspike")
    )
    assert mlp(torch.rand(2, 5, 1, 8, 8)).shape == (2, 5, 10)
    assert isinstance(mlp.features[0][2], CLIF) and float(mlp.features[0][2].threshold) == pytest.approx(0.4)
    resnet = SpikingResNet19(num_classes=10, in_channels=3, width=0.125, layers=LayerSpec(norm="tdbn"))
    assert resnet(torch.randn(2, 2, 3, 16, 16)).shape == (2, 2, 10)
    assert sum(isinstance(m, TDBN) for m in resnet.modules()) == 1 + 2 * 8 + 2 + 1  # stem, blocks, shortcuts, head
    assert len(list(spiking_neurons(resnet))) == 1 + 2 * 8 + 1


def test_vgg_named_and_custom_configs():
    vgg11 = SpikingVGG("vgg11", in_channels=3, num_classes=10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg11.modules()) == 8
    custom = SpikingVGG(
        [8, "M", 16], in_channels=2, num_classes=3, layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": 2})
    )
    assert custom(torch.randn(2, 1, 2, 6, 6)).shape == (2, 1, 3)
    assert sum(isinstance(m, BNTT) for m in custom.modules()) == 2


def test_no_norm_keeps_conv_bias():
    with_norm = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="tdbn"))
    without = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="none"))
    assert with_norm.features[0][0].module.bias is None
    assert without.features[0][0].module.bias is not None


def test_model_input_errors():
    vgg = SpikingVGG("small", in_channels=1)
    with pytest.raises(ValueError, match=r"\[T, B, C, \.\.\.\] with C=1"):
        vgg(torch.randn(4, 3, 8, 8, 1))
    with pytest.raises(ValueError, match="rank >= 5"):
        vgg(torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"with C=64"):
        SpikingMLP(64, 10)(torch.randn(2, 3, 50))
    with pytest.raises(ValueError, match="unknown VGG config 'vgg99'"):
        SpikingVGG("vgg99")
    with pytest.raises(ValueError, match=f"unknown norm 'batchnorm'; available: {', '.join(available_norms())}"):
        SpikingVGG(layers=LayerSpec(norm="batchnorm"))
    with pytest.raises(ValueError, match="unknown neuron 'izh'; available: clif, if, lif"):
        SpikingMLP(4, 2, layers=LayerSpec(neuron="izh"))
    with pytest.raises(ValueError, match="unknown surrogate 'erf'; available"):
        SpikingResNet19(layers=LayerSpec(surrogate="erf"))


def test_shortcut_layouts_build_the_blocks_they_name():
    from spikenorm.models.blocks import ResidualConvBlock

    def blocks(model):
        return [m for m in model.modules() if isinstance(m, ResidualConvBlock)]

    cfg = [8, 8, "A", 16, 16, 16]
    per_layer = blocks(SpikingVGG(cfg, in_channels=1, num_classes=3, layers=LayerSpec(shortcuts="per_layer")))
    # every conv after the first: 8->8 (identity), 8->16 (projection), 16->16, 16->16
    assert [len(b.layers) for b in per_layer] == [0, 0, 0, 0]
    assert [type(b.shortcut).__name__ for b in per_layer] == ["Identity", "Sequential", "Identity", "Identity"]
    per_block = blocks(SpikingVGG(cfg, in_channels=1, num_classes=3, layers=LayerSpec(shortcuts="per_block")))
    # runs after the first conv: [8] | [16, 16, 16] -> [8], [16, 16], [16]
    assert [len(b.layers) + 1 for b in per_block] == [1, 2, 1]
    assert not blocks(SpikingVGG(cfg, in_channels=1, num_classes=3, layers=LayerSpec(shortcuts="none")))
    resnet = {
        s: blocks(SpikingResNet19(num_classes=3, in_channels=1, width=0.0625, layers=LayerSpec(shortcuts=s)))
        for s in ("per_block", "per_layer", "none")
    }
    assert len(resnet["per_block"]) == 8 and len(resnet["per_layer"]) == 16 and len(resnet["none"]) == 8
    assert all(b.shortcut is None for b in resnet["none"])
    convs = {
        s: sum(
            isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            for m in SpikingResNet19(
                num_classes=3, in_channels=1, width=0.0625, layers=LayerSpec(shortcuts=s)
            ).modules()
        )
        for s in resnet
    }
    assert len(set(convs.values())) == 1  # same 3x3 convs in every layout
    with pytest.raises(ValueError, match="shortcuts"):
        SpikingVGG(cfg, layers=LayerSpec(shortcuts="dense"))


def test_identity_shortcut_carries_the_input_spikes():
    from spikenorm.models.blocks import ResidualConvBlock
    from spikenorm.models.layers import SpikingLayerFactory

    factory = SpikingLayerFactory(LayerSpec(norm="bn", neuron="if", neuron_kwargs={"threshold": 0.5}))
    block = ResidualConvBlock(factory, [4, 4]).eval()
    with torch.no_grad():
        block.norm.weight.zero_()
        block.norm.bias.zero_()
    spikes = (torch.rand(3, 2, 4, 5, 5) < 0.5).float()
    # the conv path contributes nothing: the membrane input is the input spikes themselves (above threshold)
    assert torch.equal(block(spikes), spikes)
    plain = ResidualConvBlock(factory, [4, 4], shortcut=False).eval()
    plain.load_state_dict(block.state_dict())
    with torch.no_grad():
        plain.norm.weight.zero_()
        plain.norm.bias.zero_()
    assert plain(spikes).sum() == 0


def _conv_layout(model, channels_last):
    for module in model.modules():
        if isinstance(module, TimeDistributed):
            module.channels_last = channels_last
    return model


@pytest.mark.parametrize("norm", ["tdbn", "bntt", "bn", "tebn", "tab"])
def test_conv_layout_changes_no_values(norm):
    """Convolutions run channels-last on CPU by default; the network computes the same function (float64)
    as in NCHW, the layout reaches the neurons, and the gradients agree."""
    torch.manual_seed(0)
    kwargs = {"time_steps": 3} if norm in ("bntt", "tebn", "tab") else {}
    nhwc = SpikingResNet19(
        num_classes=5, in_channels=2, width=0.125, layers=LayerSpec(norm=norm, norm_kwargs=kwargs)
    ).double()
    nchw = _conv_layout(copy.deepcopy(nhwc), False)
    seen = []
    _, first_neuron = next(spiking_neurons(nhwc))
    first_neuron.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride()))
    x = torch.rand(3, 4, 2, 12, 12, dtype=torch.float64)
    outs, grads = [], []
    for model in (nhwc, nchw):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert seen and seen[0][2] == 1  # channels innermost at the first neuron
    conv = torch.nn.Conv2d(2, 3, 3).double()
    assert TimeDistributed(conv)(x).flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert TimeDistributed(conv, channels_last=False)(x).is_contiguous()
    assert TimeDistributed(torch.nn.AvgPool2d(2))(x).is_contiguous()  # only convolutions switch the layout


def test_layer_spec_gives_norms_the_time_steps_they_take_and_a_norm_without_T_refuses_to_run():
    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="bntt", time_steps=3))
    assert [m.time_steps for m in model.modules() if isinstance(m, BNTT)] == [3, 3, 3]
    tdbn = SpikingVGG("small", in_channels=1, layers=LayerSpec(time_steps=3))  # tdbn takes no time_steps
    assert not any(isinstance(m, BNTT) for m in tdbn.modules())
    unbound = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="bntt"))  # T comes from the task later
    with pytest.raises(ValueError, match=r"BNTT keeps parameters for each time step, so it needs time_steps"):
        unbound(torch.rand(3, 2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"norm_kwargs time_steps=2 disagrees with layers.time_steps=3"):
        SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="bntt", norm_kwargs={"time_steps": 2}, time_steps=3))
    with pytest.raises(ValueError, match=r"SpikingMLP does not support layers\.shortcuts='per_block'"):
        SpikingMLP(4, 2, layers=LayerSpec(shortcuts="per_block"))
    with pytest.raises(ValueError, match="unknown shortcuts 'dense'"):
        LayerSpec(shortcuts="dense")


BATCH_MAJOR = r"expects input laid out \[T, B, \.\.\.\] with T=4, got shape \(16, 4, 1, 8, 8\), which looks batch-major"


@pytest.mark.parametrize(
    "layers",
    [
        LayerSpec(norm="tdbn", time_steps=4),
        LayerSpec(norm="tebn", time_steps=4),
        LayerSpec(norm="tab", norm_kwargs={"time_steps": 4}),
    ],
    ids=["tdbn-spec", "tebn-spec", "tab-kwargs"],
)
def test_a_model_that_knows_t_refuses_batch_major_input(layers):
    """T from layers.time_steps or the norm's options: ``[B, T, ...]`` is refused at the model's input."""
    model = SpikingVGG("small", in_channels=1, layers=layers).eval()
    x = torch.randn(4, 16, 1, 8, 8)
    assert model.time_steps == 4 and model(x).shape == (4, 16, 10)
    with pytest.raises(ValueError, match=f"SpikingVGG {BATCH_MAJOR}"):
        model(x.transpose(0, 1))
    with pytest.raises(ValueError, match=r"SpikingMLP expects .* with T=4, got shape \(3, 2, 8\)$"):
        SpikingMLP(8, 2, layers=layers)(torch.randn(3, 2, 8))


def test_time_steps_check_leaves_step_by_step_runs_folding_and_eval_t_working():
    """Inside a stateful scope a model takes single steps; its folded copy checks T too; a task evaluating at
    eval_time_steps runs a model built for time_steps at that T, callbacks that run the network included, and
    the model still refuses batch-major input."""
    from spikenorm.fold import fold_model
    from spikenorm.neurons import stateful
    from spikenorm.tasks import SpikingClassifier

    model = SpikingVGG("small", in_channels=1, layers=LayerSpec(norm="tdbn", time_steps=4)).eval()
    x = torch.randn(4, 16, 1, 8, 8)
    with stateful(model):
        stepped = torch.cat([model(x[t : t + 1]) for t in range(4)])
    torch.testing.assert_close(stepped, model(x))
    with pytest.raises(ValueError, match=BATCH_MAJOR):
        fold_model(model)(x.transpose(0, 1))
    task = SpikingClassifier(model, time_steps=4, eval_time_steps=6).eval()
    assert task(torch.randn(16, 1, 8, 8)).shape == (6, 16, 10)
    assert task.model(torch.randn(6, 16, 1, 8, 8)).shape == (6, 16, 10)  # as a callback runs it, in any mode
    with pytest.raises(ValueError, match=r"with T=4 or 6, got shape \(16, 6, 1, 8, 8\), which looks batch-major"):
        task.model(torch.randn(16, 6, 1, 8, 8))


def test_a_task_evaluating_at_another_t_trains_with_callbacks_that_switch_modes(tmp_path):
    """A model built for T=2 in a task with eval_time_steps=3: BN re-calibration at the end of each training epoch
    (in eval mode, at the evaluation T) hands the network back at T=2 for training, and the fold check runs
    the network at T=3 in validation."""
    from helpers import short_trainer

    from spikenorm.callbacks import BNRecalibration, FoldNormalization
    from spikenorm.datamodules import DigitsDataModule
    from spikenorm.tasks import SpikingClassifier

    model = SpikingVGG([8, "A", 16], in_channels=1, num_classes=10, input_size=8, layers=LayerSpec(time_steps=2))
    callbacks = [BNRecalibration(num_batches=1, before_validation=False), FoldNormalization(save_on_fit_end=False)]
    trainer = short_trainer(2, 1, callbacks, max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(SpikingClassifier(model, time_steps=2, eval_time_steps=3), DigitsDataModule(batch_size=32))
    assert trainer.global_step == 4 and float(trainer.callback_metrics["val/flipped_spikes_folded"]) == 0
