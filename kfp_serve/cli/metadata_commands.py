"""``models`` (and ``models alias``) and ``lineage``: what ML Metadata recorded."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from kfp_serve.cli.errors import CliError, did_you_mean, fails_cleanly
from kfp_serve.cli.ui import Output, OutputOpt, dump, new_table, render, say, show


class Kind(StrEnum):
    """What ``models --kind`` accepts."""

    model = "model"
    transformer = "transformer"


def model_row(record: Any) -> dict[str, Any]:
    """What ``models`` shows of one artifact."""
    from kfp_serve.components.ops import recorded_metrics

    return {
        "id": record.id, "kind": record.kind, "name": record.name, "version": record.version,
        "framework": record.framework or "",
        "created": record.create_time.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": recorded_metrics(record.tags), "author": record.author or "",
        "snapshot": record.snapshot_uri or "",
    }


def models(
    name: Annotated[str | None, typer.Argument(help="Show only artifacts of this name.")] = None,
    kind: Annotated[Kind | None, typer.Option(help="model or transformer.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List Model and Transformer artifacts recorded in ML Metadata."""
    from kfp_serve import artifacts

    records = artifacts.list_artifacts(kind=kind.value if kind else None)
    if name is not None:
        matching = [r for r in records if r.name == name]
        if not matching:
            suggestion = did_you_mean(name, {r.name for r in records})
            raise CliError(f"no model or transformer named {name!r} is recorded",
                           suggestion or "run `kfp-serve models` to list every artifact")
        records = matching
    rows = [model_row(r) for r in records]
    if output is Output.table and not rows:
        say("no models recorded yet (`kfp-serve run PIPELINE` trains and records one)")
        return
    render(rows, output)


def lineage(
    artifact: Annotated[str, typer.Argument(help="MLMD id of an artifact, or a model as NAME, "
                                            "NAME:VERSION or NAME@ALIAS.")],
    png: Annotated[Path | None, typer.Option(help="Also draw the lineage graph as PNG.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show where an artifact came from and what points to it."""
    from kfp_serve import artifacts
    from kfp_serve.lineage_view import draw_lineage, lineage_rows

    artifact_id = int(artifact) if artifact.isdigit() else artifacts.resolve(artifact).artifact_id
    graph = artifacts.lineage(artifact_id)
    if output is not Output.table:
        dump(graph, output)
    else:
        table = new_table("relation", "what", "id", "detail")
        for row in lineage_rows(graph):
            table.add_row(*row)
        show(table)
    if png:
        draw_lineage(graph, png)
        say(f"wrote {png}")


def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    version: Annotated[str, typer.Argument(help="The version it points at from now on.")],
    reason: Annotated[str, typer.Option(help="Why, kept in the alias history.")] = "",
) -> None:
    """Point NAME@ALIAS at VERSION (kept in ML Metadata with who, when and the version before)."""
    from kfp_serve import artifacts

    change = artifacts.set_alias(name, alias, version, reason=reason)
    moved = f" (was {change.previous_version})" if change.previous_version else ""
    say(f"{name}@{alias} -> {version}{moved}")


class ListingGroup(TyperGroup):
    """A listing command that has sub-commands too: ``models [NAME] [--kind K]`` lists,
    ``models alias NAME ALIAS VERSION`` runs the sub-command (a first argument that names a
    sub-command is one; any other is the listing's argument)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            super().parse_args(ctx, [])  # the listing's own parameters keep their defaults
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        if not ctx._protected_args:
            return super().invoke(ctx)  # the listing itself
        args = [*ctx._protected_args, *ctx.args]
        ctx._protected_args, ctx.args = [], []
        with ctx:
            name, command, rest = self.resolve_command(ctx, args)
            ctx.invoked_subcommand = name
            with command.make_context(name, rest, parent=ctx) as sub:
                return sub.command.invoke(sub)


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    models_app = typer.Typer(
        cls=ListingGroup, invoke_without_command=True, no_args_is_help=False,
        context_settings={"allow_interspersed_args": True},
    )
    models_app.callback()(fails_cleanly(models))
    models_app.command("alias")(fails_cleanly(models_alias))
    app.add_typer(models_app, name="models")
    app.command("lineage")(fails_cleanly(lineage))
