"""Synchronization order of a layer: SynC's order parameter of the neurons' weight directions."""

from __future__ import annotations

import torch  # noqa: F401  (used by the doctest)
from torch import Tensor

from lightning_sync.functional.sync import (
    NeighbourhoodMode,
    direction_distances,
    local_neighbourhoods,
    neuron_directions,
    order_parameter,
)


def synchronization_order(weight: Tensor, k: int = 3, neighbourhood: NeighbourhoodMode = "knn") -> Tensor:
    r"""Compute the order parameter of a layer's neuron directions over their local neighbourhoods.

    .. math::

        r = \frac{1}{|I|} \sum_{i \in I} \frac{1}{|N_i|} \sum_{j \in N_i} e^{-\lVert u_j - u_i \rVert}

    ``u_i`` is the unit direction of neuron ``i``'s weights and ``N_i`` its local neighbourhood,
    built as :class:`~lightning_sync.callbacks.NeuronSynchronizer` builds it (``k`` nearest
    neighbours within SynC's adaptive radius). The functions are those of
    :mod:`lightning_sync.functional.sync`; see :func:`~lightning_sync.functional.sync.order_parameter`.
    ``r = 1`` means every neighbourhood is fully synchronized.

    Args:
        weight: the layer's weight ``(C, ...)``, output neurons first.
        k: neighbours per neuron; capped at ``C - 1``.
        neighbourhood: ``"knn"`` or ``"epsilon"``, as in the synchronizer.

    Returns:
        A scalar tensor in ``(0, 1]``, or 0 when no neuron has a neighbour.

    Example::

        >>> weight = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
        >>> synchronization_order(weight, k=1)
        tensor(1.)
    """
    directions, norms = neuron_directions(weight)
    neighbours = local_neighbourhoods(direction_distances(directions), min(k, directions.shape[0] - 1), norms > 0, neighbourhood)
    return order_parameter(directions, neighbours)
