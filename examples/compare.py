"""Train several example configs with the same seed and epochs and compare them on the test split.

Run from the repository root::

    python examples/compare.py --configs baseline focus --epochs 10 --seed 0

Each config of ``examples/configs/`` is trained through the ``lightning-sync`` CLI, then the final
weights are evaluated on the held-out test split of its datamodule. The script prints a Markdown
table: test accuracy and every interpretability metric of the hooked layer that
:class:`~lightning_sync.InterpretabilityMetrics` computes (``docs/metrics.md`` defines them). The
module metrics score the run's NeuronSynchronizer modules when it has one, else the modules that
the synchronizer's rule finds in the final weights. ``--page docs/results.md`` also writes the
table as a Markdown page together with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch

REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from lightning_sync.callbacks.metrics import METRIC_NAMES, InterpretabilityMetrics  # noqa: E402
from lightning_sync.capture import default_layer_name, resolve_layers  # noqa: E402
from lightning_sync.cli import LightningSyncCLI  # noqa: E402

CONFIG_DIRECTORY = REPOSITORY / "examples" / "configs"
ACTIVE_SHARE = 0.01
"""A neuron counts as active when its map fires on at least this share of the test images."""


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
    # LightningCLI warns when it gets `args` while sys.argv contains this script's own options.
    script_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return LightningSyncCLI(args=args)
    finally:
        sys.argv = script_argv


def hooked_layer(trainer: pl.Trainer, model: pl.LightningModule) -> str:
    """Return the first layer hooked by one of the run's lightning-sync callbacks, else the last Conv2d."""
    for callback in trainer.callbacks:
        layers = getattr(callback, "hooked_layers", None)
        if layers:
            return layers[0]
    return default_layer_name(model)


def run_partitions(trainer: pl.Trainer) -> dict[str, list[list[int]]]:
    """Return the modules of the run's NeuronSynchronizer by layer, or an empty dict without one."""
    for callback in trainer.callbacks:
        modules = getattr(callback, "modules", None)
        if isinstance(modules, dict) and modules:
            return {layer: [list(module) for module in layer_modules] for layer, layer_modules in modules.items()}
    return {}


def evaluate(
    model: pl.LightningModule, loader: torch.utils.data.DataLoader, layer: str, partitions: dict[str, list[list[int]]]
) -> dict[str, float]:
    """Compute the test accuracy and every interpretability metric of ``layer`` on ``loader``.

    The LightningModule's ``validation_step`` must log ``val/acc``, as the example models do.
    """
    callback = InterpretabilityMetrics(layers=[layer], min_share=ACTIVE_SHARE, partitions=partitions)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = trainer.validate(model, dataloaders=loader, verbose=False)[0]

    partition = callback.layer_metrics(layer)["modularity"].partition or []
    neurons = resolve_layers(model, [layer])[layer].weight.shape[0]
    results = {
        "accuracy": logged["val/acc"],
        "modules": sum(len(module) >= 2 for module in partition),
        "largest_module_share": max((len(module) for module in partition if len(module) >= 2), default=0) / neurons,
    }
    for name in METRIC_NAMES:
        results[name] = logged[f"interp/{layer}/{name}"]
    return results


