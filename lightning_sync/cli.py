"""The ``lightning-sync`` command: LightningCLI in subclass mode.

Any LightningModule and LightningDataModule can be named by ``class_path`` in a YAML config, and
the callbacks of lightning-sync go under ``trainer.callbacks``::

    lightning-sync fit --config examples/configs/focus.yaml
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningCLI


class LightningSyncCLI(LightningCLI):
    """LightningCLI that accepts any LightningModule and LightningDataModule by class path."""

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # Under `python -m lightning_sync` the program name would otherwise read `__main__.py`.
        kwargs.setdefault("parser_kwargs", {"prog": "lightning-sync"})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,  # type: ignore[arg-type]
        )


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``lightning-sync`` command line with ``args`` (``sys.argv[1:]`` by default).

    The working directory goes first on ``sys.path``, as with ``python -m``, so class paths of
    modules next to the config (``examples.models.DigitCNN`` from the repository root) import.
    """
    working_directory = os.getcwd()
    if working_directory not in sys.path:
        sys.path.insert(0, working_directory)
    LightningSyncCLI(args=list(args) if args is not None else None)


if __name__ == "__main__":
    main()
