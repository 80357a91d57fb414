"""Known-answer tests: hand-built activations whose metric values are computed on paper."""

import math

import pytest
import torch

from lightning_sync.functional.metrics import (
    active_neuron_rate,
    average_linkage_labels,
    class_selectivity,
    focus_concentration,
    modularity,
    modularity_of_graph,
    module_coherence,
    module_consistency,
    module_labels,
    mutual_information_score,
    semantic_specificity,
    synchronization_order,
)
from lightning_sync.metrics import (
    ActiveNeuronRate,
    ClassSelectivity,
    FocusConcentration,
    Modularity,
    ModuleCoherence,
    ModuleConsistency,
    MutualInformationScore,
    SemanticSpecificity,
    SynchronizationOrder,
)


def test_focus_concentration_window_share():
    maps = torch.zeros(1, 2, 5, 5)
    maps[0, 0, 2, 2] = 3.0
    maps[0, 0, 1, 1] = 1.0  # inside the 3 x 3 window: concentration 1
    maps[0, 1, 0, 0] = 2.0
    maps[0, 1, 0, 3] = 2.0  # three cells from the peak: concentration 1/2
    metric = FocusConcentration(radius=1)
    metric.update(maps)
    assert metric.compute().item() == pytest.approx(0.75)
    assert focus_concentration(maps, radius=3).item() == pytest.approx(1.0)


def test_focus_concentration_ignores_silent_maps():
    maps = torch.zeros(2, 1, 3, 3)
    maps[0, 0, 1, 1] = 1.0
    maps[1, 0] = -1.0  # ReLU mass 0: not firing
    assert focus_concentration(maps).item() == pytest.approx(1.0)


