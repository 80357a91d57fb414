"""Focus positions, the focus penalty and focus concentration of activation maps.

The focus penalty is lightning-sync's reconstruction of the focus regularization of Han et al.,
"Synchronization-Inspired Interpretable Neural Networks" (IEEE TNNLS, 2024). The abstract states
that each neuron's activation map is regularized to surround the focus position of the pattern it
responded to. The Gaussian neighbourhood and the mass-share penalty below are our choice. The
``centroid`` focus follows the Interpretable CNN code of Zhang, Wu and Zhu (CVPR 2018).

All functions take activation maps ``(N, C, H, W)`` and work on the whole batch at once.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

FocusMode = Literal["argmax", "centroid"]
SigmaUnit = Literal["cells", "fraction"]
MassFunction = Literal["softmax", "relu"]

DEFAULT_FIRING_THRESHOLD = 1e-6
"""Activation mass of a map at or below which the map counts as not firing."""


def _check_maps(activations: Tensor) -> None:
    if activations.dim() != 4:
        raise ValueError(f"Expected activation maps of shape (N, C, H, W), but got shape {tuple(activations.shape)}.")


def map_mass(activations: Tensor) -> Tensor:
    """Total activation of each map, ``(N, C)``, after ReLU."""
    _check_maps(activations)
    return activations.clamp_min(0).sum(dim=(2, 3))


def firing_mask(activations: Tensor, threshold: float = DEFAULT_FIRING_THRESHOLD) -> Tensor:
    """Boolean ``(N, C)``: which maps fire, that is, have a ReLU mass above ``threshold``."""
    return map_mass(activations) > threshold


def focus_positions(activations: Tensor, mode: FocusMode = "argmax") -> Tensor:
    """Focus position of every map as ``(row, column)`` in map cells, shape ``(N, C, 2)``.

    ``argmax`` takes the cell of the largest activation (the first one on ties); ``centroid``
    takes the activation-weighted mean position of the ReLU map. The result carries no gradient:
    the focus position is a constant of the penalty. A map with no positive activation has its
    centroid at the map centre.

    Example::

        >>> maps = torch.zeros(1, 1, 3, 4)
        >>> maps[0, 0, 2, 1] = 5.0
        >>> focus_positions(maps).tolist()
        [[[2.0, 1.0]]]
    """
    _check_maps(activations)
    maps = activations.detach().clamp_min(0).float()
    height, width = maps.shape[-2:]

    if mode == "argmax":
        flat_index = maps.flatten(2).argmax(dim=2)
        rows = torch.div(flat_index, width, rounding_mode="floor")
        columns = flat_index - rows * width
        return torch.stack((rows, columns), dim=-1).float()

    if mode == "centroid":
        row_grid = torch.arange(height, device=maps.device, dtype=maps.dtype)
        column_grid = torch.arange(width, device=maps.device, dtype=maps.dtype)
        mass = maps.sum(dim=(2, 3))
        safe_mass = torch.where(mass > 0, mass, torch.ones_like(mass))
        rows = (maps.sum(dim=3) * row_grid).sum(dim=2) / safe_mass
        columns = (maps.sum(dim=2) * column_grid).sum(dim=2) / safe_mass
        rows = torch.where(mass > 0, rows, torch.full_like(rows, (height - 1) / 2))
        columns = torch.where(mass > 0, columns, torch.full_like(columns, (width - 1) / 2))
        return torch.stack((rows, columns), dim=-1)

    raise ValueError(f"Expected `mode` to be 'argmax' or 'centroid', but got {mode!r}.")


def sigma_in_cells(sigma: float, unit: SigmaUnit, height: int, width: int) -> float:
    """Convert ``sigma`` to map cells; a ``fraction`` is relative to ``max(height, width)``."""
    if unit == "cells":
        return float(sigma)
    if unit == "fraction":
        return float(sigma) * max(height, width)
    raise ValueError(f"Expected `sigma_unit` to be 'cells' or 'fraction', but got {unit!r}.")


def gaussian_neighbourhood(positions: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """Gaussian kernel ``g(p) = exp(-|p - mu|^2 / (2 sigma^2))`` around each position.

    Args:
        positions: focus positions ``(N, C, 2)`` in map cells.
        height: map height in cells.
        width: map width in cells.
        sigma: kernel width in map cells.

    Returns:
        ``(N, C, H, W)``, 1 at the focus position. The kernel is separable, so it is built as the
        outer product of a row and a column factor.
    """
    rows = torch.arange(height, device=positions.device, dtype=positions.dtype)
    columns = torch.arange(width, device=positions.device, dtype=positions.dtype)
    row_factor = torch.exp(-((rows - positions[..., 0:1]) ** 2) / (2 * sigma**2))
    column_factor = torch.exp(-((columns - positions[..., 1:2]) ** 2) / (2 * sigma**2))
    return row_factor.unsqueeze(-1) * column_factor.unsqueeze(-2)


def focus_penalty_per_map(
    activations: Tensor,
    sigma: float = 1.0,
    sigma_unit: SigmaUnit = "cells",
    mode: FocusMode = "argmax",
    threshold: float = DEFAULT_FIRING_THRESHOLD,
    mass: MassFunction = "relu",
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Share of each map's mass outside the neighbourhood of its focus position.

    ``penalty = sum_p m_p (1 - g_p) / sum_p m_p`` with ``g`` the Gaussian neighbourhood of
    :func:`gaussian_neighbourhood` and ``m`` the mass of each cell:

    - ``mass="relu"``: ``m_p = max(A_p, 0)``, the activation itself;
    - ``mass="softmax"``: ``m_p = exp(A_p / temperature)``, a spatial softmax of the map. Adding a
      constant to a map leaves this penalty unchanged, so it cannot be lowered by shifting a
      neuron's bias towards silence. With ``relu`` mass, the sparsest map (one cell that barely
      fires) is the minimum, and training drifts towards silent neurons.

    Computed in float32. A map fires when its ReLU mass exceeds ``threshold``, whatever ``mass``.

    Returns:
        ``(penalty, firing)``, both ``(N, C)``. ``penalty`` is 0 where the map does not fire, and
        no gradient flows into such maps.
    """
    _check_maps(activations)
    maps = activations.float()
    height, width = maps.shape[-2:]
    sigma_cells = sigma_in_cells(sigma, sigma_unit, height, width)

    positions = focus_positions(maps, mode)
    neighbourhood = gaussian_neighbourhood(positions, height, width, sigma_cells)
    firing = maps.clamp_min(0).sum(dim=(2, 3)) > threshold

    if mass == "relu":
        cell_mass = maps.clamp_min(0)
        total_mass = cell_mass.sum(dim=(2, 3))
        outside = (cell_mass * (1 - neighbourhood)).sum(dim=(2, 3))
        # The safe denominator keeps the gradient of non-firing maps at 0 instead of 0 * inf = NaN.
        share = outside / torch.where(firing, total_mass, torch.ones_like(total_mass))
    elif mass == "softmax":
        cell_share = torch.softmax(maps.flatten(2) / temperature, dim=2).view_as(maps)
        share = (cell_share * (1 - neighbourhood)).sum(dim=(2, 3))
    else:
        raise ValueError(f"Expected `mass` to be 'softmax' or 'relu', but got {mass!r}.")

    penalty = torch.where(firing, share, torch.zeros_like(share))
    return penalty, firing


