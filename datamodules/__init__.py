"""Lightning DataModules: embedded digits, torchvision datasets."""

from .digits import DigitsDataModule
from .vision import TorchvisionDataModule

__all__ = ["DigitsDataModule", "TorchvisionDataModule"]