def test_active_neuron_rate_counts_shares():
    pooled = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -3.0]])
    # Firing shares per neuron: 3/4, 1/4, 0.
    assert active_neuron_rate(pooled, min_share=0.5).item() == pytest.approx(1 / 3)
    assert active_neuron_rate(pooled, min_share=0.25).item() == pytest.approx(2 / 3)
    metric = ActiveNeuronRate(num_neurons=3, min_share=0.25)
    metric.update(pooled[:2])
    metric.update(pooled[2:])
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_class_selectivity_hand_values():
    # Class means per neuron: neuron 0 (4, 0, 0), neuron 1 (1, 2, 3), neuron 2 never fires.
    pooled = torch.tensor([[4.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    target = torch.tensor([0, 1, 2])
    # Neuron 0: (4 - 0) / (4 + 0) = 1. Neuron 1: (3 - 1.5) / (3 + 1.5) = 1/3. Neuron 2 is left out.
    expected = (1 + 1 / 3) / 2
    assert class_selectivity(pooled, target, 3).item() == pytest.approx(expected)
    metric = ClassSelectivity(num_classes=4, num_neurons=3)  # class 3 has no sample and is left out
    metric.update(pooled, target)
    assert metric.compute().item() == pytest.approx(expected)


def test_class_selectivity_pools_maps():
    maps = torch.zeros(2, 1, 2, 2)
    maps[0, 0, 0, 0] = 4.0  # spatial mean 1
    maps[1, 0, 0, 0] = 2.0  # spatial mean 0.5
    # (1 - 0.5) / (1 + 0.5) = 1/3
    assert class_selectivity(maps, torch.tensor([0, 1]), 2).item() == pytest.approx(1 / 3)


def test_semantic_specificity_weights_by_size():
    # Class means: neurons 0 and 1 respond to class 0 only, neuron 2 to both classes equally.
    pooled = torch.tensor([[2.0, 2.0, 1.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([0, 1])
    assert semantic_specificity(pooled, target, 2, [[0, 1], [2]]).item() == pytest.approx((2 * 1 + 1 * 0) / 3)
    # Module {0, 2}: mean response (1.5, 0.5) gives 0.5; module {1}: 1.
    metric = SemanticSpecificity(num_classes=2, num_neurons=3, partition=[[0, 2], [1]])
    metric.update(pooled, target)
    assert metric.compute().item() == pytest.approx((2 * 0.5 + 1 * 1) / 3)


def test_mutual_information_perfect_and_independent():
    target = torch.tensor([0, 0, 1, 1])
    # Neuron 0 separates class 0 from 1 (MI log 2); neuron 1 is independent of the class (MI 0).
    pooled = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    expected = (math.log(2) + 0.0) / 2
    assert mutual_information_score(pooled, target, 2, num_bins=2).item() == pytest.approx(expected, abs=1e-6)
    metric = MutualInformationScore(num_classes=2, num_neurons=2, num_bins=2)
    metric.update(pooled[:3], target[:3])
    metric.update(pooled[3:], target[3:])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_mutual_information_one_vs_rest_maximum():
    # Three equally likely classes; the neuron fires only on class 2. I(b; 1[y = 2]) is the entropy
    # of a 1/3 Bernoulli variable, H = -(1/3) log(1/3) - (2/3) log(2/3).
    pooled = torch.tensor([[0.0], [0.0], [0.0], [0.0], [5.0], [5.0]])
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    entropy = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)
    assert mutual_information_score(pooled, target, 3, num_bins=4).item() == pytest.approx(entropy, abs=1e-6)


def test_module_coherence_hand_computed():
    # Neurons 0 and 1 are copies (rho = 1), 2 is their negation (rho = -1), 3 is uncorrelated with them.
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    other = torch.tensor([1.0, -1.0, -1.0, 1.0])  # rho(base, other) = 0
    pooled = torch.stack([base, base, 5 - base, other + 2], dim=1)
    # Within {0, 1}: 1. Across: (0,2) -1, (0,3) 0, (1,2) -1, (1,3) 0, (2,3) 0, mean -0.4.
    assert module_coherence(pooled, [[0, 1], [2], [3]]).item() == pytest.approx(1.4, abs=1e-6)
    metric = ModuleCoherence(num_neurons=4, partition=[[0, 1], [2], [3]])
    metric.update(pooled)
    assert metric.compute().item() == pytest.approx(1.4, abs=1e-6)


def test_modularity_two_cliques():
    # Two triangles of weight 1 joined by one edge of weight 1: 7 edges, w = 7, degrees 2,2,3,3,2,2.
    weights = torch.zeros(6, 6)
    for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5), (2, 3)]:
        weights[i, j] = weights[j, i] = 1.0
    # Q = sum over modules of (internal edges / w - (total degree / 2w)^2) = 2 * (3/7 - (7/14)^2).
    expected = 2 * (3 / 7 - 0.25)
    assert modularity_of_graph(weights, [[0, 1, 2], [3, 4, 5]]).item() == pytest.approx(expected)
    assert modularity_of_graph(weights, [[0, 1, 2, 3, 4, 5]]).item() == pytest.approx(0.0, abs=1e-7)


def test_modularity_of_correlation_graph():
    pooled = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    # Correlations: rho(0,1) = rho(2,3) = 1, all cross pairs -1 (clamped to 0): Q = 2 * (1/2 - 1/4).
    assert modularity(pooled, [[0, 1], [2, 3]]).item() == pytest.approx(0.5)
    metric = Modularity(num_neurons=4, partition=[[0, 1], [2, 3]])
    metric.update(pooled)
    assert metric.compute().item() == pytest.approx(0.5)


def test_module_consistency_recovers_or_contradicts():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.rand(50, 1, generator=generator), torch.rand(50, 1, generator=generator)
    noise = 0.01 * torch.rand(50, 6, generator=generator)
    pooled = torch.cat([first.expand(-1, 3), second.expand(-1, 3)], dim=1) + noise
    assert module_consistency(pooled, [[0, 1, 2], [3, 4, 5]]).item() == pytest.approx(1.0)
    # {0, 1, 3}, {2, 4, 5} against the re-derived {0, 1, 2}, {3, 4, 5}: contingency [[2, 1], [1, 2]],
    # so 2 agreeing pairs against 6 * 6 / 15 = 2.4 expected and 6 at most: ARI = -0.4 / 3.6 = -1/9.
    assert module_consistency(pooled, [[0, 1, 3], [2, 4, 5]]).item() == pytest.approx(-1 / 9, abs=1e-6)
    metric = ModuleConsistency(num_neurons=6, partition=[[0, 1, 2], [3, 4, 5]])
    metric.update(pooled)
    assert metric.compute().item() == pytest.approx(1.0)


def test_average_linkage_uses_mean_distance():
    # Points on a line at 0, 1, 2.2, 10: the first merge joins 0 and 1, then {0, 1} with 2.2
    # (mean distance 1.7 against 7.8 for 2.2 and 10).
    points = torch.tensor([0.0, 1.0, 2.2, 10.0])
    distance = (points[:, None] - points[None, :]).abs()
    assert average_linkage_labels(distance, 3).tolist() == [0, 0, 1, 2]
    assert average_linkage_labels(distance, 2).tolist() == [0, 0, 0, 1]


def test_synchronization_order_values():
    # Two pairs of identical directions: every neighbourhood is synchronized.
    aligned = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert synchronization_order(aligned, k=1).item() == pytest.approx(1.0)
    # Three directions 90 degrees apart in 3-D with k = 2: every pair is at distance sqrt(2).
    orthogonal = torch.eye(3)
    expected = math.exp(-math.sqrt(2))
    metric = SynchronizationOrder(k=2)
    metric.update(orthogonal)
    metric.update(aligned[:2])
    assert metric.compute().item() == pytest.approx((expected + 1.0) / 2, abs=1e-6)


def test_module_labels_marks_free_neurons():
    assert module_labels([[3, 1], [0]], 5).tolist() == [1, 0, -1, 0, -1]
