"""SOP/MAC counting and energy (spikenorm.energy) against hand-computed and brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from spikenorm.energy import EnergyCosts, OpCounter, synaptic_ops
from spikenorm.fold import check_equivalence, fold_model
from spikenorm.models import LayerSpec, SpikingMLP
from spikenorm.neurons import IF
from spikenorm.norm import TimeMajorNorm
from spikenorm.synapse import TimeDistributed


def test_hand_computed_linear_neuron_linear() -> None:
    """Linear 4->3 on analog input (MACs), IF neurons with known spikes, Linear 3->2 on spikes (SOPs)."""
    first = nn.Linear(4, 3, bias=False)
    second = nn.Linear(3, 2)
    with torch.no_grad():
        first.weight.copy_(torch.eye(3, 4))  # neuron i receives x_i
        second.weight.fill_(0.5)
    net = nn.Sequential(first, IF(threshold=1.0), second)
    # per step x = (2, 0.6, 0.3, 7): IF (hard reset) charges 2 -> spike, spike; 0.6 -> 1.2 spikes at t=1;
    # 0.3 -> 0.6 never. Spikes: t0 (1, 0, 0), t1 (1, 1, 0): 3 spikes per sample.
    T, B = 2, 3
    x = torch.tensor([2.0, 0.6, 0.3, 7.0]).expand(T, B, 4).contiguous()
    with OpCounter(net) as counter:
        net(x)
        counter.add_samples(B)
    report = counter.report(EnergyCosts(e_ac_pj=0.9, e_mac_pj=4.6), time_steps=T)
    assert report.layers["0"].macs == T * 4 * 3 and report.layers["0"].sops == 0  # 24 MACs per sample
    assert report.layers["2"].sops == 3 * 2 and report.layers["2"].macs == 0  # nnz x out
    assert (report.macs, report.sops) == (24, 6)
    assert report.energy_pj == pytest.approx(4.6 * 24 + 0.9 * 6)  # 115.8 pJ
    assert report.energy_uj == pytest.approx(115.8e-6)
    assert report.layer_energy_pj() == pytest.approx({"0": 4.6 * 24, "2": 0.9 * 6})
    # the ANN: 4*3 + 3*2 dense MACs, one step
    assert report.ann_macs == 18 and report.ann_energy_pj == pytest.approx(4.6 * 18)
    assert counter.report().ann_macs is None  # T unknown: no ANN reference


def _reference_conv_sops(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """For every output position and group, count the nonzero inputs in its receptive field (zero padding)."""
    n_batch, channels, height, width = x.shape
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    per_group = channels // conv.groups
    total = 0
    for n, g, oh, ow in itertools.product(range(n_batch), range(conv.groups), range(out_h), range(out_w)):
        for c, kh, kw in itertools.product(range(g * per_group, (g + 1) * per_group), *map(range, conv.kernel_size)):
            h = oh * conv.stride[0] - conv.padding[0] + kh * conv.dilation[0]
            w = ow * conv.stride[1] - conv.padding[1] + kw * conv.dilation[1]
            if 0 <= h < height and 0 <= w < width and x[n, c, h, w] != 0:
                total += conv.out_channels // conv.groups
    return total


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [(2, 1, 1, 1), ((1, 2), (2, 0), (2, 1), 2), (3, 2, 1, 4)],
)
def test_conv_sops_are_exact(stride, padding, dilation, groups) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = (torch.rand(2, 4, 7, 6) < 0.3).float()
    y = conv(x)
    sops, macs, dense = synaptic_ops(conv, x, y)
    assert sops == _reference_conv_sops(conv, x) > 0
    assert macs == 0
    assert dense == y.numel() * (4 // groups) * 3 * 2
    analog = x + 0.5
    assert synaptic_ops(conv, analog, conv(analog)) == (0, dense, dense)


def test_conv_sops_with_circular_padding_count_the_wrapped_spikes() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    x = (torch.rand(1, 2, 5, 5) < 0.4).float()
    wrapped = nn.Conv2d(2, 3, 3)  # the same receptive fields on an explicitly wrapped input, no padding
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    assert synaptic_ops(conv, x, conv(x))[0] == _reference_conv_sops(wrapped, padded)


def test_layers_inside_time_distributed_and_spikingjelly_containers() -> None:
    from spikingjelly.activation_based import layer as sj_layer
    from spikingjelly.activation_based import neuron as sj_neuron

    torch.manual_seed(2)
    T, B = 3, 2
    inner = nn.Conv2d(2, 4, 3, padding=1, stride=2)
    sj_conv = sj_layer.Conv2d(4, 4, 3, padding=1, step_mode="m")
    bn = sj_layer.BatchNorm2d(4, step_mode="m").eval()
    net = nn.Sequential(
        TimeDistributed(inner),
        sj_neuron.IFNode(step_mode="m", v_threshold=0.1),
        sj_conv,
        bn,
        sj_layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
    )
    x = torch.rand(T, B, 2, 8, 8)
    with torch.no_grad(), OpCounter(net) as counter:
        net(x)
        counter.add_samples(B)
    net[1].reset()  # SpikingJelly neurons keep their state between calls
    spikes = net[1](net[0](x))
    report = counter.report()
    assert report.layers["0.module"].macs * B == T * B * 4 * 4 * 4 * 2 * 9
    assert report.layers["2"].sops * B == _reference_conv_sops(sj_conv, spikes.flatten(0, 1)) > 0
    assert report.layers["3"].macs * B == T * B * 4 * 4 * 4  # one MAC per BN input element
    assert report.layers["3"].kind == "norm" and report.layers["4.1"].kind == "synaptic"
    assert report.layers["4.1"].macs * B == T * B * 64 * 3  # BN output is analog: dense MACs


@pytest.mark.parametrize("membrane_norm", [None, "mpbn"])
def test_folded_model_saves_exactly_the_norm_macs(membrane_norm: str | None) -> None:
    torch.manual_seed(3)
    T, B, hidden = 4, 5, (12, 10)
    model = SpikingMLP(6, 3, hidden=hidden, layers=LayerSpec(norm="tdbn", membrane_norm=membrane_norm)).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TimeMajorNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5).mul_(torch.randn_like(m.weight).sign())  # gamma of both signs
    folded = fold_model(model)
    x = torch.rand(T, B, 6, dtype=torch.float64) * 2
    assert check_equivalence(model, folded, x).flipped_spikes == 0  # same spikes, so the SOPs must agree
    reports = []
    for net in (model, folded):
        with torch.no_grad(), OpCounter(net) as counter:
            net(x)
            counter.add_samples(B)
        reports.append(counter.report(time_steps=T))
    live, fold = reports
    norms_per_layer = 2 if membrane_norm else 1  # tdbn after the linear, and MPBN on the membrane
    norm_elements = T * sum(hidden) * norms_per_layer
    assert live.sops == fold.sops > 0
    assert live.macs - fold.macs == norm_elements
    assert live.energy_pj - fold.energy_pj == pytest.approx(4.6 * norm_elements)
    assert not any(op.kind == "norm" for op in fold.layers.values())
    assert live.ann_macs == fold.ann_macs == 6 * 12 + 12 * 10 + 10 * 3


def test_counts_single_step_snntorch_loop() -> None:
    import snntorch as snn

    torch.manual_seed(4)
    fc1, lif, fc2 = nn.Linear(5, 4), snn.Leaky(beta=0.5, threshold=0.5), nn.Linear(4, 2)
    T, B = 3, 2
    x = torch.rand(T, B, 5)
    nnz = 0
    with torch.no_grad(), OpCounter(nn.ModuleList([fc1, lif, fc2])) as counter:
        mem = lif.init_leaky()
        for t in range(T):
            spk, mem = lif(fc1(x[t]), mem)
            fc2(spk)
            nnz += int(spk.count_nonzero())
        counter.add_samples(B)
    report = counter.report(time_steps=T)
    assert report.layers["0"].macs == T * 5 * 4
    assert report.layers["2"].sops * B == nnz * 2


def test_errors() -> None:
    with pytest.raises(ValueError, match="e_ac_pj"):
        EnergyCosts(e_ac_pj=-0.9)
    with pytest.raises(ValueError, match="e_mac_pj"):
        EnergyCosts(e_mac_pj=float("nan"))
    with pytest.raises(ValueError, match="no Linear, Conv or norm"):
        OpCounter(nn.Sequential(nn.ReLU(), IF()))
    counter = OpCounter(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no samples"):
        counter.report()
    with pytest.raises(ValueError, match=">= 0"):
        counter.add_samples(-1)
