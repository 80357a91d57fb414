"""Figures of activation maps over their input images (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from lightning_sync.functional.focus import focus_positions


def _image_for_display(image: Tensor) -> Tensor:
    """Scale one ``(C, H, W)`` image to ``[0, 1]`` and return ``(H, W)`` or ``(H, W, 3)``."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    if image.shape[0] == 1:
        return image[0]
    return image[:3].permute(1, 2, 0)


def plot_focus_maps(
    images: Tensor,
    activations: Tensor,
    neurons: Sequence[int],
    column_titles: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Draw each image next to the activation maps of ``neurons`` laid over it.

    Rows are images. The first column is the input, and each further column is one neuron. A map
    is ReLU-ed, scaled to the image size and drawn with transparency, and a cross marks its focus
    position (the peak cell, mapped to image coordinates). Maps that do not fire stay empty.

    Args:
        images: ``(N, C, H_img, W_img)`` inputs.
        activations: ``(N, K, H, W)`` activation maps of the same inputs.
        neurons: channel indices of ``activations`` to draw, in column order.
        column_titles: one title per neuron column (defaults to ``"neuron <index>"``).
        title: figure title.
    """
    maps = activations.detach().float().cpu().clamp_min(0)
    count, _, height, width = maps.shape
    image_height, image_width = images.shape[-2:]
    titles = list(column_titles) if column_titles is not None else [f"neuron {index}" for index in neurons]
    peaks = focus_positions(maps)
    scale_rows, scale_columns = image_height / height, image_width / width

    columns = len(neurons) + 1
    # A bare Figure, not pyplot: no global backend or figure registry is touched, and
    # `figure.savefig` renders without a screen.
    figure = Figure(figsize=(1.4 * columns, 1.4 * count + 0.5))
    axes = figure.subplots(count, columns, squeeze=False)
    for row in range(count):
        picture = _image_for_display(images[row])
        axes[row][0].imshow(picture, cmap="gray")
        axes[row][0].set_title("input" if row == 0 else "", fontsize=7)
        for column, neuron in enumerate(neurons, start=1):
            axis = axes[row][column]
            axis.imshow(picture, cmap="gray")
            upsampled = F.interpolate(maps[row, neuron][None, None], size=(image_height, image_width), mode="bilinear", align_corners=False)[0, 0]
            peak_value = maps[row, neuron].max()
            if peak_value > 0:
                axis.imshow(upsampled / peak_value, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
                peak_row, peak_column = peaks[row, neuron].tolist()
                axis.plot((peak_column + 0.5) * scale_columns - 0.5, (peak_row + 0.5) * scale_rows - 0.5, "c+", markersize=6)
            if row == 0:
                axis.set_title(titles[column - 1], fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def strongest_neurons(activations: Tensor, count: int) -> list[int]:
    """Indices of the ``count`` neurons with the largest mean ReLU activation, strongest first."""
    strength = activations.detach().float().clamp_min(0).mean(dim=(0, 2, 3))
    return torch.argsort(strength, descending=True)[:count].tolist()
