"""Callbacks on ``torch.compile``d LightningModules and on modules with a compiled submodule.

The ``eager`` backend runs TorchDynamo's graph capture, which is where forward hooks and
module names change, and skips inductor's code generation.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyConvNet, quiet_trainer
from torch import Tensor, nn

from lightning_sync import FocusRegularizer, NeuronSynchronizer

pytestmark = pytest.mark.skipif(
    not hasattr(torch, "compile") or sys.platform == "win32", reason="torch.compile is not available here"
)


class CompiledFeatures(TinyConvNet):
    """TinyConvNet whose convolutions sit in a compiled ``features`` block, named ``features._orig_mod.<i>``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.features = torch.compile(nn.Sequential(self.conv1, nn.ReLU(), self.conv2, nn.ReLU()), backend="eager")
        del self.conv1, self.conv2

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


class CompiledLayer(TinyConvNet):
    """TinyConvNet whose ``conv2`` itself is compiled, so that ``conv2`` names the compiled wrapper."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv2 = torch.compile(self.conv2, backend="eager")

    def forward(self, images: Tensor) -> Tensor:
        return self.head(F.relu(self.conv2(F.relu(self.conv1(images)))).mean(dim=(2, 3)))


def _fit(tmp_path, model: nn.Module, layer: str) -> tuple[object, FocusRegularizer, NeuronSynchronizer]:
    focus = FocusRegularizer(layers=[layer], weight=1.0)
    synchronizer = NeuronSynchronizer(layers=[layer], similarity="activation", k=2, max_module_share=1.0)
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[focus, synchronizer])
    trainer.fit(model)
    return trainer, focus, synchronizer


@pytest.mark.parametrize(
    ("make_model", "layer"),
    [
        (lambda: torch.compile(TinyConvNet(), backend="eager"), "conv2"),
        (lambda: torch.compile(TinyConvNet(), backend="eager"), "_orig_mod.conv2"),
        (CompiledFeatures, "features.2"),
        (CompiledFeatures, "features._orig_mod.2"),
        (CompiledLayer, "conv2"),
    ],
    ids=["compiled-module", "compiled-module-prefixed", "compiled-block", "compiled-block-prefixed", "compiled-layer"],
)
def test_callbacks_capture_through_compile(tmp_path, make_model, layer):
    model = make_model()
    trainer, focus, synchronizer = _fit(tmp_path, model, layer)

    assert focus.hooked_layers == synchronizer.hooked_layers == [layer.replace("_orig_mod.", "")]
    name = focus.hooked_layers[0]
    assert trainer.callback_metrics[f"focus/{name}/loss"] > 0
    assert trainer.callback_metrics[f"focus/{name}/penalty"] > 0
    # Activation similarity needs captured activations, so an update proves the hooks fired.
    assert synchronizer.updates == 3
    assert f"sync/{name}/order" in trainer.callback_metrics
    for module in trainer.lightning_module.modules():
        assert not module._forward_hooks
