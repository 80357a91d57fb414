"""A tiny convolutional LightningModule, fixed data and a quiet Trainer shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

IMAGE_SIZE = 6
CLASSES = 3


def make_images(count: int, seed: int = 0) -> TensorDataset:
    """``count`` random 1 x 6 x 6 images with class labels, the same for the same ``count`` and seed.

    The first images of a larger ``count`` differ from those of a smaller one, so a reference
    computation must ask for the same ``count`` as the model's ``train_size``.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return TensorDataset(images, labels)


class TinyConvNet(pl.LightningModule):
    """Two 3 x 3 convolutions (4 and 6 channels, 6 x 6 maps), global average pooling and a Linear head.

    Args:
        main_loss_weight: factor of the cross-entropy in the returned loss; 0 leaves only the
            terms that callbacks add, so their gradient can be compared on its own.
        lr: SGD learning rate; 0 keeps the optimizer from moving the weights.
        batch_size: training batch size.
        train_size: number of training images.
        seed: seed of the initial weights.
    """

    def __init__(
        self, main_loss_weight: float = 1.0, lr: float = 0.1, batch_size: int = 4, train_size: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, CLASSES)
        self.main_loss_weight = main_loss_weight
        self.lr = lr
        self.batch_size = batch_size
        self.train_size = train_size

    def forward(self, images: Tensor) -> Tensor:
        features = F.relu(self.conv2(F.relu(self.conv1(images))))
        return self.head(features.mean(dim=(2, 3)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, batch_size=len(labels))
        return self.main_loss_weight * loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val/loss", F.cross_entropy(self(images), labels), batch_size=len(labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        dataset = make_images(self.train_size)
        if self.trainer.world_size > 1:
            # Lightning 2.6 shuffles the training data whenever it inserts its own
            # DistributedSampler, so distributed tests pass `use_distributed_sampler=False` and
            # get this fixed split: rank r takes samples r, r + world_size, ...
            sampler = DistributedSampler(dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(make_images(8, seed=1), batch_size=4)


def quiet_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    """Build a CPU Trainer without progress bar, logger, checkpoints or model summary. ``kwargs`` override any setting."""
    settings: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "enable_progress_bar": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    settings.update(kwargs)
    return Trainer(**settings)


class GradientRecorder(Callback):
    """Keep a float32 copy of the named parameters' gradients at every optimizer step.

    ``on_before_optimizer_step`` runs after DDP has averaged the gradients and after AMP has
    unscaled them, so the copies are the gradients that the optimizer applies.
    """

    def __init__(self, names: tuple[str, ...] = ("conv1.weight", "conv2.weight")) -> None:
        self.names = names
        self.steps: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        parameters = dict(pl_module.named_parameters())
        self.steps.append({name: parameters[name].grad.detach().float().cpu().clone() for name in self.names})


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``|actual - expected| / |expected|`` in the Frobenius norm."""
    return float((actual.float() - expected.float()).norm() / expected.float().norm())
