"""The command line: ``python run.py`` / ``b4transfer`` (Hydra entry point,
``--help``, override checks, clean-up of refused runs)."""

from b4transfer.cli.entry import main

__all__ = ["main"]
