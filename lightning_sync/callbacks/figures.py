"""FocusMapFigure: a PNG of a layer's activation maps on a few validation images."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor
from typing_extensions import override

from lightning_sync._validation import check_positive_int
from lightning_sync.capture import ActivationCapture, canonical_name, default_layer_name, resolve_layers
from lightning_sync.plotting import plot_focus_maps, strongest_neurons

log = logging.getLogger(__name__)


def run_directory(trainer: pl.Trainer) -> Path:
    """Folder of the current run: the first logger's ``log_dir``, else ``default_root_dir``."""
    directory = trainer.log_dir if trainer.loggers else None
    return Path(directory if directory is not None else trainer.default_root_dir)


def first_input_batch(batch: Any) -> Tensor:
    """Return the input tensor of a batch: the batch itself, its first element, or its ``"image"`` entry.

    Raises:
        TypeError: when no input tensor can be found.
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "input", "x"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        f"Cannot find the input images in a validation batch of type {type(batch).__name__}. Use batches that"
        " are a tensor, a tuple whose first element is the images, or a dict with an 'image' entry."
    )


class FocusMapFigure(Callback):
    """Save a figure of a layer's activation maps on the first validation images at the end of fit.

    Rows are validation images, columns are the neurons with the strongest mean response on
    them, each map laid over its image with a cross at its focus position. The figure is written
    to ``<run directory>/<filename>`` and, with a ``WandbLogger``, logged as an image. The
    LightningModule's ``forward`` must take the input images.

    Args:
        layer: layer name as in ``named_modules()``; ``None`` takes the last ``Conv2d``.
        num_images: validation images (rows).
        num_neurons: neurons (columns).
        filename: name of the PNG file.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[FocusMapFigure(num_images=4)], logger=False)
    """

    def __init__(self, layer: str | None = None, num_images: int = 6, num_neurons: int = 8, filename: str = "focus_maps.png") -> None:
        self.layer = layer
        self.num_images = check_positive_int("num_images", num_images)
        self.num_neurons = check_positive_int("num_neurons", num_neurons)
        if not filename.endswith(".png"):
            raise ValueError(f"Expected `filename` to end in '.png', but got {filename!r}.")
        self.filename = filename
        self.path: Path | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # Resolve the name now so that a wrong one fails before training, not after it.
            resolve_layers(pl_module, [self.layer or default_layer_name(pl_module)])

    def neuron_columns(self, trainer: pl.Trainer, layer: str, activations: Tensor) -> tuple[list[int], list[str]]:
        """Choose the neurons to draw and their column titles.

        When a :class:`~lightning_sync.NeuronSynchronizer` among ``trainer.callbacks`` has modules
        in ``layer``, the columns are the neurons of each module side by side, largest module
        first, titled ``"module <m> / neuron <i>"``, up to ``num_neurons`` columns. Otherwise they
        are the ``num_neurons`` neurons with the strongest mean response.
        """
        modules = synchronized_modules(trainer, layer)
        if modules:
            return module_columns(modules, self.num_neurons)
        neurons = strongest_neurons(activations, self.num_neurons)
        return neurons, [f"neuron {index}" for index in neurons]

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images = self._validation_images(trainer)
        if images is None:
            rank_zero_info("FocusMapFigure: no validation data, so no figure was drawn.")
            return
        layer = self.layer or default_layer_name(pl_module)
        activations = capture_activations(pl_module, layer, images)

        neurons, titles = self.neuron_columns(trainer, layer, activations)
        figure = plot_focus_maps(images, activations, neurons, titles, title=f"activation maps of {layer}")
        self.path = run_directory(trainer) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.path, dpi=110)
        rank_zero_info(f"FocusMapFigure: saved {self.path}")

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"figures/{layer}/focus_maps", images=[str(self.path)])

    def _validation_images(self, trainer: pl.Trainer) -> Tensor | None:
        loaders = trainer.val_dataloaders
        if loaders is None:
            datamodule = trainer.datamodule
            if datamodule is None:
                return None
            loaders = datamodule.val_dataloader()
        if isinstance(loaders, Mapping):
            loaders = list(loaders.values())
        loader = loaders[0] if isinstance(loaders, Sequence) else loaders
        try:
            batch = next(iter(loader))
        except StopIteration:
            return None
        return first_input_batch(batch)[: self.num_images]


def synchronized_modules(trainer: pl.Trainer, layer: str) -> list[list[int]]:
    """Modules of ``layer`` held by the first NeuronSynchronizer in ``trainer.callbacks`` that has any."""
    # Imported here because lightning_sync.callbacks.sync imports run_directory from this module.
    from lightning_sync.callbacks.sync import NeuronSynchronizer

    for callback in trainer.callbacks:
        if isinstance(callback, NeuronSynchronizer) and callback.modules.get(canonical_name(layer)):
            return callback.modules[canonical_name(layer)]
    return []


def module_columns(modules: Sequence[Sequence[int]], limit: int) -> tuple[list[int], list[str]]:
    """Lay out the neurons of ``modules`` side by side, module by module, at most ``limit`` columns.

    Example::

        >>> module_columns([[4, 7, 9], [1, 2]], limit=4)
        ([4, 7, 9, 1], ['module 1 / neuron 4', 'module 1 / neuron 7', 'module 1 / neuron 9', 'module 2 / neuron 1'])
    """
    neurons: list[int] = []
    titles: list[str] = []
    for number, module in enumerate(modules, start=1):
        for neuron in module:
            if len(neurons) == limit:
                return neurons, titles
            neurons.append(neuron)
            titles.append(f"module {number} / neuron {neuron}")
    return neurons, titles


def capture_activations(pl_module: pl.LightningModule, layer: str, images: Tensor) -> Tensor:
    """Run ``pl_module(images)`` in evaluation mode and return the detached output of ``layer``."""
    capture = ActivationCapture(capture_no_grad=True, detach=True)
    capture.attach(pl_module, [layer])
    capture.enabled = True
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            pl_module(images.to(pl_module.device))
        outputs = capture.outputs(next(iter(capture.layers)))
    finally:
        capture.detach_hooks()
        pl_module.train(was_training)
    if not outputs:
        raise RuntimeError(f"Layer {layer!r} was not called by the forward pass of {type(pl_module).__name__}.")
    return outputs[0].float().cpu()
