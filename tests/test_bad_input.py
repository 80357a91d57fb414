"""Invalid arguments, layers and values: clear errors before training, or a skipped step with a warning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import TinyConvNet, quiet_trainer
from torch import Tensor, nn

from lightning_sync import ClassSelectivity, FocusRegularizer, InterpretabilityMetrics, NeuronSynchronizer


class ProbeNet(TinyConvNet):
    """TinyConvNet with two side layers that only the callbacks look at.

    ``probe`` is a 4-channel convolution on the input images. On the batches in
    ``poisoned_batches`` one input pixel is replaced by ``poison`` (NaN or infinity), so the
    probe's activations are not finite while the cross-entropy, which does not use the probe,
    stays finite. ``single`` is a convolution with one output channel.
    """

    def __init__(self, poisoned_batches: tuple[int, ...] = (), poison: float = math.nan, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probe = nn.Conv2d(1, 4, 3, padding=1)
        self.single = nn.Conv2d(1, 1, 3, padding=1)
        self.poisoned_batches = poisoned_batches
        self.poison = poison

    def _run_probe(self, images: Tensor, batch_idx: int) -> None:
        if batch_idx in self.poisoned_batches:
            images = images.clone()
            images[0, 0, 0, 0] = self.poison
        self.probe(images)

    def training_step(self, batch, batch_idx):
        self._run_probe(batch[0], batch_idx)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._run_probe(batch[0], batch_idx)
        super().validation_step(batch, batch_idx)


def _fit(tmp_path, callbacks, model=None, **kwargs):
    model = model if model is not None else ProbeNet()
    kwargs.setdefault("max_steps", 2)
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, **kwargs)
    trainer.fit(model)
    return trainer, model


# --- constructor arguments -----------------------------------------------------------------

BAD_NUMBERS = [0.0, -1.0, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("argument", ["sigma", "weight", "temperature"])
def test_focus_rejects_bad_number(argument, value):
    with pytest.raises(ValueError, match=rf"Expected `{argument}` to be a finite number greater than 0, but got {value}"):
        FocusRegularizer(**{argument: value})


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 1.5])
def test_synchronizer_rejects_bad_coupling(value):
    with pytest.raises(ValueError, match=rf"Expected `coupling` to be a number in \(0, 1\], but got {value}"):
        NeuronSynchronizer(coupling=value)


@pytest.mark.parametrize("argument", ["interval", "k"])
@pytest.mark.parametrize("value", [0, -2, 1.5, math.nan, math.inf, True])
def test_synchronizer_rejects_bad_count(argument, value):
    with pytest.raises(ValueError, match=rf"Expected `{argument}` to be an integer at least 1, but got {value}"):
        NeuronSynchronizer(**{argument: value})


@pytest.mark.parametrize("value", [0.0, -0.5, math.nan, math.inf, 2.5])
def test_synchronizer_rejects_bad_delta(value):
    with pytest.raises(ValueError, match=r"Expected `delta` to be"):
        NeuronSynchronizer(delta=value)


@pytest.mark.parametrize("callback", [FocusRegularizer, NeuronSynchronizer])
def test_empty_layer_list_rejected(callback):
    with pytest.raises(ValueError, match=r"Expected `layers` to name at least one layer, but got an empty list"):
        callback(layers=[])


# --- layers, checked in setup before the first training step -------------------------------


@pytest.mark.parametrize("callback", [FocusRegularizer, NeuronSynchronizer])
def test_unknown_layer_rejected_before_training(tmp_path, callback):
    model = ProbeNet()
    before = model.conv2.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Layer 'conv9' was not found in ProbeNet\. Valid layer names are: 'conv1', 'conv2'"):
        _fit(tmp_path, [callback(layers=["conv2", "conv9"])], model=model)
    assert torch.equal(model.conv2.weight, before)
    assert all(not module._forward_hooks for module in model.modules())


def test_focus_rejects_layer_without_maps(tmp_path):
    with pytest.raises(ValueError, match=r"Layer 'head' is a Linear, which produces no 2-D activation map"):
        _fit(tmp_path, [FocusRegularizer(layers=["head"])])


def test_synchronizer_rejects_single_neuron(tmp_path):
    with pytest.raises(ValueError, match=r"Layer 'single' has 1 neuron, but synchronization needs at least 2"):
        _fit(tmp_path, [NeuronSynchronizer(layers=["single"], k=1)])


def test_synchronizer_rejects_neighbourhood_larger_than_layer(tmp_path):
    # conv2 has 6 neurons, so each neuron has at most 5 neighbours.
    with pytest.raises(ValueError, match=r"Expected `k` to be at most 5, the number of other neurons in layer 'conv2', but got 6"):
        _fit(tmp_path, [NeuronSynchronizer(layers=["conv2"], k=6)])


# --- values met during training -------------------------------------------------------------


def test_zero_norm_filters_stay_zero(tmp_path):
    model = ProbeNet(lr=0.0)
    with torch.no_grad():
        model.conv2.weight[[0, 3]] = 0.0
    synchronizer = NeuronSynchronizer(layers=["conv2"], k=2, coupling=0.5, max_module_share=1.0)
    trainer, _ = _fit(tmp_path, [FocusRegularizer(layers=["conv2"]), synchronizer], model=model)

    assert synchronizer.updates == trainer.global_step == 2
    assert torch.isfinite(model.conv2.weight).all()
    assert (model.conv2.weight[[0, 3]] == 0).all()
    assert (model.conv2.weight[[1, 2, 4, 5]].flatten(1).norm(dim=1) > 0).all()
    assert 0 in synchronizer.free_neurons["conv2"]
    assert 3 in synchronizer.free_neurons["conv2"]


def _states(metric) -> list[Tensor]:
    values = [getattr(metric, name) for name in metric._defaults]
    return [tensor for value in values for tensor in (value if isinstance(value, list) else [value])]


@pytest.mark.parametrize("poison", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_activations_skip_the_step(tmp_path, poison):
    model = ProbeNet(poisoned_batches=(1,), poison=poison, train_size=12, lr=0.1)
    focus = FocusRegularizer(layers=["probe"])
    synchronizer = NeuronSynchronizer(layers=["probe"], similarity="activation", k=1, max_module_share=1.0)
    metrics = InterpretabilityMetrics(layers=["probe"], num_classes=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, [focus, synchronizer, metrics], model=model, max_steps=3, limit_val_batches=2)
    messages = [str(warning.message) for warning in caught]

    assert trainer.global_step == 3
    assert any("FocusRegularizer skipped the focus penalty at step 1" in message for message in messages)
    assert any("NeuronSynchronizer skipped the update of layer 'probe' at step 2" in message for message in messages)
    assert any("ClassSelectivity skipped an update because `activations` contains NaN" in message for message in messages)
    assert synchronizer.updates == 2
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
    for name, metric in metrics.layer_metrics("probe").items():
        for state in _states(metric):
            assert torch.isfinite(state).all(), name


@pytest.mark.parametrize("poison", [math.nan, math.inf], ids=["nan", "inf"])
def test_metric_update_skips_non_finite_values(poison):
    metric = ClassSelectivity(num_classes=3, num_neurons=4)
    activations = torch.rand(6, 4, 3, 3)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    metric.update(activations, target)
    expected = metric.compute()

    poisoned = activations.clone()
    poisoned[2, 1, 0, 0] = poison
    with pytest.warns(UserWarning, match=r"ClassSelectivity skipped an update because `activations` contains NaN or infinite values"):
        metric.update(poisoned, target)
    with pytest.warns(UserWarning, match=r"\(2 updates skipped so far\)"):
        metric.update(activations=poisoned, target=target)
    for state in _states(metric):
        assert torch.isfinite(state).all()
    torch.testing.assert_close(metric.compute(), expected)


# --- manual optimization --------------------------------------------------------------------


class ManualNet(TinyConvNet):
    """TinyConvNet that calls its optimizer itself."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        optimizer.step()


def test_focus_rejects_manual_optimization(tmp_path):
    with pytest.raises(RuntimeError, match=r"FocusRegularizer adds a term to the loss .* ManualNet sets `automatic_optimization = False`"):
        _fit(tmp_path, [FocusRegularizer(layers=["conv2"])], model=ManualNet())


def test_synchronizer_supports_manual_optimization(tmp_path):
    # Lightning increases global_step at every optimizer.step() of a manual training_step too.
    model = ManualNet(lr=0.0)
    before = model.conv2.weight.detach().clone()
    synchronizer = NeuronSynchronizer(layers=["conv2"], k=2, coupling=0.5, max_module_share=1.0)
    trainer, _ = _fit(tmp_path, [synchronizer], model=model, max_steps=3)

    assert trainer.global_step == synchronizer.optimizer_steps == synchronizer.updates == 3
    assert not torch.equal(model.conv2.weight, before)
