"""NeuronSynchronizer: synchronize similar neurons locally into functional modules during training."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_sync._validation import check_choice, check_fraction, check_positive, check_positive_int
from lightning_sync.callbacks.figures import run_directory
from lightning_sync.capture import ActivationCapture, default_layer_name, normalize_layer_names
from lightning_sync.functional.sync import (
    NeighbourhoodMode,
    activation_moments,
    activation_similarity,
    limit_module_growth,
    local_neighbourhoods,
    module_labels,
    modules_from_labels,
    neuron_directions,
    order_parameter,
    pooled_activations,
    revert_oversized_modules,
    similarity_distances,
    synchronization_step,
    weight_similarity,
)

log = logging.getLogger(__name__)

_SUPPORTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FULL_PRECISION = (torch.float32, torch.float64)


def _pruned_weight(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Return ``(weight_orig, weight_mask)`` of a layer pruned by ``torch.nn.utils.prune``, else ``None``.

    Lightning's ``ModelPruning`` uses ``torch.nn.utils.prune``, which turns ``weight`` into a
    plain tensor recomputed as ``weight_orig * weight_mask`` before every forward pass.
    """
    original = getattr(layer, "weight_orig", None)
    mask = getattr(layer, "weight_mask", None)
    if isinstance(original, Tensor) and isinstance(mask, Tensor):
        return original, mask
    return None
_UNSUPPORTED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy)


