"""Entry point for ``python -m lightning_sync``."""

from lightning_sync.cli import main

if __name__ == "__main__":
    main()
