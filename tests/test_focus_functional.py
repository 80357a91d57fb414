"""Hand-computed values of the focus penalty, focus positions and focus concentration."""

import math

import pytest
import torch

from lightning_sync.functional.focus import (
    focus_concentration_per_map,
    focus_penalty,
    focus_penalty_per_map,
    focus_positions,
    gaussian_neighbourhood,
)


def one_hot_map(height: int = 5, width: int = 5, row: int = 2, column: int = 3) -> torch.Tensor:
    maps = torch.zeros(1, 1, height, width)
    maps[0, 0, row, column] = 2.0
    return maps


@pytest.mark.parametrize("mass", ["relu", "softmax"])
def test_one_hot_map_relu_penalty_zero(mass):
    penalty = focus_penalty(one_hot_map(), sigma=1.0, mass="relu")
    assert penalty.item() == 0.0


def test_uniform_map_penalty_by_hand():
    # 3 x 3 uniform map: argmax takes the first cell (0, 0). Squared distances to it:
    # 0 (once), 1 (twice), 2 (once), 4 (twice), 5 (twice), 8 (once).
    sigma = 1.0
    squared = [0, 1, 1, 2, 4, 4, 5, 5, 8]
    expected = sum(1 - math.exp(-d / (2 * sigma**2)) for d in squared) / 9
    penalty = focus_penalty(torch.ones(1, 1, 3, 3), sigma=sigma, mass="relu")
    assert penalty.item() == pytest.approx(expected, abs=1e-6)


def test_uniform_map_softmax_equals_relu():
    # A uniform map has uniform softmax mass, so both mass functions give the same share.
    maps = torch.full((2, 3, 4, 4), 0.7)
    relu = focus_penalty(maps, sigma=1.5, mass="relu")
    softmax = focus_penalty(maps, sigma=1.5, mass="softmax")
    assert softmax.item() == pytest.approx(relu.item(), abs=1e-6)


def test_softmax_penalty_ignores_shift():
    torch.manual_seed(0)
    maps = torch.rand(2, 4, 6, 6) + 0.1
    shifted = maps + 3.0
    assert focus_penalty(maps, mass="softmax").item() == pytest.approx(focus_penalty(shifted, mass="softmax").item(), abs=1e-6)


def test_sigma_fraction_matches_cells():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 8, 4)
    in_cells = focus_penalty(maps, sigma=2.0, sigma_unit="cells", mass="relu")
    as_fraction = focus_penalty(maps, sigma=0.25, sigma_unit="fraction", mass="relu")  # 0.25 * max(8, 4)
    assert in_cells.item() == pytest.approx(as_fraction.item(), abs=1e-7)


@pytest.mark.parametrize("mass", ["relu", "softmax"])
def test_silent_map_contributes_nothing(mass):
    firing = torch.rand(1, 1, 4, 4) + 0.5
    silent = -torch.rand(1, 1, 4, 4) - 0.1
    maps = torch.cat([firing, silent], dim=1).requires_grad_(True)

    penalty, firing_mask = focus_penalty_per_map(maps, mass=mass)
    assert firing_mask.tolist() == [[True, False]]
    assert penalty[0, 1].item() == 0.0

    # The mean runs over firing maps only: the silent map does not dilute it.
    total = focus_penalty(maps, mass=mass)
    assert total.item() == pytest.approx(penalty[0, 0].item(), abs=1e-7)

    total.backward()
    assert torch.all(maps.grad[0, 1] == 0)
    assert torch.isfinite(maps.grad).all()
    assert maps.grad[0, 0].abs().sum() > 0


def test_weakly_firing_map_below_threshold_has_no_gradient():
    maps = torch.full((1, 1, 3, 3), 1e-9, requires_grad=True)
    penalty = focus_penalty(maps, mass="relu", threshold=1e-6)
    penalty.backward()
    assert penalty.item() == 0.0
    assert torch.all(maps.grad == 0)


def test_no_firing_map_gives_zero_in_graph():
    maps = torch.full((2, 2, 3, 3), -1.0, requires_grad=True)
    penalty = focus_penalty(maps)
    assert penalty.item() == 0.0
    penalty.backward()
    assert torch.all(maps.grad == 0)


def test_focus_positions_argmax_and_centroid():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 2] = 3.0
    maps[0, 1, 0, 0] = 1.0
    maps[0, 1, 2, 2] = 1.0
    assert focus_positions(maps, "argmax").tolist() == [[[1.0, 2.0], [0.0, 0.0]]]
    assert focus_positions(maps, "centroid").tolist() == [[[1.0, 2.0], [1.0, 1.0]]]


def test_focus_positions_carry_no_gradient():
    maps = torch.rand(1, 1, 3, 3, requires_grad=True)
    assert not focus_positions(maps, "centroid").requires_grad


def test_centroid_of_silent_map_is_centre():
    maps = -torch.ones(1, 1, 5, 3)
    assert focus_positions(maps, "centroid").tolist() == [[[2.0, 1.0]]]


def test_invalid_focus_mode_raises():
    with pytest.raises(ValueError, match="'argmax' or 'centroid', but got 'peak'"):
        focus_positions(torch.ones(1, 1, 2, 2), "peak")


def test_non_4d_input_raises():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), but got shape \(2, 3\)"):
        focus_penalty(torch.ones(2, 3))


def test_gaussian_neighbourhood_peak_is_one():
    positions = torch.tensor([[[1.0, 2.0]]])
    kernel = gaussian_neighbourhood(positions, 3, 4, sigma=1.0)
    assert kernel[0, 0, 1, 2].item() == 1.0
    assert kernel[0, 0, 0, 2].item() == pytest.approx(math.exp(-0.5))


def test_focus_concentration_by_hand():
    maps = torch.zeros(1, 2, 5, 5)
    maps[0, 0, 2, 2] = 4.0
    maps[0, 0, 3, 3] = 2.0  # diagonal neighbour: inside the 3 x 3 window
    maps[0, 0, 0, 0] = 2.0  # two cells away: outside
    concentration, firing = focus_concentration_per_map(maps, radius=1)
    assert concentration[0, 0].item() == pytest.approx(6 / 8)
    assert concentration[0, 1].item() == 0.0
    assert firing.tolist() == [[True, False]]
