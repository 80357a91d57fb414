"""Tests of the synchronization functions: directions, neighbourhoods, the coupling update, modules."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_sync.functional.sync import (
    activation_moments,
    activation_similarity,
    adaptive_radius,
    direction_distances,
    limit_module_growth,
    local_neighbourhoods,
    module_labels,
    modules_from_labels,
    neuron_directions,
    order_parameter,
    pooled_activations,
    revert_oversized_modules,
    similarity_distances,
    synchronization_step,
    weight_similarity,
)

GROUP_A = [0, 1, 2, 3]
GROUP_B = [4, 5, 6, 7]
FREE = [8, 9]


def planted_filters(noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """Ten 8 x 3 x 3 filters: two groups of four around orthogonal centres, and two free filters.

    The free filters are orthogonal to both centres, so they are about sqrt(2) away from every
    other direction, while members of a group are about 0.25 apart. Norms differ per filter.
    """
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(72, 4, generator=generator))
    centres = basis.T
    rows = [centres[0]] * 4 + [centres[1]] * 4 + [centres[2], centres[3]]
    flat = torch.stack(rows) + noise * torch.randn(10, 72, generator=generator)
    flat[FREE] = centres[2:4]
    scales = torch.linspace(0.5, 2.0, 10)[:, None]
    return (flat * scales).reshape(10, 8, 3, 3)


def synchronize(directions: torch.Tensor, steps: int, coupling: float, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``steps`` updates with weight similarity, recomputing neighbourhoods each time."""
    neighbours = torch.zeros(directions.shape[0], directions.shape[0], dtype=torch.bool)
    for _ in range(steps):
        neighbours = local_neighbourhoods(direction_distances(directions), k)
        directions = synchronization_step(directions, neighbours, coupling)
    return directions, neighbours


def mean_distance(directions: torch.Tensor, rows: list[int], columns: list[int]) -> float:
    distances = direction_distances(directions)[rows][:, columns]
    if rows == columns:
        return float(distances.sum() / (len(rows) * (len(rows) - 1)))
    return float(distances.mean())


def test_directions_unit_and_norms_kept():
    weight = planted_filters()
    directions, norms = neuron_directions(weight)
    assert directions.shape == (10, 72)
    assert torch.allclose(directions.norm(dim=1), torch.ones(10))
    assert torch.allclose(norms, weight.flatten(1).norm(dim=1))
    assert torch.allclose(directions * norms[:, None], weight.flatten(1), atol=1e-6)


def test_directions_zero_filter_gives_zero_row():
    weight = torch.zeros(3, 2, 3, 3)
    weight[0] = 1.0
    directions, norms = neuron_directions(weight.half())
    assert directions.dtype == torch.float32
    assert torch.isfinite(directions).all()
    assert directions[1:].abs().sum() == 0
    assert norms[1:].tolist() == [0.0, 0.0]


def test_directions_reject_vector():
    with pytest.raises(ValueError, match=r"shape \(C, \.\.\.\), but got shape \(5,\)"):
        neuron_directions(torch.ones(5))


def test_weight_similarity_matches_cosine():
    directions, _ = neuron_directions(planted_filters())
    expected = torch.nn.functional.cosine_similarity(directions[:, None], directions[None, :], dim=2)
    assert torch.allclose(weight_similarity(directions), expected, atol=1e-6)


def test_distances_euclidean_between_directions():
    directions, _ = neuron_directions(planted_filters())
    assert torch.allclose(direction_distances(directions), torch.cdist(directions, directions), atol=1e-3)
    assert similarity_distances(torch.tensor(1.0 + 1e-6)).item() == 0.0


def test_planted_groups_synchronize_within_not_across():
    directions, _ = neuron_directions(planted_filters())
    within_before = mean_distance(directions, GROUP_A, GROUP_A)
    across_before = mean_distance(directions, GROUP_A, GROUP_B)

    synchronized, _ = synchronize(directions, steps=30, coupling=0.5)

    assert mean_distance(synchronized, GROUP_A, GROUP_A) < 0.01 * within_before
    assert mean_distance(synchronized, GROUP_B, GROUP_B) < 0.01 * within_before
    assert mean_distance(synchronized, GROUP_A, GROUP_B) == pytest.approx(across_before, abs=0.05)
    assert torch.equal(synchronized[FREE], directions[FREE])


def test_planted_groups_become_modules():
    directions, _ = neuron_directions(planted_filters())
    synchronized, _ = synchronize(directions, steps=30, coupling=0.5)
    modules, free = modules_from_labels(module_labels(synchronized, delta=0.05))
    assert modules == [GROUP_A, GROUP_B]
    assert free == FREE


