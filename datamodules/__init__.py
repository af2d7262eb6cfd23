"""Lightning DataModules: embedded digits and event-digits, torchvision datasets, tonic DVS datasets.

The event datasets (``EventDigits``, ``EventDigitsDataModule``, ``TonicDataModule``) need the ``dvs`` extra and
are imported on first access (:func:`spikenorm.extras.lazy_members`).
"""

from typing import TYPE_CHECKING

from spikenorm.extras import lazy_members

from .digits import DigitsDataModule
from .errors import CorruptDataError
from .frame_augment import FrameAugmentation
from .vision import TorchvisionDataModule

if TYPE_CHECKING:
    from .event_digits import EventDigits, EventDigitsDataModule
    from .neuromorphic import TonicDataModule

__getattr__ = lazy_members(
    __name__,
    {
        "EventDigits": "spikenorm.datamodules.event_digits",
        "EventDigitsDataModule": "spikenorm.datamodules.event_digits",
        "TonicDataModule": "spikenorm.datamodules.neuromorphic",
    },
)

__all__ = [
    "CorruptDataError",
    "DigitsDataModule",
    "EventDigits",
    "EventDigitsDataModule",
    "FrameAugmentation",
    "TonicDataModule",
    "TorchvisionDataModule",
]
