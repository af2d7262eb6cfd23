"""A DVS (dynamic vision sensor) emulator: intensity frames -> a tonic-style event stream.

Events are numpy structured arrays of :data:`~spikenorm.datamodules.event_dtype.EVENT_DTYPE` (``x``, ``y``,
``t`` in microseconds, ``p`` with 1 = ON, 0 = OFF), so tonic transforms such as
``tonic.transforms.ToFrame(sensor_size=(W, H, 2), ...)`` accept them directly.

Pixel model (:func:`emulate_events`). Every pixel sees the log intensity

    L(t) = log(I(t) + log_eps),

linearly interpolated in time between consecutive frames. It keeps a reference level that starts at
``L_init = L(t_0)`` and only ever moves in whole thresholds ``theta``, so it is always

    ref = L_init + m * theta,    m an integer.

Whenever ``L`` reaches ``ref + theta`` the pixel emits an ON event and ``m += 1``; whenever it reaches
``ref - theta`` it emits an OFF event and ``m -= 1``. With ``u = (L - L_init) / theta`` this is exactly

    after a frame with value u:   m <- min(max(m, floor(u)), ceil(u)),

and the number of events in the interval is ``|m_new - m_old|`` (ON when positive). A change of
``k * theta + r`` (``0 <= r < theta``) away from the reference therefore gives exactly ``k`` events, and
the reference never drifts: returning to any earlier level gives as many OFF as ON events. Because
``m`` is an integer and ``u`` is recomputed from the frame (not accumulated), a static scene emits nothing,
however long.

Timing. Inside the interval ``[t_a, t_b]`` the j-th crossing is at level ``L_c = L_init + (m_old ± j) *
theta`` and happens at

    t = t_a + (L_c - L_a) / (L_b - L_a) * (t_b - t_a),

so several crossings in one interval are evenly spaced in time (spacing ``theta / |L_b - L_a| *
(t_b - t_a)``). Times are rounded to the nearest microsecond (``np.rint``); crossings closer than 1 us
can therefore share a timestamp.

Noise (optional): each pixel independently emits background events as a Poisson process of rate
``noise_rate_hz`` (events per second per pixel) over ``[t_0, t_{N-1}]``: the count per pixel is
``Poisson(noise_rate_hz * (t_{N-1} - t_0) * 1e-6)``, times are uniform on that interval (rounded to us),
polarities are ON/OFF with probability 1/2. Noise events do not move the reference.

Saccades (:func:`saccade_offsets`, :func:`image_to_events`): N-MNIST was recorded by moving an ATIS
sensor with a pan-tilt unit in three saccades of about 100 ms each, tracing a triangle that returns to the
start; the per-saccade image displacements are about (+3.5, +7), (+3.5, -7), (-7, 0) pixels for 28 px
digits on a 34 px sensor. Here the same triangle is scaled by ``amplitude`` (its height in pixels).

Defaults of :func:`image_to_events` are chosen for scikit-learn's raw 8x8 digits (values ``/ 16`` in
[0, 1]): a 16 x 16 canvas (the size of :class:`~spikenorm.datamodules.DigitsDataModule` with
``upsample=2``), the digit pasted at the centre and moved along the triangle scaled to the digit size
(``amplitude = 2`` px, i.e. 7 px * 8 / 28), 31 frames over 300 ms (10 per saccade, 10 ms apart), a dim
background of 0.1 so the log is defined, and ``threshold = 0.2``. Converting all 1797 digits takes a
few seconds on one CPU core.
"""

from __future__ import annotations

import numpy as np

from spikenorm.datamodules.event_dtype import EVENT_DTYPE

__all__ = [
    "emulate_events",
    "image_to_events",
    "saccade_offsets",
    "shift_image",
]

#: Per-saccade displacements (dx, dy) of N-MNIST's triangle in units of its height (7 px there).
_SACCADE_LEGS = np.array([[0.5, 1.0], [0.5, -1.0], [-1.0, 0.0]])

_MAX_COORD = np.iinfo(np.int16).max


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an integer seed or None, got {type(rng).__name__}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = np.isfinite(value) and (value >= 0.0 if allow_zero else value > 0.0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"expected a finite {name} {bound}, got {value}")
    return value


