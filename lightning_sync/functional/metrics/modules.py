"""Metrics of a partition of a layer's neurons into modules: coherence, modularity and consistency.

All three start from the Pearson correlation of the neurons' pooled activations (spatial mean of
the ReLU map), accumulated as the sums ``sum x`` and ``sum x x^T`` so that memory stays ``C x C``
however many samples arrive.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.clustering import adjusted_rand_score

from lightning_sync.functional.metrics._inputs import (
    Partition,
    correlation_from_moments,
    module_labels,
    pool_activations,
)


def _moments_update(activations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``sum x`` ``(C,)``, ``sum x x^T`` ``(C, C)`` and the sample count of the pooled activations, in float64."""
    pooled = pool_activations(activations).double()
    count = torch.tensor(pooled.shape[0], dtype=torch.float64, device=pooled.device)
    return pooled.sum(dim=0), pooled.T @ pooled, count


def _nan_result(reference: Tensor) -> Tensor:
    return torch.tensor(float("nan"), device=reference.device)


def _module_coherence_compute(correlation: Tensor, modules: Partition) -> Tensor:
    """Return the mean within-module minus the mean across-module correlation; NaN when either is undefined."""
    labels = module_labels(modules, correlation.shape[0], device=correlation.device)
    member = labels >= 0
    pair_defined = member.unsqueeze(0) & member.unsqueeze(1) & ~torch.isnan(correlation)
    pair_defined.fill_diagonal_(False)
    same_module = labels.unsqueeze(0) == labels.unsqueeze(1)

    within = pair_defined & same_module
    across = pair_defined & ~same_module
    if not bool(within.any()) or not bool(across.any()):
        return _nan_result(correlation)
    return correlation[within].mean() - correlation[across].mean()


def module_coherence(activations: Tensor, modules: Partition) -> Tensor:
    r"""Compute the mean activation correlation of neurons in the same module minus that of neurons in different modules.

    .. math::

        MC = \operatorname{mean}_{i \ne j,\ m(i) = m(j)} \rho_{ij}
           - \operatorname{mean}_{m(i) \ne m(j)} \rho_{ij}

    ``rho`` is the Pearson correlation of the neurons' pooled activations over the samples and
    ``m(i)`` the module of neuron ``i``. The value lies in ``[-2, 2]``; it is positive when modules
    group neurons that respond together. Neurons outside every module and pairs involving a neuron
    of zero variance are left out. This definition is lightning-sync's own.

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        modules: lists of neuron indices, one list per module.

    Returns:
        A scalar tensor; NaN when no module has two responding members or all neurons share one module.

    Example::

        >>> pooled = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0], [2.0, 4.0, 1.0, 0.0]])
        >>> round(module_coherence(pooled, [[0, 1], [2, 3]]).item(), 4)
        1.183
    """
    total, outer_total, count = _moments_update(activations)
    if count < 2:
        return _nan_result(total)
    return _module_coherence_compute(correlation_from_moments(total, outer_total, count), modules)


def similarity_graph(correlation: Tensor) -> Tensor:
    """Return the weighted neuron graph: positive correlations, with no self-loops and 0 where undefined."""
    weights = torch.nan_to_num(correlation, nan=0.0).clamp_min(0)
    return weights.fill_diagonal_(0)


def _modularity_compute(weights: Tensor, modules: Partition) -> Tensor:
    """Return Newman's Q of the graph ``weights`` restricted to the neurons of ``modules``; NaN without edges."""
    labels = module_labels(modules, weights.shape[0], device=weights.device)
    member = labels >= 0
    weights = weights[member][:, member].double()
    labels = labels[member]

    degree = weights.sum(dim=1)
    twice_edge_weight = degree.sum()
    if twice_edge_weight <= 0:
        return _nan_result(weights)
    same_module = (labels.unsqueeze(0) == labels.unsqueeze(1)).double()
    expected = torch.outer(degree, degree) / twice_edge_weight
    return (((weights - expected) * same_module).sum() / twice_edge_weight).float()


def modularity(activations: Tensor, modules: Partition) -> Tensor:
    r"""Compute Newman's modularity Q of the neuron similarity graph under the module partition.

    After M. E. J. Newman, "Modularity and community structure in networks", PNAS 103(23), 2006:

    .. math::

        Q = \frac{1}{2w} \sum_{i, j} \left(W_{ij} - \frac{k_i k_j}{2w}\right) \delta(m(i), m(j))

    The graph weight ``W_ij = max(rho_ij, 0)`` is the positive part of the Pearson correlation of
    neurons ``i`` and ``j``'s pooled activations (``W_ii = 0``), ``k_i = sum_j W_ij`` and
    ``2w = sum_i k_i``. Q is at most 1; 0 means the modules hold no more edge weight than chance.
    Neurons outside every module are left out of the graph. Use :func:`modularity_of_graph` for
    another similarity, such as the cosine of filter weights.

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        modules: lists of neuron indices, one list per module.

    Returns:
        A scalar tensor; NaN when the graph has no edge.

    Example::

        >>> pooled = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
        >>> modularity(pooled, [[0, 1], [2, 3]])  # two disjoint edges of weight 1, one per module
        tensor(0.5000)
    """
    total, outer_total, count = _moments_update(activations)
    if count < 2:
        return _nan_result(total)
    return modularity_of_graph(similarity_graph(correlation_from_moments(total, outer_total, count)), modules)


