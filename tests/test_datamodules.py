"""Datamodules: the embedded digits and the torchvision datasets read from small files written here.

The torchvision tests write stand-in files in each dataset's own on-disk format (CIFAR: Python 2
pickles of dicts; MNIST/Fashion-MNIST: big-endian idx files) and load them end to end, without network.
"""

from __future__ import annotations

import os
import pickle
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torchvision import transforms
from torchvision.datasets import utils as tv_utils

from spikenorm.datamodules import DigitsDataModule, TorchvisionDataModule
from spikenorm.datamodules.testing import write_cifar10, write_cifar100, write_mnist

# ---------------------------------------------------------------------------------------------- digits


def _digits(**kw) -> DigitsDataModule:
    dm = DigitsDataModule(**kw)
    dm.setup("fit")
    return dm


def test_digits_split_sizes_disjoint_and_stratified():
    dm = _digits()
    labels = load_digits().target
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1257, 180, 360)
    parts = [dm.train_indices, dm.val_indices, dm.test_indices]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    overall = np.bincount(labels, minlength=10) / len(labels)
    for idx, dataset in zip(parts, (dm.train_dataset, dm.val_dataset, dm.test_dataset), strict=True):
        share = np.bincount(labels[idx], minlength=10) / len(idx)
        assert np.abs(share - overall).max() < 0.01  # stratified: class shares match the full set
        assert torch.equal(dataset.tensors[1], torch.from_numpy(labels[idx]))


def test_digits_batches_and_properties():
    dm = _digits(batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 10
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 8)
    assert dm.hparams.batch_size == 32


