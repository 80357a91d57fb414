"""Input checks and conversions shared by the interpretability metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Partition = Sequence[Sequence[int]]
"""Neuron modules as lists of neuron indices, the format of ``NeuronSynchronizer.modules[layer]``."""


def pool_activations(activations: Tensor) -> Tensor:
    """Return one value per sample and neuron: the spatial mean of the ReLU map, ``(N, C)``.

    Maps ``(N, C, H, W)`` are averaged over ``H x W``; activations that are already one value per
    neuron, ``(N, C)``, only pass through the ReLU. The result is float32 and carries no gradient.

    Example::

        >>> maps = torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]]])
        >>> pool_activations(maps)
        tensor([[1.]])
    """
    if activations.dim() not in (2, 4):
        raise ValueError(
            "Expected activations of shape (N, C, H, W) or (N, C), but got shape"
            f" {tuple(activations.shape)}."
        )
    pooled = activations.detach().float().clamp_min(0)
    if pooled.dim() == 4:
        pooled = pooled.mean(dim=(2, 3))
    return pooled


def check_num_neurons(pooled: Tensor, num_neurons: int) -> None:
    """Raise a ``ValueError`` when ``pooled`` does not have ``num_neurons`` columns."""
    if pooled.shape[1] != num_neurons:
        raise ValueError(
            f"Expected activations with {num_neurons} neurons (channels), but got {pooled.shape[1]}."
            " Pass the layer's number of output channels as `num_neurons`."
        )


def check_class_targets(target: Tensor, num_samples: int, num_classes: int) -> Tensor:
    """Return ``target`` as a ``long`` vector after checking its shape and class range."""
    if target.dim() != 1 or target.shape[0] != num_samples:
        raise ValueError(
            f"Expected `target` to hold one class index per sample, shape ({num_samples},), but got shape"
            f" {tuple(target.shape)}."
        )
    if target.is_floating_point():
        raise ValueError(f"Expected integer class indices in `target`, but got dtype {target.dtype}.")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"Expected class indices in [0, {num_classes - 1}] for `num_classes={num_classes}`, but `target`"
            f" ranges over [{int(target.min())}, {int(target.max())}]."
        )
    return target.long()


def module_labels(modules: Partition, num_neurons: int, device: torch.device | None = None) -> Tensor:
    """Return the module index of every neuron, ``(num_neurons,)``, with -1 for neurons in no module.

    Raises:
        ValueError: if a module is empty, an index is outside ``[0, num_neurons)``, or a neuron
            belongs to two modules.

    Example::

        >>> module_labels([[0, 2], [1]], 4)
        tensor([ 0,  1,  0, -1])
    """
    labels = torch.full((num_neurons,), -1, dtype=torch.long, device=device)
    for module_index, module in enumerate(modules):
        members = [int(neuron) for neuron in module]
        if not members:
            raise ValueError(f"Module {module_index} of the partition is empty. Every module needs at least one neuron.")
        for neuron in members:
            if not 0 <= neuron < num_neurons:
                raise ValueError(
                    f"Module {module_index} contains neuron {neuron}, but valid indices are 0 to {num_neurons - 1}."
                )
            if labels[neuron] >= 0:
                raise ValueError(
                    f"Neuron {neuron} belongs to modules {int(labels[neuron])} and {module_index}. A partition"
                    " assigns each neuron to at most one module."
                )
            labels[neuron] = module_index
    return labels


def correlation_from_moments(total: Tensor, outer_total: Tensor, count: Tensor) -> Tensor:
    """Return the Pearson correlation matrix ``(C, C)`` from sums ``sum x`` and ``sum x x^T`` over ``count`` samples.

    Entries of neurons with zero variance are NaN, because their correlation is undefined.
    """
    count = count.to(torch.float64)
    mean = total.to(torch.float64) / count
    covariance = outer_total.to(torch.float64) / count - torch.outer(mean, mean)
    variance = covariance.diagonal().clamp_min(0)
    scale = torch.sqrt(torch.outer(variance, variance))
    correlation = torch.where(scale > 0, covariance / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.nan)
    return correlation.clamp(-1, 1).float()
