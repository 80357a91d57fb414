"""lightning-sync: interpretable convolutional neurons while a PyTorch Lightning model trains.

The callbacks attach to any LightningModule without changes to it: :class:`FocusRegularizer`
pulls each neuron's activation map around its focus position, :class:`NeuronSynchronizer`
synchronizes similar neurons locally into functional modules, and the metrics in
:mod:`lightning_sync.metrics` measure how interpretable the neurons are.
"""

from lightning_sync.callbacks import FocusMapFigure, FocusRegularizer, NeuronSynchronizer

__version__ = "0.1.0"

__all__ = ["FocusMapFigure", "FocusRegularizer", "NeuronSynchronizer", "__version__"]
