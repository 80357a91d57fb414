"""Functional forms of the interpretability metrics: one public function per metric, on a single batch."""

from lightning_sync.functional.metrics._inputs import module_labels, pool_activations
from lightning_sync.functional.metrics.activity import active_neuron_rate
from lightning_sync.functional.metrics.concentration import focus_concentration
from lightning_sync.functional.metrics.information import mutual_information_score, quantile_bins
from lightning_sync.functional.metrics.location import cells_to_pixels, location_instability
from lightning_sync.functional.metrics.modules import (
    average_linkage_labels,
    derive_partition_labels,
    modularity,
    modularity_of_graph,
    module_coherence,
    module_consistency,
)
from lightning_sync.functional.metrics.order import synchronization_order
from lightning_sync.functional.metrics.selectivity import class_selectivity, semantic_specificity

__all__ = [
    "active_neuron_rate",
    "average_linkage_labels",
    "cells_to_pixels",
    "class_selectivity",
    "derive_partition_labels",
    "focus_concentration",
    "location_instability",
    "modularity",
    "modularity_of_graph",
    "module_coherence",
    "module_consistency",
    "module_labels",
    "mutual_information_score",
    "pool_activations",
    "quantile_bins",
    "semantic_specificity",
    "synchronization_order",
]