class NeuronSynchronizer(Callback):
    r"""Pull similar neurons of the hooked layers together, locally, after optimizer steps.

    Each neuron (a convolution filter or a Linear row) is an oscillator whose state is the
    direction :math:`u_i = w_i / \lVert w_i \rVert` of its weights. Every ``interval`` optimizer
    steps, all directions of a layer move at once:

    .. math::

        u_i \leftarrow \operatorname{normalize}\Big(u_i + \frac{K}{|N_i|}
        \sum_{j \in N_i} \sin(u_j - u_i)\Big), \qquad w_i \leftarrow \lVert w_i \rVert \, u_i

    The neighbourhood :math:`N_i` is local and adaptive. It contains at most the ``k`` most similar
    neurons (``"knn"``, symmetrized) within SynC's radius, the mean distance to the ``k`` nearest
    neighbours; see :func:`~lightning_sync.functional.sync.local_neighbourhoods`. Similarity is
    the cosine of the directions (``"weight"``) or the Pearson correlation of the spatially
    pooled ReLU activations (``"activation"``). The correlation is computed over the training
    batches since the previous update, summed over all processes.

    The coupling never builds a module of more than ``max_module_share`` of the layer's neurons.
    Links between two modules whose union would exceed that share are dropped, and a neuron
    that the update still moves into an oversized module keeps its previous direction.

    The update runs in float32 under ``torch.no_grad()`` and writes into ``param.data``. The
    Parameter objects stay the same, so the optimizer state and DDP's buckets keep working.
    Norms are kept, and biases are not changed. For half-precision weights, the part of the
    update that rounds away is carried to the next update, so a small coupling still moves them.
    Under DDP, every rank computes the same update, and the updated weights are then broadcast
    from rank 0. A step whose weights or activations contain NaN or infinite values is skipped
    with a warning.

    Modules are the connected components of the graph joining neurons whose directions are
    within ``delta`` of each other. :attr:`modules` maps each layer to its modules (lists of
    neuron indices, size at least 2, largest first), and :attr:`free_neurons` maps it to the
    neurons in no module. At the end of fit, both are recomputed from the final weights and
    written to ``<run directory>/modules.json``, with the sizes, the order parameter and the
    settings used.

    Logged at every training batch once the first update has run: ``sync/<layer>/order`` (the
    order parameter) and ``sync/<layer>/modules`` (the number of modules), both in the progress bar.

    Args:
        layers: layer names as in ``named_modules()``; ``None`` takes the last ``Conv2d``.
            ``Conv1d``, ``Conv2d``, ``Conv3d`` and ``Linear`` layers are supported.
        similarity: ``"weight"`` (cosine of the weight directions) or ``"activation"``.
        neighbourhood: ``"knn"`` (symmetrized k-nearest-neighbour graph within the adaptive
            radius) or ``"epsilon"`` (every neuron within the adaptive radius, as in SynC).
        k: neighbours per neuron that set the adaptive radius (and cap ``"knn"`` neighbourhoods).
        coupling: coupling strength ``K``, in ``(0, 1]``; above 1 the update overshoots the
            neighbourhood mean.
        interval: run the update every ``interval`` optimizer steps.
        start_step: optimizer steps to wait before the first update, so that neurons first learn
            features to be compared.
        warmup_steps: optimizer steps after ``start_step`` over which ``K`` ramps linearly from 0;
            0 keeps ``K`` constant.
        delta: distance between directions at or below which two neurons count as synchronized
            (Euclidean, between unit vectors, in ``(0, 2]``).
        max_module_share: largest share of a layer's neurons that the coupling may merge into one module.

    Raises:
        ValueError: on an invalid argument, and in ``setup`` on an unknown or unsupported layer, a
            layer with fewer than 2 neurons, ``k`` not below the neuron count, a
            ``max_module_share`` that allows no module of 2 neurons, or an FSDP or DeepSpeed strategy.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[NeuronSynchronizer(layers=["conv3"], similarity="activation")], logger=False)
    """

    def __init__(
        self,
        layers: str | Iterable[str] | None = None,
        similarity: str = "weight",
        neighbourhood: NeighbourhoodMode = "knn",
        k: int = 2,
        coupling: float = 0.02,
        interval: int = 1,
        start_step: int = 0,
        warmup_steps: int = 0,
        delta: float = 0.5,
        max_module_share: float = 0.5,
    ) -> None:
        self.layers = normalize_layer_names(layers)
        self.similarity = check_choice("similarity", similarity, ("weight", "activation"))
        self.neighbourhood = check_choice("neighbourhood", neighbourhood, ("knn", "epsilon"))
        self.k = check_positive_int("k", k)
        self.coupling = check_fraction("coupling", coupling, inclusive_zero=False)
        self.interval = check_positive_int("interval", interval)
        self.start_step = check_positive_int("start_step", start_step, allow_zero=True)
        self.warmup_steps = check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
        self.delta = check_positive("delta", delta)
        if self.delta > 2:
            raise ValueError(f"Expected `delta` to be in (0, 2], the range of distances between unit vectors, but got {delta!r}.")
        self.max_module_share = check_fraction("max_module_share", max_module_share, inclusive_zero=False)

        self.modules: dict[str, list[list[int]]] = {}
        """Modules of each layer: lists of neuron indices, size at least 2, largest first."""
        self.free_neurons: dict[str, list[int]] = {}
        """Neurons of each layer that belong to no module."""
        self.order: dict[str, float] = {}
        """Order parameter of each layer after the latest update."""
        self.neighbourhoods: dict[str, list[list[int]]] = {}
        """Neighbourhood of each neuron used by the latest update, as lists of neuron indices."""
        self.path: Path | None = None
        """Where ``modules.json`` was written at the end of the latest fit (rank 0 only)."""

        self._layers: dict[str, nn.Module] = {}
        self._capture = ActivationCapture(detach=True)
        self._reset_running_state()

    def _reset_running_state(self) -> None:
        # Called again in every `setup("fit")`: a new fit starts from step 0 like Lightning's
        # global_step, and a resumed fit gets its state back from `load_state_dict` after setup.
        self.modules = {}
        self.free_neurons = {}
        self.order = {}
        self.neighbourhoods = {}
        self._moments: dict[str, Tensor] = {}
        self._restored_moments: dict[str, Tensor] = {}
        self._residuals: dict[str, Tensor] = {}
        self._optimizer_steps = 0
        self._updates = 0
        self._skipped_updates = 0
        self._last_global_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers)

    @property
    def hooked_layers(self) -> list[str]:
        """Canonical names of the synchronized layers (empty before ``setup``)."""
        return list(self._layers)

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps counted since the start of training, restored from checkpoints."""
        return self._optimizer_steps

    @property
    def updates(self) -> int:
        """Synchronization updates applied so far."""
        return self._updates

    def current_coupling(self, optimizer_steps: int) -> float:
        """Coupling strength ``K`` after ``optimizer_steps`` steps: 0 before ``start_step``, then the ramp."""
        if optimizer_steps < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return self.coupling
        return self.coupling * min(1.0, (optimizer_steps - self.start_step) / self.warmup_steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _UNSUPPORTED_STRATEGIES):
            raise ValueError(
                f"NeuronSynchronizer cannot run under {type(trainer.strategy).__name__}, because it shards the"
                " weights or keeps its own copy of them in the optimizer, so an update of `param.data` would be"
                " lost or partial. Use a single device or DDP."
            )
        self._reset_running_state()
        names = self.layers if self.layers is not None else [default_layer_name(pl_module)]
        layers = self._capture.attach(pl_module, names)
        try:
            for name, layer in layers.items():
                self._check_layer(name, layer)
        except ValueError:
            self._capture.detach_hooks()
            raise
        if self.similarity == "weight":
            # Weight similarity needs no activations, so the hooks can go right away.
            self._capture.detach_hooks()
        self._layers = dict(layers)

    def _check_layer(self, name: str, layer: nn.Module) -> None:
        if not isinstance(layer, _SUPPORTED_LAYERS):
            raise ValueError(
                f"Layer {name!r} is a {type(layer).__name__}, but NeuronSynchronizer supports only Conv1d, Conv2d,"
                " Conv3d and Linear layers, whose weight has one row per output neuron. Choose one of those."
            )
        neurons = layer.weight.shape[0]
        if neurons < 2:
            raise ValueError(f"Layer {name!r} has {neurons} neuron, but synchronization needs at least 2. Choose a wider layer.")
        if self.k > neurons - 1:
            raise ValueError(
                f"Expected `k` to be at most {neurons - 1}, the number of other neurons in layer {name!r}, but got {self.k}."
            )
        if self._max_module_size(neurons) < 2:
            raise ValueError(
                f"`max_module_share`={self.max_module_share} allows no module of 2 neurons in layer {name!r} with"
                f" {neurons} neurons. Set it to at least {2 / neurons:.3g}."
            )

    def _max_module_size(self, neurons: int) -> int:
        return math.floor(self.max_module_share * neurons + 1e-9)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._capture.clear()
        self._capture.enabled = self.similarity == "activation"

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capture.enabled = False
        if self.similarity == "activation":
            self._accumulate_moments()
        self._capture.clear()

        # Lightning increases global_step once per optimizer step, so with gradient accumulation
        # the update runs once per optimizer step, not once per batch.
        if self._last_global_step is None:
            self._last_global_step = trainer.global_step
        if trainer.global_step != self._last_global_step:
            # Manual optimization may step several optimizers in one batch. Each step counts, and
            # one update follows the batch when the count passed a multiple of `interval`.
            previous_steps = self._optimizer_steps
            self._optimizer_steps += trainer.global_step - self._last_global_step
            self._last_global_step = trainer.global_step
            coupling = self.current_coupling(self._optimizer_steps)
            if coupling > 0 and self._optimizer_steps // self.interval > previous_steps // self.interval:
                self._synchronize(trainer, coupling)
            elif coupling == 0:
                # Before start_step, so the first window starts at start_step, not at step 0.
                self._moments = {}

        for name in self._layers:
            if name in self.order:
                pl_module.log(f"sync/{name}/order", self.order[name], prog_bar=True, batch_size=1)
                pl_module.log(f"sync/{name}/modules", float(len(self.modules[name])), prog_bar=True, batch_size=1)

    def _accumulate_moments(self) -> None:
        for name in self._layers:
            for output in self._capture.outputs(name):
                moments = activation_moments(pooled_activations(output))
                self._moments[name] = moments if name not in self._moments else self._moments[name] + moments

    def _synchronize(self, trainer: pl.Trainer, coupling: float) -> None:
        """Update every hooked layer once, then refresh its modules and order parameter."""
        for name, layer in self._layers.items():
            moments = self._moments.pop(name, None)
            if self.similarity == "activation":
                moments = self._reduced_moments(trainer, layer, moments)
                restored = self._restored_moments.pop(name, None)
                if restored is not None and restored.shape == moments.shape:
                    # Every rank restored the same statistics, so they are added after the reduction.
                    moments = moments + restored.to(moments.device)
            self._synchronize_layer(trainer, name, layer.weight, coupling, moments)

    def _reduced_moments(self, trainer: pl.Trainer, layer: nn.Module, moments: Tensor | None) -> Tensor:
        """Sum the activation statistics over all processes, so that every rank computes the same update."""
        if moments is None:
            # Every rank must join the reduction, even one that captured nothing.
            neurons = layer.weight.shape[0]
            moments = torch.zeros(neurons + 1, neurons + 1, dtype=torch.float64, device=layer.weight.device)
        return trainer.strategy.reduce(moments, reduce_op="sum")

    def _synchronize_layer(self, trainer: pl.Trainer, name: str, weight: Tensor, coupling: float, moments: Tensor | None) -> None:
        with torch.no_grad():
            current = weight.detach().float()
            residual = self._residuals.get(name)
            if residual is not None and residual.shape == current.shape:
                current = current + residual.to(current.device)
            if not torch.isfinite(current).all():
                self._skip(trainer, name, "its weights contain NaN or infinite values")
                return
            directions, norms = neuron_directions(current)
            valid = norms > 0

            if moments is not None:
                if moments[0, 0] < 2 or not torch.isfinite(moments).all():
                    self._skip(trainer, name, "the pooled activations since the last update are fewer than 2 samples or not finite")
                    return
                similarity, varies = activation_similarity(moments.to(directions.device))
                valid = valid & varies
            else:
                # NOTE: silent neurons (no positive activation, so no gradient) can still be similar
                # in weight space and form modules here. Activation similarity leaves them out.
                similarity = weight_similarity(directions)

            neurons = directions.shape[0]
            if int(valid.sum()) < 2:
                self._skip(trainer, name, "fewer than 2 of its neurons have non-zero weights and varying activations")
                return
            neighbours = local_neighbourhoods(similarity_distances(similarity), min(self.k, neurons - 1), valid, self.neighbourhood)
            labels = module_labels(directions, self.delta, norms > 0)
            neighbours = limit_module_growth(neighbours, labels, self._max_module_size(neurons))

            updated = synchronization_step(directions, neighbours, coupling)
            updated = revert_oversized_modules(directions, updated, self.delta, self._max_module_size(neurons), norms > 0)
            pruned = _pruned_weight(self._layers[name])
            if pruned is not None:
                # Pruned entries stay zero, so each direction moves within its unpruned entries.
                updated = updated * pruned[1].detach().reshape(neurons, -1).to(updated)
                updated = updated / updated.norm(dim=1, keepdim=True).clamp_min(torch.finfo(updated.dtype).tiny)
            # Rows that did not move keep their exact values instead of a rounded |w| * w / |w|.
            moved = (updated != directions).any(dim=1)
            target = torch.where(moved[:, None], updated * norms[:, None], current.reshape(neurons, -1))
            if not torch.isfinite(target).all():
                self._skip(trainer, name, "the update produced NaN or infinite values")
                return
            self._write(trainer, name, weight, target.reshape(weight.shape))

            self.neighbourhoods[name] = [row.nonzero().flatten().tolist() for row in neighbours.cpu()]
            self._refresh_modules(name, updated, norms > 0, neighbours)
        self._updates += 1

    def _write(self, trainer: pl.Trainer, name: str, weight: Tensor, target: Tensor) -> None:
        """Copy ``target`` into ``weight`` in place, carrying what the weight's dtype rounds away.

        On a pruned layer the update also goes into ``weight_orig``, because ``weight`` is
        recomputed from it before the next forward pass.
        """
        pruned = _pruned_weight(self._layers[name])
        stored = weight if pruned is None else pruned[0]
        written = [weight] if stored is weight else [stored, weight]
        for tensor in written:
            tensor.data.copy_(target.to(tensor.dtype))
        if stored.dtype in _FULL_PRECISION:
            self._residuals.pop(name, None)
        else:
            self._residuals[name] = target - stored.detach().float()

        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Ranks compute the same update from the same weights; the broadcast also removes
            # last-bit differences from non-deterministic kernels.
            for tensor in written:
                torch.distributed.broadcast(tensor.data, src=0)

    def _refresh_modules(self, name: str, directions: Tensor, valid: Tensor, neighbours: Tensor) -> None:
        labels = module_labels(directions, self.delta, valid)
        self.modules[name], self.free_neurons[name] = modules_from_labels(labels.cpu())
        self.order[name] = float(order_parameter(directions, neighbours))

    def _skip(self, trainer: pl.Trainer, name: str, reason: str) -> None:
        self._skipped_updates += 1
        rank_zero_warn(
            f"NeuronSynchronizer skipped the update of layer {name!r} at step {trainer.global_step} because {reason}"
            f" ({self._skipped_updates} updates skipped so far). The weights were left unchanged."
        )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, layer in self._layers.items():
            directions, norms = neuron_directions(layer.weight)
            if not torch.isfinite(directions).all():
                rank_zero_warn(f"NeuronSynchronizer: the final weights of layer {name!r} are not finite, so its modules were not updated.")
                continue
            neighbours = self._neighbour_matrix(name, directions.shape[0], directions.device)
            self._refresh_modules(name, directions, norms > 0, neighbours)
        self._save_modules(trainer)

    def _neighbour_matrix(self, name: str, neurons: int, device: torch.device) -> Tensor:
        matrix = torch.zeros(neurons, neurons, dtype=torch.bool, device=device)
        for neuron, neighbours in enumerate(self.neighbourhoods.get(name, [])):
            matrix[neuron, neighbours] = True
        return matrix

    @rank_zero_only
    def _save_modules(self, trainer: pl.Trainer) -> None:
        summary = {
            "layers": {
                name: {
                    "neurons": self._layers[name].weight.shape[0],
                    "modules": self.modules.get(name, []),
                    "sizes": [len(module) for module in self.modules.get(name, [])],
                    "free_neurons": self.free_neurons.get(name, []),
                    "order": self.order.get(name),
                }
                for name in self._layers
            },
            "optimizer_steps": self._optimizer_steps,
            "updates": self._updates,
            "settings": self.settings(),
        }
        path = run_directory(trainer) / "modules.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
        self.path = path
        rank_zero_info(f"NeuronSynchronizer: saved {path}")

    def settings(self) -> dict[str, Any]:
        """The constructor arguments, with the layers resolved once ``setup`` has run."""
        return {
            "layers": self.hooked_layers or self.layers,
            "similarity": self.similarity,
            "neighbourhood": self.neighbourhood,
            "k": self.k,
            "coupling": self.coupling,
            "interval": self.interval,
            "start_step": self.start_step,
            "warmup_steps": self.warmup_steps,
            "delta": self.delta,
            "max_module_share": self.max_module_share,
        }

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips `teardown` when fit raises, so the hooks are removed here.
        self._capture.detach_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._capture.detach_hooks()
        # NOTE: a checkpoint written by `trainer.save_checkpoint` after fit returns therefore lacks
        # the statistics waiting for the next update. ModelCheckpoint saves during fit and keeps them.
        self._moments = {}

    @override
    def state_dict(self) -> dict[str, Any]:
        # Copies, so that a saved state does not change with later updates.
        return copy.deepcopy({
            "layers": self.hooked_layers or self.layers,
            "optimizer_steps": self._optimizer_steps,
            "last_global_step": self._last_global_step,
            "updates": self._updates,
            "skipped_updates": self._skipped_updates,
            "coupling": self.current_coupling(self._optimizer_steps),
            "neighbourhoods": self.neighbourhoods,
            "modules": self.modules,
            "free_neurons": self.free_neurons,
            "order": self.order,
            "residuals": {name: residual.cpu() for name, residual in self._residuals.items()},
            # The activation statistics since the last update, so that a resumed fit's next update
            # uses the whole window. NOTE: under DDP the checkpoint contains rank 0's statistics
            # only, so the first update after resuming misses the other ranks' part of the window.
            "moments": {name: self._pending_moments(name).cpu() for name in self._moments.keys() | self._restored_moments.keys()},
        })

    def _pending_moments(self, name: str) -> Tensor:
        """This process's activation statistics of layer ``name`` since the last update, restored ones included."""
        local = self._moments.get(name)
        restored = self._restored_moments.get(name)
        if local is None:
            return restored
        if restored is None:
            return local
        return local + restored.to(local.device)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer_steps = int(state_dict.get("optimizer_steps", 0))
        self._last_global_step = state_dict.get("last_global_step")
        self._updates = int(state_dict.get("updates", 0))
        self._skipped_updates = int(state_dict.get("skipped_updates", 0))
        self.neighbourhoods = {name: [list(row) for row in rows] for name, rows in state_dict.get("neighbourhoods", {}).items()}
        self.modules = {name: [list(module) for module in modules] for name, modules in state_dict.get("modules", {}).items()}
        self.free_neurons = {name: list(free) for name, free in state_dict.get("free_neurons", {}).items()}
        self.order = {name: float(value) for name, value in state_dict.get("order", {}).items()}
        self._residuals = dict(state_dict.get("residuals", {}))
        self._restored_moments = dict(state_dict.get("moments", {}))
