"""Callbacks after a failed fit, across two fits, and with several optimizer steps per batch."""

import matplotlib
import pytest
import torch
from conftest import TinyConvNet, quiet_trainer

from lightning_sync import FocusRegularizer, InterpretabilityMetrics, NeuronSynchronizer


class FailingNet(TinyConvNet):
    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("planned failure")
        return super().training_step(batch, batch_idx)


def test_failed_fit_removes_hooks_and_loss_term(tmp_path):
    model = FailingNet()
    callbacks = [
        FocusRegularizer(layers="conv2"),
        NeuronSynchronizer(layers="conv2", similarity="activation", k=2),
        InterpretabilityMetrics(layers="conv2", num_classes=3),
    ]
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks)
    with pytest.raises(RuntimeError, match="planned failure"):
        trainer.fit(model)

    assert all(not module._forward_hooks for module in model.modules())
    assert "training_step" not in vars(trainer.strategy)

    # The same callbacks work in a new fit.
    quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks).fit(TinyConvNet())


def test_second_fit_starts_synchronizer_from_zero(tmp_path):
    synchronizer = NeuronSynchronizer(layers="conv2", k=2, start_step=3)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[synchronizer]).fit(TinyConvNet())
    assert synchronizer.optimizer_steps == 4
    assert synchronizer.updates == 2  # steps 3 and 4
    first_modules = synchronizer.modules

    quiet_trainer(tmp_path, max_epochs=1, callbacks=[synchronizer]).fit(TinyConvNet(seed=1))
    assert synchronizer.optimizer_steps == 4
    assert synchronizer.updates == 2  # steps 3 and 4
    assert synchronizer.modules is not first_modules


class TwoOptimizerNet(TinyConvNet):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def configure_optimizers(self):
        return [
            torch.optim.SGD(list(self.conv1.parameters()) + list(self.head.parameters()), lr=0.1),
            torch.optim.SGD(self.conv2.parameters(), lr=0.1),
        ]


def test_counts_every_optimizer_step(tmp_path):
    synchronizer = NeuronSynchronizer(layers="conv2", k=2, interval=3)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[synchronizer])
    trainer.fit(TwoOptimizerNet())
    # 4 batches with 2 optimizer steps each; an update follows each batch that crosses a multiple of 3.
    assert trainer.global_step == 8
    assert synchronizer.optimizer_steps == 8
    assert synchronizer.updates == 2


def test_import_keeps_matplotlib_backend(monkeypatch):
    import importlib
    import sys

    before = matplotlib.get_backend()
    for name in [name for name in sys.modules if name.startswith("lightning_sync")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module("lightning_sync")
    assert matplotlib.get_backend() == before
