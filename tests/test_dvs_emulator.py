"""DVS emulator: known-answer tests of the log-intensity threshold-crossing model, noise, saccades."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spikenorm.datamodules.dvs_emulator import (
    emulate_events,
    image_to_events,
    saccade_offsets,
    shift_image,
)
from spikenorm.datamodules.event_dtype import EVENT_DTYPE

EPS = 1e-3


def _pixel_series(values, times=None) -> tuple[np.ndarray, np.ndarray]:
    """A 1x1 sensor seeing the given intensities at the given (default: 0, 1000, 2000, ...) times."""
    values = np.asarray(values, dtype=np.float64)
    frames = values.reshape(-1, 1, 1)
    if times is None:
        times = 1000.0 * np.arange(len(values))
    return frames, np.asarray(times, dtype=np.float64)


def _intensity(level: float) -> float:
    """Intensity whose log(I + EPS) equals ``level``."""
    return math.exp(level) - EPS


# ------------------------------------------------------------------------------------------ basics


def test_static_scene_gives_no_events():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, size=(12, 9))
    frames = np.repeat(image[None], 40, axis=0)
    events = emulate_events(frames, np.arange(40) * 1000.0, threshold=0.05)
    assert events.dtype == EVENT_DTYPE
    assert events.size == 0


@pytest.mark.parametrize("threshold", [0.2, 0.37])
@pytest.mark.parametrize("bright_moves_in", [True, False])
@pytest.mark.parametrize("direction", [+1, -1])
def test_moving_step_edge(threshold, bright_moves_in, direction):
    lo, hi = 0.05, 0.8
    height, width, start, steps = 3, 12, 3, 6
    n_frames = steps + 1
    frames = np.empty((n_frames, height, width))
    cols = np.arange(width)
    for k in range(n_frames):
        # the region "behind" the edge grows by one column per frame (rightwards or leftwards)
        edge = start + k if direction > 0 else width - start - k
        behind = cols < edge if direction > 0 else cols >= edge
        inside, outside = (hi, lo) if bright_moves_in else (lo, hi)
        frames[k] = np.where(behind, inside, outside)[None, :]
    times = 10_000.0 * np.arange(n_frames) + 500.0
    events = emulate_events(frames, times, threshold=threshold)

    per_pixel = math.floor(abs(math.log(hi + EPS) - math.log(lo + EPS)) / threshold)
    assert per_pixel >= 5
    if direction > 0:
        passed = set(range(start, start + steps))
    else:
        passed = set(range(width - start - steps, width - start))
    counts = np.zeros((height, width), dtype=int)
    np.add.at(counts, (events["y"], events["x"]), 1)
    expected = np.zeros((height, width), dtype=int)
    expected[:, sorted(passed)] = per_pixel
    np.testing.assert_array_equal(counts, expected)
    assert np.all(events["p"] == (1 if bright_moves_in else 0))
    # each column changes in exactly one interval: its events lie inside that interval
    for col in passed:
        k = col - start + 1 if direction > 0 else width - start - col
        t = events["t"][events["x"] == col]
        assert t.min() >= times[k - 1] and t.max() <= times[k]
    assert np.all(np.diff(events["t"]) >= 0)


def test_single_crossing_time_matches_linear_interpolation():
    theta = 0.2
    l0 = math.log(0.3 + EPS)
    l1 = l0 + 0.6 * theta  # below threshold: no event, but the reference stays at l0
    l2 = l0 + 1.45 * theta  # crosses l0 + theta once, inside (t1, t2)
    frames, times = _pixel_series([_intensity(l0), _intensity(l1), _intensity(l2)], [1_000.0, 5_000.0, 17_000.0])
    events = emulate_events(frames, times, threshold=theta)
    assert events.size == 1 and events["p"][0] == 1
    log_vals = np.log(frames[:, 0, 0] + EPS)
    expected = times[1] + (log_vals[0] + theta - log_vals[1]) / (log_vals[2] - log_vals[1]) * (times[2] - times[1])
    assert abs(events["t"][0] - expected) <= 0.5
    # a model that crossed from the previous frame's level instead would put it far away
    assert abs(expected - (times[1] + theta / (log_vals[2] - log_vals[1]) * (times[2] - times[1]))) > 100


def test_multiple_crossings_are_evenly_spaced():
    theta = 0.25
    l0 = math.log(0.6 + EPS)
    l1 = l0 - 3.5 * theta
    frames, times = _pixel_series([_intensity(l0), _intensity(l1)], [0.0, 70_000.0])
    events = emulate_events(frames, times, threshold=theta)
    assert events.size == 3 and np.all(events["p"] == 0)
    expected = np.array([j / 3.5 * 70_000.0 for j in (1, 2, 3)])  # 20000, 40000, 60000
    np.testing.assert_allclose(events["t"], expected, atol=0.5)


def test_reference_is_quantised_and_never_drifts():
    theta = 0.2
    base = math.log(0.2 + EPS)
    # climb 6.5 thresholds in small steps of 0.65, then drop back in one step: 6 ON and 6 OFF
    # (a reference reset to L at each event would give 5 ON and 6 OFF)
    up = [base + 0.65 * theta * i for i in range(11)]
    frames, times = _pixel_series([_intensity(v) for v in up + [base]])
    events = emulate_events(frames, times, threshold=theta)
    assert int((events["p"] == 1).sum()) == 6
    assert int((events["p"] == 0).sum()) == 6

    # a long random walk that returns to its start: equal ON and OFF on every pixel
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(0.0, 0.3, size=(200, 4, 5)), axis=0)
    walk = np.concatenate([np.zeros((1, 4, 5)), walk, np.zeros((1, 4, 5))])
    frames = np.exp(walk + np.log(0.3))
    events = emulate_events(frames, np.arange(len(frames)) * 100.0, threshold=0.13)
    assert events.size > 1000
    on = np.zeros((4, 5), dtype=int)
    off = np.zeros((4, 5), dtype=int)
    np.add.at(on, (events["y"][events["p"] == 1], events["x"][events["p"] == 1]), 1)
    np.add.at(off, (events["y"][events["p"] == 0], events["x"][events["p"] == 0]), 1)
    np.testing.assert_array_equal(on, off)


def test_events_sorted_by_time_then_row_then_column():
    rng = np.random.default_rng(1)
    frames = rng.uniform(0.0, 1.0, size=(6, 7, 8))
    events = emulate_events(frames, np.arange(6) * 3.0, threshold=0.1)  # tiny intervals: many ties
    keys = np.stack([events["t"], events["y"], events["x"]], axis=1)
    assert events.size > 100
    assert np.all(np.lexsort(keys.T[::-1]) == np.arange(len(keys)))


# ------------------------------------------------------------------------------------------ noise


def test_noise_count_is_poisson_consistent_and_seeded():
    height, width, rate = 64, 64, 50.0
    times = np.array([2_000_000.0, 3_000_000.0])  # 1 s
    frames = np.full((2, height, width), 0.4)
    events = emulate_events(frames, times, noise_rate_hz=rate, rng=7)
    lam = rate * height * width * 1.0  # 204800 expected
    assert abs(events.size - lam) < 6 * math.sqrt(lam)  # +-1.3 %
    assert events["t"].min() >= times[0] and events["t"].max() <= times[1]
    assert abs(events["t"].mean() - times.mean()) < 0.01 * (times[1] - times[0])
    assert abs(events["p"].mean() - 0.5) < 0.01
    counts = np.zeros((height, width), dtype=int)
    np.add.at(counts, (events["y"], events["x"]), 1)
    assert abs(counts.var() / counts.mean() - 1.0) < 0.15  # Poisson: variance = mean per pixel
    assert np.all(np.diff(events["t"]) >= 0)

    again = emulate_events(frames, times, noise_rate_hz=rate, rng=7)
    np.testing.assert_array_equal(events, again)
    other = emulate_events(frames, times, noise_rate_hz=rate, rng=8)
    assert other.size != events.size or not np.array_equal(other, events)
    assert emulate_events(frames, times, noise_rate_hz=0.0, rng=7).size == 0


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": np.ones((4, 4))}, "rank 3"),
        ({"times_us": np.arange(3.0)}, r"shape \[N\]"),
        ({"times_us": np.array([0.0, 2.0, 2.0, 3.0])}, "strictly increasing"),
        ({"times_us": np.array([0.0, 2.0, 1.0, 3.0])}, "strictly increasing"),
        ({"frames": -np.ones((4, 2, 2))}, "non-negative"),
        ({"frames": np.full((4, 2, 2), np.nan)}, "finite frames"),
        ({"threshold": 0.0}, "threshold > 0"),
        ({"threshold": -0.1}, "threshold > 0"),
        ({"log_eps": 0.0}, "log_eps > 0"),
        ({"noise_rate_hz": -1.0}, "noise_rate_hz >= 0"),
    ],
)
def test_emulate_events_validates_inputs(kwargs, match):
    args = {"frames": np.ones((4, 2, 2)), "times_us": np.arange(4.0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        emulate_events(**args)


def test_image_helpers_validate_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_events(np.full((8, 8), 16.0))
    with pytest.raises(ValueError, match="2-D"):
        shift_image(np.ones(8), 0.0, 0.0, 16)
    with pytest.raises(ValueError, match="num_frames >= 2"):
        saccade_offsets(1)


# ------------------------------------------------------------------------------------------ saccades


def test_saccade_path_is_a_closed_triangle_of_three_linear_legs():
    k, amp = 10, 7.0
    offsets = saccade_offsets(3 * k + 1, amplitude=amp)
    assert offsets.shape == (3 * k + 1, 2)
    np.testing.assert_allclose(offsets[0], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(offsets[-1], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(offsets[k], [3.5, 7.0], atol=1e-12)
    np.testing.assert_allclose(offsets[2 * k], [7.0, 0.0], atol=1e-12)
    for leg in range(3):
        segment = offsets[leg * k : (leg + 1) * k + 1]
        np.testing.assert_allclose(np.diff(segment, n=2, axis=0), 0.0, atol=1e-12)  # constant velocity
        assert np.linalg.norm(segment[1] - segment[0]) > 0.1
    # the corners really are corners
    assert not np.allclose(offsets[k] - offsets[k - 1], offsets[k + 1] - offsets[k])


def test_shift_image_integer_shift_is_a_roll_of_the_centred_image():
    rng = np.random.default_rng(2)
    image = rng.uniform(0.0, 1.0, size=(8, 6))
    canvas = 16
    centred = np.zeros((canvas, canvas))
    centred[4:12, 5:11] = image
    np.testing.assert_array_equal(shift_image(image, 0, 0, canvas), centred)
    for dx, dy in [(2, -1), (-3, 4), (5, 0)]:
        expected = np.roll(np.roll(centred, dy, axis=0), dx, axis=1)
        np.testing.assert_allclose(shift_image(image, float(dx), float(dy), canvas), expected, atol=1e-12)


def test_shift_image_subpixel_is_bilinear():
    image = np.zeros((3, 3))
    image[1, 1] = 1.0
    out = shift_image(image, 0.25, 0.5, 5)  # centre pixel (2, 2) spreads right and down
    expected = np.zeros((5, 5))
    expected[2, 2], expected[2, 3] = 0.75 * 0.5, 0.25 * 0.5
    expected[3, 2], expected[3, 3] = 0.75 * 0.5, 0.25 * 0.5
    np.testing.assert_allclose(out, expected, atol=1e-12)


# ------------------------------------------------------------------------------------------ end to end


def test_image_to_events_on_a_digit_and_tonic_frames():
    from sklearn.datasets import load_digits

    digit = load_digits().images[0] / 16.0
    events = image_to_events(digit, rng=0)
    assert events.dtype == EVENT_DTYPE
    assert 200 < events.size < 5000
    assert events["x"].min() >= 0 and events["x"].max() < 16
    assert events["y"].min() >= 0 and events["y"].max() < 16
    assert events["t"].min() >= 0 and events["t"].max() <= 300_000
    assert set(np.unique(events["p"])) == {0, 1}
    np.testing.assert_array_equal(events, image_to_events(digit, rng=0))
    # a blank image on a uniform background shows nothing however it moves
    assert image_to_events(np.zeros((8, 8))).size == 0

    import tonic

    bins = 5
    to_frame = tonic.transforms.ToFrame(sensor_size=(16, 16, 2), n_time_bins=bins)
    frames = to_frame(events.copy())
    assert frames.shape == (bins, 2, 16, 16)
    # tonic's bins are [t0 + b w, t0 + (b + 1) w) with w = (t_last - t0) // bins: events at the very end drop
    t = events["t"]
    window = (t[-1] - t[0]) // bins
    expected = np.zeros((bins, 2, 16, 16), dtype=int)
    b = (t - t[0]) // window
    keep = b < bins
    np.add.at(expected, (b[keep], events["p"][keep], events["y"][keep], events["x"][keep]), 1)
    assert keep.sum() > 0.9 * events.size
    np.testing.assert_array_equal(frames, expected)
