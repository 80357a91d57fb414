"""Pure tensor functions behind the callbacks and metrics of lightning-sync."""

from lightning_sync.functional.focus import (
    firing_mask,
    focus_concentration_per_map,
    focus_penalty,
    focus_penalty_per_map,
    focus_positions,
    gaussian_neighbourhood,
)
from lightning_sync.functional.sync import (
    activation_moments,
    activation_similarity,
    adaptive_radius,
    direction_distances,
    limit_module_growth,
    local_neighbourhoods,
    module_labels,
    modules_from_labels,
    neuron_directions,
    order_parameter,
    pooled_activations,
    similarity_distances,
    synchronization_step,
    weight_similarity,
)

__all__ = [
    "activation_moments",
    "activation_similarity",
    "adaptive_radius",
    "direction_distances",
    "firing_mask",
    "focus_concentration_per_map",
    "focus_penalty",
    "focus_penalty_per_map",
    "focus_positions",
    "gaussian_neighbourhood",
    "limit_module_growth",
    "local_neighbourhoods",
    "module_labels",
    "modules_from_labels",
    "neuron_directions",
    "order_parameter",
    "pooled_activations",
    "similarity_distances",
    "synchronization_step",
    "weight_similarity",
]
