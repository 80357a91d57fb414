"""MutualInformationScore: each neuron's largest mutual information with a one-vs-rest class indicator."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_sync._validation import check_positive_int
from lightning_sync.functional.metrics._inputs import check_num_neurons
from lightning_sync.functional.metrics.information import _mutual_information_compute, _mutual_information_update
from lightning_sync.metrics._base import InterpretabilityMetric, check_neurons_and_classes


class MutualInformationScore(InterpretabilityMetric):
    r"""Mean over neurons of the largest mutual information with a one-vs-rest class indicator (higher is better).

    After the mutual-information score of Liang et al., "Training Interpretable Convolutional
    Neural Networks by Differentiating Class-specific Filters" (CSG), ECCV 2020:

    .. math::

        MIS = \frac{1}{C} \sum_c \max_k I\left(b(a_c); \mathbb{1}[y = k]\right)

    ``a_c`` is neuron ``c``'s pooled activation, ``b`` the equal-frequency binning into
    ``num_bins`` bins and ``I`` the mutual information in nats from torchmetrics. See
    :func:`~lightning_sync.functional.metrics.mutual_information_score`, which also explains why
    the values are not comparable with CSG's published numbers.

    The bin edges are quantiles of all samples, so the metric keeps samples: a buffer of
    ``max_samples`` pooled activations ``(max_samples, C)`` per process. Samples beyond it are
    dropped with a warning. ``compute`` returns NaN before any sample.

    Args:
        num_classes: number of classes ``K``.
        num_neurons: number of neurons (channels) ``C`` of the layer.
        num_bins: equal-frequency bins per neuron.
        max_samples: samples kept per process.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> metric = MutualInformationScore(num_classes=2, num_neurons=1, num_bins=2)
        >>> metric.update(torch.tensor([[1.0], [1.0], [0.0], [0.0]]), torch.tensor([0, 0, 1, 1]))
        >>> metric.compute()  # log 2: the neuron separates the two classes
        tensor(0.6931)
    """

    higher_is_better = True
    plot_lower_bound = 0.0

    def __init__(
        self, num_classes: int, num_neurons: int, num_bins: int = 16, max_samples: int = 10_000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_neurons_and_classes(num_neurons, num_classes)
        self.num_classes = num_classes
        self.num_neurons = num_neurons
        self.num_bins = check_positive_int("num_bins", num_bins)
        if self.num_bins < 2:
            raise ValueError(f"Expected `num_bins` to be at least 2, but got {num_bins}.")
        self.max_samples = check_positive_int("max_samples", max_samples)
        self._warned_full = False
        # Slots with class -1 are empty. Under DDP the buffers of all processes are concatenated.
        self.add_state("samples", default=torch.zeros(max_samples, num_neurons), dist_reduce_fx="cat")
        self.add_state("sample_classes", default=torch.full((max_samples,), -1, dtype=torch.long), dist_reduce_fx="cat")
        self.add_state("num_stored", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx=None)

    def update(self, activations: Tensor, target: Tensor) -> None:
        """Store the pooled activations of ``activations`` and their classes ``target`` while the buffer has room."""
        pooled, target = _mutual_information_update(activations, target, self.num_classes)
        check_num_neurons(pooled, self.num_neurons)
        start = int(self.num_stored)
        room = self.max_samples - start
        if pooled.shape[0] > room and not self._warned_full:
            self._warned_full = True
            rank_zero_warn(
                f"MutualInformationScore keeps at most `max_samples={self.max_samples}` samples per process and"
                " ignores the rest. Raise `max_samples` to use all data."
            )
        # NOTE: the buffer keeps the first samples, not a random subset, so with a loader sorted by
        # class a full buffer misses the last classes.
        kept = min(room, pooled.shape[0])
        if kept <= 0:
            return
        self.samples[start : start + kept] = pooled[:kept].to(self.samples)
        self.sample_classes[start : start + kept] = target[:kept].to(self.sample_classes.device)
        self.num_stored += kept

    def reset(self) -> None:
        """Empty the sample buffer and warn again when it fills up."""
        super().reset()
        self._warned_full = False

    def compute(self) -> Tensor:
        """Return the mean over neurons of the largest class-indicator mutual information."""
        samples = self.samples.reshape(-1, self.num_neurons)
        classes = self.sample_classes.reshape(-1)
        stored = classes >= 0
        return _mutual_information_compute(samples[stored], classes[stored], self.num_classes, self.num_bins)
