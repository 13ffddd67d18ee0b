"""The ``ltpipe`` command. Subcommands live beside the code they drive and load on first use,
so ``ltpipe --help`` imports neither torch nor DALI."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
COMMANDS = {
    "shard": "ltpipe.shards.cli:shard",
    "inspect": "ltpipe.shards.cli:inspect",
    "train": "ltpipe.train.train_cli:train",
    "bench": "ltpipe.bench.cli:bench",
    "preview": "ltpipe.train.mixers.preview:preview",
}

HELP = {
    "shard": "Write a dataset as WebDataset tar shards plus manifest and indexes.",
    "inspect": "Print (and verify, plot) a shard directory.",
    "train": "Train a classifier with a mixer (cmo, smc, otmix, m2m, ...).",
    "bench": "Throughput benchmarks: loader, e2e, kernels.",
    "preview": "Write a PNG grid of background, foreground and mixed images.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a command not built yet, or a broken install
            raise click.UsageError(f"command {name!r} is unavailable: {exc}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        with formatter.section("Commands"):
            formatter.write_dl([(n, HELP.get(n, "")) for n in COMMANDS])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# the installed distribution's version (as ltpipe.shards.__version__), read only when asked
@click.version_option(package_name="ltpipe", prog_name="ltpipe")
def main() -> None:
    """ltpipe: long-tailed image classification with minority mixing, fed by DALI."""
