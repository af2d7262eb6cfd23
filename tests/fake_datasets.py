"""Writers of small stand-in files in each real dataset's own on-disk format, for tests without network.

CIFAR-10/100: Python 2 pickles of dicts, as in the official archives. MNIST/Fashion-MNIST: big-endian
idx files under ``<root>/<Name>/raw/``, as torchvision expects after download and extraction.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np


class _Py2Str(bytes):
    """Bytes that pickle as a Python 2 ``str``, as in the official CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing ``_Py2Str`` with the BINSTRING opcodes Python 2 used for ``str``.

    Loaded with ``encoding="latin1"`` (torchvision) such a value is a ``str``; with ``encoding="bytes"``
    (the CIFAR web page's recipe) it is ``bytes``: the behaviour of the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2_dict(d: dict) -> dict:
    def conv(v):
        if isinstance(v, str):
            return _Py2Str(v.encode())
        if isinstance(v, list):
            return [conv(e) for e in v]
        return v

    return {_Py2Str(k.encode()): conv(v) for k, v in d.items()}


def _write_py2_pickle(path, d: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2_dict(d))


def _cifar_batch(rng, n: int, num_classes: int, coarse: bool) -> dict:
    batch = {
        "batch_label": "stand-in batch",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    if coarse:
        batch["fine_labels"] = labels
        batch["coarse_labels"] = [v // 5 for v in labels]
    else:
        batch["labels"] = labels
    return batch


def write_cifar10(root, per_batch: int = 8, n_test: int = 6, seed: int = 0) -> None:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        _write_py2_pickle(os.path.join(folder, name), _cifar_batch(rng, per_batch, 10, coarse=False))
    _write_py2_pickle(os.path.join(folder, "test_batch"), _cifar_batch(rng, n_test, 10, coarse=False))
    meta = {"num_cases_per_batch": per_batch, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    _write_py2_pickle(os.path.join(folder, "batches.meta"), meta)


def write_cifar100(root, n_train: int = 30, n_test: int = 7, seed: int = 0) -> None:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    _write_py2_pickle(os.path.join(folder, "train"), _cifar_batch(rng, n_train, 100, coarse=True))
    _write_py2_pickle(os.path.join(folder, "test"), _cifar_batch(rng, n_test, 100, coarse=True))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    _write_py2_pickle(os.path.join(folder, "meta"), meta)


def _write_idx(path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim> (unsigned bytes), big-endian int32 dims, then the raw bytes."""
    magic = 0x0800 | array.ndim  # 2051 for images [N, 28, 28], 2049 for labels [N]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, folder_name: str = "MNIST", n_train: int = 20, n_test: int = 10, seed: int = 0) -> None:
    raw = os.path.join(root, folder_name, "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n))
