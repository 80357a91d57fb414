"""FocusRegularizer and NeuronSynchronizer under two-process DDP on CPU (gloo).

One ``ddp_spawn`` fit checks several things at once, because each spawn costs seconds:

- The focus penalty of a rank is the mean over that rank's firing maps, and DDP averages the
  gradients of the ranks. The DDP gradient is therefore the gradient of
  ``mean over ranks (sum_r / n_r)``, where ``sum_r`` is a rank's summed penalty and ``n_r`` its
  number of firing maps. It equals the gradient of one process on the global batch,
  ``(sum_0 + sum_1) / (n_0 + n_1)``, when every rank has the same number of firing maps. The test
  data make every map fire, and the per-rank batches have equal size, so the two must agree to
  float32 rounding. The cross-entropy is a per-batch mean as well and follows the same rule.
- ``similarity="activation"`` sums the activation statistics over the ranks, so every rank and
  the single process on the global batch find the same neighbourhoods.
- The weights of every rank are bit-identical after the synchronization updates.
- ``ModelCheckpoint`` monitoring our logged keys finishes, and every rank logs the same keys.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed
from conftest import GradientRecorder, TinyConvNet, make_images, quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from lightning_sync import FocusRegularizer, NeuronSynchronizer
from lightning_sync.functional.focus import firing_mask

STEPS = 2
PER_RANK_BATCH = 4


class RankReport(GradientRecorder):
    """Write each rank's gradients, final parameters, synchronizer state and logged keys to a file."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def on_train_end(self, trainer, pl_module) -> None:
        synchronizer = next(callback for callback in trainer.callbacks if isinstance(callback, NeuronSynchronizer))
        report = {
            "gradients": self.steps,
            "parameters": torch.cat([parameter.detach().flatten() for parameter in pl_module.parameters()]),
            "neighbourhoods": synchronizer.neighbourhoods,
            "order": synchronizer.order,
            "updates": synchronizer.updates,
            "logged_keys": sorted(trainer.logged_metrics),
            "callback_metric_keys": sorted(trainer.callback_metrics),
        }
        torch.save(report, Path(self.directory) / f"rank{trainer.global_rank}.pt")


def _callbacks() -> list[Callback]:
    return [
        FocusRegularizer(layers=["conv2"], weight=1.0),
        NeuronSynchronizer(layers=["conv2"], similarity="activation", k=2, coupling=0.2, max_module_share=1.0),
    ]


def _single_process_reference(tmp_path: Path, model: TinyConvNet) -> dict:
    reference = RankReport(str(tmp_path))
    trainer = quiet_trainer(tmp_path, max_steps=STEPS, callbacks=[*_callbacks(), reference])
    trainer.fit(model)
    return torch.load(tmp_path / "rank0.pt")


@pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_ddp_matches_single_process(tmp_path):
    # With seed 1 the smallest map mass over the training images is 1.17, far from the firing threshold.
    settings = {"main_loss_weight": 0.5, "train_size": 4 * PER_RANK_BATCH, "seed": 1}
    ddp_model = TinyConvNet(batch_size=PER_RANK_BATCH, **settings)
    single_model = TinyConvNet(batch_size=2 * PER_RANK_BATCH, **settings)
    assert torch.equal(ddp_model.conv2.weight, single_model.conv2.weight)

    # Precondition of the equality: every map fires, so each rank has the same number of firing maps.
    images = make_images(settings["train_size"]).tensors[0]
    with torch.no_grad():
        assert firing_mask(single_model.conv2(torch.relu(single_model.conv1(images)))).all()

    (tmp_path / "single").mkdir()
    expected = _single_process_reference(tmp_path / "single", single_model)
    assert expected["updates"] == STEPS

    checkpoints = [
        ModelCheckpoint(dirpath=tmp_path / "by_loss", monitor="focus/conv2/loss", every_n_train_steps=1, save_top_k=1),
        ModelCheckpoint(dirpath=tmp_path / "by_order", monitor="sync/conv2/order", mode="max", every_n_train_steps=1),
    ]
    trainer = quiet_trainer(
        tmp_path,
        # A hanging collective fails after 60 s instead of gloo's default of 30 minutes.
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)),
        devices=2,
        use_distributed_sampler=False,
        max_steps=STEPS,
        callbacks=[*_callbacks(), RankReport(str(tmp_path)), *checkpoints],
        enable_checkpointing=True,
    )
    trainer.fit(ddp_model)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]

    for step in range(STEPS):
        for name, gradient in expected["gradients"][step].items():
            for rank, report in enumerate(ranks):
                torch.testing.assert_close(report["gradients"][step][name], gradient, rtol=1e-4, atol=1e-6,
                                           msg=f"{name} at step {step} on rank {rank}")

    assert torch.equal(ranks[0]["parameters"], ranks[1]["parameters"])
    torch.testing.assert_close(ranks[0]["parameters"], expected["parameters"], rtol=1e-4, atol=1e-6)

    for report in ranks:
        assert report["updates"] == STEPS
        assert report["neighbourhoods"] == expected["neighbourhoods"]
        assert report["order"]["conv2"] == pytest.approx(expected["order"]["conv2"], abs=1e-5)

    assert ranks[0]["logged_keys"] == ranks[1]["logged_keys"]
    assert ranks[0]["callback_metric_keys"] == ranks[1]["callback_metric_keys"]
    assert {"focus/conv2/loss", "focus/conv2/penalty", "sync/conv2/order", "sync/conv2/modules"} <= set(ranks[0]["logged_keys"])
    # ddp_spawn hands only the first checkpoint callback's paths back to this process, so look at the files.
    for directory in ("by_loss", "by_order"):
        assert len(list((tmp_path / directory).glob("*.ckpt"))) == 1, directory
