"""Location instability of filters, after Zhang, Wu and Zhu, "Interpretable Convolutional Neural Networks" (CVPR 2018).

Landmarks are given per sample as ``K`` points in image pixels, ``(N, K, 2)`` with ``(row, column)``
order, plus a visibility mask ``(N, K)``. A filter's peak cell ``(i, j)`` of an activation map is
mapped to image pixels through the layer's total stride ``s`` and an ``offset`` ``o`` as
``((i + 0.5) s - 0.5 + o, (j + 0.5) s - 0.5 + o)``. When each cell covers ``s x s`` pixels, this
is the centre of the cell's patch. Pixel centres sit at integer coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_sync.functional.focus import focus_positions


def _as_pair(name: str, value: float | Sequence[float]) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"Expected `{name}` to be a number or a (row, column) pair, but got {value!r}.")
    return float(pair[0]), float(pair[1])


def cells_to_pixels(cells: Tensor, stride: float | Sequence[float], offset: float | Sequence[float] = 0.0) -> Tensor:
    """Map ``(..., 2)`` map-cell coordinates (row, column) to image pixels: ``(i + 0.5) * stride - 0.5 + offset``.

    Example::

        >>> cells_to_pixels(torch.tensor([[0.0, 6.0]]), stride=4)  # cells of a 7 x 7 map on a 28 x 28 image
        tensor([[ 1.5000, 25.5000]])
    """
    stride_pair = torch.tensor(_as_pair("stride", stride), dtype=cells.dtype, device=cells.device)
    offset_pair = torch.tensor(_as_pair("offset", offset), dtype=cells.dtype, device=cells.device)
    return (cells + 0.5) * stride_pair - 0.5 + offset_pair


def _check_landmarks(landmarks: Tensor, visible: Tensor | None, num_samples: int) -> Tensor:
    """Return the visibility mask ``(N, K)`` after checking the shapes of ``landmarks`` and ``visible``."""
    if landmarks.dim() != 3 or landmarks.shape[0] != num_samples or landmarks.shape[2] != 2:
        raise ValueError(
            f"Expected `landmarks` of shape ({num_samples}, K, 2) in image pixels (row, column), but got shape"
            f" {tuple(landmarks.shape)}."
        )
    if visible is None:
        return torch.ones(landmarks.shape[:2], dtype=torch.bool, device=landmarks.device)
    if visible.shape != landmarks.shape[:2]:
        raise ValueError(
            f"Expected `visible` of shape {tuple(landmarks.shape[:2])}, one flag per landmark, but got shape"
            f" {tuple(visible.shape)}."
        )
    return visible.bool()


def _location_instability_update(
    activations: Tensor,
    landmarks: Tensor,
    visible: Tensor | None,
    stride: float | Sequence[float],
    offset: float | Sequence[float] = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return the peak value ``(N, C)``, the peak in image pixels ``(N, C, 2)``, landmarks ``(N, K, 2)`` and visibility ``(N, K)``."""
    if activations.dim() != 4:
        raise ValueError(f"Expected activation maps of shape (N, C, H, W), but got shape {tuple(activations.shape)}.")
    maps = activations.detach().float().clamp_min(0)
    visible = _check_landmarks(landmarks, visible, maps.shape[0])
    peak_values = maps.flatten(2).max(dim=2).values
    peak_pixels = cells_to_pixels(focus_positions(maps, "argmax"), stride, offset)
    return peak_values, peak_pixels, landmarks.float().to(maps.device), visible.to(maps.device)