def focus_penalty(
    activations: Tensor,
    sigma: float = 1.0,
    sigma_unit: SigmaUnit = "cells",
    mode: FocusMode = "argmax",
    threshold: float = DEFAULT_FIRING_THRESHOLD,
    mass: MassFunction = "relu",
    temperature: float = 1.0,
) -> Tensor:
    """Mean focus penalty over the firing maps of a batch, a scalar in ``[0, 1)``.

    Maps that do not fire are excluded from the mean, so a neuron cannot lower the loss by going
    silent. With no firing map at all the result is a zero that still belongs to the graph.

    Example::

        >>> one_hot = torch.zeros(1, 1, 5, 5)
        >>> one_hot[0, 0, 2, 2] = 1.0
        >>> focus_penalty(one_hot).item()
        0.0
        >>> # A uniform 1 x 3 map: the peak is the first cell, the others lie 1 and 2 cells away.
        >>> round(focus_penalty(torch.ones(1, 1, 1, 3)).item(), 4)
        0.4194
    """
    penalty, firing = focus_penalty_per_map(activations, sigma, sigma_unit, mode, threshold, mass, temperature)
    count = firing.sum()
    return penalty.sum() / count.clamp_min(1)


def focus_concentration_per_map(
    activations: Tensor, radius: int = 1, threshold: float = DEFAULT_FIRING_THRESHOLD
) -> tuple[Tensor, Tensor]:
    """Share of each map's ReLU mass within ``radius`` cells (Chebyshev distance) of its peak.

    With ``radius=1`` this is the mass of the 3 x 3 window around the argmax, divided by the
    map's mass. Returns ``(concentration, firing)``, both ``(N, C)``; non-firing maps get 0.
    """
    _check_maps(activations)
    maps = activations.detach().float().clamp_min(0)
    height, width = maps.shape[-2:]
    positions = focus_positions(maps, "argmax")

    rows = torch.arange(height, device=maps.device, dtype=maps.dtype)
    columns = torch.arange(width, device=maps.device, dtype=maps.dtype)
    near_row = ((rows - positions[..., 0:1]).abs() <= radius).to(maps.dtype)
    near_column = ((columns - positions[..., 1:2]).abs() <= radius).to(maps.dtype)
    window = near_row.unsqueeze(-1) * near_column.unsqueeze(-2)

    mass = maps.sum(dim=(2, 3))
    firing = mass > threshold
    inside = (maps * window).sum(dim=(2, 3))
    concentration = torch.where(firing, inside / torch.where(firing, mass, torch.ones_like(mass)), torch.zeros_like(mass))
    return concentration, firing
