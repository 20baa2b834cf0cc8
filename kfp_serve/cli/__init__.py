"""The ``kfp-serve`` command line: run, compile and upload pipelines; serve, query and stop
endpoints; canary, promote and roll back; browse models and lineage in ML Metadata.

One module per command group (``pipeline_commands``, ``endpoint_commands``,
``delivery_commands``, ``metadata_commands``); every command is a thin shell over a library
function. Heavy modules (kfp, kserve, sklearn) are imported inside the commands that need them,
so ``kfp-serve --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

# Typer vendors Click: its usage errors are these classes, not the ``click`` package's.
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from kfp_serve.cli import (
    delivery_commands,
    endpoint_commands,
    metadata_commands,
    pipeline_commands,
)
from kfp_serve.cli.errors import DEBUG, CliError, did_you_mean, fails_cleanly, report
from kfp_serve.cli.ui import out


class CommandGroup(TyperGroup):
    """Commands in the order they are defined, and an unknown one answered with the closest."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors too as one ``error:`` line and a ``hint:`` line, exit code 2."""
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "kfp-serve"
            report(CliError(e.format_message(), f"run `{command} --help`"))
            if not standalone_mode:
                raise
            sys.exit(e.exit_code)
        except typer.Abort:
            report(CliError("aborted"))
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
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
delivery_commands.register(app)
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
