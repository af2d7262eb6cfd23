"""Q-networks for discrete actions: the spiking DSQN of the CaRe-BN code and a ReLU MLP baseline.

:class:`SpikingQNetwork` is the deep spiking Q-network of the CaRe-BN reference code's discrete-control part
(xuzijie32/CaRe-BN, ``discrete_control/dsqn_carebn.py``; without norms, ``vanilla_dsqn.py``). It takes a plain
batch of observations ``[B, obs_dim]`` and encodes time itself (direct encoding, the observation is the input
current of every step):

    x_t = input_scale * obs                      (t = 1..T, the same at every step)   [T, B, obs_dim]
        -> [Linear -> norm -> neuron] x len(hidden)                                    [T, B, hidden[-1]]
        -> spike count a = sum_t s_t of the last hidden layer                          [B, hidden[-1]]
        -> Q = W a + b   (one nn.Linear, no norm, no neuron)                           [B, num_actions]

Inside the network every activation is time-major ``[T, B, ...]`` as in every spikenorm model, so the norms,
neurons, :func:`spikenorm.recalibrate.recalibrate_bn` and :func:`spikenorm.fold.fold_model` treat it alike.
The neurons are multi-step and stateless: every call starts from zero state.

:class:`MLPQNetwork` is the ANN row: a ReLU MLP with the same input/output contract. The reference code has no
ANN DQN, so its settings (widths, no input scaling) are spikenorm's choice, not the paper's.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from spikenorm.models.layers import LayerSpec, spiking_linear
from spikenorm.models.rl import _mlp, carebn_layer_factory, check_batch_input, check_sizes, check_widths
from spikenorm.traceable import traceable

__all__ = ["DSQN_LAYERS", "MLPQNetwork", "SpikingQNetwork", "direct_encoding", "observation_batch"]

#: The DSQN reference code's layers: CaRe-BN norms (``gamma = beta = v_th / 2 = 0.25``), LIF neurons written as
#: CLIF with current decay 0 (``c_t = x_t``, ``v_t = 0.75 v_{t-1} (1 - s_{t-1}) + c_t``, ``s_t = 1[v_t > 0.5]``,
#: reset gradient not detached), rectangular surrogate of width 1 (``ds/dv = 1[|v - 0.5| < 0.5]``).
DSQN_LAYERS = LayerSpec(
    norm="carebn",
    neuron="clif",
    neuron_kwargs={"current_decay": 0.0, "decay": 0.75, "threshold": 0.5},
    surrogate="rectangle",
)


@traceable
def observation_batch(obs: Tensor, like: Tensor, where: str, features: int) -> Tensor:
    """``obs`` cast to the floating dtype of ``like`` (a network weight) and checked to be ``[B, features]``.

    Integer observations (uint8 Atari RAM, kept so in the replay buffer) are accepted: the cast comes before the
    check (:func:`spikenorm.models.rl.check_batch_input`). :func:`~spikenorm.traceable.traceable`.
    """
    if isinstance(obs, Tensor) and not obs.is_complex() and obs.dtype != like.dtype:
        obs = obs.to(like.dtype)
    check_batch_input(obs, where, features)
    return obs


@traceable
def direct_encoding(obs: Tensor, time_steps: int, scale: float = 1.0) -> Tensor:
    """Direct (current) encoding: ``scale * obs`` at every one of ``time_steps`` steps, ``[T, B, ...]``
    (an expanded view, no copy). :func:`~spikenorm.traceable.traceable`."""
    x = obs if scale == 1.0 else obs * scale
    return x.unsqueeze(0).expand(time_steps, *x.shape)


def _check_time_steps(time_steps: int) -> int:
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be a positive int, got {time_steps!r}")
    return time_steps


def _check_scale(input_scale: float) -> float:
    scale = float(input_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"input_scale must be finite and > 0, got {input_scale!r}")
    return scale


class SpikingQNetwork(nn.Module):
    """Deep spiking Q-network (DSQN) of the CaRe-BN reference code: ``obs [B, obs_dim] -> Q [B, num_actions]``.

    With ``x_t = input_scale * obs`` at every step ``t = 1..T`` and ``s^0_t = x_t``, for each hidden layer ``l``::

        y^l_t = norm(W_l s^{l-1}_t)            (statistics pooled over batch and time for carebn/bn/tdbn)
        s^l_t = neuron(y^l_t)                  (DSQN_LAYERS: c_t = y_t, v_t = 0.75 v_{t-1}(1 - s_{t-1}) + c_t,
                                                s_t = 1[v_t > 0.5], rectangular surrogate of width 1)
        Q = W_out (sum_t s^L_t) + b_out        (the spike count 0..T of the last hidden layer, then nn.Linear)

    as ``dsqn_carebn.py`` (network ``SpikeMLP``, readout ``Q = out_pop_layer(sum of spikes)``); with
    ``norm="none"`` the same maths without BN is ``vanilla_dsqn.py``. The reference's unused output BN is left
    out. The reference feeds Atari RAM bytes unscaled (0..255): ``input_scale = 1``.

    Ca-BN: the CaRe-BN running statistics follow the Ca-BN filter only inside
    :func:`spikenorm.norm.carebn.ca_bn_updates` (the DQN task enters it for the online network's loss forward
    on the sampled current states, once per gradient step, as the reference code); Re-BN is
    :func:`spikenorm.recalibrate.recalibrate_bn` with ``mode="single_pass"`` on replay batches.

    The linear layers have no bias when a norm follows (the normalisation cancels it); with ``norm="none"`` they
    keep it. Observations of any real dtype (uint8 RAM included) are cast to the weights' dtype.

    Args:
        obs_dim: observation size (128 for Atari RAM).
        num_actions: number of discrete actions.
        hidden: widths of the hidden spiking layers (the reference: 128, 128).
        time_steps: ``T`` (the reference: 5); also ``layers.time_steps`` (which, if set, must agree).
        layers: the spiking layers (:class:`~spikenorm.models.layers.LayerSpec`, default :data:`DSQN_LAYERS`).
            As in :class:`~spikenorm.models.PopSANActor`: ``neuron_kwargs``' ``threshold`` defaults to 0.5 and for
            ``lif`` ``decay`` to 0.75; a norm taking ``v_th`` (``carebn``, ``tdbn``) gets the neuron threshold
            unless ``norm_kwargs`` sets it; ``binary_weights`` and ``shortcuts`` are refused.
        input_scale: factor on the observation before encoding (1: the reference's raw bytes).
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden: Sequence[int] = (128, 128),
        time_steps: int = 5,
        layers: LayerSpec = DSQN_LAYERS,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_sizes(obs_dim, num_actions)
        widths = check_widths(hidden)
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.time_steps = _check_time_steps(time_steps)
        self.input_scale = _check_scale(input_scale)
        if not isinstance(layers, LayerSpec):
            raise TypeError(f"layers must be a spikenorm.models.LayerSpec, got {type(layers).__name__}")
        factory = carebn_layer_factory(layers, time_steps, type(self).__name__, "the Q-network")

        sizes = [obs_dim, *widths]
        self.snn = nn.Sequential(
            *(spiking_linear(factory, a, b, receives_spikes=i > 0) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))
        )
        self.head = nn.Linear(widths[-1], num_actions)

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [B, obs_dim]`` (any real dtype) -> Q-values ``[B, num_actions]``."""
        return self.head(self.output_spikes(obs).sum(0))

    def output_spikes(self, obs: Tensor) -> Tensor:
        """Spikes of the last hidden layer ``[T, B, hidden[-1]]``."""
        obs = observation_batch(obs, self.head.weight, type(self).__name__, self.obs_dim)
        return self.snn(direct_encoding(obs, self.time_steps, self.input_scale))

    def receive_time_steps(self, time_steps: int) -> None:
        """The task's ``T`` (:func:`spikenorm.time_steps.bind_time_steps`): the network encodes its own
        ``time_steps``, so another ``T`` is refused."""
        if time_steps != self.time_steps:
            raise ValueError(f"the Q-network encodes T={self.time_steps} steps itself, not T={time_steps}")

    def norm_layers(self) -> list[nn.Module]:
        """The norm layer of every hidden spiking layer, input side first."""
        return [block[1] for block in self.snn]

    def extra_repr(self) -> str:
        scale = "" if self.input_scale == 1.0 else f", input_scale={self.input_scale}"
        return f"obs_dim={self.obs_dim}, num_actions={self.num_actions}, time_steps={self.time_steps}{scale}"


class MLPQNetwork(nn.Module):
    """ReLU MLP Q-network, the ANN baseline: ``obs [B, obs_dim] -> Q [B, num_actions]``.

    With the default ``hidden = (128, 128)``::

        Q = W3 relu(W2 relu(W1 (input_scale * obs) + b1) + b2) + b3

    (PyTorch's default ``nn.Linear`` initialisation). The CaRe-BN reference code has no ANN DQN: these settings
    are spikenorm's choice, sized like :class:`SpikingQNetwork`. Same input contract: observations of any real
    dtype (uint8 RAM included) are cast to the weights' dtype.

    Args:
        obs_dim: observation size.
        num_actions: number of discrete actions.
        hidden: widths of the hidden ReLU layers.
        input_scale: factor on the observation (1: raw, as the reference's spiking networks).
    """

    def __init__(
        self, obs_dim: int, num_actions: int, hidden: Sequence[int] = (128, 128), input_scale: float = 1.0
    ) -> None:
        super().__init__()
        check_sizes(obs_dim, num_actions)
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.input_scale = _check_scale(input_scale)
        self.net = _mlp(obs_dim, check_widths(hidden), num_actions)

    def forward(self, obs: Tensor) -> Tensor:
        """``obs [B, obs_dim]`` (any real dtype) -> Q-values ``[B, num_actions]``."""
        obs = observation_batch(obs, self.net[-1].weight, type(self).__name__, self.obs_dim)
        return self.net(obs if self.input_scale == 1.0 else obs * self.input_scale)

    def extra_repr(self) -> str:
        scale = "" if self.input_scale == 1.0 else f", input_scale={self.input_scale}"
        return f"obs_dim={self.obs_dim}, num_actions={self.num_actions}{scale}"
