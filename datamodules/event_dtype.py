"""The event record every spikenorm event source produces: readers, the DVS emulator, the fake-data writers.

A recording is a 1-D numpy structured array of :data:`EVENT_DTYPE`, fields by name (tonic style), so tonic
transforms (``Downsample``, ``ToFrame``) and :class:`~spikenorm.datamodules.event_frames.EventsToFrames`
accept it directly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EVENT_DTYPE"]

#: pixel column ``x``, row ``y``, time ``t`` in microseconds, polarity ``p`` (1 = ON, the log intensity rose;
#: 0 = OFF, it fell).
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
