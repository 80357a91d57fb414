"""Focus concentration: how much of a firing activation map lies next to its peak."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sync.functional.focus import DEFAULT_FIRING_THRESHOLD, focus_concentration_per_map


def _focus_concentration_update(
    activations: Tensor, radius: int = 1, threshold: float = DEFAULT_FIRING_THRESHOLD
) -> tuple[Tensor, Tensor]:
    """Return the sum of the concentrations of the firing maps and their count."""
    concentration, firing = focus_concentration_per_map(activations, radius, threshold)
    return concentration[firing].sum().double(), firing.sum().double()


def _focus_concentration_compute(concentration_sum: Tensor, firing_count: Tensor) -> Tensor:
    """Return the mean concentration, or NaN when no map fired."""
    if firing_count == 0:
        return torch.tensor(float("nan"))
    return (concentration_sum / firing_count).float()


def focus_concentration(activations: Tensor, radius: int = 1, threshold: float = DEFAULT_FIRING_THRESHOLD) -> Tensor:
    r"""Compute the mean share of a firing map's ReLU mass within ``radius`` cells of its peak.

    .. math::

        FC = \frac{1}{|F|} \sum_{(n, c) \in F}
             \frac{\sum_{p : \lVert p - \mu_{nc} \rVert_\infty \le r} A_{nc}[p]}{\sum_p A_{nc}[p]}

    ``A`` is the ReLU activation map, ``mu`` its argmax cell and ``F`` the set of firing maps (ReLU
    mass above ``threshold``). The value lies in ``(0, 1]``, and 1 means all mass sits in the
    ``(2r + 1) x (2r + 1)`` window around the peak. Maps that do not fire are left out.

    Args:
        activations: activation maps ``(N, C, H, W)``.
        radius: half-width of the window around the peak, in map cells (Chebyshev distance).
        threshold: ReLU mass at or below which a map counts as not firing.

    Returns:
        A scalar tensor; NaN when no map fires.

    Example::

        >>> maps = torch.zeros(2, 1, 5, 5)
        >>> maps[0, 0, 2, 2] = 1.0               # all mass at the peak
        >>> maps[1, 0, 0, 0] = maps[1, 0, 4, 4] = 1.0  # half the mass four cells away
        >>> focus_concentration(maps)
        tensor(0.7500)
    """
    return _focus_concentration_compute(*_focus_concentration_update(activations, radius, threshold))
