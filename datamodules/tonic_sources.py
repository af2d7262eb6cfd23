"""tonic's DVS128 Gesture, CIFAR10-DVS and N-MNIST readers, made local-first and machine-independent.

tonic decides that a dataset is present only when its downloaded archive still lies next to the
extracted files *and* the folder holds at least 100 (Gesture), 1000 (CIFAR10-DVS) or 10000 (N-MNIST)
files; otherwise it downloads, even into a complete extracted copy. The classes here keep tonic's
readers (same ``<root>/<ClassName>/`` layout, same event arrays) but:

* accept any extracted copy with at least one data file (the archives may be deleted);
* download only when asked (``download=True``), and otherwise raise a ``FileNotFoundError`` that names
  the files expected and where they come from;
* list samples in sorted path order (tonic keeps the file system's order for CIFAR10-DVS and Gesture
  files), so that index-based splits and caches are the same on every machine;
* check every file cheaply before any is decoded (:meth:`_LocalFirst.check_files`: not empty, a header of the
  format; the first bytes only), so that a datamodule names a damaged file at setup;
* read each sample through :meth:`_LocalFirst.read_events`, so that a damaged file (truncated, overwritten)
  raises a :class:`~spikenorm.datamodules.errors.CorruptDataError` naming the file, its expected format and
  where an intact copy comes from, instead of the parser's ``IndexError`` / ``failed to fill whole buffer``;
  events outside the sensor are refused the same way (tonic would frame them into the wrong pixels or fail
  later in the framing).

The class names equal tonic's, because tonic derives the folder ``<root>/<ClassName>`` from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import recfunctions

from spikenorm.datamodules.errors import CorruptDataError, reading
from spikenorm.extras import needs_extra

with needs_extra("dvs", __name__):
    import tonic


class _LocalFirst:
    """Mixin over a ``tonic.dataset.Dataset`` subclass; see the module docstring."""

    extension: str
    layout: str  # where the files go, with ``{location}`` for ``<root>/<ClassName>``
    origin: str  # where the files come from
    file_format: str  # what one file holds

    def __init__(self, *args: Any, download: bool = False, **kwargs: Any) -> None:
        self.allow_download = download
        super().__init__(*args, **kwargs)
        self._sort_samples()

    def _check_exists(self) -> bool:
        folder = Path(self.location_on_system, self.folder_name)
        return next(folder.glob(f"**/*{self.extension}"), None) is not None

    def missing_files_error(self, reason: str = "") -> FileNotFoundError:
        layout = self.layout.format(location=self.location_on_system)
        return FileNotFoundError(
            f"{type(self).__name__} files not found{reason}: expected {layout}; {self.origin}. "
            "Put them there, or pass download=True (needs network access)."
        )

    def download(self) -> None:
        if not self.allow_download:
            raise self.missing_files_error()
        try:
            super().download()
        except Exception as err:  # tonic's downloader raises URLError, HTTPError, RuntimeError, ...
            raise self.missing_files_error(f" and downloading failed ({type(err).__name__}: {err})") from err

    def read_events(self, path: str) -> np.ndarray:
        """The structured events of one file, as tonic's ``__getitem__`` reads them."""
        raise NotImplementedError

    def header_problem(self, f: BinaryIO, size: int) -> str | None:
        """What is wrong with the start of a non-empty file of ``size`` bytes open at byte 0, or None (reads the
        format's header at most, no events)."""
        raise NotImplementedError

    def check_files(self) -> None:
        """Raise a :class:`~spikenorm.datamodules.errors.CorruptDataError` naming the first data file that is empty
        or whose header is not :attr:`file_format`'s. Reads the first bytes of each file (one ``stat`` and one short
        read per file), so a damaged file is named before a loader reaches it; damage past the header is found
        when the file is read (:meth:`__getitem__`)."""
        for path in self.data:
            size = Path(path).stat().st_size
            if size == 0:
                raise self.corrupt(path, "it is empty (0 bytes)")
            with reading(path, self.file_format, self.replace_hint), open(path, "rb") as f:
                problem = self.header_problem(f, size)
            if problem is not None:
                raise self.corrupt(path, problem)

    @property
    def replace_hint(self) -> str:
        return f"Replace it with an intact copy: {self.origin}."

    def corrupt(self, path: str, problem: str) -> CorruptDataError:
        """The error for a file of this dataset that holds something else than :attr:`file_format`."""
        return CorruptDataError.for_file(path, self.file_format, problem, self.replace_hint)

    def _check_on_sensor(self, path: str, events: np.ndarray) -> None:
        width, height = self.sensor_size[:2]
        if len(events) == 0:
            return
        x_range, y_range = (events["x"].min(), events["x"].max()), (events["y"].min(), events["y"].max())
        if x_range[0] < 0 or y_range[0] < 0 or x_range[1] >= width or y_range[1] >= height:
            raise self.corrupt(
                path,
                f"it holds events outside the {width}x{height} sensor "
                f"(x in [{x_range[0]}, {x_range[1]}], y in [{y_range[0]}, {y_range[1]}])",
            )

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(events, target)`` of sample ``index``, transformed as tonic does; a damaged file raises a
        :class:`~spikenorm.datamodules.errors.CorruptDataError` naming it."""
        path = self.data[index]
        with reading(path, self.file_format, self.replace_hint):
            events = self.read_events(path)
        self._check_on_sensor(path, events)
        target = self.targets[index]
        if self.transform is not None:
            events = self.transform(events)
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.transforms is not None:
            events, target = self.transforms(events, target)
        return events, target

    def _sort_samples(self) -> None:
        order = sorted(range(len(self.data)), key=lambda i: self.data[i])
        for name in ("data", "targets", "users", "lighting"):
            values = getattr(self, name, None)
            if values is not None and len(values) == len(order):
                setattr(self, name, [values[i] for i in order])


class DVSGesture(_LocalFirst, tonic.datasets.DVSGesture):
    extension = ".npy"
    layout = "{location}/ibmGestureTrain/userNN_<lighting>/<class>.npy and {location}/ibmGestureTest/..."
    origin = (
        "they are tonic's preprocessed DVS128 Gesture, ibmGestureTrain.tar.gz and ibmGestureTest.tar.gz from "
        f"{tonic.datasets.DVSGesture.train_url} and {tonic.datasets.DVSGesture.test_url}, extracted there"
    )
    file_format = "a tonic DVS128 Gesture .npy file: an [N, 4] integer array of x, y, p, t (t in ms)"

    def read_events(self, path: str) -> np.ndarray:
        table = np.load(path)
        problem = self.shape_problem(table.shape)
        if problem is not None:
            raise self.corrupt(path, problem)
        table[:, 3] *= 1000  # ms -> us
        return recfunctions.unstructured_to_structured(table, self.dtype)

    def header_problem(self, f: BinaryIO, size: int) -> str | None:
        """The ``.npy`` header must be readable and give an ``[N, 4]`` shape."""
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return self.shape_problem(read_header(f)[0])

    @staticmethod
    def shape_problem(shape: tuple[int, ...]) -> str | None:
        return None if len(shape) == 2 and shape[1] == 4 else f"it holds an array of shape {shape}"


class CIFAR10DVS(_LocalFirst, tonic.datasets.CIFAR10DVS):
    extension = ".aedat4"
    layout = "{location}/<class>/*.aedat4 for the classes airplane, automobile, ..., truck"
    origin = (
        f"they come from CIFAR10DVS.zip ({tonic.datasets.CIFAR10DVS.url}): extract it there, then extract "
        "each <class>.zip inside"
    )
    file_format = "an AEDAT 4.0 file (iniVation DV) with an event stream"
    magic = b"#!AER-DAT4.0"

    def header_problem(self, f: BinaryIO, size: int) -> str | None:
        """The file must start with the AEDAT 4.0 version line."""
        start = f.read(len(self.magic))
        return None if start == self.magic else f"it starts with {start!r}, not {self.magic!r}"

    def read_events(self, path: str) -> np.ndarray:
        events = tonic.datasets.cifar10dvs.read_aedat4(path)
        events.dtype.names = ["t", "x", "y", "p"]
        return events


class NMNIST(_LocalFirst, tonic.datasets.NMNIST):
    extension = ".bin"
    layout = "{location}/Train/<digit>/*.bin and {location}/Test/<digit>/*.bin"
    origin = (
        f"they come from train.zip ({tonic.datasets.NMNIST.train_url}) and test.zip "
        f"({tonic.datasets.NMNIST.test_url}), extracted there"
    )
    file_format = "an N-MNIST .bin file: 5-byte events (x, y, polarity and a 23-bit time) on a 34x34 sensor"

    def __init__(self, *args: Any, stabilize: bool = False, **kwargs: Any) -> None:
        if stabilize:
            raise ValueError("NMNIST(stabilize=True) is not supported: tonic 1.7's stabilize is not defined")
        super().__init__(*args, **kwargs)

    def read_events(self, path: str) -> np.ndarray:
        problem = self.header_problem(None, Path(path).stat().st_size)
        if problem is not None:
            raise self.corrupt(path, problem)
        events = tonic.datasets.nmnist.read_mnist_file(path, dtype=self.dtype)
        return events[events["t"] < 1e5] if self.first_saccade_only else events

    def header_problem(self, f: BinaryIO | None, size: int) -> str | None:
        """N-MNIST files have no header: the size must be a positive multiple of the 5-byte event."""
        return None if size and not size % 5 else f"its size, {size} bytes, is not a positive multiple of 5"
