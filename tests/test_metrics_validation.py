"""Argument checks of the metrics and the value of compute() before any update."""

import warnings

import pytest
import torch

from lightning_sync.callbacks.metrics import InterpretabilityMetrics
from lightning_sync.functional.metrics import class_selectivity, location_instability, modularity_of_graph, module_labels
from lightning_sync.metrics import (
    ActiveNeuronRate,
    ClassSelectivity,
    FocusConcentration,
    LocationInstability,
    Modularity,
    ModuleCoherence,
    ModuleConsistency,
    MutualInformationScore,
    SemanticSpecificity,
    SynchronizationOrder,
)

EMPTY_METRICS = [
    lambda: FocusConcentration(),
    lambda: ActiveNeuronRate(num_neurons=3),
    lambda: ClassSelectivity(num_classes=3, num_neurons=3),
    lambda: SemanticSpecificity(num_classes=3, num_neurons=3, partition=[[0, 1], [2]]),
    lambda: MutualInformationScore(num_classes=3, num_neurons=3),
    lambda: ModuleCoherence(num_neurons=3, partition=[[0, 1], [2]]),
    lambda: Modularity(num_neurons=3, partition=[[0, 1], [2]]),
    lambda: ModuleConsistency(num_neurons=3, partition=[[0, 1], [2]]),
    lambda: SynchronizationOrder(),
    lambda: LocationInstability(num_neurons=3, num_landmarks=2, image_size=(8, 8), stride=2),
]


@pytest.mark.parametrize("make_metric", EMPTY_METRICS)
def test_compute_before_update_is_nan(make_metric):
    metric = make_metric()
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        value = metric.compute()
    assert torch.isnan(value)


@pytest.mark.parametrize(
    ("make_metric", "match"),
    [
        (lambda: FocusConcentration(radius=-1), "`radius` to be an integer at least 0"),
        (lambda: FocusConcentration(firing_threshold=-0.1), "`firing_threshold`"),
        (lambda: ActiveNeuronRate(num_neurons=0), "`num_neurons` to be an integer at least 1"),
        (lambda: ActiveNeuronRate(num_neurons=2, min_share=1.5), r"`min_share` to be a number in \[0, 1\]"),
        (lambda: ClassSelectivity(num_classes=1, num_neurons=2), "`num_classes` to be at least 2"),
        (lambda: MutualInformationScore(num_classes=2, num_neurons=2, num_bins=1), "`num_bins` to be at least 2"),
        (lambda: MutualInformationScore(num_classes=2, num_neurons=2, max_samples=0), "`max_samples`"),
        (lambda: SemanticSpecificity(num_classes=2, num_neurons=2, partition=[[0, 2]]), "valid indices are 0 to 1"),
        (lambda: ModuleCoherence(num_neurons=3, partition=[[0, 1], [1]]), "belongs to modules 0 and 1"),
        (lambda: Modularity(num_neurons=3, partition=[[]]), "Module 0 of the partition is empty"),
        (lambda: SynchronizationOrder(k=0), "`k` to be an integer at least 1"),
        (lambda: SynchronizationOrder(neighbourhood="ball"), "`neighbourhood` to be one of"),
        (lambda: LocationInstability(1, 1, image_size=(8, 8), stride=0), r"`stride\[0\]` to be a finite number greater than 0"),
        (lambda: LocationInstability(1, 1, image_size=(8,), stride=2), "`image_size` to be a number or a"),
        (lambda: LocationInstability(1, 0, image_size=(8, 8), stride=2), "`num_landmarks`"),
        (lambda: LocationInstability(1, 1, image_size=(8, 8), stride=2, top_m=0), "`top_m`"),
    ],
)
def test_invalid_arguments_raise(make_metric, match):
    with pytest.raises(ValueError, match=match):
        make_metric()


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) or \(N, C\)"):
        class_selectivity(torch.rand(3), torch.tensor([0, 1, 0]), 2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        class_selectivity(torch.rand(3, 2), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="one class index per sample"):
        class_selectivity(torch.rand(3, 2), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        class_selectivity(torch.rand(3, 2), torch.tensor([0.0, 1.0, 0.0]), 2)
    with pytest.raises(ValueError, match="Expected activations with 4 neurons"):
        ClassSelectivity(num_classes=2, num_neurons=4).update(torch.rand(3, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"`landmarks` of shape \(2, K, 2\)"):
        location_instability(torch.rand(2, 1, 4, 4), torch.rand(2, 3), (8, 8), stride=2)
    with pytest.raises(ValueError, match=r"`visible` of shape \(2, 1\)"):
        location_instability(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2), (8, 8), stride=2, visible=torch.ones(2, 2))
    with pytest.raises(ValueError, match="Expected 2 landmarks per image"):
        LocationInstability(1, 2, image_size=(8, 8), stride=2).update(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2))
    with pytest.raises(ValueError, match="non-negative graph weights"):
        modularity_of_graph(-torch.ones(2, 2), [[0, 1]])
    with pytest.raises(ValueError, match="at least 2 neurons"):
        SynchronizationOrder().update(torch.rand(1, 4))
    with pytest.raises(ValueError, match="valid indices are 0 to 2"):
        module_labels([[5]], 3)


def test_module_metric_without_partition_raises():
    metric = ModuleCoherence(num_neurons=3)
    metric.update(torch.rand(4, 3))
    with pytest.raises(ValueError, match="needs a module partition"):
        metric.compute()


def test_new_partition_invalidates_cached_value():
    pooled = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    metric = Modularity(num_neurons=4, partition=[[0, 1], [2, 3]])
    metric.update(pooled)
    assert metric.compute().item() == pytest.approx(0.5)
    metric.partition = [[0, 1, 2, 3]]
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-7)


def test_mutual_information_buffer_is_bounded():
    metric = MutualInformationScore(num_classes=2, num_neurons=2, max_samples=5)
    with pytest.warns(UserWarning, match="at most `max_samples=5` samples"):
        metric.update(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
        metric.update(torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))
    assert int(metric.num_stored) == 5
    assert metric.samples.shape == (5, 2)


def test_states_move_with_metric_to():
    metric = ModuleCoherence(num_neurons=3, partition=[[0, 1], [2]]).to(torch.float64)
    metric.update(torch.rand(4, 3))
    assert metric.outer_product_sum.shape == (3, 3)
    assert metric.partition == [[0, 1], [2]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "`num_classes` to be at least 2"),
        ({"metrics": []}, "at least one metric"),
        ({"metrics": ["accuracy"]}, "`metrics` to be one of"),
        ({"fallback_delta": 0}, "`fallback_delta`"),
        ({"layers": []}, "at least one layer"),
    ],
)
def test_callback_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterpretabilityMetrics(**kwargs)


def test_callback_targets_formats():
    callback = InterpretabilityMetrics(num_classes=2)
    labels = torch.tensor([0, 1])
    assert callback.targets((torch.rand(2, 1), labels)) is labels
    assert callback.targets({"image": torch.rand(2, 1), "label": labels}) is labels
    with pytest.raises(TypeError, match="cannot find the labels"):
        callback.targets(torch.rand(2, 1))


def test_no_warning_after_update():
    metric = FocusConcentration()
    metric.update(torch.rand(2, 3, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute()
