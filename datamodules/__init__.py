"""Lightning DataModules: embedded digits and event-digits, torchvision datasets, tonic DVS datasets."""

from .digits import DigitsDataModule
from .errors import CorruptDataError
from .event_digits import EventDigits, EventDigitsDataModule
from .frame_augment import FrameAugmentation
from .neuromorphic import TonicDataModule
from .vision import TorchvisionDataModule

__all__ = [
    "CorruptDataError",
    "DigitsDataModule",
    "EventDigits",
    "EventDigitsDataModule",
    "FrameAugmentation",
    "TonicDataModule",
    "TorchvisionDataModule",
]
