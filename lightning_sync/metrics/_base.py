"""Base class of the lightning-sync metrics: torchmetrics' plotting and shared argument checks."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from lightning_sync._validation import check_positive_int
from lightning_sync.functional.metrics._inputs import Partition, module_labels


class InterpretabilityMetric(Metric):
    """A torchmetrics ``Metric`` of neuron interpretability; every subclass reduces to a scalar."""

    is_differentiable = False
    full_state_update = False
    _skipped_updates = 0

    def _wrap_update(self, update: Callable) -> Callable:
        """Wrap torchmetrics' ``update`` so that a call with NaN or infinite values changes no state.

        The first argument of every ``update`` here is the activations (the weight for
        ``SynchronizationOrder``). One NaN in it would make the sums in the states NaN for good.
        """
        counted_update = super()._wrap_update(update)
        first_parameter = next(iter(inspect.signature(update).parameters), None)

        @functools.wraps(update)
        def update_if_finite(*args: Any, **kwargs: Any) -> None:
            if args:
                values = args[0]
            else:
                values = kwargs.get(first_parameter) if first_parameter else None
            if isinstance(values, Tensor) and values.is_floating_point() and not bool(torch.isfinite(values).all()):
                self._skipped_updates += 1
                rank_zero_warn(
                    f"{type(self).__name__} skipped an update because `{first_parameter}` contains NaN or infinite"
                    f" values. The metric states were left unchanged ({self._skipped_updates} updates skipped so far)."
                )
                return
            counted_update(*args, **kwargs)

        return update_if_finite

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value or a sequence of values (one per epoch, say) of the metric.

        Args:
            val: the output of ``compute``, a sequence of them, or ``None`` to call ``compute`` now.
            ax: matplotlib axes to draw into; a new figure is made if ``None``.

        Returns:
            The figure and the axes.

        Example::

            >>> import torch
            >>> from lightning_sync.metrics import ActiveNeuronRate
            >>> metric = ActiveNeuronRate(num_neurons=4)
            >>> values = [metric(torch.rand(8, 4, 3, 3) - 0.5) for _ in range(3)]
            >>> figure, axes = metric.plot(values)
        """
        return self._plot(val, ax)


class ModulePartitionMixin:
    """The ``partition`` setting of metrics that score a division of the neurons into modules.

    The attribute is not called ``modules`` because ``torch.nn.Module`` (and so every ``Metric``)
    already uses ``modules`` and ``_modules`` for its submodules.
    """

    num_neurons: int
    _partition: list[list[int]] | None = None

    @property
    def partition(self) -> list[list[int]] | None:
        """Neuron modules as lists of neuron indices, or ``None`` before they are set."""
        return self._partition

    @partition.setter
    def partition(self, partition: Partition | None) -> None:
        if partition is None:
            self._partition = None
            return
        module_labels(partition, self.num_neurons)  # raises on an invalid partition
        self._partition = [[int(neuron) for neuron in module] for module in partition]
        # A new partition changes the result, so the cached value of `compute` is stale.
        self._computed = None

    def _require_partition(self) -> list[list[int]]:
        if self._partition is None:
            raise ValueError(
                f"{type(self).__name__} needs a module partition. Pass `partition=[[...], ...]` (lists of neuron"
                " indices) to the constructor or assign `metric.partition` before `compute`."
            )
        return self._partition


def check_neurons_and_classes(num_neurons: Any, num_classes: Any | None = None) -> None:
    """Raise a ``ValueError`` unless ``num_neurons`` (and ``num_classes`` when given) are valid."""
    check_positive_int("num_neurons", num_neurons)
    if num_classes is not None and (check_positive_int("num_classes", num_classes) < 2):
        raise ValueError(f"Expected `num_classes` to be at least 2, but got {num_classes}.")