def modularity_of_graph(weights: Tensor, modules: Partition) -> Tensor:
    """Compute Newman's Q of the symmetric, non-negative weight matrix ``weights`` ``(C, C)`` under ``modules``.

    Example::

        >>> modularity_of_graph(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), [[0, 1]])
        tensor(0.)
    """
    if weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"Expected a square weight matrix (C, C), but got shape {tuple(weights.shape)}.")
    if bool((weights < 0).any()):
        raise ValueError("Expected non-negative graph weights, because Newman's Q is defined for them, but got negative entries.")
    return _modularity_compute(weights, modules)


def average_linkage_labels(distance: Tensor, num_clusters: int) -> Tensor:
    """Cluster items by average-linkage agglomeration of ``distance`` ``(C, C)`` until ``num_clusters`` remain.

    Each step merges the two clusters with the smallest mean pairwise distance (ties: the lowest
    indices). Returns the cluster index of every item, ``(C,)``, numbered by first member.

    Example::

        >>> distance = torch.tensor([[0.0, 0.1, 0.9], [0.1, 0.0, 0.8], [0.9, 0.8, 0.0]])
        >>> average_linkage_labels(distance, 2).tolist()
        [0, 0, 1]
    """
    num_items = distance.shape[0]
    if not 1 <= num_clusters <= num_items:
        raise ValueError(f"Expected `num_clusters` in [1, {num_items}], but got {num_clusters}.")
    labels = torch.arange(num_items, device=distance.device)
    # Sum of pairwise distances between clusters and cluster sizes; inactive clusters get +inf.
    between = distance.double().clone()
    sizes = torch.ones(num_items, dtype=torch.float64, device=distance.device)
    active = torch.ones(num_items, dtype=torch.bool, device=distance.device)
    for _ in range(num_items - num_clusters):
        mean_distance = between / torch.outer(sizes, sizes)
        allowed = active.unsqueeze(0) & active.unsqueeze(1)
        allowed.fill_diagonal_(False)
        mean_distance = torch.where(allowed, mean_distance, torch.inf)
        flat = int(torch.argmin(mean_distance))
        first, second = sorted(divmod(flat, num_items))

        between[first] += between[second]
        between[:, first] += between[:, second]
        sizes[first] += sizes[second]
        active[second] = False
        labels[labels == second] = first
    _, dense = torch.unique(labels, sorted=True, return_inverse=True)
    return dense


def derive_partition_labels(correlation: Tensor, num_modules: int) -> Tensor:
    """Re-derive ``num_modules`` modules from activation correlations: average linkage on ``1 - rho``.

    Undefined correlations (a neuron of zero variance) count as 0, that is distance 1.
    """
    distance = 1 - torch.nan_to_num(correlation, nan=0.0)
    return average_linkage_labels(distance.fill_diagonal_(0), num_modules)


def _module_consistency_compute(correlation: Tensor, modules: Partition) -> Tensor:
    """Return the adjusted Rand index between ``modules`` and the partition re-derived from ``correlation``."""
    labels = module_labels(modules, correlation.shape[0], device=correlation.device)
    member = labels >= 0
    if int(member.sum()) < 2:
        return _nan_result(correlation)
    derived = derive_partition_labels(correlation[member][:, member], len(modules))
    return adjusted_rand_score(derived, labels[member]).float()


def module_consistency(activations: Tensor, modules: Partition) -> Tensor:
    r"""Compute the agreement between a module partition and the modules that the activations suggest.

    .. math::

        MCons = \operatorname{ARI}\left(m, \operatorname{AL}_{M}(1 - \rho)\right)

    ``m`` is the given partition with ``M`` modules, for example the synchronizer's modules, which
    come from filter weights. ``AL_M(1 - rho)`` cuts the average-linkage tree of the correlation
    distance between the neurons' pooled activations on the given data into ``M`` clusters. ARI is
    the adjusted Rand index of :func:`torchmetrics.functional.clustering.adjusted_rand_score`: 1
    for the same partition, about 0 for chance agreement. On held-out data it measures whether the
    modules hold across data, as the abstract of Han et al. (IEEE TNNLS, 2024) claims for
    synchronized modules. The derivation is lightning-sync's own; neurons outside every module are
    left out.

    A partition of singletons re-derives itself exactly and scores 1, so read this metric
    together with the number of modules.

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        modules: lists of neuron indices, one list per module.

    Returns:
        A scalar tensor in ``[-0.5, 1]``; NaN with fewer than two samples or fewer than two neurons in modules.

    Example::

        >>> pooled = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0], [2.0, 4.0, 1.0, 0.0]])
        >>> module_consistency(pooled, [[0, 1], [2, 3]])
        tensor(1.)
        >>> module_consistency(pooled, [[0, 2], [1, 3]])
        tensor(-0.5000)
    """
    total, outer_total, count = _moments_update(activations)
    if count < 2:
        return _nan_result(total)
    return _module_consistency_compute(correlation_from_moments(total, outer_total, count), modules)
