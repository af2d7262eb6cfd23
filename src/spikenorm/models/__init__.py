"""Spiking models: input ``[T, B, ...]``, output per-step logits ``[T, B, num_classes]``."""

from spikenorm.models.layers import SpikingLayerFactory, SpikingModel, TimeDistributed
from spikenorm.models.mlp import SpikingMLP
from spikenorm.models.resnet import SpikingResNet19
from spikenorm.models.transformer import SpikingTransformer
from spikenorm.models.vgg import VGG_CONFIGS, SpikingVGG

__all__ = [
    "SpikingLayerFactory",
    "SpikingMLP",
    "SpikingModel",
    "SpikingResNet19",
    "SpikingTransformer",
    "SpikingVGG",
    "TimeDistributed",
    "VGG_CONFIGS",
]

from spikenorm.models.rl import DDPGCritic, PopSANActor, PopulationDecoder, PopulationEncoder, TwinQCritic

__all__ += ["DDPGCritic", "PopSANActor", "PopulationDecoder", "PopulationEncoder", "TwinQCritic"]
