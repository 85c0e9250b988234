"""The command line (``main``): LightningCLI's subcommands plus tune, compare and benchmark.
Imported by nobody but ``__main__`` and the console script. ``compatibility`` regenerates
docs/optimizers.md from real runs of the optimizer packages."""

from lightning_opt.cli.main import cli_main

__all__ = ["cli_main"]
