"""FocusRegularizer in real Trainer runs: the loss mechanism, logging, lifecycle and layer lookup."""

import copy
import io
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sync import FocusRegularizer
from lightning_sync.capture import canonical_name, default_layer_name, resolve_layers
from lightning_sync.functional.focus import focus_penalty


class TinyConvNet(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, images):
        features = F.relu(self.conv2(F.relu(self.conv1(images))))
        return self.head(features.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_loader(batches: int = 2, batch_size: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batches * batch_size, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (batches * batch_size,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)


def make_trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


class GradientRecorder(Callback):
    """Keeps a copy of every parameter gradient right before each optimizer step."""

    def __init__(self) -> None:
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.gradients.append({name: p.grad.detach().clone() for name, p in pl_module.named_parameters()})


def manual_gradients(model: TinyConvNet, batches, weight: float, sigma: float, mass: str, accumulate: int):
    """Gradients of the summed (CE + weight * focus penalty) / accumulate, computed by hand."""
    model.zero_grad()
    for images, labels in batches:
        outputs = {}
        handle = model.conv2.register_forward_hook(lambda module, inputs, output: outputs.setdefault("conv2", output))
        loss = F.cross_entropy(model(images), labels)
        handle.remove()
        loss = loss + weight * focus_penalty(outputs["conv2"], sigma=sigma, mass=mass)
        (loss / accumulate).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("mass", ["softmax", "relu"])
def test_focus_term_in_gradient(tmp_path, mass):
    torch.manual_seed(0)
    model = TinyConvNet(lr=0.0)
    reference = copy.deepcopy(model)
    recorder = GradientRecorder()
    regularizer = FocusRegularizer(layers="conv2", weight=2.0, sigma=1.0, mass=mass)
    make_trainer(tmp_path, [regularizer, recorder], limit_train_batches=1).fit(model, make_loader(batches=1))

    expected = manual_gradients(reference, list(make_loader(batches=1)), weight=2.0, sigma=1.0, mass=mass, accumulate=1)
    plain = manual_gradients(copy.deepcopy(reference), list(make_loader(batches=1)), weight=0.0, sigma=1.0, mass=mass, accumulate=1)
    recorded = recorder.gradients[0]
    for name in expected:
        torch.testing.assert_close(recorded[name], expected[name], rtol=1e-5, atol=1e-6)
    # The focus term changes the gradient of the hooked layer.
    assert not torch.allclose(recorded["conv2.weight"], plain["conv2.weight"])


def test_accumulation_scales_focus_term(tmp_path):
    torch.manual_seed(0)
    model = TinyConvNet(lr=0.0)
    reference = copy.deepcopy(model)
    recorder = GradientRecorder()
    regularizer = FocusRegularizer(layers="conv2", weight=1.5, sigma=1.0)
    trainer = make_trainer(tmp_path, [regularizer, recorder], limit_train_batches=2, accumulate_grad_batches=2)
    trainer.fit(model, make_loader(batches=2))

    assert len(recorder.gradients) == 1
    expected = manual_gradients(reference, list(make_loader(batches=2)), weight=1.5, sigma=1.0, mass="softmax", accumulate=2)
    for name in expected:
        torch.testing.assert_close(recorder.gradients[0][name], expected[name], rtol=1e-5, atol=1e-6)


def test_one_backward_per_step(tmp_path, monkeypatch):
    calls = []
    original_backward = torch.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        calls.append(1)
        return original_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    regularizers = [FocusRegularizer(layers="conv2"), FocusRegularizer(layers="conv1")]
    make_trainer(tmp_path, regularizers, limit_train_batches=3).fit(TinyConvNet(), make_loader(batches=3))
    assert len(calls) == 3


def test_logs_loss_per_layer_in_progress_bar(tmp_path):
    regularizers = [FocusRegularizer(layers="conv2", weight=0.5), FocusRegularizer(layers="conv1", weight=0.5)]
    trainer = make_trainer(tmp_path, regularizers, limit_train_batches=2)
    trainer.fit(TinyConvNet(), make_loader())
    for layer in ("conv1", "conv2"):
        assert f"focus/{layer}/loss" in trainer.progress_bar_metrics
        assert f"focus/{layer}/penalty" in trainer.callback_metrics
        loss = trainer.callback_metrics[f"focus/{layer}/loss"].item()
        penalty = trainer.callback_metrics[f"focus/{layer}/penalty"].item()
        assert loss == pytest.approx(0.5 * penalty)
        assert 0 < penalty < 1


def test_warmup_ramps_weight():
    regularizer = FocusRegularizer(weight=2.0, warmup_steps=4)
    assert [regularizer.current_weight(step) for step in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert FocusRegularizer(weight=2.0).current_weight(0) == 2.0


def test_warmup_logged_weight_starts_at_zero(tmp_path):
    trainer = make_trainer(tmp_path, [FocusRegularizer(layers="conv2", warmup_steps=100)], limit_train_batches=1)
    trainer.fit(TinyConvNet(), make_loader(batches=1))
    assert trainer.callback_metrics["focus/conv2/loss"].item() == 0.0


def test_manual_optimization_raises(tmp_path):
    class ManualModel(TinyConvNet):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        make_trainer(tmp_path, [FocusRegularizer()], limit_train_batches=1).fit(ManualModel(), make_loader())


def test_linear_layer_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="Layer 'head' is a Linear, which produces no 2-D activation map"):
        make_trainer(tmp_path, [FocusRegularizer(layers="head")], limit_train_batches=1).fit(TinyConvNet(), make_loader())


def test_non_map_output_names_layer_and_shape(tmp_path):
    class PooledOutput(TinyConvNet):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.squeeze = nn.Identity()

        def forward(self, images):
            features = F.relu(self.conv2(F.relu(self.conv1(images))))
            return self.head(self.squeeze(self.pool(features).flatten(1)))

    with pytest.raises(ValueError, match=r"Layer 'squeeze' produced an output of shape \(4, 6\)"):
        make_trainer(tmp_path, [FocusRegularizer(layers="squeeze")], limit_train_batches=1).fit(PooledOutput(), make_loader())


def test_unknown_layer_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"Layer 'conv9' was not found in TinyConvNet\. Valid layer names are: 'conv1', 'conv2', 'head'"):
        make_trainer(tmp_path, [FocusRegularizer(layers=["conv9"])], limit_train_batches=1).fit(TinyConvNet(), make_loader())


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("weight", 0.0, "`weight` to be a finite number greater than 0, but got 0.0"),
        ("weight", math.nan, "`weight` to be a finite number greater than 0, but got nan"),
        ("sigma", -1.0, "`sigma` to be a finite number greater than 0, but got -1.0"),
        ("sigma", math.inf, "`sigma` to be a finite number greater than 0, but got inf"),
        ("sigma_unit", "pixels", "`sigma_unit` to be one of 'cells', 'fraction', but got 'pixels'"),
        ("focus", "peak", "`focus` to be one of 'argmax', 'centroid', but got 'peak'"),
        ("warmup_steps", -1, "`warmup_steps` to be an integer at least 0, but got -1"),
        ("mass", "exp", "`mass` to be one of 'softmax', 'relu', but got 'exp'"),
        ("temperature", 0, "`temperature` to be a finite number greater than 0, but got 0"),
        ("layers", [], "`layers` to name at least one layer, but got an empty list"),
    ],
)
def test_invalid_argument_raises(argument, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FocusRegularizer(**{argument: value})


def test_default_layer_is_last_conv(tmp_path):
    regularizer = FocusRegularizer()
    make_trainer(tmp_path, [regularizer], limit_train_batches=1).fit(TinyConvNet(), make_loader())
    assert regularizer.hooked_layers == ["conv2"]


def test_hooks_and_wrapper_removed_after_fit(tmp_path):
    model = TinyConvNet()
    trainer = make_trainer(tmp_path, [FocusRegularizer(layers=["conv1", "conv2"])], limit_train_batches=2)
    trainer.fit(model, make_loader())
    assert all(not module._forward_hooks for module in model.modules())
    assert "training_step" not in vars(trainer.strategy)


class CopyAfterStep(Callback):
    """Deep-copies and pickles the module while the step's activations are still captured."""

    def __init__(self) -> None:
        self.copies = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.copies.append(copy.deepcopy(pl_module))
        buffer = io.BytesIO()
        torch.save(pl_module, buffer)
        buffer.seek(0)
        self.copies.append(torch.load(buffer, weights_only=False))


def test_deepcopy_and_save_after_step(tmp_path):
    copier = CopyAfterStep()
    model = TinyConvNet()
    trainer = make_trainer(tmp_path, [copier, FocusRegularizer(layers="conv2")], limit_train_batches=1)
    trainer.fit(model, make_loader())
    assert len(copier.copies) == 2
    images = torch.randn(2, 1, 8, 8)
    for duplicate in copier.copies:
        torch.testing.assert_close(duplicate(images), model(images))


def test_no_capture_under_no_grad():
    regularizer = FocusRegularizer(layers="conv2")
    model = TinyConvNet()
    regularizer._capture.attach(model, ["conv2"])
    regularizer._capture.enabled = True
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8))
    assert regularizer._capture.outputs("conv2") == []
    model(torch.randn(2, 1, 8, 8))
    assert len(regularizer._capture.outputs("conv2")) == 1
    regularizer._capture.detach_hooks()


class DDPLikeWrapper(nn.Module):
    """Stands in for DistributedDataParallel, which stores the wrapped model as ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_layer_names_resolve_through_wrappers():
    model = TinyConvNet()
    compiled_model = torch.compile(model, backend="eager")
    inner_compiled = TinyConvNet()
    inner_compiled.conv2 = torch.compile(inner_compiled.conv2, backend="eager")

    assert resolve_layers(model, ["conv2"])["conv2"] is model.conv2
    assert resolve_layers(DDPLikeWrapper(model), ["conv2"])["conv2"] is model.conv2
    assert resolve_layers(compiled_model, ["conv2"])["conv2"] is model.conv2
    assert resolve_layers(DDPLikeWrapper(compiled_model), ["module._orig_mod.conv2"])["conv2"] is model.conv2
    assert resolve_layers(inner_compiled, ["conv2"])["conv2"] is inner_compiled.conv2._orig_mod
    assert default_layer_name(DDPLikeWrapper(compiled_model)) == "conv2"
    assert canonical_name("module._orig_mod.conv2") == "conv2"


def test_layers_not_a_name_raises():
    with pytest.raises(ValueError, match="`layers` to be a layer name or a list of layer names, but got 5"):
        FocusRegularizer(layers=5)
