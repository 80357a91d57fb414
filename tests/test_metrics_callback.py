"""InterpretabilityMetrics on a short real fit: logged keys, one CSV row per validation epoch."""

import csv

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sync.callbacks.metrics import METRIC_NAMES, InterpretabilityMetrics, full_partition


class TinyConvNet(LightningModule):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 6, kernel_size=3, padding=1)
        self.head = nn.Linear(6, num_classes)

    def forward(self, images):
        return self.head(F.relu(self.conv(images)).mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val/loss", F.cross_entropy(self(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(48, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (48,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=16)


class FakeSynchronizer(Callback):
    """Stands in for NeuronSynchronizer: only its `modules` mapping matters here."""

    def __init__(self) -> None:
        self.modules = {"conv": [[0, 1, 2], [3, 4]]}


def _fit(tmp_path, callbacks, epochs=2):
    torch.manual_seed(0)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        limit_train_batches=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=callbacks,
    )
    trainer.fit(TinyConvNet(), train_dataloaders=_loader(0), val_dataloaders=_loader(1))
    return trainer


def test_callback_logs_every_metric_once_per_epoch(tmp_path):
    callback = InterpretabilityMetrics(layers=["conv"], num_bins=4)
    trainer = _fit(tmp_path, [callback])

    for name in METRIC_NAMES:
        assert f"interp/conv/{name}" in trainer.callback_metrics, name
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("interp/conv/class_selectivity")]
    assert len(rows) == 2
    assert [row["epoch"] for row in rows] == ["0", "1"]
    # The whole validation set (48 samples) was fed, and nothing stays captured after fit.
    assert int(callback.layer_metrics("conv")["active_neuron_rate"].num_samples) == 48
    assert not callback._capture.attached


def test_callback_uses_synchronizer_modules(tmp_path):
    callback = InterpretabilityMetrics(layers=["conv"], metrics=["module_coherence", "modularity"])
    _fit(tmp_path, [FakeSynchronizer(), callback], epochs=1)
    assert callback.layer_metrics("conv")["modularity"].partition == [[0, 1, 2], [3, 4], [5]]


def test_callback_skips_module_metrics_without_partition(tmp_path):
    callback = InterpretabilityMetrics(layers=["conv"], metrics=["modularity", "class_selectivity"], fallback_delta=None)
    trainer = _fit(tmp_path, [callback], epochs=1)
    assert "interp/conv/modularity" not in trainer.callback_metrics
    assert "interp/conv/class_selectivity" in trainer.callback_metrics


def test_callback_requires_num_classes(tmp_path):
    class NoClasses(TinyConvNet):
        def __init__(self) -> None:
            super().__init__()
            self.hparams.pop("num_classes")

    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                      callbacks=[InterpretabilityMetrics(layers=["conv"])])
    with pytest.raises(ValueError, match="Pass `num_classes`"):
        trainer.fit(NoClasses(), train_dataloaders=_loader(0), val_dataloaders=_loader(1))


def test_full_partition_adds_singletons():
    assert full_partition([[2, 0]], 3) == [[2, 0], [1]]


def test_callback_scores_given_partition_on_validate(tmp_path):
    callback = InterpretabilityMetrics(
        layers=["conv"], metrics=["modularity", "focus_concentration"], partitions={"conv": [[5, 4]]}
    )
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[callback])
    trainer.validate(TinyConvNet(), dataloaders=_loader(1), verbose=False)
    assert callback.layer_metrics("conv")["modularity"].partition == [[5, 4], [0], [1], [2], [3]]
    assert "interp/conv/focus_concentration" in trainer.callback_metrics


def _validate_interp_values(root, **trainer_kwargs) -> dict:
    torch.manual_seed(0)
    model = TinyConvNet()
    trainer = Trainer(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[InterpretabilityMetrics(layers=["conv"], num_bins=4)],
        **trainer_kwargs,
    )
    trainer.validate(model, dataloaders=_loader(1), verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("interp/")}


def test_callback_ddp_spawn_equals_single_process(tmp_path):
    # Lightning's DistributedSampler gives each of the two processes half of the 48 validation samples.
    single = _validate_interp_values(tmp_path / "single")
    distributed = _validate_interp_values(tmp_path / "ddp", strategy="ddp_spawn", accelerator="cpu", devices=2)
    assert set(distributed) == set(single)
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_callback_metrics_follow_module_device(tmp_path):
    callback = InterpretabilityMetrics(layers=["conv"], num_bins=4)
    trainer = Trainer(
        default_root_dir=tmp_path,
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[callback],
    )
    trainer.validate(TinyConvNet(), dataloaders=_loader(1), verbose=False)
    for metric in callback.layer_metrics("conv").values():
        assert metric.device.type == "cuda"
    for name in METRIC_NAMES:
        assert f"interp/conv/{name}" in trainer.callback_metrics, name


def test_transposed_convolution_rejected_in_setup(tmp_path):
    class Upsampler(TinyConvNet):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(6, 4, kernel_size=3, stride=2)

    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[InterpretabilityMetrics(layers=["up"])])
    with pytest.raises(ValueError, match="Layer 'up' is a ConvTranspose2d, whose weight is laid out"):
        trainer.validate(Upsampler(), dataloaders=_loader(1), verbose=False)


def test_order_uses_synchronizer_settings(tmp_path):
    from lightning_sync import NeuronSynchronizer

    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5)
    metrics = InterpretabilityMetrics(layers=["conv"], metrics=["synchronization_order"], k=4)
    _fit(tmp_path, [synchronizer, metrics], epochs=1)
    logged = metrics.layer_metrics("conv")["synchronization_order"]
    assert logged.k == 2
    assert logged.neighbourhood == synchronizer.neighbourhood


def test_fallback_delta_range_validated():
    with pytest.raises(ValueError, match=r"`fallback_delta` in \(0, 2\] \(a distance between unit directions\), but got 5"):
        InterpretabilityMetrics(fallback_delta=5)
