"""LightningModules: supervised classification (and, as they land, RL)."""

from spikenorm.tasks.classification import SpikingClassifier
from spikenorm.tasks.losses import mean_logit_ce, tet_loss

__all__ = ["SpikingClassifier", "mean_logit_ce", "tet_loss"]
