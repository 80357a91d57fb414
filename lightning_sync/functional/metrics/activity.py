"""Active-neuron rate: the share of a layer's neurons that fire on enough samples."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sync.functional.focus import DEFAULT_FIRING_THRESHOLD, firing_mask


def _active_neuron_rate_update(activations: Tensor, threshold: float = DEFAULT_FIRING_THRESHOLD) -> tuple[Tensor, Tensor]:
    """Return the number of samples on which each neuron fires, ``(C,)``, and the number of samples."""
    if activations.dim() == 2:
        firing = activations.detach().clamp_min(0) > threshold
    elif activations.dim() == 4:
        firing = firing_mask(activations.detach(), threshold)
    else:
        raise ValueError(
            f"Expected activations of shape (N, C, H, W) or (N, C), but got shape {tuple(activations.shape)}."
        )
    return firing.sum(dim=0).long(), torch.tensor(activations.shape[0], dtype=torch.long, device=activations.device)


def _active_neuron_rate_compute(firing_counts: Tensor, num_samples: Tensor, min_share: float) -> Tensor:
    """Return the share of neurons with ``firing_counts >= min_share * num_samples``, or NaN without samples."""
    if num_samples == 0:
        return torch.tensor(float("nan"), device=firing_counts.device)
    active = firing_counts.double() >= min_share * num_samples.double()
    return active.float().mean()


def active_neuron_rate(
    activations: Tensor, min_share: float = 0.01, threshold: float = DEFAULT_FIRING_THRESHOLD
) -> Tensor:
    r"""Compute the share of neurons that fire on at least ``min_share`` of the samples.

    .. math::

        ANR = \frac{1}{C} \sum_c \mathbb{1}\left[\frac{1}{N} \sum_n \mathbb{1}[m_{nc} > t] \ge s\right]

    ``m_nc`` is the ReLU mass of neuron ``c``'s map on sample ``n`` (the ReLU value for ``(N, C)``
    inputs), ``t`` the firing threshold and ``s = min_share``. The rate guards the other metrics
    against neurons that improve them by going silent: 1 means every neuron is in use.

    Args:
        activations: activation maps ``(N, C, H, W)`` or one value per neuron ``(N, C)``.
        min_share: share of samples in ``[0, 1]`` a neuron must fire on to count as active.
        threshold: ReLU mass at or below which a map counts as not firing.

    Returns:
        A scalar tensor in ``[0, 1]``; NaN for an empty batch.

    Example::

        >>> maps = torch.zeros(4, 2, 3, 3)
        >>> maps[0, 0, 1, 1] = 1.0    # neuron 0 fires on 1 of 4 samples, neuron 1 never
        >>> active_neuron_rate(maps, min_share=0.25)
        tensor(0.5000)
    """
    firing_counts, num_samples = _active_neuron_rate_update(activations, threshold)
    return _active_neuron_rate_compute(firing_counts, num_samples, min_share)
