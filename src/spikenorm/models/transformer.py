"""A tiny Spikformer-style spiking vision transformer (Zhou et al., ICLR 2023), sized for CPU runs.

Layout of the activations: the patch splitter works on images ``[T, B, C, H, W]``; the transformer on
tokens ``[T, B, N, D]`` (``N`` tokens of ``D`` features), so that ``nn.Linear`` acts on the features at
every step and token. The norm layers and neurons of spikenorm expect channels at axis 2, so they run
inside :class:`TokenChannels`, which moves the feature axis to axis 2 (``[T, B, D, N]``) and back.

Used by SEI-BWSNN (Binary-weight SNNs trained as self-ensembles): ``layers.binary_weights=True`` binarises the
weights of every block's MLP (``blocks.<i>.mlp.fc1`` / ``fc2``) and keeps the patch splitter, the attention and
the classifier in full precision.
"""

from __future__ import annotations

from torch import Tensor, nn

from spikenorm.binary import binarize_model
from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, SpikingModel, spiking_conv
from spikenorm.synapse import TimeDistributed
from spikenorm.traceable import traceable
from spikenorm.validation import check_time_major


class TokenChannels(nn.Sequential):
    """Run channels-at-axis-2 modules (norms, neurons) on channels-last tokens ``[T, B, N, D]``.

    The input is viewed as ``[T, B, D, N]`` (features at axis 2, as every spikenorm norm and neuron
    expects, so per-channel statistics and thresholds belong to the ``D`` features), the wrapped modules
    run in order, and the result is moved back to ``[T, B, N, D]``.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        check_time_major(x, "TokenChannels", min_ndim=3)
        x = x.movedim(-1, 2)
        for module in self:
            x = module(x)
        return x.movedim(2, -1)


def token_norm_neuron(factory: SpikingLayerFactory, features: int, neuron: bool = True) -> TokenChannels:
    """``norm -> neuron`` (or the norm alone) over ``features`` channels of tokens ``[T, B, N, features]``."""
    modules: list[nn.Module] = [factory.make_norm(features)]
    if neuron:
        modules.append(factory.make_neuron((features,)))
    return TokenChannels(*modules)


@traceable
def check_spatial_size(x: Tensor, where: str, size: int) -> None:
    """Raise a ValueError unless ``x`` = ``[T, B, C, H, W]`` has ``H == W == size``."""
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{where} was built for {size}x{size} input (input_size={size}), got shape {tuple(x.shape)}")


class SpikingPatchSplitting(nn.Module):
    """SPS: ``[conv3x3 -> norm -> neuron -> maxpool2x2] x log2(patch_size)`` and a relative position embedding.

    The channels double at every stage and end at ``embed_dim``; each stage halves the feature map
    (max pooling of spikes gives spikes), so an ``input_size`` image becomes ``(input_size / patch_size)^2``
    tokens. ``patch_size = 1`` gives one stage without pooling. The relative position embedding is
    ``RPE = norm(conv3x3(x))`` and the output is ``x + RPE`` (Spikformer eq. 3-4), flattened to tokens
    ``[T, B, N, embed_dim]``.
    """

    def __init__(
        self, factory: SpikingLayerFactory, in_channels: int, embed_dim: int, input_size: int, patch_size: int
    ):
        super().__init__()
        downsamples = patch_size.bit_length() - 1  # log2(patch_size)
        stages = max(downsamples, 1)
        widths = [max(embed_dim >> (stages - 1 - i), 1) for i in range(stages)]
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for i, width in enumerate(widths):
            layers.append(spiking_conv(factory, channels, width, in_size=size, receives_spikes=i > 0))
            if i < downsamples:
                layers.append(TimeDistributed(nn.MaxPool2d(2)))
                size //= 2
            channels = width
        self.stages = nn.Sequential(*layers)
        rpe_conv = nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=not factory.uses_norm)
        self.rpe = nn.Sequential(factory.synapse(TimeDistributed(rpe_conv)), factory.make_norm(embed_dim))
        self.grid_size = size

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(x)  # [T, B, D, H', W'] spikes
        x = x + self.rpe(x)
        return x.flatten(3).transpose(2, 3)  # [T, B, N, D]


class SpikingSelfAttention(nn.Module):
    """SSA: ``Q, K, V = neuron(norm(linear(x)))``; per head ``Q K^T V * scale`` (no softmax) -> neuron;
    then ``linear -> norm -> neuron`` projection. Tokens ``[T, B, N, D]`` in and out (spikes out).

    Spike products are non-negative, so no softmax is needed; without it ``(Q K^T) V = Q (K^T V)``,
    computed in the second order (cost ``O(N d^2)`` per head instead of ``O(N^2 d)``). Both orders are
    exact in floating point here, since the entries are integer counts.
    """

    def __init__(self, factory: SpikingLayerFactory, dim: int, num_heads: int, scale: float):
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale
        bias = not factory.uses_norm
        self.q = nn.Linear(dim, dim, bias=bias)
        self.q_act = token_norm_neuron(factory, dim)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.k_act = token_norm_neuron(factory, dim)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.v_act = token_norm_neuron(factory, dim)
        self.attn_act = TokenChannels(factory.make_neuron((dim,)))
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj_act = token_norm_neuron(factory, dim)

    def heads(self, x: Tensor) -> Tensor:
        """``[T, B, N, D] -> [T, B, heads, N, D / heads]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        q = self.heads(self.q_act(self.q(x)))
        k = self.heads(self.k_act(self.k(x)))
        v = self.heads(self.v_act(self.v(x)))
        attn = q @ (k.transpose(-2, -1) @ v) * self.scale  # [T, B, heads, N, D / heads]
        attn = self.attn_act(attn.transpose(2, 3).flatten(-2))  # [T, B, N, D] spikes
        return self.proj_act(self.proj(attn))