def _keep_top_images(
    peak_values: Tensor, peak_pixels: Tensor, landmarks: Tensor, visible: Tensor, top_m: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep, per filter, the ``top_m`` images with the largest peak value.

    Inputs have the image axis first and one entry per filter: ``peak_values (N, C)``,
    ``peak_pixels (N, C, 2)``, ``landmarks (N, C, K, 2)``, ``visible (N, C, K)``. With fewer than
    ``top_m`` images the rest is padded with peak value ``-inf``, which marks an empty slot.
    """
    num_images, num_filters = peak_values.shape
    if num_images < top_m:
        padding = top_m - num_images
        peak_values = torch.cat([peak_values, peak_values.new_full((padding, num_filters), -torch.inf)])
        peak_pixels = torch.cat([peak_pixels, peak_pixels.new_zeros((padding, *peak_pixels.shape[1:]))])
        landmarks = torch.cat([landmarks, landmarks.new_zeros((padding, *landmarks.shape[1:]))])
        visible = torch.cat([visible, visible.new_zeros((padding, *visible.shape[1:]))])

    top_values, order = peak_values.topk(top_m, dim=0)
    top_pixels = peak_pixels.gather(0, order[..., None].expand(-1, -1, 2))
    top_landmarks = landmarks.gather(0, order[..., None, None].expand(-1, -1, *landmarks.shape[2:]))
    top_visible = visible.gather(0, order[..., None].expand(-1, -1, visible.shape[2]))
    return top_values, top_pixels, top_landmarks, top_visible


def _location_instability_compute(
    peak_values: Tensor, peak_pixels: Tensor, landmarks: Tensor, visible: Tensor, image_size: Sequence[int]
) -> Tensor:
    """Return the mean over filters of the mean over landmarks of the standard deviation of the normalized distance.

    Only firing images (peak value above 0) with the landmark visible count, and a (filter, landmark)
    pair needs two of them. NaN when no pair qualifies.
    """
    diagonal = float(image_size[0]) ** 2 + float(image_size[1]) ** 2
    distance = (peak_pixels.unsqueeze(2) - landmarks).norm(dim=-1).double() / diagonal**0.5  # (M, C, K)
    counted = (peak_values > 0).unsqueeze(2) & visible
    weights = counted.double()
    count = weights.sum(dim=0)
    mean = (distance * weights).sum(dim=0) / count.clamp_min(1)
    # Population standard deviation over the counted images.
    deviation = torch.sqrt((((distance - mean) ** 2) * weights).sum(dim=0) / count.clamp_min(1))

    defined = count >= 2  # (C, K)
    per_filter = torch.where(defined, deviation, torch.zeros_like(deviation)).sum(dim=1) / defined.sum(dim=1).clamp_min(1)
    filter_defined = defined.any(dim=1)
    if not bool(filter_defined.any()):
        return torch.tensor(float("nan"), device=peak_values.device)
    return per_filter[filter_defined].mean().float()


def location_instability(
    activations: Tensor,
    landmarks: Tensor,
    image_size: Sequence[int],
    stride: float | Sequence[float],
    offset: float | Sequence[float] = 0.0,
    visible: Tensor | None = None,
    top_m: int = 100,
) -> Tensor:
    r"""Compute how much the distance between a filter's peak and each landmark varies over its top images.

    After the location instability of Zhang, Wu and Zhu, "Interpretable Convolutional Neural
    Networks", CVPR 2018 (lower is better):

    .. math::

        LI = \frac{1}{C} \sum_c \frac{1}{K} \sum_k
             \operatorname{std}_{n \in T_c} \frac{\lVert \hat p_{nc} - q_{nk} \rVert}{\sqrt{H^2 + W^2}}

    ``T_c`` contains the ``top_m`` images with the largest peak of filter ``c``'s ReLU map,
    ``p_nc`` is the peak mapped to image pixels (see :func:`cells_to_pixels`), ``q_nk`` landmark
    ``k`` of image ``n`` and ``H x W`` the image size. A filter that always fires on the same part
    has a near-constant distance to every landmark and scores near 0. Only firing images on which
    the landmark is visible count, the standard deviation is the population one, and a (filter,
    landmark) pair needs two such images.

    Args:
        activations: activation maps ``(N, C, H', W')``.
        landmarks: landmark positions ``(N, K, 2)`` in image pixels, (row, column).
        image_size: ``(H, W)`` of the input images in pixels.
        stride: total stride of the layer in pixels per map cell, a number or a (row, column) pair.
        offset: shift in pixels added after the stride mapping.
        visible: ``(N, K)`` booleans, ``True`` where the landmark is annotated; all visible if ``None``.
        top_m: images kept per filter.

    Returns:
        A scalar tensor, at least 0; NaN when no filter has two counted images for any landmark.

    Example::

        >>> maps = torch.zeros(3, 1, 4, 4)
        >>> for n in range(3):
        ...     maps[n, 0, n, n] = 1.0                  # the peak moves along the diagonal
        >>> landmarks = torch.tensor([[[1.5, 1.5]], [[5.5, 5.5]], [[9.5, 9.5]]])  # and so does the part
        >>> location_instability(maps, landmarks, image_size=(16, 16), stride=4)
        tensor(0.)
        >>> fixed = torch.full((3, 1, 2), 1.5)           # a part that stays in the corner
        >>> round(location_instability(maps, fixed, image_size=(16, 16), stride=4).item(), 4)
        0.2041
    """
    peak_values, peak_pixels, landmarks, visible = _location_instability_update(activations, landmarks, visible, stride, offset)
    num_filters = peak_values.shape[1]
    per_filter_landmarks = landmarks.unsqueeze(1).expand(-1, num_filters, -1, -1)
    per_filter_visible = visible.unsqueeze(1).expand(-1, num_filters, -1)
    top = _keep_top_images(peak_values, peak_pixels, per_filter_landmarks, per_filter_visible, top_m)
    return _location_instability_compute(*top, image_size)
