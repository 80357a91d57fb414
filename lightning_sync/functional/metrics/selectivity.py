"""Class selectivity of neurons (Morcos et al., 2018) and semantic specificity of neuron modules."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sync.functional.metrics._inputs import (
    Partition,
    check_class_targets,
    module_labels,
    pool_activations,
)


def _class_sums_update(activations: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Return per-class sums of the pooled activations, ``(K, C)``, and per-class sample counts, ``(K,)``."""
    pooled = pool_activations(activations).double()
    target = check_class_targets(target, pooled.shape[0], num_classes).to(pooled.device)
    class_sums = torch.zeros(num_classes, pooled.shape[1], dtype=torch.float64, device=pooled.device)
    class_sums.index_add_(0, target, pooled)
    class_counts = torch.bincount(target, minlength=num_classes).double()
    return class_sums, class_counts


def _selectivity_index(class_means: Tensor) -> Tensor:
    """Return ``(mu_max - mu_rest) / (mu_max + mu_rest)`` per column of ``class_means`` ``(K, C)``, NaN where undefined."""
    num_classes = class_means.shape[0]
    mu_max = class_means.max(dim=0).values
    mu_rest = (class_means.sum(dim=0) - mu_max) / (num_classes - 1)
    denominator = mu_max + mu_rest
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (mu_max - mu_rest) / safe, torch.full_like(denominator, torch.nan))


def _observed_class_means(class_sums: Tensor, class_counts: Tensor) -> Tensor | None:
    """Return the class means of the classes that have samples, or ``None`` when fewer than two have."""
    observed = class_counts > 0
    if int(observed.sum()) < 2:
        return None
    return class_sums[observed] / class_counts[observed].unsqueeze(1)


def _class_selectivity_compute(class_sums: Tensor, class_counts: Tensor) -> Tensor:
    """Return the mean selectivity index over neurons that responded at all; NaN when undefined."""
    class_means = _observed_class_means(class_sums, class_counts)
    if class_means is None:
        return torch.tensor(float("nan"), device=class_sums.device)
    return _selectivity_index(class_means).nanmean().float()


def class_selectivity(activations: Tensor, target: Tensor, num_classes: int) -> Tensor:
    r"""Compute the class selectivity index of each neuron, averaged over the layer.

    After Morcos et al., "On the importance of single directions for generalization", ICLR 2018:

    .. math::

        SI_c = \frac{\mu_{\max,c} - \mu_{-\max,c}}{\mu_{\max,c} + \mu_{-\max,c}}

    ``mu_{k,c}`` is neuron ``c``'s pooled activation (spatial mean of the ReLU map) averaged over
    the samples of class ``k``. ``mu_max`` is the largest class mean and ``mu_-max`` the mean of the
    other class means. The index is 0 for a neuron that responds equally to all classes and 1 for
    one that responds to a single class. Classes without samples are left out, and so are neurons
    that never respond (their index is 0 / 0).

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        target: class index of each sample, ``(N,)``.
        num_classes: number of classes ``K``.

    Returns:
        A scalar tensor in ``[0, 1]``; NaN when fewer than two classes have samples or no neuron responds.

    Example::

        >>> pooled = torch.tensor([[2.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
        >>> class_selectivity(pooled, torch.tensor([0, 1, 2]), num_classes=3)  # (1 + 0) / 2
        tensor(0.5000)
    """
    return _class_selectivity_compute(*_class_sums_update(activations, target, num_classes))


def _semantic_specificity_compute(class_sums: Tensor, class_counts: Tensor, modules: Partition) -> Tensor:
    """Return the size-weighted mean selectivity of the modules' mean responses; NaN when undefined."""
    class_means = _observed_class_means(class_sums, class_counts)
    if class_means is None:
        return torch.tensor(float("nan"), device=class_sums.device)
    labels = module_labels(modules, class_means.shape[1], device=class_means.device)
    num_modules = len(modules)
    if num_modules == 0:
        return torch.tensor(float("nan"), device=class_sums.device)

    # The class mean of a module's mean response is the mean of its members' class means.
    member = labels >= 0
    module_sums = torch.zeros(class_means.shape[0], num_modules, dtype=class_means.dtype, device=class_means.device)
    module_sums.index_add_(1, labels[member], class_means[:, member])
    sizes = torch.bincount(labels[member], minlength=num_modules).to(class_means.dtype)
    module_specificity = _selectivity_index(module_sums / sizes)

    defined = ~torch.isnan(module_specificity)
    if not bool(defined.any()):
        return torch.tensor(float("nan"), device=class_sums.device)
    weights = sizes[defined]
    return ((module_specificity[defined] * weights).sum() / weights.sum()).float()


def semantic_specificity(activations: Tensor, target: Tensor, num_classes: int, modules: Partition) -> Tensor:
    r"""Compute the class selectivity of each module's mean response, averaged with module sizes as weights.

    .. math::

        SS = \frac{\sum_m |m| \, SI(\bar a_m)}{\sum_m |m|}, \qquad
        \bar a_m = \frac{1}{|m|} \sum_{c \in m} a_c

    ``a_c`` is neuron ``c``'s pooled activation and ``SI`` the selectivity index of
    :func:`class_selectivity`. A module whose members respond to the same class keeps that
    selectivity; a module mixing neurons of different classes averages it away. This is
    lightning-sync's own reading of the "semantic specificity within modules" named in the
    abstract of Han et al. (IEEE TNNLS, 2024). Neurons outside every module are left out, and so
    are modules that never respond.

    Args:
        activations: activation maps ``(N, C, H, W)`` or pooled activations ``(N, C)``.
        target: class index of each sample, ``(N,)``.
        num_classes: number of classes ``K``.
        modules: lists of neuron indices, one list per module.

    Returns:
        A scalar tensor in ``[0, 1]``; NaN when fewer than two classes have samples or no module responds.

    Example::

        >>> pooled = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> target = torch.tensor([0, 1])
        >>> semantic_specificity(pooled, target, 2, modules=[[0, 1], [2]])
        tensor(1.)
        >>> semantic_specificity(pooled, target, 2, modules=[[0, 2], [1]])  # (2 * 0 + 1 * 1) / 3
        tensor(0.3333)
    """
    class_sums, class_counts = _class_sums_update(activations, target, num_classes)
    return _semantic_specificity_compute(class_sums, class_counts, modules)
