"""Lightning callbacks that schedule spikenorm core functions (recalibration, folding, monitoring)."""
