"""Gradient accumulation: the focus term in every micro-batch, one synchronization and one log per optimizer step."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from conftest import GradientRecorder, TinyConvNet, make_images, quiet_trainer
from lightning.pytorch.loggers import Logger

from lightning_sync import FocusRegularizer, NeuronSynchronizer
from lightning_sync.functional.focus import focus_penalty

ACCUMULATE = 3
BATCH = 4
FOCUS_WEIGHT = 0.7


class RecordingLogger(Logger):
    """A logger that keeps every ``log_metrics`` call as ``(step, sorted keys)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, list[str]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, sorted(metrics)))


def _accumulated_reference(model: TinyConvNet) -> dict[str, torch.Tensor]:
    """Gradients of the first optimizer step, computed by hand: each micro-batch loss divided by ``ACCUMULATE``."""
    model = copy.deepcopy(model)
    images, labels = make_images(model.train_size).tensors
    for start in range(0, ACCUMULATE * BATCH, BATCH):
        batch_images, batch_labels = images[start : start + BATCH], labels[start : start + BATCH]
        maps = model.conv2(F.relu(model.conv1(batch_images)))
        logits = model.head(F.relu(maps).mean(dim=(2, 3)))
        main_loss = model.main_loss_weight * F.cross_entropy(logits, batch_labels)
        focus_loss = FOCUS_WEIGHT * focus_penalty(maps, sigma=1.0, mass="softmax")
        ((main_loss + focus_loss) / ACCUMULATE).backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if name in ("conv1.weight", "conv2.weight")}


def test_accumulation_scales_focus_and_steps_once(tmp_path):
    # 7 micro-batches with accumulation 3: Lightning steps after batches 3, 6 and 7 (the epoch end).
    model = TinyConvNet(main_loss_weight=0.5, batch_size=BATCH, train_size=7 * BATCH, seed=1)
    expected = _accumulated_reference(model)
    recorder = GradientRecorder()
    logger = RecordingLogger()
    synchronizer = NeuronSynchronizer(layers=["conv2"], k=2, coupling=0.1, max_module_share=1.0)
    trainer = quiet_trainer(
        tmp_path,
        accumulate_grad_batches=ACCUMULATE,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[FocusRegularizer(layers=["conv2"], weight=FOCUS_WEIGHT), synchronizer, recorder],
    )
    trainer.fit(model)

    assert trainer.global_step == 3
    assert len(recorder.steps) == 3
    for name, gradient in expected.items():
        torch.testing.assert_close(recorder.steps[0][name], gradient, rtol=1e-5, atol=1e-7, msg=name)

    assert synchronizer.optimizer_steps == 3
    assert synchronizer.updates == 3

    assert [step for step, _ in logger.calls] == [0, 1, 2]
    for _, keys in logger.calls:
        assert {"focus/conv2/loss", "focus/conv2/penalty", "sync/conv2/order", "sync/conv2/modules"} <= set(keys)


def test_reference_detects_missing_focus_term():
    # The reference of the test above must tell a focus term in every micro-batch from one in only some.
    model = TinyConvNet(main_loss_weight=0.5, batch_size=BATCH, train_size=ACCUMULATE * BATCH, seed=1)
    expected = _accumulated_reference(model)
    partial = copy.deepcopy(model)
    images, labels = make_images(model.train_size).tensors
    for start in range(0, ACCUMULATE * BATCH, BATCH):
        maps = partial.conv2(F.relu(partial.conv1(images[start : start + BATCH])))
        logits = partial.head(F.relu(maps).mean(dim=(2, 3)))
        loss = partial.main_loss_weight * F.cross_entropy(logits, labels[start : start + BATCH])
        if start == 0:
            loss = loss + FOCUS_WEIGHT * focus_penalty(maps, sigma=1.0, mass="softmax")
        (loss / ACCUMULATE).backward()
    assert not torch.allclose(partial.conv2.weight.grad, expected["conv2.weight"], rtol=1e-3)
