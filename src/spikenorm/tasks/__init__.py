"""LightningModules: supervised classification and online RL with spiking actors."""

from spikenorm.tasks.classification import SpikingClassifier
from spikenorm.tasks.losses import mean_logit_ce, tet_loss
from spikenorm.tasks.td3 import SpikingTD3

__all__ = ["SpikingClassifier", "SpikingTD3", "mean_logit_ce", "tet_loss"]
