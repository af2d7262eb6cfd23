"""Lightning callbacks that schedule spikenorm core functions (recalibration, folding, monitoring, export) and
keep a run's files (last checkpoint, predictions). What they need from a task and a trainer is written once:
the task Protocols (:mod:`spikenorm.callbacks.task_protocols`), the network of a task
(:mod:`spikenorm.callbacks.task_network`), the inputs of a batch (:mod:`spikenorm.callbacks.batches`), where files go
(:mod:`spikenorm.callbacks.output_folders`), when work is due (:mod:`spikenorm.callbacks.schedules`) and one hook
for every evaluation batch (:mod:`spikenorm.callbacks.evaluation_batches`).

``NIRExport`` needs the ``export`` extra and ``ReplayRecalibration`` the ``rl`` extra; both are imported on first
access (:func:`spikenorm.extras.lazy_members`).
"""

from typing import TYPE_CHECKING

from spikenorm.callbacks.binary_export import PackedBinaryExport
from spikenorm.callbacks.bn_recalibration import BNRecalibration
from spikenorm.callbacks.energy_monitor import EnergyMonitor
from spikenorm.callbacks.fold_normalization import FoldNormalization
from spikenorm.callbacks.last_checkpoint import LastCheckpoint
from spikenorm.callbacks.norm_diagnostics import NormDiagnostics
from spikenorm.callbacks.prediction_writer import PredictionWriter
from spikenorm.callbacks.spike_monitor import SpikeMonitor
from spikenorm.extras import lazy_members

if TYPE_CHECKING:
    from spikenorm.callbacks.nir_export import NIRExport
    from spikenorm.callbacks.replay_recalibration import ReplayRecalibration

__getattr__ = lazy_members(
    __name__,
    {
        "NIRExport": "spikenorm.callbacks.nir_export",
        "ReplayRecalibration": "spikenorm.callbacks.replay_recalibration",
    },
)

__all__ = [
    "BNRecalibration",
    "EnergyMonitor",
    "FoldNormalization",
    "LastCheckpoint",
    "NIRExport",
    "NormDiagnostics",
    "PackedBinaryExport",
    "PredictionWriter",
    "ReplayRecalibration",
    "SpikeMonitor",
]
