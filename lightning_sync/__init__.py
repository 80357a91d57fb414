"""lightning-sync: interpretable convolutional neurons while a PyTorch Lightning model trains.

The callbacks attach to any LightningModule without changes to it: :class:`FocusRegularizer`
pulls each neuron's activation map around its focus position, :class:`NeuronSynchronizer`
synchronizes similar neurons locally into functional modules, and the metrics in
:mod:`lightning_sync.metrics` measure how interpretable the neurons are.
"""

from lightning_sync.callbacks import FocusMapFigure, FocusRegularizer, InterpretabilityMetrics, NeuronSynchronizer
from lightning_sync.metrics import (
    ActiveNeuronRate,
    ClassSelectivity,
    FocusConcentration,
    LocationInstability,
    Modularity,
    ModuleCoherence,
    ModuleConsistency,
    MutualInformationScore,
    SemanticSpecificity,
    SynchronizationOrder,
)

__version__ = "0.1.0"

__all__ = [
    "ActiveNeuronRate",
    "ClassSelectivity",
    "FocusConcentration",
    "FocusMapFigure",
    "FocusRegularizer",
    "InterpretabilityMetrics",
    "LocationInstability",
    "Modularity",
    "ModuleCoherence",
    "ModuleConsistency",
    "MutualInformationScore",
    "NeuronSynchronizer",
    "SemanticSpecificity",
    "SynchronizationOrder",
    "__version__",
]
