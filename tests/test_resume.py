"""A fit resumed from a checkpoint continues exactly like one that never stopped."""

from __future__ import annotations

import copy

import torch
from conftest import TinyConvNet, quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_sync import FocusRegularizer, NeuronSynchronizer

STEPS_PER_EPOCH = 3


def _callbacks() -> tuple[FocusRegularizer, NeuronSynchronizer]:
    # Every schedule is still running at the checkpoint after 6 steps. The focus warm-up lasts 10
    # steps and the coupling ramps from step 1 to step 9. With updates every 4 steps, the
    # activation statistics of steps 5 and 6 wait for the update at step 8.
    focus = FocusRegularizer(layers=["conv2"], weight=0.5, warmup_steps=10)
    synchronizer = NeuronSynchronizer(
        layers=["conv2"], similarity="activation", k=2, coupling=0.3, interval=4, start_step=1, warmup_steps=8,
        max_module_share=1.0,
    )
    return focus, synchronizer


class StateAtStart(Callback):
    """Copy the synchronizer's counters and modules when training starts, after a checkpoint was restored."""

    def __init__(self, synchronizer: NeuronSynchronizer) -> None:
        self.synchronizer = synchronizer
        self.state: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = copy.deepcopy({
            "global_step": trainer.global_step,
            "optimizer_steps": self.synchronizer.optimizer_steps,
            "updates": self.synchronizer.updates,
            "neighbourhoods": self.synchronizer.neighbourhoods,
            "modules": self.synchronizer.modules,
        })


def _fit(tmp_path, epochs: int, ckpt_path=None) -> tuple[TinyConvNet, FocusRegularizer, NeuronSynchronizer, dict]:
    # A fresh seed shows that the resumed weights come from the checkpoint.
    model = TinyConvNet(batch_size=4, train_size=4 * STEPS_PER_EPOCH, seed=1 if ckpt_path is None else 5)
    focus, synchronizer = _callbacks()
    start = StateAtStart(synchronizer)
    # The checkpoint is written during fit, as in real runs, before teardown drops pending statistics.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="end", enable_version_counter=False)
    trainer = quiet_trainer(
        tmp_path, max_epochs=epochs, callbacks=[focus, synchronizer, start, checkpoint], enable_checkpointing=True
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, focus, synchronizer, start.state


def test_resume_continues_schedules_and_modules(tmp_path):
    straight_model, _, straight, _ = _fit(tmp_path / "straight", epochs=4)
    _, _, first, _ = _fit(tmp_path / "first", epochs=2)
    resumed_model, _, resumed, at_start = _fit(tmp_path / "resumed", epochs=4, ckpt_path=tmp_path / "first" / "end.ckpt")

    assert at_start["global_step"] == 2 * STEPS_PER_EPOCH
    assert at_start["optimizer_steps"] == first.optimizer_steps == 2 * STEPS_PER_EPOCH
    assert at_start["updates"] == first.updates == 1
    assert at_start["neighbourhoods"] == first.neighbourhoods
    assert at_start["modules"] == first.modules

    assert resumed.optimizer_steps == straight.optimizer_steps == 4 * STEPS_PER_EPOCH
    assert resumed.updates == straight.updates == 3
    assert resumed.current_coupling(resumed.optimizer_steps) == straight.coupling
    assert resumed.neighbourhoods == straight.neighbourhoods
    assert resumed.modules == straight.modules
    assert resumed.order == straight.order
    for name, parameter in straight_model.named_parameters():
        torch.testing.assert_close(dict(resumed_model.named_parameters())[name], parameter, rtol=0, atol=0, msg=name)
