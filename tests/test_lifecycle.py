"""Hooks, captured activations and copies over a fit's lifetime, and Lightning's weight-editing callbacks."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyConvNet, make_images, quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelPruning, StochasticWeightAveraging

from lightning_sync import FocusRegularizer, NeuronSynchronizer
from lightning_sync.functional.focus import focus_penalty

STEPS = 200


def _callbacks() -> list[Callback]:
    return [
        FocusRegularizer(layers=["conv2"], weight=0.5),
        NeuronSynchronizer(layers=["conv2"], similarity="activation", k=2, coupling=0.05, interval=5, max_module_share=1.0),
    ]


def _live_tensor_count() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


class ActivationTracker(Callback):
    """Keep weak references to the hooked layer's outputs and count live tensors and CUDA memory.

    Its own hook on ``conv2`` receives the same output tensor that the callbacks capture, so a
    dead weak reference means that no callback still holds that activation.
    """

    def __init__(self, check_at: tuple[int, ...]) -> None:
        self.check_at = check_at
        self.references: list[tuple[int, weakref.ref]] = []
        self.alive_from_earlier_batches: list[int] = []
        self.tensor_counts: dict[int, int] = {}
        self.cuda_memory: dict[int, int] = {}
        self.validation_alive = 0
        self._batch = -1
        self._handle = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._handle = pl_module.conv2.register_forward_hook(self._keep_reference)

    def _keep_reference(self, module, inputs, output) -> None:
        self.references.append((self._batch, weakref.ref(output)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Reference counting frees an activation as soon as nothing references it, so no
        # gc.collect() is needed here. One per batch would take most of the test's time.
        alive = sum(1 for batch, reference in self.references if batch < batch_idx and reference() is not None)
        self.alive_from_earlier_batches.append(alive)
        self.references = [(batch, reference) for batch, reference in self.references if reference() is not None]
        if batch_idx in self.check_at:
            self.tensor_counts[batch_idx] = _live_tensor_count()
            if torch.cuda.is_available():
                self.cuda_memory[batch_idx] = torch.cuda.memory_allocated()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch = -1

    def on_validation_end(self, trainer, pl_module) -> None:
        gc.collect()
        self.validation_alive = sum(1 for batch, reference in self.references if batch == -1 and reference() is not None)

    def on_train_end(self, trainer, pl_module) -> None:
        self._handle.remove()


def _no_hooks_left(model: torch.nn.Module) -> bool:
    return all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA memory needs a GPU"))])
def test_no_growth_over_200_steps(tmp_path, accelerator):
    model = TinyConvNet(batch_size=2, train_size=2 * STEPS)
    tracker = ActivationTracker(check_at=(20, 100, STEPS - 1))
    trainer = quiet_trainer(
        tmp_path, accelerator=accelerator, callbacks=[*_callbacks(), tracker], limit_val_batches=2, val_check_interval=50
    )
    trainer.fit(model)

    assert trainer.global_step == STEPS
    # Activations of earlier batches are freed by the end of each batch.
    assert max(tracker.alive_from_earlier_batches) == 0
    # Validation runs under no_grad, so its activations are neither captured nor kept.
    assert tracker.validation_alive == 0
    counts = tracker.tensor_counts
    assert counts[STEPS - 1] <= counts[20] + 5, counts
    if accelerator == "cuda":
        assert tracker.cuda_memory[STEPS - 1] <= tracker.cuda_memory[20], tracker.cuda_memory
    assert _no_hooks_left(model)


class NoGradForwardFirst(TinyConvNet):
    """Runs an extra forward pass on flipped images under ``torch.no_grad()`` before the real one."""

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self(batch[0].flip(-1))
        return super().training_step(batch, batch_idx)


def test_no_grad_forward_is_not_captured(tmp_path):
    model = NoGradForwardFirst(main_loss_weight=0.0, batch_size=4, seed=1)
    images = make_images(model.train_size).tensors[0][:4]
    with torch.no_grad():
        maps = model.conv2(F.relu(model.conv1(images)))
        flipped_maps = model.conv2(F.relu(model.conv1(images.flip(-1))))
    expected = focus_penalty(maps, mass="softmax")
    assert not torch.isclose(focus_penalty(flipped_maps, mass="softmax"), expected)

    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[FocusRegularizer(layers=["conv2"], weight=1.0)])
    trainer.fit(model)
    torch.testing.assert_close(trainer.callback_metrics["focus/conv2/penalty"], expected)


class CopyAfterStep(Callback):
    """Deep-copy and pickle the LightningModule at the end of the first training batch."""

    def __init__(self, path) -> None:
        self.path = path
        self.copy = None
        self.loaded = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.copy = copy.deepcopy(pl_module)
            torch.save(pl_module, self.path)
            self.loaded = torch.load(self.path, weights_only=False)


def test_copy_and_save_after_training_step(tmp_path):
    model = TinyConvNet()
    # First in the list, so that it runs before the callbacks clear their captured activations.
    copier = CopyAfterStep(tmp_path / "module.pt")
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[copier, *_callbacks()])
    trainer.fit(model)

    images = make_images(4).tensors[0]
    for duplicate in (copier.copy, copier.loaded):
        assert duplicate is not None
        assert duplicate(images).shape == (4, 3)
        duplicate.train()
        duplicate(images).sum().backward()
    assert trainer.global_step == 3
    assert _no_hooks_left(model)


def test_next_to_weight_averaging_and_pruning(tmp_path):
    model = TinyConvNet(train_size=8)
    focus, synchronizer = _callbacks()
    pruning = ModelPruning("l1_unstructured", amount=0.3, use_lottery_ticket_hypothesis=False)
    averaging = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[focus, synchronizer, averaging, pruning])
    trainer.fit(model)

    assert trainer.global_step == 6
    assert synchronizer.updates == trainer.global_step // synchronizer.interval
    assert trainer.callback_metrics["focus/conv2/loss"] > 0
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
    # ModelPruning makes the pruning permanent at the end, so the zeros live in the weight itself.
    assert (model.conv2.weight == 0).float().mean() >= 0.3
    assert _no_hooks_left(model)


class PruningWatcher(Callback):
    """Copy ``conv2``'s stored weight and mask at the end of every training batch."""

    def __init__(self) -> None:
        self.stored: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        layer = pl_module.conv2
        self.stored.append(getattr(layer, "weight_orig", layer.weight).detach().clone())