def emulate_events(
    frames: np.ndarray,
    times_us: np.ndarray,
    threshold: float = 0.2,
    log_eps: float = 1e-3,
    noise_rate_hz: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Turn intensity frames into DVS events (see the module docstring for the full model).

    Per pixel, ``L = log(I + log_eps)``, linearly interpolated in time between frames; the reference
    ``ref = L_init + m * threshold`` starts at the first frame (``m = 0``). After frame ``k`` with
    ``u_k = (L_k - L_init) / threshold``::

        m_k = min(max(m_{k-1}, floor(u_k)), ceil(u_k))

    and ``m_k - m_{k-1}`` events are emitted in ``(t_{k-1}, t_k]`` (ON if positive, OFF if negative), the
    ``j``-th at ``t_{k-1} + (L_c - L_{k-1}) / (L_k - L_{k-1}) * (t_k - t_{k-1})`` where
    ``L_c = L_init + (m_{k-1} ± j) * threshold`` is the level crossed.

    Args:
        frames: ``[N, H, W]`` non-negative, finite linear intensities (``N >= 1``).
        times_us: ``[N]`` strictly increasing, finite frame times in microseconds.
        threshold: contrast threshold ``theta > 0`` in log-intensity units (the same for ON and OFF).
        log_eps: ``eps > 0`` added before the log so that zero intensity is defined.
        noise_rate_hz: background events per second per pixel (Poisson, uniform polarity and time over
            ``[times_us[0], times_us[-1]]``); 0 disables noise.
        rng: ``numpy.random.Generator``, integer seed or ``None``; only used for noise.

    Returns:
        A 1-D array of :data:`EVENT_DTYPE`, sorted by ``t`` (stable; ties by ``y`` then ``x``).
    """
    frames = np.asarray(frames)
    times = np.asarray(times_us)
    if frames.ndim != 3:
        raise ValueError(f"expected frames of shape [N, H, W] (rank 3), got rank {frames.ndim} {frames.shape}")
    n, h, w = frames.shape
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"expected frames [N, H, W] with N, H, W >= 1, got {frames.shape}")
    if h > _MAX_COORD + 1 or w > _MAX_COORD + 1:
        raise ValueError(f"expected H, W <= {_MAX_COORD + 1} (int16 coordinates), got {frames.shape}")
    if not (np.issubdtype(frames.dtype, np.number) and not np.iscomplexobj(frames)):
        raise ValueError(f"expected real numeric frames, got dtype {frames.dtype}")
    frames = frames.astype(np.float64, copy=False)
    if not np.all(np.isfinite(frames)):
        raise ValueError("expected finite frames, got NaN or Inf values")
    if frames.min() < 0:
        raise ValueError(f"expected non-negative intensities, got a minimum of {frames.min()}")
    if times.shape != (n,):
        raise ValueError(f"expected times_us of shape [N] = ({n},) matching frames, got {times.shape}")
    if not np.issubdtype(times.dtype, np.number) or np.iscomplexobj(times):
        raise ValueError(f"expected real numeric times_us, got dtype {times.dtype}")
    times = times.astype(np.float64)
    if not np.all(np.isfinite(times)):
        raise ValueError("expected finite times_us, got NaN or Inf values")
    steps = np.diff(times)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0))
        raise ValueError(
            f"expected strictly increasing times_us, got times_us[{k}] = {times[k]} followed by "
            f"times_us[{k + 1}] = {times[k + 1]}"
        )
    theta = _check_positive("threshold", threshold)
    eps = _check_positive("log_eps", log_eps)
    rate = _check_positive("noise_rate_hz", noise_rate_hz, allow_zero=True)
    generator = _as_generator(rng)

    # ------------------------------------------------------------------ signal events
    log_i = np.log(frames.reshape(n, h * w) + eps)  # [N, P]
    u = (log_i - log_i[0]) / theta  # level above the initial reference, in thresholds
    lo, hi = np.floor(u), np.ceil(u)
    m = np.zeros((n, h * w), dtype=np.float64)  # integer-valued reference index after each frame
    for k in range(1, n):
        m[k] = np.minimum(np.maximum(m[k - 1], lo[k]), hi[k])
    delta = np.diff(m, axis=0).astype(np.int64)  # [N-1, P] signed event counts per interval
    kk, pix = np.nonzero(delta)
    counts = delta[kk, pix]
    sign = np.sign(counts)
    reps = np.abs(counts)
    total = int(reps.sum())
    owner = np.repeat(np.arange(len(counts)), reps)
    starts = np.cumsum(reps) - reps
    j = np.arange(total) - starts[owner] + 1  # 1..|count| within each (interval, pixel)
    kk_e, pix_e, sign_e = kk[owner], pix[owner], sign[owner]
    l_a = log_i[kk_e, pix_e]
    l_b = log_i[kk_e + 1, pix_e]
    level = log_i[0, pix_e] + (m[kk_e, pix_e] + sign_e * j) * theta
    frac = np.clip((level - l_a) / (l_b - l_a), 0.0, 1.0)
    t_event = times[kk_e] + frac * steps[kk_e]

    ev_y, ev_x = np.divmod(pix_e, w)
    ev_t = np.rint(t_event).astype(np.int64)
    ev_p = (sign_e > 0).astype(np.int8)

    # ------------------------------------------------------------------ background noise
    if rate > 0 and n > 1:
        lam = rate * (times[-1] - times[0]) * 1e-6
        per_pixel = generator.poisson(lam, size=h * w)
        noise_pix = np.repeat(np.arange(h * w), per_pixel)
        noise_t = np.rint(generator.uniform(times[0], times[-1], size=noise_pix.size)).astype(np.int64)
        noise_p = generator.integers(0, 2, size=noise_pix.size).astype(np.int8)
        ny, nx = np.divmod(noise_pix, w)
        ev_x = np.concatenate([ev_x, nx])
        ev_y = np.concatenate([ev_y, ny])
        ev_t = np.concatenate([ev_t, noise_t])
        ev_p = np.concatenate([ev_p, noise_p])

    order = np.lexsort((ev_x, ev_y, ev_t))  # stable: by t, then y, then x
    events = np.empty(order.size, dtype=EVENT_DTYPE)
    events["x"] = ev_x[order]
    events["y"] = ev_y[order]
    events["t"] = ev_t[order]
    events["p"] = ev_p[order]
    return events


def saccade_offsets(num_frames: int, amplitude: float = 2.0) -> np.ndarray:
    """Image displacements ``[num_frames, 2]`` (dx, dy in pixels) along N-MNIST's three-saccade triangle.

    The path starts at (0, 0) and goes through the vertices ``(a/2, a)``, ``(a, 0)`` and back to
    ``(0, 0)`` with ``a = amplitude`` (legs ``(+a/2, +a)``, ``(+a/2, -a)``, ``(-a, 0)``; N-MNIST's 28 px
    digits moved with ``a ~ 7``). The three saccades take equal time and the image moves at constant
    velocity along each; frame ``i`` sits at path time ``s_i = 3 i / (num_frames - 1)`` saccades, so with
    ``num_frames = 3 k + 1`` frames ``k`` and ``2 k`` land on the corners. ``+dy`` is downwards (rows).
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
        raise ValueError(f"expected an integer num_frames >= 2, got {num_frames!r}")
    amp = float(amplitude)
    if not np.isfinite(amp):
        raise ValueError(f"expected a finite amplitude, got {amplitude}")
    vertices = np.vstack([np.zeros((1, 2)), np.cumsum(_SACCADE_LEGS, axis=0)]) * amp  # [4, 2]
    s = 3.0 * np.arange(num_frames) / (num_frames - 1)
    leg = np.minimum(np.floor(s).astype(np.int64), 2)
    frac = (s - leg)[:, None]
    offsets = vertices[leg] + frac * (vertices[leg + 1] - vertices[leg])
    offsets[-1] = 0.0  # exactly back at the start
    return offsets


def shift_image(image: np.ndarray, dx: float, dy: float, canvas: int) -> np.ndarray:
    """Paste ``image`` ``[h, w]`` at the centre of a zero ``[canvas, canvas]`` canvas, shifted by (dx, dy).

    The unshifted image's top-left corner is at row ``(canvas - h) // 2``, column ``(canvas - w) // 2``.
    The result is ``out[y, x] = img(y - oy - dy, x - ox - dx)`` with bilinear interpolation and zero
    outside the image; with ``dx = ix + fx`` (``ix = floor(dx)``) and likewise for ``dy`` this is

        out = (1-fx)(1-fy) P(ix, iy) + fx (1-fy) P(ix+1, iy) + (1-fx) fy P(ix, iy+1) + fx fy P(ix+1, iy+1)

    where ``P(a, b)`` is the image placed with an integer shift ``(a, b)`` (clipped at the canvas edge).
    Positive ``dx`` moves right, positive ``dy`` moves down.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image [h, w], got shape {img.shape}")
    if isinstance(canvas, bool) or not isinstance(canvas, (int, np.integer)) or canvas < 1:
        raise ValueError(f"expected an integer canvas >= 1, got {canvas!r}")
    if not (np.isfinite(dx) and np.isfinite(dy)):
        raise ValueError(f"expected finite shifts, got dx={dx}, dy={dy}")
    h, w = img.shape
    oy, ox = (canvas - h) // 2, (canvas - w) // 2
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = float(dx) - ix, float(dy) - iy
    out = np.zeros((canvas, canvas), dtype=np.float64)
    for ax, wx in ((ix, 1.0 - fx), (ix + 1, fx)):
        for ay, wy in ((iy, 1.0 - fy), (iy + 1, fy)):
            weight = wx * wy
            if weight == 0.0:
                continue
            top, left = oy + ay, ox + ax
            r0, r1 = max(top, 0), min(top + h, canvas)
            c0, c1 = max(left, 0), min(left + w, canvas)
            if r0 < r1 and c0 < c1:
                out[r0:r1, c0:c1] += weight * img[r0 - top : r1 - top, c0 - left : c1 - left]
    return out


def image_to_events(
    image: np.ndarray,
    canvas: int = 16,
    frames: int = 31,
    duration_us: int = 300_000,
    threshold: float = 0.2,
    background: float = 0.1,
    amplitude: float = 2.0,
    noise_rate_hz: float = 0.0,
    log_eps: float = 1e-3,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Events of one grey image seen by a DVS that makes N-MNIST's three saccades.

    Frame ``i`` (at ``t_i = i * duration_us / (frames - 1)``) is
    ``shift_image(image, *saccade_offsets(frames, amplitude)[i], canvas) + background``, and the
    frames go through :func:`emulate_events` (``threshold``, ``log_eps``, ``noise_rate_hz``, ``rng``).

    Defaults suit scikit-learn's raw 8x8 digits divided by 16: canvas 16, triangle height 2 px (N-MNIST's
    7 px scaled by 8 / 28), 31 frames (10 per 100 ms saccade), threshold 0.2 and a background of 0.1
    (a full-contrast edge, ``log(1.1 / 0.1) = 2.4``, gives 11-12 events per pixel it crosses).
    Returned coordinates lie in ``[0, canvas)``; use ``sensor_size=(canvas, canvas, 2)`` with tonic.

    Args:
        image: ``[h, w]`` grey values in [0, 1].
        canvas: side of the square sensor in pixels.
        frames: number of frames rendered along the path (>= 2; ``3 k + 1`` hits the corners).
        duration_us: total duration of the three saccades in microseconds.
        threshold: as in :func:`emulate_events`.
        log_eps: as in :func:`emulate_events`.
        noise_rate_hz: as in :func:`emulate_events`.
        rng: as in :func:`emulate_events`.
        background: dim intensity added everywhere (> 0) so that black pixels have a finite log.
        amplitude: triangle height in pixels (see :func:`saccade_offsets`).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grey image [h, w], got shape {img.shape}")
    if not np.all(np.isfinite(img)) or img.min() < 0.0 or img.max() > 1.0:
        raise ValueError(
            f"expected grey values in [0, 1] (divide 0..16 digits by 16), got range [{img.min()}, {img.max()}]"
        )
    bg = _check_positive("background", background)
    duration = _check_positive("duration_us", duration_us)
    offsets = saccade_offsets(frames, amplitude)
    stack = np.stack([shift_image(img, dx, dy, canvas) for dx, dy in offsets]) + bg
    times = np.linspace(0.0, duration, frames)
    return emulate_events(stack, times, threshold=threshold, log_eps=log_eps, noise_rate_hz=noise_rate_hz, rng=rng)
