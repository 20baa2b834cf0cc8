"""The ``kfp-serve`` command line: run, compile and upload pipelines; serve, query and stop
endpoints; browse models and lineage in ML Metadata.

One module per command group (``pipeline_commands``, ``endpoint_commands``,
``metadata_commands``); every command is a thin shell over a library function. Heavy modules
(kfp, kserve, sklearn) are imported inside the commands that need them, so ``kfp-serve --help``
answers at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from kfp_serve.cli import endpoint_commands, metadata_commands, pipeline_commands
from kfp_serve.cli.errors import DEBUG, CliError, did_you_mean, fails_cleanly, report
from kfp_serve.cli.ui import out


class CommandGroup(TyperGroup):
    """Commands in the order they are defined, and an unknown one answered with the closest."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            suggestion = did_you_mean(name, self.commands)
            report(CliError(f"unknown command {name!r}",
                            f"{suggestion} (`kfp-serve --help` lists the commands)"
                            if suggestion else "run `kfp-serve --help` to list the commands"))
            ctx.exit(2)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="kfp-serve",
    help="From a trained model to a smoke-tested KServe endpoint, on a laptop or a cluster.",
    cls=CommandGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from kfp_serve import __version__

        out.print(f"kfp-serve {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error.")
    ] = False,
) -> None:
    """From a trained model to a smoke-tested KServe endpoint, on a laptop or a cluster."""
    DEBUG["on"] = debug


pipeline_commands.register(app)
endpoint_commands.register(app)
metadata_commands.register(app)


@app.command()
@fails_cleanly
def demo() -> None:
    """Run the sklearn-with-transformer pipeline locally end to end and show the result."""
    from kfp_serve.demo import run_demo

    run_demo(out)


def main() -> None:  # pragma: no cover - console script entry
    app()


__all__ = ["app", "main"]
