"""Pure tensor functions behind the callbacks and metrics of lightning-sync."""

from lightning_sync.functional.focus import (
    firing_mask,
    focus_concentration_per_map,
    focus_penalty,
    focus_penalty_per_map,
    focus_positions,
    gaussian_neighbourhood,
)

__all__ = [
    "firing_mask",
    "focus_concentration_per_map",
    "focus_penalty",
    "focus_penalty_per_map",
    "focus_positions",
    "gaussian_neighbourhood",
]
