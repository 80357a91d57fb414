"""InterpretabilityMetrics: compute the interpretability metrics of hooked layers on the validation data."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvTransposeNd
from torchmetrics import Metric
from typing_extensions import override

from lightning_sync._validation import check_choice, check_fraction, check_positive, check_positive_int
from lightning_sync.capture import ActivationCapture, canonical_name, default_layer_name, normalize_layer_names
from lightning_sync.functional.sync import module_labels as direction_module_labels
from lightning_sync.functional.sync import modules_from_labels, neuron_directions
from lightning_sync.metrics import (
    ActiveNeuronRate,
    ClassSelectivity,
    FocusConcentration,
    Modularity,
    ModuleCoherence,
    ModuleConsistency,
    MutualInformationScore,
    SemanticSpecificity,
    SynchronizationOrder,
)
from lightning_sync.metrics._base import ModulePartitionMixin

log = logging.getLogger(__name__)

ACTIVATION_METRICS = ("focus_concentration", "active_neuron_rate")
CLASS_METRICS = ("class_selectivity", "mutual_information", "semantic_specificity")
MODULE_METRICS = ("semantic_specificity", "module_consistency", "module_coherence", "modularity")
WEIGHT_METRICS = ("synchronization_order",)
METRIC_NAMES = (
    "focus_concentration",
    "active_neuron_rate",
    "class_selectivity",
    "mutual_information",
    "semantic_specificity",
    "module_consistency",
    "module_coherence",
    "modularity",
    "synchronization_order",
)
"""Names of the metrics the callback can log, in logging order; each is logged as ``interp/<layer>/<name>``."""


def full_partition(modules: Sequence[Sequence[int]], num_neurons: int) -> list[list[int]]:
    """Return ``modules`` plus one singleton module for every neuron that is in none of them.

    Example::

        >>> full_partition([[0, 2]], 4)
        [[0, 2], [1], [3]]
    """
    partition = [[int(neuron) for neuron in module] for module in modules]
    covered = {neuron for module in partition for neuron in module}
    return partition + [[neuron] for neuron in range(num_neurons) if neuron not in covered]


def partition_from_weights(weight: Tensor, delta: float) -> list[list[int]]:
    """Group neurons whose weight directions lie within ``delta`` of each other, as NeuronSynchronizer does.

    Returns the modules of two or more neurons followed by the free neurons as singletons.
    """
    directions, norms = neuron_directions(weight)
    labels = direction_module_labels(directions, delta, norms > 0)
    modules, free_neurons = modules_from_labels(labels.cpu())
    return modules + [[neuron] for neuron in free_neurons]


class InterpretabilityMetrics(Callback):
    """Log the interpretability metrics of hooked layers once per validation epoch, as ``interp/<layer>/<metric>``.

    Forward hooks capture each layer's output on every validation batch (not during the sanity
    check), feed it to the metrics of :mod:`lightning_sync.metrics` and drop it. At the end of the
    validation epoch each metric is computed over the whole validation set, across all processes
    under DDP, and logged through ``pl_module.log``, so a ``CSVLogger`` writes one row per
    validation epoch. The metric objects live outside the LightningModule and move to its device.

    The class-based metrics need the class of each sample. :meth:`targets` takes it from the batch:
    ``batch[1]`` for a tuple or list, ``batch["label"]`` (or ``"target"``, ``"y"``) for a dict.
    Override it for other batch formats.

    The module metrics score a partition of each layer's neurons. A partition passed in
    ``partitions`` comes first. Next, when a callback with a ``modules`` mapping (a ``NeuronSynchronizer``) is among ``trainer.callbacks`` and has modules
    for the layer, its modules are used, with every free neuron as a singleton module. Otherwise
    the callback applies the synchronizer's rule to the layer's weights: neurons whose weight
    directions lie within ``fallback_delta`` of each other form a module. Runs without
    synchronization are therefore scored the same way. ``fallback_delta=None`` skips the module
    metrics for them instead.

    Location instability needs landmark annotations, which classification batches do not have,
    so this callback does not log it; use :class:`~lightning_sync.metrics.LocationInstability`
    directly.

    Args:
        layers: layer names as in ``named_modules()``; ``None`` hooks the last ``Conv2d``.
        num_classes: number of classes; ``None`` reads ``num_classes`` from the module's ``hparams``.
        metrics: names from :data:`METRIC_NAMES` to log; ``None`` logs all of them.
        radius: window half-width of focus concentration, in map cells.
        min_share: share of samples a neuron must fire on to count as active.
        num_bins: bins per neuron of the mutual-information score.
        max_samples: samples per process kept for the mutual-information score.
        k: neighbours per neuron of the synchronization order. A layer that a NeuronSynchronizer
            updates is scored with the synchronizer's ``k`` and neighbourhood mode instead.
        fallback_delta: direction distance that joins neurons into modules when no synchronizer
            provides them; ``None`` to skip the module metrics then.
        partitions: fixed modules per layer name (lists of neuron indices), for example those that
            ``NeuronSynchronizer`` saved in ``modules.json``. Free neurons become singletons.

    Raises:
        ValueError: on an invalid argument, and in ``setup`` on an unknown layer, a layer without
            a weight, or a missing ``num_classes``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[InterpretabilityMetrics(layers=["conv3"], num_classes=10)], logger=False)
    """

    def __init__(
        self,
        layers: str | Iterable[str] | None = None,
        num_classes: int | None = None,
        metrics: Iterable[str] | None = None,
        radius: int = 1,
        min_share: float = 0.01,
        num_bins: int = 16,
        max_samples: int = 10_000,
        k: int = 3,
        fallback_delta: float | None = 0.5,
        partitions: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> None:
        self.layers = normalize_layer_names(layers)
        self.num_classes = None if num_classes is None else check_positive_int("num_classes", num_classes)
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"Expected `num_classes` to be at least 2, but got {num_classes}.")
        names = list(METRIC_NAMES) if metrics is None else list(metrics)
        if not names:
            raise ValueError("Expected `metrics` to name at least one metric, but got an empty list. Pass None for all.")
        self.metrics = [check_choice("metrics", name, METRIC_NAMES) for name in names]
        self.radius = check_positive_int("radius", radius, allow_zero=True)
        self.min_share = check_fraction("min_share", min_share)
        self.num_bins = check_positive_int("num_bins", num_bins)
        self.max_samples = check_positive_int("max_samples", max_samples)
        self.k = check_positive_int("k", k)
        if fallback_delta is not None and not 0 < check_positive("fallback_delta", fallback_delta) <= 2:
            raise ValueError(f"Expected `fallback_delta` in (0, 2] (a distance between unit directions), but got {fallback_delta!r}.")
        self.fallback_delta = fallback_delta
        self.partitions = {
            canonical_name(layer): [[int(neuron) for neuron in module] for module in modules]
            for layer, modules in (partitions or {}).items()
        }

        self._capture = ActivationCapture(capture_no_grad=True, detach=True)
        self._layer_metrics: dict[str, dict[str, Metric]] = {}
        self._layer_modules: dict[str, nn.Module] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, metrics=self.metrics)

    @property
    def hooked_layers(self) -> list[str]:
        """Canonical names of the hooked layers (empty before ``setup``)."""
        return list(self._capture.layers)

    def layer_metrics(self, layer: str) -> dict[str, Metric]:
        """Return the metric objects of ``layer`` by name; they exist after ``setup``."""
        return self._layer_metrics[layer]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        names = self.layers if self.layers is not None else [default_layer_name(pl_module)]
        self._layer_modules = self._capture.attach(pl_module, names)
        num_classes = self._resolve_num_classes(pl_module)
        self._layer_metrics = {}
        for name, layer in self._layer_modules.items():
            weight = getattr(layer, "weight", None)
            if isinstance(layer, _ConvTransposeNd):
                self._capture.detach_hooks()
                raise ValueError(
                    f"Layer {name!r} is a {type(layer).__name__}, whose weight is laid out (in_channels, out_channels, ...),"
                    " so its neurons are not the rows of its weight. Hook a Conv or Linear layer instead."
                )
            if not isinstance(weight, Tensor) or weight.dim() < 2:
                self._capture.detach_hooks()
                raise ValueError(
                    f"Layer {name!r} is a {type(layer).__name__} without a weight of shape (C, ...), so its number of"
                    " neurons is unknown. Hook a Conv2d or Linear layer."
                )
            self._layer_metrics[name] = self._build_metrics(weight.shape[0], num_classes)

    def _resolve_num_classes(self, pl_module: pl.LightningModule) -> int | None:
        if not any(name in CLASS_METRICS for name in self.metrics):
            return self.num_classes
        if self.num_classes is not None:
            return self.num_classes
        num_classes = pl_module.hparams.get("num_classes") if isinstance(pl_module.hparams, Mapping) else None
        if not isinstance(num_classes, int) or num_classes < 2:
            self._capture.detach_hooks()
            raise ValueError(
                f"InterpretabilityMetrics needs the number of classes for {sorted(set(self.metrics) & set(CLASS_METRICS))},"
                f" but `num_classes` is None and {type(pl_module).__name__}.hparams has no integer `num_classes`"
                f" (got {num_classes!r}). Pass `num_classes`."
            )
        return num_classes

    def _build_metrics(self, num_neurons: int, num_classes: int | None) -> dict[str, Metric]:
        factories = {
            "focus_concentration": lambda: FocusConcentration(radius=self.radius),
            "active_neuron_rate": lambda: ActiveNeuronRate(num_neurons, min_share=self.min_share),
            "class_selectivity": lambda: ClassSelectivity(num_classes, num_neurons),
            "mutual_information": lambda: MutualInformationScore(
                num_classes, num_neurons, num_bins=self.num_bins, max_samples=self.max_samples
            ),
            "semantic_specificity": lambda: SemanticSpecificity(num_classes, num_neurons),
            "module_consistency": lambda: ModuleConsistency(num_neurons),
            "module_coherence": lambda: ModuleCoherence(num_neurons),
            "modularity": lambda: Modularity(num_neurons),
            "synchronization_order": lambda: SynchronizationOrder(k=self.k),
        }
        return {name: factories[name]() for name in self.metrics}

    def targets(self, batch: Any) -> Tensor:
        """Return the class index of every sample of a validation batch, ``(N,)``.

        Raises:
            TypeError: when the batch has no recognizable labels; override this method then.
        """
        if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
            return batch[1]
        if isinstance(batch, Mapping):
            for key in ("label", "labels", "target", "y"):
                if isinstance(batch.get(key), Tensor):
                    return batch[key]
        raise TypeError(
            f"InterpretabilityMetrics cannot find the labels in a validation batch of type {type(batch).__name__}."
            " Use batches `(images, labels)` or dicts with a 'label' entry, or override `targets(batch)`."
        )

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for metrics in self._layer_metrics.values():
            for metric in metrics.values():
                metric.reset()
                metric.to(pl_module.device)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._capture.clear()
        self._capture.enabled = not trainer.sanity_checking

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._capture.enabled = False
        if trainer.sanity_checking:
            return
        target = self.targets(batch) if any(name in CLASS_METRICS for name in self.metrics) else None
        for layer, metrics in self._layer_metrics.items():
            outputs_of_layer = self._capture.outputs(layer)
            if not outputs_of_layer:
                continue
            # NOTE: a layer called several times per forward pass is scored on its first call only.
            activations = outputs_of_layer[0]
            for name, metric in metrics.items():
                if name in WEIGHT_METRICS:
                    continue
                if name == "focus_concentration" and activations.dim() != 4:
                    continue
                if name in CLASS_METRICS:
                    metric.update(activations, target.to(activations.device))
                else:
                    metric.update(activations)
        self._capture.clear()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for layer, metrics in self._layer_metrics.items():
            weight = self._layer_modules[layer].weight
            partition = self.partition(trainer, layer, weight)
            for name, metric in metrics.items():
                if name in WEIGHT_METRICS:
                    self._match_synchronizer_neighbourhoods(trainer, layer, metric)
                    metric.update(weight.detach())
                if name in MODULE_METRICS:
                    if partition is None:
                        continue
                    assert isinstance(metric, ModulePartitionMixin)
                    metric.partition = partition
                value = metric.compute()
                pl_module.log(f"interp/{layer}/{name}", value.float(), on_epoch=True, sync_dist=True)

    def _match_synchronizer_neighbourhoods(self, trainer: pl.Trainer, layer: str, metric: Metric) -> None:
        # The order parameter depends on k and the neighbourhood mode, so a layer that a
        # synchronizer updates is scored with the synchronizer's own settings.
        for callback in trainer.callbacks:
            if callback is not self and layer in getattr(callback, "hooked_layers", ()) and hasattr(callback, "neighbourhood"):
                metric.k = callback.k
                metric.neighbourhood = callback.neighbourhood
                return

    def partition(self, trainer: pl.Trainer, layer: str, weight: Tensor) -> list[list[int]] | None:
        """Return the module partition of ``layer`` that the module metrics score, or ``None`` to skip them.

        In order: the layer's entry of ``partitions``, the modules of a synchronizer among the
        callbacks, the weight-direction modules at ``fallback_delta``. Free neurons become singletons.
        """
        if layer in self.partitions:
            return full_partition(self.partitions[layer], weight.shape[0])
        for callback in trainer.callbacks:
            modules = getattr(callback, "modules", None)
            if callback is not self and isinstance(modules, Mapping) and layer in modules:
                return full_partition(modules[layer], weight.shape[0])
        if self.fallback_delta is None:
            return None
        return partition_from_weights(weight, self.fallback_delta)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips `teardown` when fit or validate raises, so the hooks are removed here.
        self._capture.detach_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._capture.detach_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"layers": self.hooked_layers or self.layers, "metrics": self.metrics}
