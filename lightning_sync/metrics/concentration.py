"""FocusConcentration: the mean share of a firing activation map's mass next to its peak."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_sync._validation import check_positive, check_positive_int
from lightning_sync.functional.focus import DEFAULT_FIRING_THRESHOLD
from lightning_sync.functional.metrics.concentration import _focus_concentration_compute, _focus_concentration_update
from lightning_sync.metrics._base import InterpretabilityMetric


class FocusConcentration(InterpretabilityMetric):
    r"""Mean share of a firing map's ReLU mass within ``radius`` cells of its peak (higher is better).

    .. math::

        FC = \frac{1}{|F|} \sum_{(n, c) \in F}
             \frac{\sum_{p : \lVert p - \mu_{nc} \rVert_\infty \le r} A_{nc}[p]}{\sum_p A_{nc}[p]}

    ``F`` is the set of firing (sample, neuron) maps and ``mu`` a map's argmax cell. See
    :func:`~lightning_sync.functional.metrics.focus_concentration`. ``update`` takes activation
    maps ``(N, C, H, W)``. ``compute`` returns the mean over every firing map seen, or NaN if none
    fired, with a warning when ``update`` was never called.

    Args:
        radius: half-width of the window around the peak, in map cells.
        firing_threshold: ReLU mass at or below which a map counts as not firing.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> maps = torch.zeros(2, 1, 5, 5)
        >>> maps[0, 0, 2, 2] = 1.0
        >>> maps[1, 0, 0, 0] = maps[1, 0, 4, 4] = 1.0
        >>> metric = FocusConcentration(radius=1)
        >>> metric.update(maps)
        >>> metric.compute()
        tensor(0.7500)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, radius: int = 1, firing_threshold: float = DEFAULT_FIRING_THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.radius = check_positive_int("radius", radius, allow_zero=True)
        self.firing_threshold = check_positive("firing_threshold", firing_threshold, allow_zero=True)
        self.add_state("concentration_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("firing_count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, activations: Tensor) -> None:
        """Add the concentrations of the firing maps of ``activations`` ``(N, C, H, W)``."""
        concentration_sum, firing_count = _focus_concentration_update(activations, self.radius, self.firing_threshold)
        self.concentration_sum += concentration_sum.to(self.concentration_sum.device)
        self.firing_count += firing_count.to(self.firing_count.device)

    def compute(self) -> Tensor:
        """Return the mean concentration over the firing maps, NaN if none fired."""
        return _focus_concentration_compute(self.concentration_sum, self.firing_count)
