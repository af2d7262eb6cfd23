"""LightningModules: supervised classification and online RL with spiking actors.

``SpikingTD3`` needs the ``rl`` extra and is imported on first access (:func:`spikenorm.extras.lazy_members`).
"""

from typing import TYPE_CHECKING

from spikenorm.extras import lazy_members
from spikenorm.tasks.classification import SpikingClassifier
from spikenorm.tasks.losses import mean_logit_ce, tet_loss

if TYPE_CHECKING:
    from spikenorm.tasks.td3 import SpikingTD3

__getattr__ = lazy_members(__name__, {"SpikingTD3": "spikenorm.tasks.td3"})

__all__ = ["SpikingClassifier", "SpikingTD3", "mean_logit_ce", "tet_loss"]
