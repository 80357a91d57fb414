"""Agreement of the metrics with reference implementations on random inputs."""

import numpy as np
import pytest
import torch
from sklearn.feature_selection import mutual_info_classif
from sklearn.metrics import adjusted_rand_score as sklearn_adjusted_rand_score

from lightning_sync.functional.metrics import (
    class_selectivity,
    derive_partition_labels,
    modularity,
    module_coherence,
    module_consistency,
    quantile_bins,
)
from lightning_sync.metrics import ClassSelectivity, MutualInformationScore

SEEDS = [0, 1, 2]


def _random_pooled(seed: int, samples: int = 300, neurons: int = 12, classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (samples,), generator=generator)
    class_response = torch.rand(classes, neurons, generator=generator) * 3
    pooled = (class_response[target] + torch.randn(samples, neurons, generator=generator)).clamp_min(0)
    return pooled, target


def _numpy_class_selectivity(pooled: np.ndarray, target: np.ndarray, classes: int) -> float:
    indices = []
    for neuron in range(pooled.shape[1]):
        means = np.array([pooled[target == k, neuron].mean() for k in range(classes) if np.any(target == k)])
        best = means.max()
        rest = (means.sum() - best) / (len(means) - 1)
        if best + rest > 0:
            indices.append((best - rest) / (best + rest))
    return float(np.mean(indices))


@pytest.mark.parametrize("seed", SEEDS)
def test_class_selectivity_matches_numpy(seed):
    pooled, target = _random_pooled(seed)
    expected = _numpy_class_selectivity(pooled.numpy(), target.numpy(), 5)
    assert class_selectivity(pooled, target, 5).item() == pytest.approx(expected, rel=1e-5)

    metric = ClassSelectivity(num_classes=5, num_neurons=12)
    for chunk, chunk_target in zip(pooled.split(64), target.split(64)):
        metric.update(chunk, chunk_target)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_mutual_information_matches_sklearn(seed):
    pooled, target = _random_pooled(seed)
    bins = quantile_bins(pooled, 8).numpy()
    # With discrete features scikit-learn's estimator is deterministic: the plug-in MI of the contingency table.
    per_class = [mutual_info_classif(bins, target.numpy() == k, discrete_features=True) for k in range(5)]
    expected = float(np.max(np.stack(per_class), axis=0).mean())

    metric = MutualInformationScore(num_classes=5, num_neurons=12, num_bins=8)
    for chunk, chunk_target in zip(pooled.split(50), target.split(50)):
        metric.update(chunk, chunk_target)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_module_consistency_matches_sklearn_ari(seed):
    pooled, _ = _random_pooled(seed)
    generator = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(0, 3, (12,), generator=generator)
    partition = [torch.nonzero(labels == module).flatten().tolist() for module in range(3)]
    partition = [module for module in partition if module]
    given_labels = np.empty(12, dtype=int)
    for index, module in enumerate(partition):
        given_labels[module] = index

    derived = derive_partition_labels(torch.from_numpy(np.corrcoef(pooled.numpy().T)).float(), len(partition))
    expected = sklearn_adjusted_rand_score(given_labels, derived.numpy())
    assert module_consistency(pooled, partition).item() == pytest.approx(expected, abs=1e-5)


def test_average_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    distance_module = pytest.importorskip("scipy.spatial.distance")
    pooled, _ = _random_pooled(3, neurons=15)
    correlation = np.corrcoef(pooled.numpy().T)
    distance = 1 - correlation
    np.fill_diagonal(distance, 0)
    tree = hierarchy.linkage(distance_module.squareform(distance, checks=False), method="average")
    for clusters in (2, 4, 7):
        expected = hierarchy.fcluster(tree, t=clusters, criterion="maxclust")
        derived = derive_partition_labels(torch.from_numpy(correlation).float(), clusters).numpy()
        assert sklearn_adjusted_rand_score(expected, derived) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_coherence_and_modularity_match_numpy(seed):
    pooled, _ = _random_pooled(seed)
    correlation = np.corrcoef(pooled.numpy().T)
    partition = [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9, 10, 11]]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])

    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(12, dtype=bool)
    expected_coherence = correlation[same & off_diagonal].mean() - correlation[~same].mean()
    assert module_coherence(pooled, partition).item() == pytest.approx(expected_coherence, abs=1e-5)

    weights = np.clip(correlation, 0, None) * off_diagonal
    degree = weights.sum(axis=1)
    total = degree.sum()
    expected_q = ((weights - np.outer(degree, degree) / total) * same).sum() / total
    assert modularity(pooled, partition).item() == pytest.approx(expected_q, abs=1e-5)
