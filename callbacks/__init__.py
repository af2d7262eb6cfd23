"""Lightning callbacks that schedule spikenorm core functions (recalibration, folding, monitoring)."""

from spikenorm.callbacks.binary_export import PackedBinaryExport
from spikenorm.callbacks.bn_recalibration import BNRecalibration
from spikenorm.callbacks.energy_monitor import EnergyMonitor
from spikenorm.callbacks.fold import FoldNormalization
from spikenorm.callbacks.nir_export import NIRExport
from spikenorm.callbacks.recalibration import ReplayRecalibration
from spikenorm.callbacks.spike_monitor import SpikeMonitor

__all__ = [
    "BNRecalibration",
    "EnergyMonitor",
    "FoldNormalization",
    "NIRExport",
    "PackedBinaryExport",
    "ReplayRecalibration",
    "SpikeMonitor",
]
