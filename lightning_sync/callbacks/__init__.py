"""Lightning callbacks of lightning-sync."""

from lightning_sync.callbacks.figures import FocusMapFigure
from lightning_sync.callbacks.focus import FocusRegularizer
from lightning_sync.callbacks.metrics import InterpretabilityMetrics
from lightning_sync.callbacks.sync import NeuronSynchronizer

__all__ = ["FocusMapFigure", "FocusRegularizer", "InterpretabilityMetrics", "NeuronSynchronizer"]