def test_digits_same_seed_same_split_and_order_other_seed_differs():
    a, b, c = _digits(split_seed=3), _digits(split_seed=3), _digits(split_seed=4)
    assert np.array_equal(a.train_indices, b.train_indices)
    assert np.array_equal(a.test_indices, b.test_indices)
    torch.manual_seed(123)  # the global RNG must not matter for the order
    xa, ya = next(iter(a.train_dataloader()))
    torch.manual_seed(456)
    xb, yb = next(iter(b.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not np.array_equal(a.train_indices, c.train_indices)
    xc, _ = next(iter(c.train_dataloader()))
    assert not torch.equal(xa, xc)


def test_digits_val_and_test_loaders_keep_order():
    dm = _digits()
    first = torch.cat([x for x, _ in dm.val_dataloader()])
    second = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(first, second) and torch.equal(first, dm.val_dataset.tensors[0])


def test_digits_normalization_uses_train_statistics_only():
    dm = _digits(split_seed=1)
    raw = load_digits().images.astype(np.float64) / 16.0
    train = raw[dm.train_indices]
    assert dm.mean == pytest.approx(train.mean(), abs=1e-6)
    assert dm.std == pytest.approx(train.std(), abs=1e-6)
    x_train = dm.train_dataset.tensors[0].double().numpy()
    assert abs(x_train.mean()) < 1e-5 and abs(x_train.std() - 1.0) < 1e-5
    # val/test are shifted by the same train statistics, not by their own
    expected_val = (raw[dm.val_indices] - train.mean()) / train.std()
    assert np.allclose(dm.val_dataset.tensors[0].squeeze(1).numpy(), expected_val, atol=1e-5)
    assert abs(dm.val_dataset.tensors[0].double().mean().item()) > 1e-4


def test_digits_without_normalization_is_in_unit_interval():
    dm = _digits(normalize=False)
    x = torch.cat([dm.train_dataset.tensors[0], dm.test_dataset.tensors[0]])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_digits_upsample_shape():
    dm = _digits(upsample=3, batch_size=5)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (5, 1, 24, 24) and dm.image_size == 24
    assert abs(dm.train_dataset.tensors[0].mean().item()) < 1e-5


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"upsample": 0}, "upsample"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_digits_bad_args_raise(kw, words):
    with pytest.raises(ValueError, match=words) as info:
        DigitsDataModule(**kw)
    assert "got" in str(info.value)


def test_digits_split_too_small_for_stratification():
    dm = DigitsDataModule(val_fraction=0.001)
    with pytest.raises(ValueError, match="one per class"):
        dm.setup("fit")


def test_writers_match_the_official_formats(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert set(as_bytes) == {b"batch_label", b"data", b"labels", b"filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (8, 3072)
    write_mnist(tmp_path)
    header = (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()[:16]
    assert struct.unpack(">4I", header) == (2051, 20, 28, 28)
    header = (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes()[:8]
    assert struct.unpack(">2I", header) == (2049, 20)


# ------------------------------------------------------------------------------------ torchvision data

WRITERS = {
    "mnist": (lambda root: write_mnist(root, "MNIST"), 20, 10, (1, 28, 28), 10),
    "fashion_mnist": (lambda root: write_mnist(root, "FashionMNIST"), 20, 10, (1, 28, 28), 10),
    "cifar10": (write_cifar10, 40, 6, (3, 32, 32), 10),
    "cifar100": (write_cifar100, 30, 7, (3, 32, 32), 100),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_end_to_end(tmp_path, name):
    write, n_train, n_test, shape, num_classes = WRITERS[name]
    write(tmp_path)
    dm = TorchvisionDataModule(name, root=str(tmp_path), batch_size=4, val_fraction=0.25, verify_checksums=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    n_val = round(0.25 * n_train)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (n_train - n_val, n_val, n_test)
    assert sorted(dm.train_indices + dm.val_indices) == list(range(n_train))
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (num_classes, shape[0], shape[1])
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (4, *shape) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < num_classes
        assert torch.isfinite(x).all()


def test_torchvision_labels_and_pixels_round_trip(tmp_path):
    write_cifar10(tmp_path, seed=5)
    dm = TorchvisionDataModule("cifar10", root=str(tmp_path), augment=False, verify_checksums=False)
    dm.setup("test")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == batch[b"labels"]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    pixels = torch.from_numpy(batch[b"data"]).reshape(-1, 3, 32, 32).float() / 255
    assert torch.allclose(x, (pixels - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_torchvision_augments_train_only(tmp_path):
    write_cifar10(tmp_path)
    dm = TorchvisionDataModule("cifar10", root=str(tmp_path), batch_size=8, augment=True, verify_checksums=False)
    dm.setup()
    kinds = [type(t) for t in dm.train_dataset.transform.transforms]
    assert transforms.RandomCrop in kinds and transforms.RandomHorizontalFlip in kinds
    plain = [transforms.ToTensor, transforms.Normalize]
    assert [type(t) for t in dm.val_dataset.transform.transforms] == plain
    assert [type(t) for t in dm.test_dataset.transform.transforms] == plain
    val_a = torch.cat([x for x, _ in dm.val_dataloader()])
    val_b = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_a, val_b)
    # the same train images twice (fixed order) come out differently cropped/flipped
    torch.manual_seed(0)
    first = torch.stack([dm.train_dataset[i][0] for i in range(8)])
    second = torch.stack([dm.train_dataset[i][0] for i in range(8)])
    assert not torch.equal(first, second)


def test_torchvision_mnist_never_augmented(tmp_path):
    write_mnist(tmp_path)
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), augment=True)
    dm.setup("fit")
    assert [type(t) for t in dm.train_dataset.transform.transforms] == [transforms.ToTensor, transforms.Normalize]
    assert torch.equal(dm.train_dataset[0][0], dm.train_dataset[0][0])


def test_torchvision_split_and_order_are_seeded(tmp_path):
    write_mnist(tmp_path)

    def first_batch(seed):
        dm = TorchvisionDataModule("mnist", root=str(tmp_path), batch_size=5, split_seed=seed)
        dm.setup("fit")
        return dm.val_indices, next(iter(dm.train_dataloader()))[1]

    (val_a, y_a), (val_b, y_b), (val_c, _) = first_batch(0), first_batch(0), first_batch(1)
    assert val_a == val_b and torch.equal(y_a, y_b)
    assert val_a != val_c


def test_torchvision_checksums_verified_by_default(tmp_path):
    write_cifar10(tmp_path)
    dm = TorchvisionDataModule("cifar10", root=str(tmp_path))
    with pytest.raises(RuntimeError, match="verify_checksums=False") as info:
        dm.setup("fit")
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):  # the files that differ are named
        assert os.path.join(str(tmp_path), "cifar-10-batches-py", name) in str(info.value)


@pytest.mark.parametrize(
    "name, folder, files",
    [
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
        ("cifar100", "cifar-100-python", ["train", "test", "meta"]),
        ("mnist", os.path.join("MNIST", "raw"), ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", os.path.join("FashionMNIST", "raw"), ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]),
    ],
)
def test_torchvision_missing_files_named(tmp_path, name, folder, files):
    dm = TorchvisionDataModule(name, root=str(tmp_path))
    dm.prepare_data()  # download=False: nothing to do, no error
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert os.path.join(str(tmp_path), folder) in message
    for file in files:
        assert file in message
    assert "download=True" in message


def test_torchvision_partially_missing_files_listed(tmp_path):
    write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    dm = TorchvisionDataModule("cifar10", root=str(tmp_path), verify_checksums=False)
    with pytest.raises(FileNotFoundError, match="missing: data_batch_3"):
        dm.setup("fit")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_download_without_network(tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # nothing may reach the network
    dm = TorchvisionDataModule(name, root=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="downloading .* failed .*no network in tests") as info:
        dm.prepare_data()
    assert "files not found: expected" in str(info.value)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"dataset": "svhn"}, "dataset"),
        ({"dataset": "mnist", "val_fraction": 0.0}, "val_fraction"),
        ({"dataset": "mnist", "batch_size": 0}, "batch_size"),
    ],
)
def test_torchvision_bad_args_raise(kw, words):
    with pytest.raises(ValueError, match=words):
        TorchvisionDataModule(**kw)


def test_predict_runs_over_the_test_split(tmp_path):
    digits = _digits()
    digits.setup("predict")
    assert len(digits.predict_dataloader().dataset) == 360
    write_cifar10(tmp_path)
    cifar = TorchvisionDataModule("cifar10", root=str(tmp_path), verify_checksums=False)
    cifar.setup("predict")
    x, y = next(iter(cifar.predict_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and len(cifar.predict_dataloader().dataset) == 6
