"""LightningModules on one small base (:class:`~spikenorm.tasks.base.SpikingTask`): supervised classification, with
online training and knowledge distillation as parts, and online RL with spiking actors.

The online RL tasks ``SpikingTD3`` and ``SpikingDQN`` (on one base, :class:`~spikenorm.tasks.off_policy.OffPolicyTask`)
need the ``rl`` extra and are imported on first access (:func:`spikenorm.extras.lazy_members`).
"""

from typing import TYPE_CHECKING

from spikenorm.extras import lazy_members
from spikenorm.tasks.base import SpikingTask
from spikenorm.tasks.classification import SpikingClassifier
from spikenorm.tasks.distillation import Distillation
from spikenorm.tasks.losses import mean_logit_ce, tet_loss
from spikenorm.tasks.online import OnlineTraining

if TYPE_CHECKING:
    from spikenorm.tasks.dqn import SpikingDQN
    from spikenorm.tasks.td3 import SpikingTD3

__getattr__ = lazy_members(__name__, {"SpikingTD3": "spikenorm.tasks.td3", "SpikingDQN": "spikenorm.tasks.dqn"})

__all__ = [
    "Distillation",
    "OnlineTraining",
    "SpikingClassifier",
    "SpikingDQN",
    "SpikingTD3",
    "SpikingTask",
    "mean_logit_ce",
    "tet_loss",
]
