r"""Neuron synchronization: directions, similarity, local neighbourhoods, the coupling update, modules.

This is lightning-sync's reconstruction of the synchronization in Han et al.,
"Synchronization-Inspired Interpretable Neural Networks" (IEEE TNNLS, 2024). The abstract states
that similar neurons interact locally and synchronize adaptively into functional modules. The
oscillator model below is our own, after the SynC clustering algorithm of Böhm, Plant, Shao and
Yang (KDD 2010). It covers the state of a neuron (the direction of its weights), the element-wise
sine coupling, the adaptive neighbourhood, the order parameter and the modules.

Every function takes a whole layer at once as ``(C, C)`` matrices, where ``C`` is the number of
neurons (output channels of a convolution, rows of a Linear weight). The update and the
similarities are single tensor expressions. The module labelling repeats a tensor step until the
labels stop changing, and only the conversion of labels to lists of indices loops over neurons.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

NeighbourhoodMode = Literal["knn", "epsilon"]


def neuron_directions(weight: Tensor) -> tuple[Tensor, Tensor]:
    r"""Split a layer's weight into one unit direction and one norm per neuron, in float32.

    Neuron ``i`` is row ``i`` of the weight flattened to ``(C, D)``: a whole convolution filter,
    or a row of a Linear weight. The direction is :math:`u_i = w_i / \lVert w_i \rVert`. A neuron
    whose weights are all zero gets a zero direction and a zero norm, so nothing is divided by zero.

    Args:
        weight: ``(C, ...)`` weight with the output neurons on the first dimension, any float dtype.

    Returns:
        ``(directions, norms)`` of shapes ``(C, D)`` and ``(C,)``, both float32.

    Example::

        >>> directions, norms = neuron_directions(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        >>> directions.tolist(), norms.tolist()
        ([[0.6000000238418579, 0.800000011920929], [0.0, 0.0]], [5.0, 0.0])
    """
    if weight.dim() < 2:
        raise ValueError(f"Expected a weight with neurons on the first dimension, shape (C, ...), but got shape {tuple(weight.shape)}.")
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    norms = flat.norm(dim=1)
    directions = flat / norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    return directions, norms


def weight_similarity(directions: Tensor) -> Tensor:
    r"""Cosine similarity :math:`s_{ij} = u_i \cdot u_j` of unit directions, ``(C, C)``.

    The directions are already unit vectors, so a matrix product gives the cosine. This also keeps
    zero directions at similarity 0, where ``torchmetrics.functional.pairwise_cosine_similarity``
    (torchmetrics 1.9) would divide by a zero norm.

    Example::

        >>> weight_similarity(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    return directions @ directions.T


def pooled_activations(activations: Tensor) -> Tensor:
    """Mean ReLU activation of each neuron per sample, ``(N, C)``.

    Spatial dimensions (everything after the channel dimension) are averaged. A Linear layer's
    ``(N, C)`` output is only passed through ReLU.
    """
    if activations.dim() < 2:
        raise ValueError(f"Expected activations of shape (N, C, ...), but got shape {tuple(activations.shape)}.")
    rectified = activations.detach().clamp_min(0)
    if rectified.dim() == 2:
        return rectified
    return rectified.flatten(start_dim=2).mean(dim=2)


def activation_moments(pooled: Tensor) -> Tensor:
    r"""Sufficient statistics of a Pearson correlation as one float64 ``(C + 1, C + 1)`` matrix.

    With :math:`z = (1, x_1, \dots, x_C)` for each sample, the result is :math:`\sum z z^\top`.
    Entry ``[0, 0]`` is the sample count, row 0 contains the sums and the rest contains the sums
    of products. Moments of several batches, or of several processes, add up, so a single
    ``all_reduce(sum)`` gives every rank the statistics of the whole window.

    Example::

        >>> activation_moments(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))[0].tolist()
        [2.0, 4.0, 6.0]
    """
    if pooled.dim() != 2:
        raise ValueError(f"Expected pooled activations of shape (N, C), but got shape {tuple(pooled.shape)}.")
    augmented = torch.cat([torch.ones_like(pooled[:, :1]), pooled], dim=1).double()
    return augmented.T @ augmented


def activation_similarity(moments: Tensor) -> tuple[Tensor, Tensor]:
    r"""Pearson correlation of the neurons' pooled activations from :func:`activation_moments`.

    .. math::

        \rho_{ij} = \frac{n \sum x_i x_j - \sum x_i \sum x_j}
                         {\sqrt{n \sum x_i^2 - (\sum x_i)^2} \sqrt{n \sum x_j^2 - (\sum x_j)^2}}

    A neuron whose pooled activation does not vary over the window (a neuron that never fires,
    for example) has no defined correlation. It gets similarity 0 to every other neuron and is
    marked invalid, so it never joins a neighbourhood.

    Returns:
        ``(similarity, valid)``: float32 ``(C, C)`` correlations and a boolean ``(C,)`` mask of the
        neurons whose activation varies.

    Example::

        >>> pooled = torch.tensor([[1.0, 2.0, 5.0], [2.0, 4.0, 5.0], [3.0, 5.0, 5.0]])
        >>> similarity, valid = activation_similarity(activation_moments(pooled))
        >>> round(similarity[0, 1].item(), 4), valid.tolist()
        (0.982, [True, True, False])
    """
    count = moments[0, 0]
    sums = moments[0, 1:]
    covariance = count * moments[1:, 1:] - sums[:, None] * sums[None, :]
    variance = covariance.diagonal()
    # Relative tolerance, because float64 cancellation leaves a tiny non-zero variance for constant neurons.
    scale = (count * moments[1:, 1:].diagonal()).clamp_min(torch.finfo(torch.float64).tiny)
    valid = variance > scale * 1e-10
    spread = torch.where(valid, variance, torch.ones_like(variance)).sqrt()
    correlation = covariance / (spread[:, None] * spread[None, :])
    pair_valid = valid[:, None] & valid[None, :]
    correlation = torch.where(pair_valid, correlation.clamp(-1.0, 1.0), torch.zeros_like(correlation))
    correlation.fill_diagonal_(1.0)
    return correlation.float(), valid


def similarity_distances(similarity: Tensor) -> Tensor:
    r"""Distances :math:`d_{ij} = \sqrt{2 - 2 s_{ij}}` for similarities in ``[-1, 1]``.

    For unit directions this is the Euclidean distance :math:`\lVert u_i - u_j \rVert`. For a
    correlation it is the Euclidean distance between the standardized activations (divided by
    :math:`\sqrt{n}`), so both similarities share one scale from 0 (same) to 2 (opposite).

    Example::

        >>> similarity_distances(torch.tensor([1.0, 0.0, -1.0])).tolist()
        [0.0, 1.4142135381698608, 2.0]
    """
    return (2.0 - 2.0 * similarity).clamp_min(0.0).sqrt()


def direction_distances(directions: Tensor) -> Tensor:
    r"""Euclidean distances :math:`\lVert u_i - u_j \rVert` between unit directions, ``(C, C)``.

    The cosines are computed in float64. In float32, the square root turns a rounding error of
    about 1e-7 in :math:`2 - 2 s_{ij}` into a distance of about 5e-4 between equal directions.
    """
    return similarity_distances(weight_similarity(directions.double())).to(directions.dtype)


def _masked_distances(distances: Tensor, valid: Tensor | None) -> Tensor:
    """Distances with the diagonal and every pair involving an invalid neuron set to infinity."""
    masked = distances.clone()
    masked.fill_diagonal_(float("inf"))
    if valid is not None:
        pair_valid = valid[:, None] & valid[None, :]
        masked = masked.masked_fill(~pair_valid, float("inf"))
    return masked


def adaptive_radius(distances: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    r"""SynC's adaptive radius: the mean distance of the valid neurons to their ``k`` nearest neighbours.

    .. math::

        \varepsilon = \frac{1}{|V|\,k} \sum_{i \in V} \sum_{j \in kNN(i)} d_{ij}

    The radius shrinks as neighbourhoods synchronize, so links between separate groups drop out
    before those groups can merge.

    Example::

        >>> points = torch.tensor([0.0, 1.0, 3.0])
        >>> adaptive_radius((points[:, None] - points[None, :]).abs(), k=1).item()
        1.3333333730697632
    """
    masked = _masked_distances(distances, valid)
    nearest = masked.topk(k, dim=1, largest=False).values
    finite = torch.isfinite(nearest)
    if not finite.any():
        return torch.zeros((), dtype=distances.dtype, device=distances.device)
    return nearest[finite].mean()


def local_neighbourhoods(distances: Tensor, k: int, valid: Tensor | None = None, mode: NeighbourhoodMode = "knn") -> Tensor:
    r"""Boolean ``(C, C)`` neighbourhood graph: ``[i, j]`` is true when ``j`` is in :math:`N_i`.

    Both modes use the radius :math:`\varepsilon` of :func:`adaptive_radius`:

    - ``"knn"``: the symmetrized ``k``-nearest-neighbour graph (``j`` is among the ``k`` nearest of
      ``i``, or ``i`` among those of ``j``), keeping only pairs within :math:`\varepsilon`. Each
      neuron has at most ``k`` neighbours of its own choice, plus the neurons that chose it.
    - ``"epsilon"``: every pair within :math:`\varepsilon`, as in SynC. A dense region gives its
      neurons more than ``k`` neighbours.

    A neuron farther than :math:`\varepsilon` from every other neuron has no neighbours, so it
    stays free. The diagonal is false, and invalid neurons (``valid`` false) have no neighbours.

    Example::

        >>> points = torch.tensor([0.0, 0.1, 0.2, 5.0])
        >>> graph = local_neighbourhoods((points[:, None] - points[None, :]).abs(), k=1)
        >>> graph.int().tolist()
        [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    """
    if distances.dim() != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"Expected a square (C, C) distance matrix, but got shape {tuple(distances.shape)}.")
    count = distances.shape[0]
    if not 1 <= k <= count - 1:
        raise ValueError(f"Expected `k` between 1 and {count - 1} (the number of other neurons), but got {k}.")

    masked = _masked_distances(distances, valid)
    radius = adaptive_radius(distances, k, valid)
    within_radius = masked <= radius
    if mode == "epsilon":
        return within_radius
    if mode != "knn":
        raise ValueError(f"Expected `mode` to be one of 'knn', 'epsilon', but got {mode!r}.")

    nearest = masked.topk(k, dim=1, largest=False).indices
    chosen = torch.zeros_like(within_radius)
    chosen.scatter_(1, nearest, True)
    return (chosen | chosen.T) & within_radius


def synchronization_step(directions: Tensor, neighbours: Tensor, coupling: float) -> Tensor:
    r"""Apply one SynC / Kuramoto update to every direction at once and renormalize.

    .. math::

        u_i \leftarrow \operatorname{normalize}\Big(u_i + \frac{K}{|N_i|}
        \sum_{j \in N_i} \sin(u_j - u_i)\Big)

    The sine acts element-wise. The sum is computed without a ``(C, C, D)`` tensor through
    :math:`\sin(a - b) = \sin a \cos b - \cos a \sin b`:
    :math:`\sum_j A_{ij} \sin(u_j - u_i) = \cos u_i \odot (A \sin U)_i - \sin u_i \odot (A \cos U)_i`.
    Neurons without neighbours, with a zero direction, or whose update sums to the zero vector
    keep their direction.

    Args:
        directions: ``(C, D)`` unit directions (zero rows allowed).
        neighbours: boolean ``(C, C)`` graph from :func:`local_neighbourhoods`.
        coupling: coupling strength ``K``.

    Example::

        >>> directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> graph = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
        >>> updated = synchronization_step(directions, graph, coupling=0.5)
        >>> round(torch.dot(updated[0], updated[1]).item(), 4), updated[2].tolist()
        (0.951, [-1.0, 0.0])
    """
    adjacency = neighbours.to(directions.dtype)
    degree = adjacency.sum(dim=1)
    sine, cosine = directions.sin(), directions.cos()
    interaction = cosine * (adjacency @ sine) - sine * (adjacency @ cosine)
    moved = directions + coupling * interaction / degree.clamp_min(1.0)[:, None]

    length = moved.norm(dim=1, keepdim=True)
    has_direction = directions.norm(dim=1, keepdim=True) > 0
    update = (degree[:, None] > 0) & has_direction & (length > 0)
    return torch.where(update, moved / length.clamp_min(torch.finfo(moved.dtype).tiny), directions)


def order_parameter(directions: Tensor, neighbours: Tensor) -> Tensor:
    r"""Order parameter of a layer, in ``(0, 1]``, or 0 when no neuron has a neighbour.

    .. math::

        r = \frac{1}{|I|} \sum_{i \in I} \frac{1}{|N_i|} \sum_{j \in N_i} e^{-\lVert u_j - u_i \rVert}

    ``I`` is the set of neurons with at least one neighbour: free neurons are left out, because
    SynC's formula divides by :math:`|N_i|`. ``r = 1`` means every neighbourhood is fully
    synchronized.

    Example::

        >>> directions = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> graph = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
        >>> order_parameter(directions, graph).item()
        1.0
    """
    adjacency = neighbours.to(directions.dtype)
    degree = adjacency.sum(dim=1)
    closeness = (torch.exp(-direction_distances(directions)) * adjacency).sum(dim=1)
    coupled = degree > 0
    if not coupled.any():
        return torch.zeros((), dtype=directions.dtype, device=directions.device)
    return (closeness[coupled] / degree[coupled]).mean()


def module_labels(directions: Tensor, delta: float, valid: Tensor | None = None) -> Tensor:
    r"""Label each neuron with the smallest index of its module, ``(C,)`` int64.

    Modules are the connected components of the graph that joins ``i`` and ``j`` when
    :math:`\lVert u_i - u_j \rVert \le \delta`. Labels spread by repeated minimum over neighbours
    until they stop changing. That takes at most the graph's diameter in ``(C, C)`` steps. Invalid
    neurons (zero weights) form their own singleton modules.

    Example::

        >>> directions = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
        >>> module_labels(directions, delta=0.2).tolist()
        [0, 0, 2]
    """
    count = directions.shape[0]
    linked = direction_distances(directions) <= delta
    if valid is not None:
        linked &= valid[:, None] & valid[None, :]
    linked.fill_diagonal_(True)

    labels = torch.arange(count, device=directions.device)
    no_link = torch.full((count, count), count, device=directions.device)
    while True:
        spread = torch.where(linked, labels[None, :], no_link).min(dim=1).values
        if torch.equal(spread, labels):
            return labels
        labels = spread


def modules_from_labels(labels: Tensor) -> tuple[list[list[int]], list[int]]:
    """Group neurons by module label into modules (size at least 2) and free neurons.

    Returns:
        ``(modules, free_neurons)``: modules as sorted index lists, largest first (ties by their
        first neuron), and the sorted indices of neurons that are alone in their module.

    Example::

        >>> modules_from_labels(torch.tensor([0, 1, 0, 3, 1, 0]))
        ([[0, 2, 5], [1, 4]], [3])
    """
    groups: dict[int, list[int]] = {}
    for neuron, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(neuron)
    modules = sorted((group for group in groups.values() if len(group) >= 2), key=lambda group: (-len(group), group[0]))
    free = sorted(group[0] for group in groups.values() if len(group) == 1)
    return modules, free


def limit_module_growth(neighbours: Tensor, labels: Tensor, max_size: int) -> Tensor:
    """Drop the links between two different modules whose union would have more than ``max_size`` neurons.

    Each pair of modules is checked on its own, so three modules that are each allowed to join
    their partner can still merge in one step into more than ``max_size`` neurons;
    :func:`revert_oversized_modules` catches that case after the update.

    Example::

        >>> graph = torch.ones(3, 3, dtype=torch.bool)
        >>> limit_module_growth(graph, torch.tensor([0, 0, 2]), max_size=2).int().tolist()
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    sizes = torch.bincount(labels, minlength=labels.shape[0])[labels]
    different = labels[:, None] != labels[None, :]
    too_large = sizes[:, None] + sizes[None, :] > max_size
    return neighbours & ~(different & too_large)


def revert_oversized_modules(
    previous: Tensor, updated: Tensor, delta: float, max_size: int, valid: Tensor | None = None
) -> Tensor:
    """Undo the update of every moved neuron that ends up in a module of more than ``max_size`` neurons.

    The check repeats until no moved neuron is in an oversized module, because reverting some
    neurons can change the modules of the rest. Each round reverts at least one neuron, so it
    ends after at most ``C`` rounds. A module that was already oversized before the update
    (formed by the optimizer, for example) is not split. Its neurons only keep their old
    directions, so the coupling never makes it tighter or larger.

    NOTE: this is a brake, not a split. When a large group converges at once (for example with
    every neuron coupled to every other one), all of its moves are reverted at every update and
    the group stays unsynchronized. The local neighbourhoods of :func:`local_neighbourhoods` make
    that case unlikely, and the tests cover it only with an all-to-all graph.

    Example::

        >>> previous = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> updated = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.6, 0.8]])
        >>> torch.equal(revert_oversized_modules(previous, updated, delta=0.1, max_size=2), previous)
        True
    """
    directions = updated
    moved = (updated != previous).any(dim=1)
    while True:
        labels = module_labels(directions, delta, valid)
        sizes = torch.bincount(labels, minlength=labels.shape[0])[labels]
        revert = (sizes > max_size) & moved
        if not revert.any():
            return directions
        directions = torch.where(revert[:, None], previous, directions)
        moved = moved & ~revert
