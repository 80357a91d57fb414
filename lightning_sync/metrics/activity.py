"""ActiveNeuronRate: the share of a layer's neurons that fire on enough samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_sync._validation import check_fraction, check_positive
from lightning_sync.functional.focus import DEFAULT_FIRING_THRESHOLD
from lightning_sync.functional.metrics._inputs import check_num_neurons
from lightning_sync.functional.metrics.activity import _active_neuron_rate_compute, _active_neuron_rate_update
from lightning_sync.metrics._base import InterpretabilityMetric, check_neurons_and_classes


class ActiveNeuronRate(InterpretabilityMetric):
    r"""Share of neurons that fire on at least ``min_share`` of the samples (higher is better).

    .. math::

        ANR = \frac{1}{C} \sum_c \mathbb{1}\left[\frac{1}{N} \sum_n \mathbb{1}[m_{nc} > t] \ge s\right]

    ``m_nc`` is the ReLU mass of neuron ``c``'s map on sample ``n``, ``t`` the firing threshold
    and ``s = min_share``. It guards the other metrics against neurons that improve them by going
    silent. The states are a firing count per neuron and a sample count. ``update`` takes maps
    ``(N, C, H, W)`` or values ``(N, C)``; ``compute`` returns NaN before any sample.

    Args:
        num_neurons: number of neurons (channels) ``C`` of the layer.
        min_share: share of samples in ``[0, 1]`` a neuron must fire on.
        firing_threshold: ReLU mass at or below which a map counts as not firing.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> maps = torch.zeros(4, 2, 3, 3)
        >>> maps[0, 0, 1, 1] = 1.0
        >>> metric = ActiveNeuronRate(num_neurons=2, min_share=0.25)
        >>> metric(maps)
        tensor(0.5000)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        num_neurons: int,
        min_share: float = 0.01,
        firing_threshold: float = DEFAULT_FIRING_THRESHOLD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_neurons_and_classes(num_neurons)
        self.num_neurons = num_neurons
        self.min_share = check_fraction("min_share", min_share)
        self.firing_threshold = check_positive("firing_threshold", firing_threshold, allow_zero=True)
        self.add_state("firing_counts", default=torch.zeros(num_neurons, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, activations: Tensor) -> None:
        """Count, per neuron, the samples of ``activations`` on which it fires."""
        firing_counts, num_samples = _active_neuron_rate_update(activations, self.firing_threshold)
        check_num_neurons(firing_counts.unsqueeze(0), self.num_neurons)
        self.firing_counts += firing_counts.to(self.firing_counts.device)
        self.num_samples += num_samples.to(self.num_samples.device)

    def compute(self) -> Tensor:
        """Return the share of active neurons, NaN before any sample."""
        return _active_neuron_rate_compute(self.firing_counts, self.num_samples, self.min_share)
