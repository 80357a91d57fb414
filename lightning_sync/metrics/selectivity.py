"""ClassSelectivity of neurons and SemanticSpecificity of neuron modules, from per-class activation sums."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_sync.functional.metrics._inputs import Partition, check_num_neurons
from lightning_sync.functional.metrics.selectivity import (
    _class_selectivity_compute,
    _class_sums_update,
    _semantic_specificity_compute,
)
from lightning_sync.metrics._base import InterpretabilityMetric, ModulePartitionMixin, check_neurons_and_classes


class _ClassSumsMetric(InterpretabilityMetric):
    """States shared by the class-mean metrics: sums of pooled activations per class ``(K, C)`` and counts ``(K,)``."""

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_classes: int, num_neurons: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_neurons_and_classes(num_neurons, num_classes)
        self.num_classes = num_classes
        self.num_neurons = num_neurons
        self.add_state(
            "class_sums", default=torch.zeros(num_classes, num_neurons, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("class_counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, activations: Tensor, target: Tensor) -> None:
        """Add the pooled activations of ``activations`` ``(N, C, H, W)`` or ``(N, C)`` to the sums of their classes ``target`` ``(N,)``."""
        class_sums, class_counts = _class_sums_update(activations, target, self.num_classes)
        check_num_neurons(class_sums, self.num_neurons)
        self.class_sums += class_sums.to(self.class_sums.device)
        self.class_counts += class_counts.to(self.class_counts.device)


class ClassSelectivity(_ClassSumsMetric):
    r"""Class selectivity index of each neuron, averaged over the layer (higher is better).

    After Morcos et al., "On the importance of single directions for generalization", ICLR 2018:

    .. math::

        SI_c = \frac{\mu_{\max,c} - \mu_{-\max,c}}{\mu_{\max,c} + \mu_{-\max,c}}

    ``mu_{k,c}`` is the mean over class ``k``'s samples of neuron ``c``'s pooled activation (the
    spatial mean of its ReLU map), ``mu_max`` the largest class mean and ``mu_-max`` the mean of the
    others. See :func:`~lightning_sync.functional.metrics.class_selectivity`. The states are the
    ``K x C`` class sums and ``K`` class counts, so memory does not grow with the data. ``compute``
    returns NaN while fewer than two classes have samples.

    Args:
        num_classes: number of classes ``K``.
        num_neurons: number of neurons (channels) ``C`` of the layer.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = ClassSelectivity(num_classes=3, num_neurons=2)
        >>> metric.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([2]))
        >>> metric.compute()
        tensor(0.5000)
    """

    def compute(self) -> Tensor:
        """Return the mean selectivity index over the neurons that responded."""
        return _class_selectivity_compute(self.class_sums, self.class_counts)


class SemanticSpecificity(ModulePartitionMixin, _ClassSumsMetric):
    r"""Class selectivity of each module's mean response, averaged with module sizes as weights (higher is better).

    .. math::

        SS = \frac{\sum_m |m| \, SI(\bar a_m)}{\sum_m |m|}, \qquad
        \bar a_m = \frac{1}{|m|} \sum_{c \in m} a_c

    ``SI`` is the selectivity index of :class:`ClassSelectivity` and ``a_c`` neuron ``c``'s pooled
    activation. This is lightning-sync's own reading of the "semantic specificity within modules"
    that the abstract of Han et al. (IEEE TNNLS, 2024) names. The states are the same class sums
    as :class:`ClassSelectivity`. The partition is a setting, not a state, so a new partition can
    be scored on the same data by assigning :attr:`partition` before ``compute``.

    Args:
        num_classes: number of classes ``K``.
        num_neurons: number of neurons (channels) ``C`` of the layer.
        partition: lists of neuron indices, one list per module; may be set later through :attr:`partition`.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Raises:
        ValueError: on an invalid partition, or in ``compute`` when no partition was set.

    Example::

        >>> metric = SemanticSpecificity(num_classes=2, num_neurons=3, partition=[[0, 1], [2]])
        >>> metric.update(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([0, 1]))
        >>> metric.compute()
        tensor(1.)
    """

    def __init__(self, num_classes: int, num_neurons: int, partition: Partition | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, num_neurons, **kwargs)
        self.partition = partition

    def compute(self) -> Tensor:
        """Return the size-weighted mean specificity of the modules."""
        return _semantic_specificity_compute(self.class_sums, self.class_counts, self._require_partition())
