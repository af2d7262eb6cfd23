"""tonic's DVS128 Gesture, CIFAR10-DVS and N-MNIST readers, made local-first and machine-independent.

tonic decides that a dataset is present only when its downloaded archive still lies next to the
extracted files *and* the folder holds at least 100 (Gesture), 1000 (CIFAR10-DVS) or 10000 (N-MNIST)
files; otherwise it downloads, even into a complete extracted copy. The classes here keep tonic's
readers (same ``<root>/<ClassName>/`` layout, same event arrays) but:

* accept any extracted copy with at least one data file (the archives may be deleted);
* download only when asked (``download=True``), and otherwise raise a ``FileNotFoundError`` that names
  the files expected and where they come from;
* list samples in sorted path order (tonic keeps the file system's order for CIFAR10-DVS and Gesture
  files), so that index-based splits and caches are the same on every machine.

The class names equal tonic's, because tonic derives the folder ``<root>/<ClassName>`` from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tonic


class _LocalFirst:
    """Mixin over a ``tonic.dataset.Dataset`` subclass; see the module docstring."""

    extension: str
    layout: str  # where the files go, with ``{location}`` for ``<root>/<ClassName>``
    origin: str  # where the files come from

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


class CIFAR10DVS(_LocalFirst, tonic.datasets.CIFAR10DVS):
    extension = ".aedat4"
    layout = "{location}/<class>/*.aedat4 for the classes airplane, automobile, ..., truck"
    origin = (
        f"they come from CIFAR10DVS.zip ({tonic.datasets.CIFAR10DVS.url}): extract it there, then extract "
        "each <class>.zip inside"
    )


class NMNIST(_LocalFirst, tonic.datasets.NMNIST):
    extension = ".bin"
    layout = "{location}/Train/<digit>/*.bin and {location}/Test/<digit>/*.bin"
    origin = (
        f"they come from train.zip ({tonic.datasets.NMNIST.train_url}) and test.zip "
        f"({tonic.datasets.NMNIST.test_url}), extracted there"
    )

