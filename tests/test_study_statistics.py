"""The statistics of ``spikenorm compare`` against numpy/scipy and hand computations on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spikenorm.studies.statistics import (
    bootstrap_interval,
    interquartile_mean,
    paired_difference,
    stratified_bootstrap_iqm,
    stratified_resamples,
    summarize,
)

VALUES = [0.81, 0.84, 0.79, 0.90, 0.86, 0.83]


def _numpy_percentile_bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """An independent percentile bootstrap of the mean: draw indexes, average, take the 2.5/97.5 percentiles."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def test_summary_matches_numpy_and_an_independent_bootstrap():
    summary = summarize(VALUES)
    assert summary.n == 6
    assert summary.mean == pytest.approx(np.mean(VALUES), abs=1e-15)
    assert summary.std == pytest.approx(np.std(VALUES, ddof=1), abs=1e-15)
    reference = _numpy_percentile_bootstrap(np.array(VALUES), 200_000, seed=123)
    # Monte-Carlo error of a 2.5% quantile of 10^4 resample means: a few 1e-4 here (std of the mean ~ 0.0153)
    assert summary.interval == pytest.approx(reference, abs=2e-3)
    assert summary.interval[0] < summary.mean < summary.interval[1]


def test_degenerate_samples():
    single = summarize([0.5])
    assert (single.n, single.mean, single.interval) == (1, 0.5, None) and np.isnan(single.std)
    assert bootstrap_interval([0.7, 0.7, 0.7]) == (0.7, 0.7)
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])


def test_paired_difference_uses_the_shared_seeds_only():
    values = {0: 0.90, 1: 0.85, 2: 0.88, 5: 0.10}
    baseline = {0: 0.80, 1: 0.86, 2: 0.83, 3: 0.99}
    paired = paired_difference(values, baseline)
    differences = np.array([0.10, -0.01, 0.05])
    assert paired.n == 3
    assert paired.mean == pytest.approx(differences.mean(), abs=1e-12)
    assert paired.interval == pytest.approx(_numpy_percentile_bootstrap(differences, 200_000, seed=7), abs=3e-3)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_interquartile_mean_matches_scipy_and_a_hand_computation():
    eight = [10.0, 1.0, 7.0, 3.0, 100.0, 5.0, 2.0, -50.0]
    # sorted: -50 1 2 3 5 7 10 100; cut 2 at each end -> mean(2, 3, 5, 7) = 4.25
    assert interquartile_mean(eight) == 4.25 == stats.trim_mean(eight, 0.25)
    five = [4.0, 1.0, 3.0, 2.0, 50.0]  # floor(5 / 4) = 1 cut at each end -> mean(2, 3, 4) = 3
    assert interquartile_mean(five) == 3.0


def test_stratified_resamples_never_mix_strata():
    strata = {"low": [0.0, 1.0, 2.0], "high": [100.0, 101.0, 102.0, 103.0, 104.0]}
    resamples = stratified_resamples(strata, 2000, seed=3)
    assert resamples.shape == (2000, 8)
    assert np.isin(resamples[:, :3], strata["low"]).all()
    assert np.isin(resamples[:, 3:], strata["high"]).all()
    # with replacement: some resample repeats a run
    assert any(len(set(row[:3])) < 3 for row in resamples)


def test_stratified_bootstrap_iqm_contains_the_iqm_and_keeps_stratum_sizes():
    strata = {"low": [0.0, 1.0, 2.0, 3.0], "high": [100.0, 101.0, 102.0, 103.0]}
    iqm, (low, high) = stratified_bootstrap_iqm(strata)
    pooled = strata["low"] + strata["high"]
    assert iqm == pytest.approx(stats.trim_mean(pooled, 0.25))  # mean(2, 3, 100, 101) = 51.5
    assert iqm == 51.5
    assert low <= iqm <= high
    # every resample holds 4 low and 4 high runs, so its middle 50% is the top 2 low and bottom 2 high runs:
    # the IQM can never leave [mean(0, 0, 100, 100), mean(3, 3, 103, 103)] = [50, 53]
    assert 50.0 <= low and high <= 53.0
    # an unstratified bootstrap of the pool would draw e.g. 8 low runs: IQMs near 1.5 -> a far wider interval
    single, (low1, high1) = stratified_bootstrap_iqm({"all": pooled})
    assert single == iqm and low1 < 10.0 and high1 > 95.0