class SpikingMLPBlock(nn.Module):
    """``fc1 -> norm -> neuron -> fc2 -> norm -> neuron`` on tokens ``[T, B, N, D]`` (spikes out)."""

    def __init__(self, factory: SpikingLayerFactory, dim: int, hidden: int):
        super().__init__()
        bias = not factory.uses_norm
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act1 = token_norm_neuron(factory, hidden)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act2 = token_norm_neuron(factory, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))


class SpikformerBlock(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` (Spikformer adds the spike outputs to the token stream)."""

    def __init__(self, factory: SpikingLayerFactory, dim: int, num_heads: int, hidden: int, scale: float):
        super().__init__()
        self.attn = SpikingSelfAttention(factory, dim, num_heads, scale)
        self.mlp = SpikingMLPBlock(factory, dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SpikingTransformer(SpikingModel):
    """Tiny Spikformer on ``[T, B, C, H, W]``, output per-step logits ``[T, B, num_classes]``.

    ``SPS -> depth x (x + SSA(x); x + MLP(x)) -> mean over tokens -> classifier`` (the classifier does
    not spike). See :class:`SpikingPatchSplitting`, :class:`SpikingSelfAttention` and
    :class:`SpikingMLPBlock`.

    Args:
        in_channels: input channels.
        num_classes: classifier outputs.
        input_size: input height (= width); the model accepts only this size.
        patch_size: side of a patch, a power of 2 dividing ``input_size``; ``(input_size / patch_size)^2``
            tokens.
        embed_dim: token features ``D`` (divisible by ``num_heads``).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        attention_scale: the constant factor of ``Q K^T V`` (Spikformer uses 0.125).
        layers: norm, neuron, surrogate and their options (:class:`~spikenorm.models.layers.LayerSpec`);
            ``membrane_norm`` normalises the membrane of every neuron, the attention's included, with
            per-feature statistics: an element-wise membrane norm (``membrane_norm_kwargs={"elementwise": True}``)
            is refused, since the token neurons are built per feature and shared by every token.
            ``binary_weights`` binarises the MLP weights of every block (``blocks.<i>.mlp.fc1``/``fc2``) with
            :func:`spikenorm.binary.binarize_model` (SEI-BWSNN); everything else stays full precision. ``trace``
            and ``shortcuts`` are refused: the attention's spike products and the residual token stream are not
            synapse-then-neuron layers.
    """

    input_ndim = 5

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        attention_scale: float = 0.125,
        layers: LayerSpec = LayerSpec(),
    ) -> None:
        super().__init__()
        layers.refuse(
            type(self).__name__,
            "trace",
            "shortcuts",
            reason="the attention's spike products and the residual token stream are not synapse-then-neuron layers",
        )
        positive = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "input_size": input_size,
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SpikingTransformer: {name} must be a positive int, got {value!r}")
        if patch_size & (patch_size - 1):
            raise ValueError(f"SpikingTransformer: patch_size must be a power of 2, got {patch_size}")
        if input_size % patch_size:
            raise ValueError(
                f"SpikingTransformer: input_size must be divisible by patch_size, got input_size={input_size} "
                f"and patch_size={patch_size}"
            )
        if embed_dim % num_heads:
            raise ValueError(
                f"SpikingTransformer: embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                f"num_heads={num_heads}"
            )
        hidden = int(embed_dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"SpikingTransformer: mlp_ratio must give an MLP width >= 1, got mlp_ratio={mlp_ratio}")
        factory = SpikingLayerFactory(layers)
        self.time_steps = factory.time_steps
        if layers.membrane_norm is not None and factory.elementwise_membrane:
            raise ValueError(
                "SpikingTransformer does not support element-wise membrane norms: layers.membrane_norm="
                f"{layers.membrane_norm!r} with membrane_norm_kwargs={layers.membrane_norm_kwargs!r} asks for one "
                "statistic per neuron, but the token neurons are built per feature (D,), shared by every token; "
                "drop elementwise for per-feature statistics"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = input_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_tokens = (input_size // patch_size) ** 2
        self.patch_embed = SpikingPatchSplitting(factory, in_channels, embed_dim, input_size, patch_size)
        self.blocks = nn.ModuleList(
            SpikformerBlock(factory, embed_dim, num_heads, hidden, attention_scale) for _ in range(depth)
        )
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.binary_layers: list[str] = []
        if layers.binary_weights:
            self.binary_layers = list(binarize_model(self, include=["blocks.*.mlp.fc*"], keep_first_last=False))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x, channels=self.in_channels)
        check_spatial_size(x, type(self).__name__, self.input_size)
        x = self.patch_embed(x)  # [T, B, N, D]
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean(dim=2))  # mean over tokens -> [T, B, num_classes]
