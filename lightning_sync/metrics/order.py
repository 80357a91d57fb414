"""SynchronizationOrder: SynC's order parameter of a layer's neuron directions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_sync._validation import check_choice, check_positive_int
from lightning_sync.functional.metrics.order import synchronization_order
from lightning_sync.functional.sync import NeighbourhoodMode
from lightning_sync.metrics._base import InterpretabilityMetric


class SynchronizationOrder(InterpretabilityMetric):
    r"""Order parameter of a layer's neuron directions over their local neighbourhoods (higher is better).

    .. math::

        r = \frac{1}{|I|} \sum_{i \in I} \frac{1}{|N_i|} \sum_{j \in N_i} e^{-\lVert u_j - u_i \rVert}

    From SynC clustering (Böhm, Plant, Shao and Yang, KDD 2010), computed by
    :func:`~lightning_sync.functional.metrics.synchronization_order`. ``update`` takes the layer's
    weight ``(C, ...)``; ``compute`` returns the mean order parameter over the updates, NaN before
    any. A value near 1 with a single module is a collapsed layer, not a good one: read it with
    :class:`ModuleConsistency` and :class:`ActiveNeuronRate`.

    Args:
        k: neighbours per neuron; capped at ``C - 1``.
        neighbourhood: ``"knn"`` or ``"epsilon"``, as in the synchronizer.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = SynchronizationOrder(k=1)
        >>> metric.update(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]))
        >>> metric.compute()
        tensor(1.)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, k: int = 3, neighbourhood: NeighbourhoodMode = "knn", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_positive_int("k", k)
        self.neighbourhood = check_choice("neighbourhood", neighbourhood, ("knn", "epsilon"))
        self.add_state("order_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_updates", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, weight: Tensor) -> None:
        """Add the order parameter of ``weight`` ``(C, ...)``, which needs at least two neurons."""
        if weight.dim() < 2 or weight.shape[0] < 2:
            raise ValueError(f"Expected a weight (C, ...) with at least 2 neurons, but got shape {tuple(weight.shape)}.")
        order = synchronization_order(weight, self.k, self.neighbourhood)
        self.order_sum += order.to(self.order_sum)
        self.num_updates += 1

    def compute(self) -> Tensor:
        """Return the mean order parameter over the updates."""
        if self.num_updates == 0:
            return torch.tensor(float("nan"), device=self.order_sum.device)
        return (self.order_sum / self.num_updates).float()
