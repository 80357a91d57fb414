"""FocusMapFigure: the PNG of activation maps, from one or several validation loaders."""

import pytest
from conftest import TinyConvNet, make_images, quiet_trainer
from torch.utils.data import DataLoader

from lightning_sync import FocusMapFigure


class SeveralLoadersNet(TinyConvNet):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("several", [False, True], ids=["one loader", "dict of loaders"])
def test_figure_written_after_fit(tmp_path, several):
    loader = DataLoader(make_images(8, seed=1), batch_size=4)
    figure = FocusMapFigure(layer="conv2", num_images=3, num_neurons=4)
    trainer = quiet_trainer(tmp_path, callbacks=[figure], limit_val_batches=1)
    model = SeveralLoadersNet() if several else TinyConvNet()
    trainer.fit(model, val_dataloaders={"first": loader, "second": loader} if several else loader)

    assert figure.path == tmp_path / "focus_maps.png"
    assert figure.path.stat().st_size > 1000


def test_figure_filename_must_be_png():
    with pytest.raises(ValueError, match="`filename` to end in '.png', but got 'maps.jpg'"):
        FocusMapFigure(filename="maps.jpg")


def test_figure_unknown_layer_fails_before_training(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[FocusMapFigure(layer="conv9")])
    with pytest.raises(ValueError, match="Layer 'conv9' was not found"):
        trainer.fit(TinyConvNet())
