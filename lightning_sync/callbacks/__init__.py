"""Lightning callbacks of lightning-sync."""

from lightning_sync.callbacks.figures import FocusMapFigure
from lightning_sync.callbacks.focus import FocusRegularizer

__all__ = ["FocusMapFigure", "FocusRegularizer"]
