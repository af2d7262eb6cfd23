"""Errors for data files that exist but cannot be read, and the rebuild policy of spikenorm's caches.

A dataset reader that fails on a damaged file (a truncated download, an interrupted extraction, a disk
error) usually says only what went wrong inside the parser (``IndexError``, ``failed to fill whole
buffer``, ``BadZipFile``), not which of thousands of files is broken. :func:`reading` wraps the one call
that reads one file, so the error becomes a :class:`CorruptDataError` that names the file (absolute
path), the format expected and the fix, with the parser's error kept as its ``__cause__``.

Caches spikenorm writes (event-frame entries, the event-digits archive) hold data derived from the
sources and keyed by every setting that changes it, and are written whole then renamed. A broken cache
entry is therefore rebuilt automatically (:func:`load_or_rebuild`): a warning names it, the data is
computed again from its sources and written over it. Only if the rebuilt entry still cannot be read (a
failing disk, a full file system) is a :class:`CorruptDataError` raised, naming the entry to delete.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# Errors that are not about the file's content and already name the file: passed through unchanged.
_NOT_CORRUPTION = (FileNotFoundError, PermissionError, IsADirectoryError, MemoryError)


class CorruptDataError(ValueError):
    """A data or cache file that exists but does not hold what its format says.

    Build it with :meth:`for_file`, which writes the message (the file's absolute path, the format
    expected, what was found, the fix) and sets :attr:`path` and :attr:`problem`. The plain
    one-message constructor stays available, so that a DataLoader worker can re-raise the error in the
    main process with its type (torch rebuilds worker exceptions from their message).
    """

    path: str | None = None
    problem: str | None = None

    @classmethod
    def for_file(cls, path: str, expected: str, problem: str, fix: str) -> CorruptDataError:
        path = os.path.abspath(os.fspath(path))
        err = cls(f"{path} is corrupt: expected {expected}, but {problem}. {fix}")
        err.path, err.problem = path, problem
        return err


@contextmanager
def reading(path: str, expected: str, fix: str) -> Iterator[None]:
    """Turn any error raised inside the block, which reads ``path``, into a :class:`CorruptDataError`.

    Missing files, permission errors, memory errors and operating-system errors with an ``errno`` (EIO, too
    many open files, a locked HDF5 file: not about the content, and they name the file already) pass unchanged,
    as does a :class:`CorruptDataError` raised inside the block. A parser's ``OSError`` without an errno (h5py's
    "file signature not found") is corruption.
    """
    try:
        yield
    except (CorruptDataError, *_NOT_CORRUPTION):
        raise
    except OSError as err:
        if err.errno is not None:
            raise
        raise CorruptDataError.for_file(path, expected, f"reading it failed (OSError: {err})", fix) from err
    except Exception as err:  # parsers raise anything: IndexError, RuntimeError, BadZipFile, KeyError, ...
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        problem = f"reading it failed ({detail})"
        raise CorruptDataError.for_file(path, expected, problem, fix) from err


def temporary_path(path: str, suffix: str = ".tmp") -> str:
    """A name beside ``path`` that no other writer uses (host, process and a random part), for writing a file
    whole before ``os.replace`` moves it into place: safe for DataLoader workers, DDP ranks and nodes sharing
    a cache on a network file system."""
    return f"{path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}"


def cache_entry_fix(path: str) -> str:
    """The advice for a broken cache entry: delete it, spikenorm writes it again."""
    return (
        f"It is a cache entry spikenorm wrote: delete it (rm '{os.path.abspath(path)}'); spikenorm rebuilds it "
        "from the source data on the next read. If that keeps failing, check the disk holding the cache."
    )


def load_or_rebuild(path: str, load: Callable[[str], T], build: Callable[[str], None]) -> T:
    """``load(path)`` of a cache entry, building it first when it is missing and again when it is broken.

    ``load`` raises :class:`CorruptDataError` for a broken entry; ``build`` writes the entry from the
    source data (whole, then renamed into place). A broken entry is reported by a warning naming it,
    rebuilt and loaded again; if the rebuilt entry is broken too, its :class:`CorruptDataError` propagates.
    """
    if os.path.isfile(path):
        try:
            return load(path)
        except CorruptDataError as err:
            warnings.warn(
                f"{err.path} is a corrupt cache entry ({err.problem}); spikenorm rebuilds it from the source data",
                stacklevel=3,
            )
    build(path)
    return load(path)