def test_order_parameter_rises():
    directions, _ = neuron_directions(planted_filters(noise=0.05))
    neighbours = local_neighbourhoods(direction_distances(directions), 2)
    before = order_parameter(directions, neighbours).item()

    synchronized, neighbours_after = synchronize(directions, steps=30, coupling=0.5)
    after = order_parameter(synchronized, neighbours_after).item()

    assert 0 < before < after
    assert after == pytest.approx(1.0, abs=1e-3)


def test_order_parameter_no_neighbours_zero():
    directions, _ = neuron_directions(planted_filters())
    assert order_parameter(directions, torch.zeros(10, 10, dtype=torch.bool)).item() == 0.0


def test_order_parameter_known_value():
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    neighbours = torch.tensor([[False, True, False], [True, False, True], [False, True, False]])
    expected_0 = math.exp(-math.sqrt(2))
    expected_1 = (math.exp(-math.sqrt(2)) + 1.0) / 2
    expected_2 = 1.0
    assert order_parameter(directions, neighbours).item() == pytest.approx((expected_0 + expected_1 + expected_2) / 3, rel=1e-5)


def test_step_matches_elementwise_sine_sum():
    generator = torch.Generator().manual_seed(1)
    directions, _ = neuron_directions(torch.randn(6, 5, generator=generator))
    neighbours = torch.rand(6, 6, generator=generator) > 0.5
    neighbours.fill_diagonal_(False)
    neighbours[3] = False

    updated = synchronization_step(directions, neighbours, coupling=0.3)

    for i in range(6):
        members = neighbours[i].nonzero().flatten()
        if len(members) == 0:
            assert torch.equal(updated[i], directions[i])
            continue
        moved = directions[i] + 0.3 / len(members) * torch.sin(directions[members] - directions[i]).sum(dim=0)
        assert torch.allclose(updated[i], moved / moved.norm(), atol=1e-6)


def test_step_keeps_zero_direction():
    directions = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.8, 0.6]])
    neighbours = ~torch.eye(3, dtype=torch.bool)
    updated = synchronization_step(directions, neighbours, coupling=0.5)
    assert torch.equal(updated[1], torch.zeros(2))
    assert torch.isfinite(updated).all()


def test_free_neuron_has_no_neighbours():
    directions, _ = neuron_directions(planted_filters())
    neighbours = local_neighbourhoods(direction_distances(directions), k=3)
    assert not neighbours[FREE].any()
    assert not neighbours[:, FREE].any()
    assert neighbours[GROUP_A][:, GROUP_A].sum() > 0
    assert not neighbours[GROUP_A][:, GROUP_B].any()


def test_knn_neighbourhood_symmetric_at_most_k_chosen():
    generator = torch.Generator().manual_seed(2)
    directions, _ = neuron_directions(torch.randn(12, 4, generator=generator))
    distances = direction_distances(directions)
    neighbours = local_neighbourhoods(distances, k=3, mode="knn")
    assert torch.equal(neighbours, neighbours.T)
    assert not neighbours.diagonal().any()
    radius = adaptive_radius(distances, 3)
    assert (distances[neighbours] <= radius).all()


def test_epsilon_neighbourhood_is_radius_ball():
    generator = torch.Generator().manual_seed(3)
    directions, _ = neuron_directions(torch.randn(12, 4, generator=generator))
    distances = direction_distances(directions)
    radius = adaptive_radius(distances, 2)
    expected = distances <= radius
    expected.fill_diagonal_(False)
    assert torch.equal(local_neighbourhoods(distances, k=2, mode="epsilon"), expected)


def test_neighbourhood_excludes_invalid_neurons():
    directions, _ = neuron_directions(planted_filters())
    valid = torch.ones(10, dtype=torch.bool)
    valid[0] = False
    neighbours = local_neighbourhoods(direction_distances(directions), k=2, valid=valid)
    assert not neighbours[0].any()
    assert not neighbours[:, 0].any()


@pytest.mark.parametrize("k", [0, 10])
def test_neighbourhood_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match=rf"`k` between 1 and 9 \(the number of other neurons\), but got {k}"):
        local_neighbourhoods(torch.rand(10, 10), k=k)


def test_neighbourhood_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Expected `mode` to be one of 'knn', 'epsilon', but got 'ball'"):
        local_neighbourhoods(torch.rand(4, 4), k=1, mode="ball")  # type: ignore[arg-type]


def test_neighbourhood_rejects_non_square():
    with pytest.raises(ValueError, match=r"square \(C, C\) distance matrix, but got shape \(3, 4\)"):
        local_neighbourhoods(torch.rand(3, 4), k=1)


