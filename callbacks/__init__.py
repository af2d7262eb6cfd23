"""Lightning callbacks that schedule spikenorm core functions (recalibration, folding, monitoring)."""

from spikenorm.callbacks.fold import FoldNormalization

__all__ = ["FoldNormalization"]
