"""The example datamodules, on the bundled digits and on small dataset files written here."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from examples.data import BundledDigits, TorchvisionImages


def test_bundled_digits_fixed_split():
    first, second = BundledDigits(), BundledDigits()
    first.setup("fit")
    second.setup("fit")
    assert (len(first.train_set), len(first.val_set), len(first.test_set)) == (3500, 750, 750)
    assert first.test_set.indices == second.test_set.indices
    assert not set(first.train_set.indices) & set(first.test_set.indices)
    assert not set(first.val_set.indices) & set(first.test_set.indices)

    images, labels = next(iter(first.test_dataloader()))
    assert images.shape == (64, 1, 28, 28)
    assert labels.dtype == torch.long
    # Every class is present in the held-out split (500 digits per class before the split).
    all_labels = torch.cat([batch[1] for batch in first.test_dataloader()])
    assert set(all_labels.tolist()) == set(range(10))


def test_bundled_digits_other_seed_other_split():
    first, other = BundledDigits(split_seed=0), BundledDigits(split_seed=1)
    first.setup("fit")
    other.setup("fit")
    assert first.test_set.indices != other.test_set.indices


def test_split_fractions_validated():
    with pytest.raises(ValueError, match=r"`val_fraction` in \[0, 1\), but got 1.5"):
        BundledDigits(val_fraction=1.5)
    with pytest.raises(ValueError, match="leave no training samples"):
        BundledDigits(val_fraction=0.6, test_fraction=0.5)


def write_idx(path, array: np.ndarray) -> None:
    # IDX format: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions,
    # then each dimension as a big-endian 32-bit integer, then the data.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (count,)))

    datamodule = TorchvisionImages(dataset="mnist", root=tmp_path, batch_size=8, val_fraction=0.25)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (30, 10, 10)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (8, 1, 28, 28)
    assert labels.max() < 10


def test_torchvision_cifar10_from_local_files(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{index}" for index in range(10)]}))
    # torchvision compares the files with the MD5 sums of the real archive; these small files are ours.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: os.path.exists(path))

    datamodule = TorchvisionImages(dataset="cifar10", root=tmp_path, batch_size=5, val_fraction=0.2)
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (16, 4, 4)
    images, _ = next(iter(datamodule.train_dataloader()))
    assert images.shape == (5, 3, 32, 32)


def test_torchvision_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for index in range(5):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{index}.png")

    datamodule = TorchvisionImages(dataset="imagefolder", root=tmp_path, batch_size=4, image_size=16, val_fraction=0.2, test_fraction=0.2)
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (6, 2, 2)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    assert set(labels.tolist()) <= {0, 1}


def test_torchvision_unknown_dataset():
    with pytest.raises(ValueError, match="'mnist', 'cifar10' or 'imagefolder', but got 'svhn'"):
        TorchvisionImages(dataset="svhn")


def test_missing_mnist_files_raise(tmp_path):
    datamodule = TorchvisionImages(dataset="mnist", root=tmp_path)
    with pytest.raises(RuntimeError, match="Dataset not found"):
        datamodule.setup("fit")
