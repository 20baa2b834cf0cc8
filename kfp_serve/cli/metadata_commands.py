"""``models`` (and ``models alias``) and ``lineage``: what ML Metadata recorded."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from kfp_serve.cli.errors import CliError, did_you_mean, fails_cleanly
from kfp_serve.cli.ui import Output, OutputOpt, dump, new_table, render, say, show


class Kind(StrEnum):
    """What ``models --kind`` accepts."""

    model = "model"
    transformer = "transformer"


def model_row(record: Any, aliases: dict[str, str]) -> dict[str, Any]:
    """What ``models`` shows of one artifact; ``aliases`` are its name's (alias -> version)."""
    from kfp_serve.components.ops import recorded_metrics

    return {
        "id": record.id, "kind": record.kind, "name": record.name, "version": record.version,
        "aliases": [alias for alias, version in aliases.items() if version == record.version],
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
    """List Model and Transformer artifacts recorded in ML Metadata, with their aliases."""
    from kfp_serve import artifacts

    records = artifacts.list_artifacts(kind=kind.value if kind else None)
    if name is not None:
        matching = [r for r in records if r.name == name]
        if not matching:
            suggestion = did_you_mean(name, {r.name for r in records})
            raise CliError(f"no model or transformer named {name!r} is recorded",
                           suggestion or "run `kfp-serve models` to list every artifact")
        records = matching
    from kfp_serve.artifacts.aliases import list_aliases

    aliases = {n: list_aliases(n) for n in {r.name for r in records if r.kind == Kind.model}}
    rows = [model_row(r, aliases.get(r.name, {})) for r in records]
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
    from kfp_serve.serving.liveness import lineage as live_lineage

    artifact_id = int(artifact) if artifact.isdigit() else artifacts.resolve(artifact).artifact_id
    # A local endpoint that crashed is not shown as serving: its processes are checked first.
    graph = live_lineage(artifact_id)
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


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    from kfp_serve.cli import multi_commands

    # ``models``: the listing above, alias, and load/unload for multi-model endpoints.
    multi_commands.models_app.command("alias")(fails_cleanly(models_alias))
    multi_commands.register(app)
    app.command("lineage")(fails_cleanly(lineage))
