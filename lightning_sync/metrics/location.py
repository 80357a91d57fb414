"""LocationInstability: how much a filter's peak moves relative to annotated object parts (lower is better)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_sync._validation import check_positive, check_positive_int
from lightning_sync.functional.metrics._inputs import check_num_neurons
from lightning_sync.functional.metrics.location import (
    _as_pair,
    _keep_top_images,
    _location_instability_compute,
    _location_instability_update,
)
from lightning_sync.metrics._base import InterpretabilityMetric, check_neurons_and_classes


class LocationInstability(InterpretabilityMetric):
    r"""Spread of the distance between a filter's peak and each landmark over its top images (lower is better).

    After Zhang, Wu and Zhu, "Interpretable Convolutional Neural Networks", CVPR 2018:

    .. math::

        LI = \frac{1}{C} \sum_c \frac{1}{K} \sum_k
             \operatorname{std}_{n \in T_c} \frac{\lVert \hat p_{nc} - q_{nk} \rVert}{\sqrt{H^2 + W^2}}

    ``T_c`` contains the ``top_m`` images with the largest peak of filter ``c``, ``p_nc`` the peak cell
    mapped to image pixels as ``(i + 0.5) * stride - 0.5 + offset`` and ``q_nk`` landmark ``k``. See
    :func:`~lightning_sync.functional.metrics.location_instability` for which images count.

    ``update(activations, landmarks, visible=None)`` takes maps ``(N, C, H', W')``, landmarks
    ``(N, K, 2)`` in image pixels (row, column) and an optional visibility mask ``(N, K)``. The
    states keep, per filter, the ``top_m`` best images: peak values ``(top_m, C)``, peaks
    ``(top_m, C, 2)``, landmarks ``(top_m, C, K, 2)`` and visibility ``(top_m, C, K)``. Under DDP
    the processes' lists are concatenated and ``compute`` selects the ``top_m`` best again, so
    the result equals that of one process on all the data. NaN before any update.

    Args:
        num_neurons: number of filters ``C`` of the layer.
        num_landmarks: landmarks ``K`` per image.
        image_size: ``(H, W)`` of the input images in pixels.
        stride: total stride of the layer in pixels per map cell, a number or a (row, column) pair.
        offset: shift in pixels added after the stride mapping.
        top_m: images kept per filter.
        kwargs: keyword arguments of :class:`torchmetrics.Metric`.

    Example::

        >>> maps = torch.zeros(3, 1, 4, 4)
        >>> for n in range(3):
        ...     maps[n, 0, n, n] = 1.0
        >>> parts = torch.tensor([[[1.5, 1.5]], [[5.5, 5.5]], [[9.5, 9.5]]])
        >>> metric = LocationInstability(num_neurons=1, num_landmarks=1, image_size=(16, 16), stride=4)
        >>> metric.update(maps, parts)
        >>> metric.compute()
        tensor(0.)
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        num_neurons: int,
        num_landmarks: int,
        image_size: Sequence[int],
        stride: float | Sequence[float],
        offset: float | Sequence[float] = 0.0,
        top_m: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_neurons_and_classes(num_neurons)
        self.num_neurons = num_neurons
        self.num_landmarks = check_positive_int("num_landmarks", num_landmarks)
        height, width = _as_pair("image_size", image_size)
        self.image_size = (check_positive("image_size[0]", height), check_positive("image_size[1]", width))
        row_stride, column_stride = _as_pair("stride", stride)
        self.stride = (check_positive("stride[0]", row_stride), check_positive("stride[1]", column_stride))
        self.offset = _as_pair("offset", offset)
        self.top_m = check_positive_int("top_m", top_m)

        self.add_state("peak_values", default=torch.full((top_m, num_neurons), -torch.inf), dist_reduce_fx="cat")
        self.add_state("peak_pixels", default=torch.zeros(top_m, num_neurons, 2), dist_reduce_fx="cat")
        self.add_state("landmarks", default=torch.zeros(top_m, num_neurons, num_landmarks, 2), dist_reduce_fx="cat")
        self.add_state(
            "visible", default=torch.zeros(top_m, num_neurons, num_landmarks, dtype=torch.bool), dist_reduce_fx="cat"
        )

    def update(self, activations: Tensor, landmarks: Tensor, visible: Tensor | None = None) -> None:
        """Merge the images of this batch into each filter's list of its ``top_m`` best images."""
        peak_values, peak_pixels, landmarks, visible = _location_instability_update(
            activations, landmarks, visible, self.stride, self.offset
        )
        check_num_neurons(peak_values, self.num_neurons)
        if landmarks.shape[1] != self.num_landmarks:
            raise ValueError(
                f"Expected {self.num_landmarks} landmarks per image, but got {landmarks.shape[1]}. Pass the number of"
                " annotated parts as `num_landmarks`."
            )
        device = self.peak_values.device
        num_filters = self.num_neurons
        merged = _keep_top_images(
            torch.cat([self.peak_values, peak_values.to(device)]),
            torch.cat([self.peak_pixels, peak_pixels.to(device)]),
            torch.cat([self.landmarks, landmarks.to(device).unsqueeze(1).expand(-1, num_filters, -1, -1)]),
            torch.cat([self.visible, visible.to(device).unsqueeze(1).expand(-1, num_filters, -1)]),
            self.top_m,
        )
        self.peak_values, self.peak_pixels, self.landmarks, self.visible = merged

    def compute(self) -> Tensor:
        """Return the mean over filters and landmarks of the standard deviation of the normalized distance."""
        # After a DDP sync each state has an extra leading process axis; fold it into the image axis.
        top = _keep_top_images(
            self.peak_values.reshape(-1, self.num_neurons),
            self.peak_pixels.reshape(-1, self.num_neurons, 2),
            self.landmarks.reshape(-1, self.num_neurons, self.num_landmarks, 2),
            self.visible.reshape(-1, self.num_neurons, self.num_landmarks),
            self.top_m,
        )
        return _location_instability_compute(*top, self.image_size)
