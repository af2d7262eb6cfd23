"""Summary statistics of a metric over the runs of a group: mean, spread, bootstrap intervals, paired differences,
and the interquartile mean with stratified bootstrap intervals recommended for RL returns.

* :func:`summarize`: ``n``, the mean, the sample standard deviation ``s = sqrt(sum((x - mean)^2) / (n - 1))`` and
  a 95% percentile bootstrap interval of the mean (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
  ch. 13): resample the ``n`` values with replacement, take each resample's mean, and report the 2.5% and 97.5%
  percentiles of those means (``scipy.stats.bootstrap(method="percentile")``, fixed seed).
* :func:`paired_difference`: the per-seed differences ``d_s = x_s - b_s`` to a baseline group over the seeds both
  groups ran, their mean and its percentile bootstrap interval (pairing removes the variation the seed causes in
  both groups alike).
* :func:`interquartile_mean` and :func:`stratified_bootstrap_iqm`: the IQM, the mean of the middle 50% of the
  pooled runs (``scipy.stats.trim_mean(x, 0.25)``: ``floor(n / 4)`` values cut at each end), with a percentile
  interval from a stratified bootstrap that resamples runs with replacement within each stratum (task) and
  recomputes the IQM of the pool; Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
  Precipice", NeurIPS. The maintained implementation, rliable 1.2.0, pins ``arch < 8``, whose 7.x releases fail to
  import with pandas 3 (``deprecate_kwarg() missing 1 required positional argument``), so this module implements
  the same estimator with numpy.

Degenerate samples: one value gives no interval (``None``); identical values give the value as both ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "CONFIDENCE",
    "Interval",
    "PairedDifference",
    "Summary",
    "bootstrap_interval",
    "interquartile_mean",
    "paired_difference",
    "stratified_bootstrap_iqm",
    "stratified_resamples",
    "summarize",
]

#: the confidence level of every interval
CONFIDENCE = 0.95
#: bootstrap resamples of every interval
RESAMPLES = 10_000
#: the seed of every bootstrap, so that a table is the same each time it is computed
SEED = 0

Interval = tuple[float, float]


@dataclass(frozen=True)
class Summary:
    """``n`` values: mean, sample standard deviation (``nan`` for one value) and bootstrap interval of the mean."""

    n: int
    mean: float
    std: float
    interval: Interval | None


@dataclass(frozen=True)
class PairedDifference:
    """The mean of the per-seed differences to the baseline over the ``n`` shared seeds, with its interval."""

    n: int
    mean: float
    interval: Interval | None


def _values(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what}: expected at least one value, got none")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: expected finite values, got {array.tolist()}")
    return array


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = SEED) -> Interval | None:
    """The percentile bootstrap interval of the mean of ``values`` (``RESAMPLES`` resamples, fixed ``seed``).

    ``None`` for a single value; ``(v, v)`` when every value is ``v`` (every resample has mean ``v``).
    """
    array = _values(values, "bootstrap interval")
    if array.size == 1:
        return None
    if np.all(array == array[0]):
        return float(array[0]), float(array[0])
    result = stats.bootstrap(
        (array,),
        np.mean,
        confidence_level=confidence,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(values: Sequence[float]) -> Summary:
    """``n``, mean, sample standard deviation (ddof 1) and the bootstrap interval of the mean of ``values``."""
    array = _values(values, "summary")
    std = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return Summary(int(array.size), float(np.mean(array)), std, bootstrap_interval(array))


def paired_difference(values: Mapping[object, float], baseline: Mapping[object, float]) -> PairedDifference | None:
    """The mean of ``values[s] - baseline[s]`` over the keys (seeds) in both, with its bootstrap interval.

    ``None`` when no seed is shared.
    """
    shared = [key for key in values if key in baseline]
    if not shared:
        return None
    differences = _values([values[key] - baseline[key] for key in shared], "paired difference")
    return PairedDifference(len(shared), float(np.mean(differences)), bootstrap_interval(differences))


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle 50% of ``values``: ``scipy.stats.trim_mean(values, 0.25)``."""
    return float(stats.trim_mean(_values(values, "interquartile mean"), 0.25))


def stratified_resamples(strata: Mapping[object, Sequence[float]], n_resamples: int, seed: int = SEED) -> np.ndarray:
    """``n_resamples`` stratified bootstrap resamples of the pooled runs, shape ``[n_resamples, total runs]``.

    Each row draws, for every stratum in turn, as many runs as the stratum holds, with replacement, from that
    stratum only; the columns of a stratum are contiguous, in the order of ``strata``.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for name, values in strata.items():
        array = _values(values, f"stratum {name!r}")
        parts.append(array[rng.integers(0, array.size, size=(n_resamples, array.size))])
    return np.concatenate(parts, axis=1)


def stratified_bootstrap_iqm(
    strata: Mapping[object, Sequence[float]], confidence: float = CONFIDENCE, seed: int = SEED
) -> tuple[float, Interval | None]:
    """The IQM of the pooled runs of all ``strata`` and its stratified percentile bootstrap interval.

    The interval is ``None`` when the pool holds one run.
    """
    if not strata:
        raise ValueError("stratified bootstrap: expected at least one stratum, got none")
    pooled = np.concatenate([_values(values, f"stratum {name!r}") for name, values in strata.items()])
    iqm = interquartile_mean(pooled)
    if pooled.size == 1:
        return iqm, None
    iqms = stats.trim_mean(stratified_resamples(strata, RESAMPLES, seed), 0.25, axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(iqms, [tail, 100 - tail])
    return iqm, (float(low), float(high))
