"""Train several example configs with the same seed and epochs and compare them on the test split.

Run from the repository root::

    python examples/compare.py --configs baseline focus --epochs 10 --seed 0

Each config of ``examples/configs/`` is trained through the ``lightning-sync`` CLI, then the final
weights are evaluated on the held-out test split of its datamodule. The script prints a Markdown
table: test accuracy, focus concentration of the hooked layer (share of a firing map's mass within
one cell of its peak, averaged over firing maps) and the share of the layer's neurons that fire on
at least 1% of the test images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch

REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from lightning_sync.capture import ActivationCapture, default_layer_name  # noqa: E402
from lightning_sync.cli import LightningSyncCLI  # noqa: E402
from lightning_sync.functional.focus import focus_concentration_per_map  # noqa: E402

CONFIG_DIRECTORY = REPOSITORY / "examples" / "configs"
ACTIVE_SHARE = 0.01
"""A neuron counts as firing when its map fires on at least this share of the test images."""


def train(config: str, epochs: int, seed: int, output: Path, extra: Sequence[str] = ()) -> LightningSyncCLI:
    """Fit one config through the CLI and return the CLI object (model, datamodule, trainer)."""
    run_directory = output / config
    args = [
        "fit",
        "--config",
        str(CONFIG_DIRECTORY / f"{config}.yaml"),
        f"--seed_everything={seed}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={run_directory}",
        f"--trainer.logger.init_args.save_dir={run_directory}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]
    return LightningSyncCLI(args=args)


def hooked_layer(trainer: pl.Trainer, model: pl.LightningModule) -> str:
    """The first layer hooked by one of the run's lightning-sync callbacks, else the last Conv2d."""
    for callback in trainer.callbacks:
        layers = getattr(callback, "hooked_layers", None)
        if layers:
            return layers[0]
    return default_layer_name(model)


@torch.no_grad()
def evaluate(model: pl.LightningModule, loader: torch.utils.data.DataLoader, layer: str) -> dict[str, float]:
    """Test accuracy, focus concentration and firing share of ``layer`` on ``loader``."""
    capture = ActivationCapture(capture_no_grad=True, detach=True)
    capture.attach(model, [layer])
    capture.enabled = True
    model.eval()

    correct = samples = 0
    concentration_sum = firing_maps = 0.0
    firing_counts: torch.Tensor | None = None
    for images, labels in loader:
        logits = model(images.to(model.device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        samples += len(labels)

        activations = capture.outputs(layer)[0].cpu()
        capture.clear()
        concentration, firing = focus_concentration_per_map(activations)
        concentration_sum += float(concentration[firing].sum())
        firing_maps += float(firing.sum())
        counts = firing.sum(dim=0)
        firing_counts = counts if firing_counts is None else firing_counts + counts

    capture.detach_hooks()
    assert firing_counts is not None
    return {
        "accuracy": correct / samples,
        "focus_concentration": concentration_sum / max(firing_maps, 1.0),
        "firing_share": float((firing_counts >= ACTIVE_SHARE * samples).float().mean()),
    }


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table with one row per config."""
    columns = list(next(iter(results.values())))
    lines = ["| config | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for config, values in results.items():
        cells = [f"{values[column]:.4f}" if isinstance(values[column], float) else str(values[column]) for column in columns]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["baseline", "focus"], help="config names in examples/configs")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every config")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every run")
    parser.add_argument("--output", type=Path, default=Path("runs/compare"), help="folder of the runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    results: dict[str, dict[str, float]] = {}
    for config in args.configs:
        cli = train(config, args.epochs, args.seed, args.output)
        datamodule = cli.datamodule
        datamodule.setup("test")
        layer = hooked_layer(cli.trainer, cli.model)
        results[config] = evaluate(cli.model, datamodule.test_dataloader(), layer)
        print(f"{config}: {results[config]}", flush=True)

    print()
    print(f"Test split, {args.epochs} epochs, seed {args.seed}:")
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
