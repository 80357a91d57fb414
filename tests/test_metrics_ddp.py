"""Two gloo processes that see different data compute the same values as one process on all of it."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_sync.metrics import (
    ActiveNeuronRate,
    ClassSelectivity,
    FocusConcentration,
    LocationInstability,
    Modularity,
    ModuleCoherence,
    ModuleConsistency,
    MutualInformationScore,
    SemanticSpecificity,
    SynchronizationOrder,
)

NEURONS, CLASSES, LANDMARKS = 6, 3, 2
PARTITION = [[0, 1, 2], [3, 4], [5]]


def _make_metrics() -> dict:
    return {
        "focus_concentration": FocusConcentration(),
        "active_neuron_rate": ActiveNeuronRate(NEURONS, min_share=0.3),
        "class_selectivity": ClassSelectivity(CLASSES, NEURONS),
        "semantic_specificity": SemanticSpecificity(CLASSES, NEURONS, partition=PARTITION),
        "mutual_information": MutualInformationScore(CLASSES, NEURONS, num_bins=4),
        "module_coherence": ModuleCoherence(NEURONS, partition=PARTITION),
        "modularity": Modularity(NEURONS, partition=PARTITION),
        "module_consistency": ModuleConsistency(NEURONS, partition=PARTITION),
        "synchronization_order": SynchronizationOrder(k=2),
        "location_instability": LocationInstability(NEURONS, LANDMARKS, image_size=(16, 16), stride=4, top_m=5),
    }


def _data():
    generator = torch.Generator().manual_seed(7)
    maps = torch.randn(24, NEURONS, 4, 4, generator=generator)
    target = torch.randint(0, CLASSES, (24,), generator=generator)
    landmarks = torch.rand(24, LANDMARKS, 2, generator=generator) * 16
    visible = torch.rand(24, LANDMARKS, generator=generator) > 0.2
    weight = torch.randn(NEURONS, 5, generator=generator)
    return maps, target, landmarks, visible, weight


def _feed(metrics: dict, rows: slice) -> None:
    maps, target, landmarks, visible, weight = _data()
    maps, target, landmarks, visible = maps[rows], target[rows], landmarks[rows], visible[rows]
    # Two batches per process so that the states also accumulate locally.
    for batch in (slice(0, len(maps) // 2), slice(len(maps) // 2, len(maps))):
        if len(maps[batch]) == 0:
            continue
        for name, metric in metrics.items():
            if name in ("class_selectivity", "semantic_specificity", "mutual_information"):
                metric.update(maps[batch], target[batch])
            elif name == "location_instability":
                metric.update(maps[batch], landmarks[batch], visible[batch])
            elif name == "synchronization_order":
                continue
            else:
                metric.update(maps[batch])
    if len(maps):
        metrics["synchronization_order"].update(weight)


def _single_process_values() -> dict:
    metrics = _make_metrics()
    _feed(metrics, slice(0, 24))
    return {name: metric.compute() for name, metric in metrics.items()}


def _worker(rank: int, world_size: int, port: int, split: int, output: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        metrics = _make_metrics()
        _feed(metrics, slice(0, split) if rank == 0 else slice(split, 24))
        values = {name: metric.compute() for name, metric in metrics.items()}
        torch.save(values, Path(output) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("split", [10, 24], ids=["uneven", "rank1-empty"])
def test_two_processes_equal_one_on_union(tmp_path, split):
    mp.spawn(_worker, args=(2, _free_port(), split, str(tmp_path)), nprocs=2, join=True)
    expected = _single_process_values()
    for rank in (0, 1):
        values = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.items():
            assert not torch.isnan(value), name
            assert values[name].item() == pytest.approx(value.item(), abs=1e-5), f"{name} on rank {rank}"