def format_table(results: dict[str, dict[str, float]], columns: Sequence[str] | None = None) -> str:
    """Markdown table with one row per config; ``columns`` selects and orders the columns."""
    columns = list(columns or next(iter(results.values())))
    lines = ["| config | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for config, values in results.items():
        cells = [f"{values[column]:.4f}" if isinstance(values[column], float) else str(values[column]) for column in columns]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAGE_NOTES = """\
Columns: `accuracy` is the share of correctly classified test digits, `modules` the number of
modules of two or more neurons that the module metrics score, and `largest_module_share` the size
of the largest of them divided by the layer's neuron count (0 without such modules). The other columns are the metrics
of [metrics.md](metrics.md), computed on the whole test split. All are higher-is-better.
Location instability is not reported, because the digits have no part landmarks.

The module metrics score the NeuronSynchronizer's modules in runs that have one. In runs without
it they score the modules that the synchronizer's rule (unit weight directions within 0.5 of each
other) finds in the final weights. A layer without such modules has only singletons. Then module
consistency is 1 trivially, module coherence is undefined (nan) and semantic specificity equals
class selectivity.
"""


def write_page(path: Path, table: str, command: str, args: argparse.Namespace, split_sizes: dict[str, int]) -> None:
    """Write the results table as a Markdown page that names the command that produced it."""
    lines = [
        "# Results on the bundled digits",
        "",
        "This page is generated; do not edit the numbers by hand. To regenerate it, run from the",
        "repository root:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Every config in the table was trained for {args.epochs} epochs with `seed_everything={args.seed}`",
        f"on the {split_sizes['train']:,} training images of its datamodule (torch {torch.__version__},"
        f" lightning {pl.__version__}, {platform.machine()} CPU).",
        f"The final weights were evaluated on the {split_sizes['test']:,} held-out test images, which no run sees"
        " while it trains.",
        "Each number comes from one run, so differences between configs of a few hundredths may be noise.",
        "",
        table,
        "",
        PAGE_NOTES,
    ]
    path.write_text("\n".join(lines))


def train_and_evaluate(config: str, epochs: int, seed: int, output: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Fit ``config`` and return its test-split results and the sizes of its training and test splits."""
    cli = train(config, epochs, seed, output)
    datamodule = cli.datamodule
    datamodule.setup("test")
    split_sizes = {"train": len(datamodule.train_set), "test": len(datamodule.test_set)}
    layer = hooked_layer(cli.trainer, cli.model)
    return evaluate(cli.model, datamodule.test_dataloader(), layer, run_partitions(cli.trainer)), split_sizes


def compare_seeds(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every config with every seed of ``args.seeds`` and print one row per run plus the means."""
    results: dict[str, dict[str, float]] = {}
    for config in args.configs:
        runs = []
        for seed in args.seeds:
            values, _ = train_and_evaluate(config, args.epochs, seed, args.output / f"seed{seed}")
            results[f"{config}, seed {seed}"] = values
            runs.append(values)
            print(f"{config}, seed {seed}: {values}", flush=True)
        results[f"{config}, mean"] = {name: sum(run[name] for run in runs) / len(runs) for name in runs[0]}

    print()
    print(f"Test split, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}:")
    print(format_table(results, args.columns))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["baseline", "focus"], help="config names in examples/configs")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every config")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run every config once per seed and add the means")
    parser.add_argument("--output", type=Path, default=Path("runs/compare"), help="folder of the runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--columns", nargs="+", default=None, help="print only these columns, in this order")
    parser.add_argument("--page", type=Path, default=None, help="also write the results as a Markdown page, e.g. docs/results.md")
    args = parser.parse_args(argv)

    if args.seeds is not None and args.page is not None:
        parser.error("--page writes the results of one seed; use --seed with it, not --seeds.")

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    if args.seeds is not None:
        return compare_seeds(args)

    results: dict[str, dict[str, float]] = {}
    for config in args.configs:
        results[config], split_sizes = train_and_evaluate(config, args.epochs, args.seed, args.output)
        print(f"{config}: {results[config]}", flush=True)

    table = format_table(results)
    print()
    if args.columns:
        print(f"Test split, {args.epochs} epochs, seed {args.seed}, selected columns:")
        print(format_table(results, args.columns))
        print()
    print(f"Test split, {args.epochs} epochs, seed {args.seed}:")
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    if args.page is not None:
        command = "python examples/compare.py " + " ".join(shlex.quote(argument) for argument in (sys.argv[1:] if argv is None else argv))
        write_page(args.page, table, command, args, split_sizes)
    return results


if __name__ == "__main__":
    main()
