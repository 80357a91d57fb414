"""Tests of NeuronSynchronizer inside real Trainer runs on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sync import FocusMapFigure, NeuronSynchronizer
from lightning_sync.callbacks.figures import module_columns
from lightning_sync.functional.sync import direction_distances, neuron_directions
from test_sync_functional import FREE, GROUP_A, GROUP_B, planted_filters


class PlantedNet(pl.LightningModule):
    """One convolution with planted filters and a linear head; ``lr=0`` leaves only the synchronizer to move weights."""

    def __init__(self, lr: float = 0.0, hidden: int = 6, samples: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.lr = lr
        self.conv = nn.Conv2d(8, 10, kernel_size=3, padding=1)
        self.fc = nn.Linear(10, hidden)
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():
            self.conv.weight.copy_(planted_filters())
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(samples, 8, 5, 5, generator=generator)
        self.labels = torch.randint(0, 2, (samples,), generator=generator)

    def forward(self, images: Tensor) -> Tensor:
        features = F.relu(self.conv(images)).mean(dim=(2, 3))
        return self.head(F.relu(self.fc(features)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=4)


def make_trainer(tmp_path: Path, callbacks: list[Any], **kwargs: Any) -> Trainer:
    settings: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 100,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    settings.update(kwargs)
    return Trainer(callbacks=callbacks, **settings)


def conv_distances(model: PlantedNet) -> Tensor:
    directions, _ = neuron_directions(model.conv.weight)
    return direction_distances(directions)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"similarity": "gradient"}, "`similarity` to be one of 'weight', 'activation', but got 'gradient'"),
        ({"neighbourhood": "ring"}, "`neighbourhood` to be one of 'knn', 'epsilon', but got 'ring'"),
        ({"k": 0}, "`k` to be an integer at least 1, but got 0"),
        ({"coupling": 0.0}, r"`coupling` to be a number in \(0, 1\], but got 0.0"),
        ({"coupling": -0.1}, r"`coupling` to be a number in \(0, 1\], but got -0.1"),
        ({"coupling": math.nan}, r"`coupling` to be a number in \(0, 1\], but got nan"),
        ({"coupling": math.inf}, r"`coupling` to be a number in \(0, 1\], but got inf"),
        ({"coupling": 1.5}, r"`coupling` to be a number in \(0, 1\], but got 1.5"),
        ({"interval": 0}, "`interval` to be an integer at least 1, but got 0"),
        ({"interval": 2.5}, "`interval` to be an integer at least 1, but got 2.5"),
        ({"start_step": -1}, "`start_step` to be an integer at least 0, but got -1"),
        ({"warmup_steps": -5}, "`warmup_steps` to be an integer at least 0, but got -5"),
        ({"delta": 0.0}, "`delta` to be a finite number greater than 0, but got 0.0"),
        ({"delta": math.nan}, "`delta` to be a finite number greater than 0, but got nan"),
        ({"delta": 2.5}, r"`delta` to be in \(0, 2\], the range of distances between unit vectors, but got 2.5"),
        ({"max_module_share": 0.0}, r"`max_module_share` to be a number in \(0, 1\], but got 0.0"),
        ({"layers": []}, "`layers` to name at least one layer, but got an empty list"),
    ],
)
def test_init_rejects_invalid_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        NeuronSynchronizer(**arguments)


class OneNeuronNet(PlantedNet):
    def __init__(self) -> None:
        super().__init__(hidden=1)


@pytest.mark.parametrize(
    ("model", "arguments", "message"),
    [
        (OneNeuronNet, {"layers": ["fc"]}, "Layer 'fc' has 1 neuron, but synchronization needs at least 2"),
        (PlantedNet, {"layers": ["conv"], "k": 10}, "`k` to be at most 9, the number of other neurons in layer 'conv', but got 10"),
        (PlantedNet, {"layers": ["head"], "k": 2}, "`k` to be at most 1, the number of other neurons in layer 'head', but got 2"),
        (PlantedNet, {"layers": ["conv"], "max_module_share": 0.1}, r"allows no module of 2 neurons in layer 'conv' with 10 neurons. Set it to at least 0.2"),
        (PlantedNet, {"layers": ["conv.missing"]}, "Layer 'conv.missing' was not found in PlantedNet. Valid layer names are: 'conv'"),
    ],
)
def test_setup_rejects_invalid_layer(tmp_path, model, arguments, message):
    trainer = make_trainer(tmp_path, [NeuronSynchronizer(**arguments)], max_steps=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(model())


def test_setup_rejects_unsupported_layer_type(tmp_path):
    class NormNet(PlantedNet):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(10)

    trainer = make_trainer(tmp_path, [NeuronSynchronizer(layers=["norm"])], max_steps=1)
    with pytest.raises(ValueError, match="Layer 'norm' is a BatchNorm2d, but NeuronSynchronizer supports only Conv1d, Conv2d"):
        trainer.fit(NormNet())


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_setup_rejects_sharding_strategy(strategy):
    # A bare instance, because these strategies cannot start on this CPU-only machine.
    trainer = SimpleNamespace(strategy=strategy.__new__(strategy))
    with pytest.raises(ValueError, match=f"cannot run under {strategy.__name__}, because it shards the weights"):
        NeuronSynchronizer().setup(trainer, PlantedNet(), "fit")  # type: ignore[arg-type]


def test_planted_groups_synchronize_in_training(tmp_path):
    model = PlantedNet()
    weight = model.conv.weight
    pointer = weight.data_ptr()
    norms = weight.detach().flatten(1).norm(dim=1).clone()
    free_before = weight.detach()[FREE].clone()
    within_before = conv_distances(model)[GROUP_A][:, GROUP_A].max().item()
    across_before = conv_distances(model)[GROUP_A][:, GROUP_B].min().item()

    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    make_trainer(tmp_path, [synchronizer], max_steps=16).fit(model)

    distances = conv_distances(model)
    assert model.conv.weight is weight
    assert weight.data_ptr() == pointer
    assert torch.allclose(weight.detach().flatten(1).norm(dim=1), norms, rtol=1e-5)
    assert distances[GROUP_A][:, GROUP_A].max() < 0.01 * within_before
    assert distances[GROUP_B][:, GROUP_B].max() < 0.01 * within_before
    assert distances[GROUP_A][:, GROUP_B].min() > 0.9 * across_before
    assert torch.equal(weight.detach()[FREE], free_before)
    assert synchronizer.modules["conv"] == [GROUP_A, GROUP_B]
    assert synchronizer.free_neurons["conv"] == FREE
    assert synchronizer.order["conv"] == pytest.approx(1.0, abs=1e-3)
    assert synchronizer.updates == 16


def test_bias_and_other_layers_untouched(tmp_path):
    model = PlantedNet()
    bias = model.conv.bias.detach().clone()
    fc_weight = model.fc.weight.detach().clone()
    make_trainer(tmp_path, [NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5)], max_steps=3).fit(model)
    assert torch.equal(model.conv.bias, bias)
    assert torch.equal(model.fc.weight, fc_weight)


def test_optimizer_keeps_training_synchronized_parameters(tmp_path):
    model = PlantedNet(lr=0.1)
    optimizer_parameters: list[Tensor] = []

    class RecordOptimizer(pl.Callback):
        def on_train_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
            optimizer_parameters.extend(trainer.optimizers[0].param_groups[0]["params"])

    make_trainer(tmp_path, [NeuronSynchronizer(layers=["conv"], k=2, coupling=0.1), RecordOptimizer()], max_steps=4).fit(model)
    assert any(parameter is model.conv.weight for parameter in optimizer_parameters)


def test_interval_counts_optimizer_steps_with_accumulation(tmp_path):
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.1, interval=2)
    make_trainer(tmp_path, [synchronizer], max_epochs=1, limit_train_batches=8, accumulate_grad_batches=2).fit(PlantedNet())
    assert synchronizer.optimizer_steps == 4
    assert synchronizer.updates == 2


def test_coupling_schedule_start_and_ramp():
    synchronizer = NeuronSynchronizer(coupling=0.2, start_step=10, warmup_steps=4)
    assert [synchronizer.current_coupling(step) for step in (0, 9, 10, 11, 12, 14, 100)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.05, 0.1, 0.2, 0.2]
    )
    assert NeuronSynchronizer(coupling=0.2).current_coupling(0) == 0.2


def test_start_step_delays_first_update(tmp_path):
    model = PlantedNet()
    before = model.conv.weight.detach().clone()
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, start_step=100)
    make_trainer(tmp_path, [synchronizer], max_steps=5).fit(model)
    assert synchronizer.updates == 0
    assert torch.equal(model.conv.weight, before)


def test_linear_layer_synchronizes(tmp_path):
    model = PlantedNet()
    with torch.no_grad():
        model.fc.weight[:3] = torch.eye(10)[:3]
        model.fc.weight[3:] = torch.eye(10)[:3] + 0.01
    synchronizer = NeuronSynchronizer(layers=["fc"], k=1, coupling=0.5, delta=0.05)
    make_trainer(tmp_path, [synchronizer], max_steps=10).fit(model)
    assert synchronizer.hooked_layers == ["fc"]
    assert synchronizer.modules["fc"] == [[0, 3], [1, 4], [2, 5]]


def test_activation_similarity_runs_and_resets_window(tmp_path):
    model = PlantedNet()
    synchronizer = NeuronSynchronizer(layers=["conv"], similarity="activation", k=2, coupling=0.2)
    make_trainer(tmp_path, [synchronizer], max_steps=6).fit(model)
    assert synchronizer.updates == 6
    assert len(synchronizer.neighbourhoods["conv"]) == 10
    assert torch.isfinite(model.conv.weight).all()
    assert synchronizer._moments == {}


def test_logs_order_and_module_count(tmp_path):
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    trainer = make_trainer(tmp_path, [synchronizer], max_steps=12)
    trainer.fit(PlantedNet())
    assert trainer.callback_metrics["sync/conv/modules"].item() == 2.0
    assert trainer.callback_metrics["sync/conv/order"].item() == pytest.approx(synchronizer.order["conv"], abs=1e-4)
    assert "sync/conv/order" in trainer.progress_bar_metrics


def test_modules_json_written(tmp_path):
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    make_trainer(tmp_path, [synchronizer], max_steps=12).fit(PlantedNet())
    summary = json.loads((tmp_path / "modules.json").read_text())
    layer = summary["layers"]["conv"]
    assert layer["modules"] == [GROUP_A, GROUP_B]
    assert layer["sizes"] == [4, 4]
    assert layer["free_neurons"] == FREE
    assert layer["neurons"] == 10
    assert layer["order"] == pytest.approx(1.0, abs=1e-3)
    assert summary["settings"]["k"] == 2
    assert summary["settings"]["layers"] == ["conv"]
    assert summary["optimizer_steps"] == 12


def test_nan_weights_skip_update_with_warning(tmp_path):
    model = PlantedNet()
    with torch.no_grad():
        model.conv.weight[9, 0, 0, 0] = float("nan")
    # Frozen, so that the NaN gradients do not reach the weights through the optimizer.
    model.conv.weight.requires_grad_(False)
    before = model.conv.weight.detach().clone()
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5)
    with pytest.warns(UserWarning, match="skipped the update of layer 'conv' at step 1 because its weights contain NaN"):
        make_trainer(tmp_path, [synchronizer], max_steps=2).fit(model)
    assert synchronizer.updates == 0
    assert torch.equal(model.conv.weight[:9], before[:9])
    assert torch.isnan(model.conv.weight[9]).sum() == 1


def test_nan_activations_skip_update_with_warning(tmp_path):
    model = PlantedNet()
    model.images[0, 0, 0, 0] = float("inf")
    model.conv.weight.requires_grad_(False)
    before = model.conv.weight.detach().clone()
    synchronizer = NeuronSynchronizer(layers=["conv"], similarity="activation", k=2, coupling=0.5)
    with pytest.warns(UserWarning, match="pooled activations since the last update are fewer than 2 samples or not finite"):
        make_trainer(tmp_path, [synchronizer], max_steps=1).fit(model)
    assert torch.equal(model.conv.weight, before)


def test_bfloat16_small_coupling_moves_weights(tmp_path):
    model = PlantedNet()
    before = model.conv.weight.detach().to(torch.bfloat16).float()
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.002)
    make_trainer(tmp_path, [synchronizer], max_steps=20, precision="bf16-true").fit(model)
    assert model.conv.weight.dtype == torch.bfloat16
    moved = (model.conv.weight.float() - before).abs().amax(dim=(1, 2, 3))
    assert (moved[GROUP_A + GROUP_B] > 0).all()
    assert torch.equal(moved[FREE], torch.zeros(2))
    assert set(synchronizer._residuals) == {"conv"}


class StateProbe(pl.Callback):
    """Copy a synchronizer's restored state when training starts, before any new update."""

    def __init__(self, synchronizer: NeuronSynchronizer) -> None:
        self.synchronizer = synchronizer
        self.state: dict[str, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        self.state = self.synchronizer.state_dict()


def test_checkpoint_resume_continues_state(tmp_path):
    settings = {"layers": ["conv"], "k": 2, "coupling": 0.4, "warmup_steps": 8, "delta": 0.05}
    first = NeuronSynchronizer(**settings)
    trainer = make_trainer(tmp_path, [first], max_steps=4)
    trainer.fit(PlantedNet())
    checkpoint = tmp_path / "half.ckpt"
    trainer.save_checkpoint(checkpoint)

    second = NeuronSynchronizer(**settings)
    probe = StateProbe(second)
    make_trainer(tmp_path, [second, probe], max_steps=8).fit(PlantedNet(), ckpt_path=checkpoint)

    assert probe.state["optimizer_steps"] == 4
    assert probe.state["coupling"] == pytest.approx(0.2)
    assert probe.state["modules"] == first.state_dict()["modules"]
    assert probe.state["neighbourhoods"] == first.state_dict()["neighbourhoods"]
    assert second.optimizer_steps == 8
    assert second.updates == 8
    assert second.current_coupling(second.optimizer_steps) == pytest.approx(0.4)


def test_two_layers_keep_separate_state(tmp_path):
    on_conv = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    on_fc = NeuronSynchronizer(layers=["fc"], k=1, coupling=0.5, interval=2)
    assert on_conv.state_key != on_fc.state_key
    trainer = make_trainer(tmp_path, [on_conv, on_fc], max_steps=4)
    trainer.fit(PlantedNet())
    checkpoint = tmp_path / "two.ckpt"
    trainer.save_checkpoint(checkpoint)

    saved = torch.load(checkpoint, weights_only=False)["callbacks"]
    assert saved[on_conv.state_key]["updates"] == 4
    assert saved[on_fc.state_key]["updates"] == 2
    assert list(saved[on_conv.state_key]["modules"]) == ["conv"]
    assert list(saved[on_fc.state_key]["modules"]) == ["fc"]

    restored_conv = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    restored_fc = NeuronSynchronizer(layers=["fc"], k=1, coupling=0.5, interval=2)
    probes = [StateProbe(restored_conv), StateProbe(restored_fc)]
    make_trainer(tmp_path, [restored_conv, restored_fc, *probes], max_steps=6).fit(PlantedNet(), ckpt_path=checkpoint)
    assert probes[0].state["modules"] == saved[on_conv.state_key]["modules"]
    assert probes[1].state["modules"] == saved[on_fc.state_key]["modules"]
    assert probes[1].state["updates"] == 2


def test_figure_groups_module_neurons(tmp_path):
    synchronizer = NeuronSynchronizer(layers=["conv"], k=2, coupling=0.5, delta=0.05)
    figure = FocusMapFigure(layer="conv", num_images=2, num_neurons=6)
    trainer = make_trainer(tmp_path, [synchronizer, figure], max_steps=12, limit_val_batches=1)
    trainer.fit(PlantedNet())

    neurons, titles = figure.neuron_columns(trainer, "conv", torch.rand(2, 10, 5, 5))
    assert neurons == [0, 1, 2, 3, 4, 5]
    assert titles[0] == "module 1 / neuron 0"
    assert titles[4] == "module 2 / neuron 4"
    assert figure.path is not None and figure.path.exists()


def test_module_columns_stop_at_limit():
    assert module_columns([[3, 5]], limit=8) == ([3, 5], ["module 1 / neuron 3", "module 1 / neuron 5"])
    assert module_columns([[3, 5], [1, 2]], limit=3)[0] == [3, 5, 1]


class DigitLikeNet(pl.LightningModule):
    """A small CNN trained for real on synthetic class patterns, for the global-module check."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        generator = torch.Generator().manual_seed(0)
        templates = torch.rand(4, 1, 10, 10, generator=generator)
        labels = torch.arange(4).repeat(32)
        self.images = templates[labels] + 0.3 * torch.randn(128, 1, 10, 10, generator=generator)
        self.labels = labels

    def forward(self, images: Tensor) -> Tensor:
        features = F.max_pool2d(F.relu(self.conv1(images)), 2)
        return self.head(F.relu(self.conv2(features)).mean(dim=(2, 3)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=16, shuffle=True)


@pytest.mark.parametrize(
    ("neighbourhood", "max_module_share", "max_size"),
    [
        ("knn", 0.5, 8),
        # Without the cap, only the local neighbourhoods keep the 16 filters apart.
        ("epsilon", 1.0, 15),
    ],
)
def test_training_run_no_global_module(tmp_path, neighbourhood, max_module_share, max_size):
    torch.manual_seed(0)
    synchronizer = NeuronSynchronizer(
        layers=["conv2"], neighbourhood=neighbourhood, k=4, coupling=1.0, delta=0.5, max_module_share=max_module_share
    )
    make_trainer(tmp_path, [synchronizer], max_epochs=4).fit(DigitLikeNet())
    modules = synchronizer.modules["conv2"]
    assert synchronizer.updates == 32
    assert modules
    assert max(len(module) for module in modules) <= max_size


class RankRecorder(pl.Callback):
    """Save each rank's final conv weight and the synchronizer's neighbourhoods to ``<directory>/rank<r>.pt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        synchronizer = next(callback for callback in trainer.callbacks if isinstance(callback, NeuronSynchronizer))
        state = {"weight": pl_module.conv.weight.detach().cpu(), "neighbourhoods": synchronizer.neighbourhoods}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


def test_ddp_ranks_end_with_identical_state(tmp_path):
    # Each rank trains on other batches, so only the reduced activation statistics give both ranks
    # the same neighbourhoods.
    synchronizer = NeuronSynchronizer(layers=["conv"], similarity="activation", k=2, coupling=0.3)
    trainer = make_trainer(
        tmp_path,
        [synchronizer, RankRecorder(tmp_path)],
        max_steps=3,
        strategy="ddp_spawn",
        devices=2,
    )
    trainer.fit(PlantedNet(lr=0.05))

    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    assert ranks[0]["neighbourhoods"] == ranks[1]["neighbourhoods"]
    assert any(ranks[0]["neighbourhoods"]["conv"])
