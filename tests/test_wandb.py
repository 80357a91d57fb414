"""Weights & Biases logging with the real wandb client, offline, under tmp_path."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

wandb = pytest.importorskip("wandb")

from lightning_sync import FocusMapFigure, FocusRegularizer, InterpretabilityMetrics, NeuronSynchronizer  # noqa: E402


class SmallConvNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 12, 3, padding=1)
        self.head = nn.Linear(12, 3)

    def forward(self, images):
        features = F.relu(self.conv2(F.relu(self.conv1(images))))
        return self.head(features.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val/loss", F.cross_entropy(self(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(32, 1, 8, 8, generator=generator)
    labels = torch.arange(32) % 3
    return DataLoader(TensorDataset(images, labels), batch_size=8)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


def test_metrics_and_figure_reach_wandb(offline_wandb):
    logger = WandbLogger(project="lightning-sync-test", save_dir=str(offline_wandb), offline=True)
    callbacks = [
        FocusRegularizer(layers="conv2"),
        NeuronSynchronizer(layers="conv2", k=2, coupling=0.2),
        InterpretabilityMetrics(layers="conv2", num_classes=3),
        FocusMapFigure(layer="conv2", num_images=2, num_neurons=4),
    ]
    trainer = pl.Trainer(
        default_root_dir=offline_wandb,
        max_epochs=2,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(SmallConvNet(), loader(), loader())

    summary = dict(logger.experiment.summary)
    for key in ("focus/conv2/loss", "sync/conv2/order", "sync/conv2/modules", "interp/conv2/class_selectivity", "interp/conv2/focus_concentration"):
        assert key in summary, f"{key} missing from the wandb summary: {sorted(summary)}"
    assert "figures/conv2/focus_maps" in summary
    run_directory = logger.experiment.dir
    wandb.finish()

    # The offline run stays on disk under tmp_path, with its history and the figure.
    assert run_directory.startswith(str(offline_wandb))
    run_folders = list((offline_wandb / "wandb").glob("offline-run-*"))
    assert len(run_folders) == 1
    assert list(run_folders[0].glob("run-*.wandb"))[0].stat().st_size > 0
    assert list(run_folders[0].glob("files/media/images/**/*.png"))