def correlated_activations(samples: int = 400, seed: int = 0) -> torch.Tensor:
    """Maps ``(N, 6, 4, 4)`` whose pooled means follow two sources: neurons 0-2, neurons 3-4, neuron 5 alone."""
    generator = torch.Generator().manual_seed(seed)
    first, second, alone = torch.rand(3, samples, 1, generator=generator) + 1.0
    sources = torch.cat([first.expand(-1, 3), second.expand(-1, 2), alone], dim=1)
    pooled = sources + 0.05 * torch.rand(samples, 6, generator=generator)
    # A zero-mean pattern on the 4 x 4 map leaves each map's spatial mean equal to `pooled`.
    pattern = torch.tensor([1.0, -1.0]).repeat(8).reshape(4, 4) * 0.1
    return pooled[:, :, None, None] + pattern


def test_activation_similarity_matches_corrcoef():
    activations = correlated_activations()
    pooled = pooled_activations(activations)
    similarity, valid = activation_similarity(activation_moments(pooled))
    assert valid.all()
    assert torch.allclose(similarity, torch.corrcoef(pooled.T), atol=1e-4)


def test_activation_moments_add_over_batches():
    pooled = pooled_activations(correlated_activations())
    whole = activation_moments(pooled)
    split = activation_moments(pooled[:150]) + activation_moments(pooled[150:])
    assert torch.allclose(whole, split)


def test_activation_similarity_known_neighbourhoods():
    similarity, valid = activation_similarity(activation_moments(pooled_activations(correlated_activations())))
    neighbours = local_neighbourhoods(similarity_distances(similarity), k=2, valid=valid)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for group in ([0, 1, 2], [3, 4]):
        for i in group:
            for j in group:
                expected[i, j] = i != j
    assert torch.equal(neighbours, expected)


def test_activation_similarity_constant_neuron_invalid():
    pooled = torch.rand(50, 3)
    pooled[:, 1] = 0.0
    similarity, valid = activation_similarity(activation_moments(pooled))
    assert valid.tolist() == [True, False, True]
    assert similarity[1, 0] == 0
    assert similarity[0, 1] == 0
    assert torch.isfinite(similarity).all()


def test_pooled_activations_relu_and_linear():
    maps = torch.tensor([[[[1.0, -3.0], [3.0, 0.0]]]])
    assert pooled_activations(maps).tolist() == [[1.0]]
    assert pooled_activations(torch.tensor([[-1.0, 2.0]])).tolist() == [[0.0, 2.0]]


def test_module_labels_chain_is_one_component():
    angles = torch.tensor([0.0, 0.1, 0.2, 0.3, 1.5])
    directions = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = module_labels(directions, delta=0.15)
    assert labels.tolist() == [0, 0, 0, 0, 4]


def test_module_labels_zero_filter_singleton():
    directions = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert module_labels(directions, delta=1.5, valid=torch.tensor([True, False, True])).tolist() == [0, 1, 0]


def arc_directions(count: int = 16) -> torch.Tensor:
    """Evenly spaced unit directions on an arc, so that every neighbourhood overlaps the next one."""
    angles = torch.linspace(0.0, 1.2, count)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_adaptive_radius_keeps_arc_distributed():
    directions = arc_directions()
    for _ in range(300):
        neighbours = local_neighbourhoods(direction_distances(directions), 3, mode="epsilon")
        directions = synchronization_step(directions, neighbours, 0.5)
    modules, _ = modules_from_labels(module_labels(directions, delta=0.05))
    assert len(modules) >= 3
    assert max(len(module) for module in modules) <= 8


def test_growth_limit_stops_global_coupling():
    # Every neuron is coupled to every other one, so without the limit the layer collapses.
    everyone = ~torch.eye(16, dtype=torch.bool)
    unlimited = arc_directions()
    limited = arc_directions()
    for _ in range(30):
        unlimited = synchronization_step(unlimited, everyone, 0.5)
        neighbours = limit_module_growth(everyone, module_labels(limited, 0.05), max_size=8)
        limited = revert_oversized_modules(limited, synchronization_step(limited, neighbours, 0.5), 0.05, max_size=8)

    unlimited_modules, _ = modules_from_labels(module_labels(unlimited, 0.05))
    limited_modules, _ = modules_from_labels(module_labels(limited, 0.05))
    assert unlimited_modules == [list(range(16))]
    assert all(len(module) <= 8 for module in limited_modules)


def test_revert_leaves_existing_oversized_module():
    previous = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    updated = torch.tensor([[0.999, 0.0447], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = revert_oversized_modules(previous, updated, delta=0.1, max_size=2)
    assert torch.equal(result[0], previous[0])
    assert torch.equal(result[3], updated[3])
