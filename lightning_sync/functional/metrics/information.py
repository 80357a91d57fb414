"""Mutual-information score of neurons and classes, after Liang et al. (CSG, 2020)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.clustering.mutual_info_score import _mutual_info_score_compute

from lightning_sync.functional.metrics._inputs import check_class_targets, pool_activations


def _mutual_information_update(activations: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Return the pooled activations ``(N, C)`` and the checked class indices ``(N,)``."""
    pooled = pool_activations(activations)
    return pooled, check_class_targets(target, pooled.shape[0], num_classes).to(pooled.device)


def quantile_bins(pooled: Tensor, num_bins: int) -> Tensor:
    """Return the equal-frequency bin of every value, per neuron: ``(N, C)`` integers in ``[0, num_bins)``.

    The bin edges are the ``1/B, ..., (B-1)/B`` quantiles of each column. Tied values share a bin,
    so a neuron that is 0 on most samples puts all of them in one bin.

    Example::

        >>> quantile_bins(torch.tensor([[0.0], [0.0], [1.0], [2.0]]), num_bins=2).flatten().tolist()
        [0, 0, 1, 1]
    """
    values = pooled.double()
    # Linear interpolation between order statistics, as torch.quantile does; sorting avoids
    # torch.quantile's limit on the input size.
    ordered = values.sort(dim=0).values
    positions = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=pooled.device)[1:-1] * (len(values) - 1)
    lower = positions.floor().long()
    upper = positions.ceil().long()
    fraction = (positions - lower).unsqueeze(1)
    edges = ordered[lower] + (ordered[upper] - ordered[lower]) * fraction  # (B - 1, C)
    bins = torch.searchsorted(edges.T.contiguous(), values.T.contiguous(), right=True)  # (C, N)
    return bins.T


def _mutual_information_compute(pooled: Tensor, target: Tensor, num_classes: int, num_bins: int) -> Tensor:
    """Return the mean over neurons of the largest class-indicator mutual information; NaN without samples."""
    if pooled.shape[0] == 0:
        return torch.tensor(float("nan"), device=pooled.device)
    num_samples, num_neurons = pooled.shape
    bins = quantile_bins(pooled, num_bins)

    # Joint counts of (bin, class) for every neuron in one bincount, (C, B, K).
    neuron_offset = torch.arange(num_neurons, device=pooled.device) * (num_bins * num_classes)
    flat_index = neuron_offset + bins * num_classes + target.unsqueeze(1)
    joint = torch.bincount(flat_index.flatten(), minlength=num_neurons * num_bins * num_classes)
    joint = joint.reshape(num_neurons, num_bins, num_classes).double()
    bin_totals = joint.sum(dim=2, keepdim=True)

    # The contingency table of b(a_c) against 1[y = k] has the columns n_bk and n_b - n_bk.
    # torchmetrics' mutual-information formula turns each table into nats; the loop is C * K
    # small calls once per compute, not per batch.
    scores = torch.zeros(num_neurons, num_classes, dtype=torch.float64, device=pooled.device)
    for neuron in range(num_neurons):
        for class_index in range(num_classes):
            inside = joint[neuron, :, class_index]
            contingency = torch.stack([inside, bin_totals[neuron, :, 0] - inside], dim=1)
            scores[neuron, class_index] = _mutual_info_score_compute(contingency[contingency.sum(dim=1) > 0])
    return scores.max(dim=1).values.mean().float()


def mutual_information_score(activations: Tensor, target: Tensor, num_classes: int, num_bins: int = 16) -> Tensor:
    r"""Compute each neuron's largest mutual information with a one-vs-rest class indicator, averaged.

    After the mutual-information score (MIS) of Liang et al., "Training Interpretable
    Convolutional Neural Networks by Differentiating Class-specific Filters", ECCV 2020:

    .. math::

        MIS = \frac{1}{C} \sum_c \max_k I\left(b(a_c); \mathbb{1}[y = k]\right)

    ``a_c`` is neuron ``c``'s pooled activation (spatial mean of the ReLU map) and ``b`` puts it
    into ``num_bins`` equal-frequency bins computed from the same samples. ``I`` is the mutual
    information in nats of the two discrete variables, from
    :func:`torchmetrics.functional.clustering.mutual_info_score`. It equals scikit-learn's
    ``mutual_info_classif(bins, y == k, discrete_features=True)``. The binning is our choice: the
    estimator of CSG is not reproduced, so values are comparable across our runs, not with CSG's
    published numbers.

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        target: class index of each sample, ``(N,)``.
        num_classes: number of classes ``K``.
        num_bins: equal-frequency bins per neuron.

    Returns:
        A scalar tensor, at least 0 and at most the entropy of the most balanced class indicator; NaN
        for an empty batch.

    Example::

        >>> pooled = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
        >>> mutual_information_score(pooled, torch.tensor([0, 0, 1, 1]), num_classes=2, num_bins=2)  # log 2
        tensor(0.6931)
    """
    pooled, target = _mutual_information_update(activations, target, num_classes)
    return _mutual_information_compute(pooled, target, num_classes, num_bins)
