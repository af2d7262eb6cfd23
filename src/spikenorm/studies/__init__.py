"""Studies: run grids of spikenorm fits and tabulate any set of runs."""
