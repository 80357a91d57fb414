"""ModuleCoherence, Modularity and ModuleConsistency: scores of a partition of a layer's neurons into modules.

All three keep the sums ``sum x`` ``(C,)`` and ``sum x x^T`` ``(C, C)`` of the pooled activations
and a sample count, in float64, and derive the Pearson correlation of the neurons from them in
``compute``. Memory is ``C x C`` whatever the number of samples, and the sums add up exactly
across processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_sync.functional.metrics._inputs import Partition, check_num_neurons, correlation_from_moments
from lightning_sync.functional.metrics.modules import (
    _module_coherence_compute,
    _module_consistency_compute,
    _moments_update,
    modularity_of_graph,
    similarity_graph,
)
from lightning_sync.metrics._base import InterpretabilityMetric, ModulePartitionMixin, check_neurons_and_classes


class _CorrelationMetric(ModulePartitionMixin, InterpretabilityMetric):
    """Co-moment states of the pooled activations and the ``partition`` setting."""

    higher_is_better = True

    def __init__(self, num_neurons: int, partition: Partition | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_neurons_and_classes(num_neurons)
        self.num_neurons = num_neurons
        self.partition = partition
        self.add_state("activation_sum", default=torch.zeros(num_neurons, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "outer_product_sum", default=torch.zeros(num_neurons, num_neurons, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("num_samples", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, activations: Tensor) -> None:
        """Add the pooled activations of ``activations`` ``(N, C, H, W)`` or ``(N, C)`` to the co-moment sums."""
        total, outer_total, count = _moments_update(activations)
        check_num_neurons(total.unsqueeze(0), self.num_neurons)
        self.activation_sum += total.to(self.activation_sum.device)
        self.outer_product_sum += outer_total.to(self.outer_product_sum.device)
        self.num_samples += count.to(self.num_samples.device)

    def correlation(self) -> Tensor | None:
        """Pearson correlation ``(C, C)`` of the neurons over the samples so far, ``None`` with fewer than two samples."""
        if self.num_samples < 2:
            return None
        return correlation_from_moments(self.activation_sum, self.outer_product_sum, self.num_samples)

    def compute(self) -> Tensor:
        """Return the score of :attr:`partition` on the correlations so far, NaN with fewer than two samples."""
        modules = self._require_partition()
        correlation = self.correlation()
        if correlation is None:
            return torch.tensor(float("nan"), device=self.activation_sum.device)
        return self._score(correlation, modules)

    def _score(self, correlation: Tensor, modules: Partition) -> Tensor:
        raise NotImplementedError


class ModuleCoherence(_CorrelationMetric):
    r"""Mean activation correlation within modules minus the mean across modules (higher is better).

    .. math::

        MC = \operatorname{mean}_{i \ne j,\ m(i) = m(j)} \rho_{ij}
           - \operatorname{mean}_{m(i) \ne m(j)} \rho_{ij}

    ``rho`` is the Pearson correlation of the neurons' pooled activations and ``m(i)`` the module of
    neuron ``i``; see :func:`~lightning_sync.functional.metrics.module_coherence`. The definition
    is lightning-sync's own. ``compute`` returns NaN with fewer than two samples, when no module
    has two members, or when all neurons share one module.

    Args:
        num_neurons: number of neurons (channels) ``C`` of the layer.
        partition: lists of neuron indices, one list per module; may be set later through :attr:`partition`.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = ModuleCoherence(num_neurons=4, partition=[[0, 1], [2, 3]])
        >>> metric.update(torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0], [2.0, 4.0, 1.0, 0.0]]))
        >>> round(metric.compute().item(), 4)
        1.183
    """

    plot_lower_bound = -2.0
    plot_upper_bound = 2.0

    def _score(self, correlation: Tensor, modules: Partition) -> Tensor:
        return _module_coherence_compute(correlation, modules)


class Modularity(_CorrelationMetric):
    r"""Newman's modularity Q of the neuron similarity graph under the module partition (higher is better).

    After M. E. J. Newman, "Modularity and community structure in networks", PNAS 103(23), 2006:

    .. math::

        Q = \frac{1}{2w} \sum_{i, j} \left(W_{ij} - \frac{k_i k_j}{2w}\right) \delta(m(i), m(j))

    with ``W_ij = max(rho_ij, 0)`` the positive part of the activation correlation and
    ``W_ii = 0``; see :func:`~lightning_sync.functional.metrics.modularity`. ``compute`` returns
    NaN with fewer than two samples or a graph without edges.

    Args:
        num_neurons: number of neurons (channels) ``C`` of the layer.
        partition: lists of neuron indices, one list per module; may be set later through :attr:`partition`.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = Modularity(num_neurons=4, partition=[[0, 1], [2, 3]])
        >>> metric.update(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))
        >>> metric.compute()
        tensor(0.5000)
    """

    plot_lower_bound = -0.5
    plot_upper_bound = 1.0

    def _score(self, correlation: Tensor, modules: Partition) -> Tensor:
        return modularity_of_graph(similarity_graph(correlation), modules)


class ModuleConsistency(_CorrelationMetric):
    r"""Adjusted Rand index between a module partition and the modules re-derived from activations (higher is better).

    .. math::

        MCons = \operatorname{ARI}\left(m, \operatorname{AL}_{M}(1 - \rho)\right)

    The given partition ``m`` has ``M`` modules. ``AL_M(1 - rho)`` cuts the average-linkage tree of
    the correlation distance between the neurons' pooled activations on the data seen into ``M``
    clusters. Fed with held-out data it measures whether the synchronizer's modules, found during
    training from filter weights or training activations, also hold in the neurons' responses to
    new data. See
    :func:`~lightning_sync.functional.metrics.module_consistency`; the derivation is
    lightning-sync's own. A partition of singletons scores 1 trivially.

    Args:
        num_neurons: number of neurons (channels) ``C`` of the layer.
        partition: lists of neuron indices, one list per module; may be set later through :attr:`partition`.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = ModuleConsistency(num_neurons=4, partition=[[0, 1], [2, 3]])
        >>> metric.update(torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0], [2.0, 4.0, 1.0, 0.0]]))
        >>> metric.compute()
        tensor(1.)
    """

    plot_lower_bound = -0.5
    plot_upper_bound = 1.0

    def _score(self, correlation: Tensor, modules: Partition) -> Tensor:
        return _module_consistency_compute(correlation, modules)
