"""TorchMetrics metrics of neuron interpretability; their functional forms are in :mod:`lightning_sync.functional.metrics`."""

from lightning_sync.metrics.activity import ActiveNeuronRate
from lightning_sync.metrics.concentration import FocusConcentration
from lightning_sync.metrics.information import MutualInformationScore
from lightning_sync.metrics.location import LocationInstability
from lightning_sync.metrics.modules import Modularity, ModuleCoherence, ModuleConsistency
from lightning_sync.metrics.order import SynchronizationOrder
from lightning_sync.metrics.selectivity import ClassSelectivity, SemanticSpecificity

__all__ = [
    "ActiveNeuronRate",
    "ClassSelectivity",
    "FocusConcentration",
    "LocationInstability",
    "Modularity",
    "ModuleCoherence",
    "ModuleConsistency",
    "MutualInformationScore",
    "SemanticSpecificity",
    "SynchronizationOrder",
]
