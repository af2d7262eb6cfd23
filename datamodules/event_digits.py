"""Event-digits: scikit-learn's 8x8 digits seen by an emulated DVS making N-MNIST's saccades. No download."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from sklearn.datasets import load_digits
from tqdm.auto import tqdm

from spikenorm.datamodules.base import stratified_holdout
from spikenorm.datamodules.dvs_emulator import image_to_events
from spikenorm.datamodules.errors import (
    CorruptDataError,
    cache_entry_fix,
    load_or_rebuild,
    reading,
    temporary_path,
)
from spikenorm.datamodules.event_dtype import EVENT_DTYPE
from spikenorm.datamodules.event_frames import (
    EventFrameDataModule,
    EventsToFrames,
    FrameEngine,
    SplitBy,
)
from spikenorm.datamodules.frame_augment import FrameAugmentation

GENERATOR_VERSION = 1  # bump when the emulator or the rendering changes the events of the same settings


def default_cache_dir() -> str:
    """``$SPIKENORM_CACHE`` if set, else ``~/.cache/spikenorm``."""
    return os.environ.get("SPIKENORM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spikenorm")


class EventDigits:
    """The 1797 digits as event streams, a tonic-style dataset: ``(events, label)`` items.

    Every image (grey values ``/ 16`` in [0, 1]) goes through
    :func:`~spikenorm.datamodules.dvs_emulator.image_to_events` on a ``canvas x canvas`` sensor: the
    digit moves along N-MNIST's three-saccade triangle for 300 ms, and a log-intensity-change pixel model
    with threshold ``threshold`` emits ON/OFF events, plus Poisson background noise of
    ``noise_rate_hz`` per pixel. Image ``i`` uses the random generator seeded with ``(seed, i)``.

    ``events`` are structured arrays ``(x, y, t, p)`` (``t`` in microseconds), so any tonic transform
    applies (``sensor_size = (canvas, canvas, 2)``); ``transform`` is applied to them in ``__getitem__``.
    The streams are generated once (a few seconds) and stored in ``cache_dir`` as
    ``event_digits-v<version>-<settings hash>.npz``; later instances load that file. A damaged file
    (truncated, overwritten) is regenerated with a warning naming it
    (:func:`~spikenorm.datamodules.errors.load_or_rebuild`).
    """

    file_format = "a spikenorm event-digits .npz archive with arrays events, offsets and targets"

    classes = tuple(str(d) for d in range(10))

    def __init__(
        self,
        cache_dir: str | None = None,
        canvas: int = 16,
        threshold: float = 0.2,
        noise_rate_hz: float = 1.0,
        seed: int = 0,
        transform: Callable | None = None,
        progress: bool = True,
    ) -> None:
        self.sensor_size = (canvas, canvas, 2)
        self.dtype, self.ordering = EVENT_DTYPE, EVENT_DTYPE.names
        self.transform = transform
        settings = f"v{GENERATOR_VERSION}|canvas{canvas}|thr{threshold!r}|noise{noise_rate_hz!r}|seed{seed}"
        self.signature = hashlib.sha256(settings.encode()).hexdigest()[:16]
        self.path = os.path.join(
            cache_dir or default_cache_dir(), f"event_digits-v{GENERATOR_VERSION}-{self.signature}.npz"
        )
        events, offsets, targets = load_or_rebuild(
            self.path, self._load, lambda path: self._generate(canvas, threshold, noise_rate_hz, seed, progress)
        )
        self.targets = targets.tolist()
        self.data = [events[offsets[i] : offsets[i + 1]] for i in range(len(self.targets))]

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(events, offsets, targets)`` of the archive; a damaged one raises a ``CorruptDataError``."""
        with reading(path, self.file_format, cache_entry_fix(path)), np.load(path) as stored:
            events, offsets, targets = stored["events"], stored["offsets"], stored["targets"]
        if len(offsets) != len(targets) + 1 or offsets[-1] != len(events):
            problem = (
                f"its {len(offsets)} offsets (last {offsets[-1]}) do not match {len(targets)} targets and "
                f"{len(events)} events"
            )
            raise CorruptDataError.for_file(path, self.file_format, problem, cache_entry_fix(path))
        return events, offsets, targets

    def _generate(self, canvas: int, threshold: float, noise_rate_hz: float, seed: int, progress: bool) -> None:
        digits = load_digits()
        streams = [
            image_to_events(
                image / 16.0,
                canvas=canvas,
                threshold=threshold,
                noise_rate_hz=noise_rate_hz,
                rng=np.random.default_rng([seed, index]),
            )
            for index, image in enumerate(tqdm(digits.images, desc="event-digits", disable=not progress))
        ]
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in streams])])
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        partial = temporary_path(self.path, ".tmp.npz")  # written whole, then renamed: safe across processes
        np.savez(partial, events=np.concatenate(streams), offsets=offsets, targets=digits.target.astype(np.int64))
        os.replace(partial, self.path)
        rank_zero_info(f"event-digits: {offsets[-1]} events for {len(streams)} digits written to {self.path}")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        events, target = self.data[index], self.targets[index]
        return (events if self.transform is None else self.transform(events)), target