def test_synchronization_moves_pruned_weights(tmp_path):
    # With a learning rate of 0 only the synchronizer moves the weights. ModelPruning
    # reparametrizes conv2 after the first epoch, so `weight` is recomputed from `weight_orig`
    # and `weight_mask` before every forward pass. An update written only into `weight` is lost.
    model = TinyConvNet(train_size=8, lr=0.0)
    synchronizer = NeuronSynchronizer(layers=["conv2"], k=2, coupling=0.3, max_module_share=1.0)
    pruning = ModelPruning(
        "l1_unstructured", amount=0.3, use_lottery_ticket_hypothesis=False, make_pruning_permanent=False,
        parameters_to_prune=[(model.conv2, "weight")],
    )
    watcher = PruningWatcher()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[synchronizer, pruning, watcher])
    trainer.fit(model)

    assert synchronizer.updates == 4
    assert hasattr(model.conv2, "weight_mask")
    # Steps 3 and 4 run on the pruned layer and must each change the stored weights.
    assert not torch.equal(watcher.stored[2], watcher.stored[1])
    assert not torch.equal(watcher.stored[3], watcher.stored[2])
    pruned = model.conv2.weight_mask == 0
    with torch.no_grad():
        model(make_images(4).tensors[0])
    assert (model.conv2.weight[pruned] == 0).all()
