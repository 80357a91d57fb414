"""Location instability on synthetic images whose pattern position is known."""

import pytest
import torch
from torch import nn

from lightning_sync.functional.metrics import cells_to_pixels, location_instability
from lightning_sync.metrics import LocationInstability

IMAGE_SIZE = 32
STRIDE = 4


def _images_with_square(positions: torch.Tensor) -> torch.Tensor:
    """Black 32 x 32 images with a bright 4 x 4 square whose top-left pixel is at each ``(row, column)``."""
    images = torch.zeros(len(positions), 1, IMAGE_SIZE, IMAGE_SIZE)
    for index, (row, column) in enumerate(positions.tolist()):
        images[index, 0, row : row + 4, column : column + 4] = 1.0
    return images


def _square_detector() -> nn.Module:
    """A stride-4 convolution that responds to a 4 x 4 bright square aligned with its cells."""
    layer = nn.Conv2d(1, 1, kernel_size=4, stride=4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    return layer


def test_cells_to_pixels_covers_patch_centres():
    # Cell (0, 1) of a stride-4 map covers pixels 0-3 by 4-7: its centre is (1.5, 5.5).
    assert cells_to_pixels(torch.tensor([0.0, 1.0]), stride=4).tolist() == [1.5, 5.5]
    assert cells_to_pixels(torch.tensor([0.0, 1.0]), stride=(4, 2), offset=(1, 0)).tolist() == [2.5, 2.5]


def test_filter_locked_to_landmark_scores_zero():
    generator = torch.Generator().manual_seed(0)
    cells = torch.randint(0, IMAGE_SIZE // STRIDE, (40, 2), generator=generator)
    positions = cells * STRIDE
    images = _images_with_square(positions)
    # Landmark 0 is the centre of the square. Landmark 1, a fixed corner, is marked invisible.
    landmarks = torch.stack([positions.float() + 1.5, torch.zeros(40, 2)], dim=1)
    visible = torch.tensor([[True, False]]).expand(40, -1)

    with torch.no_grad():
        activations = _square_detector()(images)
    metric = LocationInstability(num_neurons=1, num_landmarks=2, image_size=(32, 32), stride=STRIDE, top_m=20)
    for start in range(0, 40, 8):
        metric.update(activations[start : start + 8], landmarks[start : start + 8], visible[start : start + 8])
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_filter_that_jumps_scores_high():
    generator = torch.Generator().manual_seed(1)
    cells = torch.randint(0, IMAGE_SIZE // STRIDE, (40, 2), generator=generator)
    positions = cells * STRIDE
    landmarks = (positions.float() + 1.5).unsqueeze(1)
    # The filter's peak lands on a random cell, unrelated to the square.
    activations = torch.zeros(40, 1, 8, 8)
    jump = torch.randint(0, 8, (40, 2), generator=generator)
    activations[torch.arange(40), 0, jump[:, 0], jump[:, 1]] = 1.0 + torch.rand(40, generator=generator)

    jumping = location_instability(activations, landmarks, image_size=(32, 32), stride=STRIDE, top_m=20)
    with torch.no_grad():
        locked = location_instability(_square_detector()(_images_with_square(positions)), landmarks, (32, 32), STRIDE)
    assert locked.item() == pytest.approx(0.0, abs=1e-6)
    # Random peaks against random parts give about 0.18 diagonals (seeds 0 to 2 of this setup).
    assert jumping.item() > 0.08


def test_top_m_keeps_strongest_images():
    # Five images. Only the two strongest peaks keep a constant offset (zero) to the landmark.
    activations = torch.zeros(5, 1, 4, 4)
    peaks = [(0, 0, 9.0), (1, 1, 8.0), (3, 0, 1.0), (0, 3, 2.0), (2, 2, 3.0)]
    for index, (row, column, value) in enumerate(peaks):
        activations[index, 0, row, column] = value
    landmarks = torch.tensor([[[1.5, 1.5]], [[5.5, 5.5]], [[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]])
    assert location_instability(activations, landmarks, (16, 16), stride=4, top_m=2).item() == pytest.approx(0.0)
    assert location_instability(activations, landmarks, (16, 16), stride=4, top_m=5).item() > 0.05


def test_location_instability_empty_is_nan():
    metric = LocationInstability(num_neurons=2, num_landmarks=1, image_size=(8, 8), stride=2)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())