class EventDigitsDataModule(EventFrameDataModule):
    """Event-digits (:class:`EventDigits`) as ``(frames, label)`` batches: an embedded DVS dataset.

    ``frames`` is float32 ``[B, T, 2, canvas, canvas]`` (per-polarity event counts in ``T = time_bins``
    slices, see :mod:`spikenorm.datamodules.event_frames`), ``label`` int64 in ``[0, 10)``; use the task
    with ``encoding="frames"``.

    Split: the same as :class:`~spikenorm.datamodules.DigitsDataModule` with the same ``split_seed``:
    a stratified ``ceil(test_fraction * 1797)`` test split, then a stratified ``ceil(val_fraction * n)``
    of the remaining ``n`` for validation (the defaults give 1257 / 180 / 360, the same images as the
    static digits' defaults). ``augmentation`` applies to the train split only (none by default).
    Frames are cached on disk only with ``cache=True``: the events are already in memory, and framing
    them is about as fast as reading HDF5 frames (benchmarks/dvs_loading.py).
    """

    dataset_name = "event_digits"

    def __init__(
        self,
        time_bins: int = 6,
        sensor_size: int | None = None,
        split_by: SplitBy = "number",
        frame_engine: FrameEngine = "exact",
        canvas: int = 16,
        threshold: float = 0.2,
        noise_rate_hz: float = 1.0,
        data_seed: int = 0,
        augment: bool = True,
        augmentation: FrameAugmentation | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        val_fraction: float = 0.125,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"EventDigitsDataModule expects test_fraction in (0, 1), got {test_fraction}")
        if canvas < 8:
            raise ValueError(f"EventDigitsDataModule expects canvas >= 8 (the digits are 8x8), got {canvas}")
        self.save_hyperparameters(logger=False)  # the spikenorm tasks log them as data.* (run_config)
        self._check_common()

    @property
    def native_sensor_size(self) -> tuple[int, int, int]:
        return (self.hparams.canvas, self.hparams.canvas, 2)

    @property
    def num_classes(self) -> int:
        return 10

    def _cache_root(self) -> str:
        return self.hparams.cache_dir or default_cache_dir()

    def _source_signature(self, name: str, dataset: Any) -> str:
        return dataset.signature

    def events_dataset(self, transform: Callable | None = None) -> EventDigits:
        """The underlying :class:`EventDigits` with this module's emulator settings."""
        hp = self.hparams
        return EventDigits(hp.cache_dir, hp.canvas, hp.threshold, hp.noise_rate_hz, hp.data_seed, transform)

    def prepare_data(self) -> None:
        """Generate the event streams once (Lightning calls this on one process per node)."""
        self.events_dataset()

    def _event_sources(self, transform: EventsToFrames) -> dict[str, Any]:
        return {"all": self.events_dataset(transform)}

    def _test_holdout(self, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        return stratified_holdout(
            targets, math.ceil(self.hparams.test_fraction * len(targets)), self.hparams.split_seed
        )
