"""Focus gradients and synchronization updates under Lightning's precision settings."""

from __future__ import annotations

import pytest
import torch
from conftest import GradientRecorder, TinyConvNet, quiet_trainer, relative_error

from lightning_sync import FocusRegularizer, NeuronSynchronizer

# Largest relative error (Frobenius norm) of the focus gradient against 32-true. bfloat16 keeps
# 8 significant bits, so one rounding of a value is off by up to 2**-8 (0.4%). The tolerance
# leaves room for the roundings that add up through two convolutions.
TOLERANCE = {"32-true": 1e-6, "bf16-mixed": 0.05, "bf16-true": 0.08, "16-mixed": 0.05}


def _focus_gradient(tmp_path, precision: str, accelerator: str = "cpu") -> tuple[dict, object]:
    model = TinyConvNet(main_loss_weight=0.0)
    recorder = GradientRecorder()
    trainer = quiet_trainer(
        tmp_path,
        accelerator=accelerator,
        precision=precision,
        max_steps=1,
        callbacks=[FocusRegularizer(layers=["conv2"], weight=1.0, sigma=1.0), recorder],
    )
    trainer.fit(model)
    return recorder.steps[0], trainer


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-mixed"])
def test_focus_gradient_matches_float32(tmp_path, precision):
    expected, _ = _focus_gradient(tmp_path / "32", "32-true")
    if precision == "16-mixed":
        # Lightning 2.6 replaces 16-mixed with bf16-mixed on CPU, with a warning.
        with pytest.warns(UserWarning, match="bf16-mixed"):
            actual, trainer = _focus_gradient(tmp_path / precision, precision)
        assert trainer.precision == "bf16-mixed"
    else:
        actual, _ = _focus_gradient(tmp_path / precision, precision)

    for name, gradient in expected.items():
        assert gradient.norm() > 0, f"the focus term gave {name} no gradient"
        assert torch.isfinite(actual[name]).all(), name
        assert relative_error(actual[name], gradient) < TOLERANCE[precision], name


def test_focus_gradient_repeats_in_float32(tmp_path):
    first, _ = _focus_gradient(tmp_path / "first", "32-true")
    second, _ = _focus_gradient(tmp_path / "second", "32-true")
    for name, gradient in first.items():
        assert relative_error(second[name], gradient) < TOLERANCE["32-true"], name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed with a GradScaler needs CUDA")
def test_focus_gradient_with_grad_scaler(tmp_path):
    expected, _ = _focus_gradient(tmp_path / "32", "32-true", accelerator="cuda")
    actual, trainer = _focus_gradient(tmp_path / "16", "16-mixed", accelerator="cuda")

    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    # The scale starts at 2**16, so gradients that were not unscaled would be 65536 times too large.
    assert scaler.get_scale() > 1
    for name, gradient in expected.items():
        assert relative_error(actual[name], gradient) < TOLERANCE["16-mixed"], name


def _synchronized_weights(tmp_path, precision: str, steps: int) -> tuple[torch.Tensor, torch.Tensor, NeuronSynchronizer]:
    # With a learning rate of 0 only the synchronizer moves the weights.
    model = TinyConvNet(lr=0.0, train_size=80)
    before = model.conv2.weight.detach().float().clone()
    synchronizer = NeuronSynchronizer(layers=["conv2"], k=2, coupling=5e-4, max_module_share=1.0)
    trainer = quiet_trainer(tmp_path, precision=precision, max_steps=steps, callbacks=[synchronizer])
    trainer.fit(model)
    return before, model.conv2.weight.detach().float().clone(), synchronizer


def test_small_coupling_moves_bfloat16_weights(tmp_path):
    before32, after_one32, _ = _synchronized_weights(tmp_path / "one", "32-true", steps=1)
    _, after32, reference = _synchronized_weights(tmp_path / "32", "32-true", steps=20)
    _, after16, synchronizer = _synchronized_weights(tmp_path / "bf16", "bf16-true", steps=20)
    assert reference.updates == synchronizer.updates == 20
    # bf16-true converts the float32 weights to bfloat16 when fit starts.
    before16 = before32.to(torch.bfloat16).float()

    # A single update is smaller than half a bfloat16 step for most weights, so without
    # carrying the rounded-away part most bfloat16 weights would never change.
    one_update = after_one32 - before32
    rounded_away = (before16 + one_update).to(torch.bfloat16).float() == before16
    assert rounded_away.float().mean() > 0.9

    moved32 = after32 - before32
    moved16 = after16 - before16
    changed = moved16 != 0
    assert changed.float().mean() > 0.5
    # The carried residual keeps each bfloat16 weight within one bfloat16 step (8 significant
    # bits) of where the float32 run moved it.
    step = torch.exp2(torch.floor(torch.log2(after16.abs().clamp_min(1e-30))) - 7)
    assert ((moved16 - moved32).abs() <= step).all()
