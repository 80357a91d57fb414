"""Plain image classifiers used by the example configs; they know nothing about the callbacks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class ImageClassifier(pl.LightningModule):
    """Cross-entropy training, accuracy logging and Adam, shared by the example networks."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, prog_bar=stage != "train", on_step=on_step, on_epoch=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class DigitCNN(ImageClassifier):
    """A small CNN for 28 x 28 grey digits: three 3 x 3 convolutions, global average pooling.

    The last convolution, ``conv3``, produces ``channels[2]`` activation maps of 7 x 7 cells; it
    is the layer the callbacks hook by default.

    Args:
        channels: output channels of ``conv1``, ``conv2`` and ``conv3``.
        num_classes: number of classes.
        in_channels: channels of the input images.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        channels: tuple[int, int, int] = (16, 32, 32),
        num_classes: int = 10,
        in_channels: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()
        first, second, third = channels
        self.conv1 = nn.Conv2d(in_channels, first, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(first, second, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(second, third, kernel_size=3, padding=1)
        self.classifier = nn.Linear(third, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = F.max_pool2d(F.relu(self.conv1(images)), 2)
        features = F.max_pool2d(F.relu(self.conv2(features)), 2)
        features = F.relu(self.conv3(features))
        return self.classifier(features.mean(dim=(2, 3)))


class ResNet18Classifier(ImageClassifier):
    """torchvision's ResNet-18, trained from scratch (``weights=None``).

    For small images (28 x 28 digits, 32 x 32 CIFAR), ``small_input`` replaces the 7 x 7 stride-2
    stem and its max-pooling by a 3 x 3 stride-1 convolution, the usual CIFAR adaptation. The last
    block then still has a 4 x 4 map. The last ``Conv2d`` is ``net.layer4.1.conv2``.

    Args:
        num_classes: number of classes.
        in_channels: channels of the input images (1 for digits, 3 for colour).
        small_input: use the 3 x 3 stem for inputs of about 32 x 32 pixels.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        small_input: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        if small_input:
            self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        elif in_channels != 3:
            self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)
