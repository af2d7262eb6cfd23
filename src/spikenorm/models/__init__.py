"""Spiking models: input ``[T, B, ...]``, output per-step logits ``[T, B, num_classes]``."""

from spikenorm.models.layers import LayerSpec, SpikingLayerFactory, SpikingModel, SpikingStage
from spikenorm.models.mlp import SpikingMLP
from spikenorm.models.resnet import SpikingResNet19
from spikenorm.models.transformer import SpikingTransformer
from spikenorm.models.vgg import VGG_CONFIGS, SpikingVGG

__all__ = [
    "LayerSpec",
    "SpikingLayerFactory",
    "SpikingMLP",
    "SpikingModel",
    "SpikingResNet19",
    "SpikingStage",
    "SpikingTransformer",
    "SpikingVGG",
    "VGG_CONFIGS",
]

from spikenorm.models.q_networks import DSQN_LAYERS, MLPQNetwork, SpikingQNetwork
from spikenorm.models.rl import (
    POPSAN_LAYERS,
    DDPGCritic,
    MLPActor,
    PopSANActor,
    PopulationDecoder,
    PopulationEncoder,
    TwinQCritic,
)

__all__ += [
    "DSQN_LAYERS",
    "DDPGCritic",
    "MLPQNetwork",
    "MLPActor",
    "POPSAN_LAYERS",
    "PopSANActor",
    "PopulationDecoder",
    "PopulationEncoder",
    "SpikingQNetwork",
    "TwinQCritic",
]
