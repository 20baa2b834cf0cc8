"""Multi-model endpoints on the command line: ``serve --multi NAME MODEL...`` and
``models load|unload ENDPOINT MODEL``.

``kfp-serve models`` stays the listing of recorded artifacts (``kfp-serve models [NAME]``): it is
a group whose first word, when it is not ``load`` or ``unload``, runs that listing.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer._click import Context
from typer.core import TyperCommand, TyperGroup

from kfp_serve.cli.errors import CliError, fails_cleanly
from kfp_serve.cli.ui import NamespaceOpt, Output, OutputOpt, dump, model_ref, render, say

#: The subcommand that runs when ``models`` is given anything else (the artifact listing).
LIST = "list"


def serve_multi(
    name: str,
    models: list[str],
    *,
    serve_config: dict[str, Any] | None,
    memory: str | None,
    namespace: str | None,
    timeout: float,
    dry_run: bool = False,
    output: Output = Output.yaml,
) -> None:
    """``kfp-serve serve --multi NAME MODEL...``: one endpoint hosting every MODEL.

    With ``dry_run``, the manifests (the parent, then one TrainedModel per model) as one
    ``kind: List`` that ``kubectl apply -f`` takes.
    """
    from kfp_serve.serving.multi import serve_many

    if not models:
        raise CliError("--multi NAME needs at least one MODEL",
                       "`kfp-serve serve --multi regions east west` (ids or name[:version|@alias])")
    endpoint = serve_many(
        name, [model_ref(m) for m in models], serve_config, memory=memory, namespace=namespace,
        timeout=timeout, dry_run=dry_run,
    )
    if dry_run:
        dump({"apiVersion": "v1", "kind": "List", "items": endpoint},
             Output.json if output is Output.json else Output.yaml)
        return
    say(f"endpoint {endpoint.name!r} is ready at {endpoint.url} hosting "
        f"{', '.join(m.name for m in endpoint.status.models)}")


def hosted_rows(models: list[Any]) -> list[dict[str, Any]]:
    """What ``describe`` (and ``models load``) show of a multi-model endpoint's models:
    TrainedModelStatus objects, or their ``describe`` dicts."""
    rows = []
    for m in models:
        s = m if isinstance(m, dict) else {**vars(m), "version": m.version}
        rows.append({
            "model": s["name"], "version": s["version"] or "", "memory": s["memory"],
            "ready": "ready" if s["ready"] else (s["reason"] or "not ready"),
            "url": s["url"] or "", "reason": s["message"] or "",
        })
    return rows


def load(
    endpoint: Annotated[str, typer.Argument(help="A multi-model endpoint (serve --multi).")],
    model: Annotated[str, typer.Argument(help="MLMD id or name[:version|@alias].")],
    memory: Annotated[
        str | None, typer.Option(help="Memory the model declares (default 64Mi); counted "
                                 "against the endpoint's memory limit.")
    ] = None,
    namespace: NamespaceOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds the load may take.")] = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Load a model into a running multi-model endpoint (the others keep serving)."""
    from kfp_serve.serving.multi import add_model, hosted_models

    status = add_model(endpoint, model_ref(model), memory=memory, namespace=namespace,
                       timeout=timeout)
    if output is Output.table:
        say(f"endpoint {endpoint!r} serves model {status.name!r} at {status.url}")
    render(hosted_rows(hosted_models(endpoint, namespace=namespace)), output)


def unload(
    endpoint: Annotated[str, typer.Argument(help="A multi-model endpoint.")],
    model: Annotated[str, typer.Argument(help="The hosted model's name.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Unload a model from a multi-model endpoint (the others keep serving)."""
    from kfp_serve.serving.multi import remove_model

    remove_model(endpoint, model, namespace=namespace)
    say(f"endpoint {endpoint!r} no longer serves model {model!r}")


class ModelsGroup(TyperGroup):
    """``models load|unload ...`` are subcommands; anything else lists recorded artifacts."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [LIST, *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: Any) -> list[str]:
        return [c for c in self.commands if c != LIST]


class _ListingContext(Context):
    """The listing's context is the group's to a user: errors say `kfp-serve models --help`."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent is not None else super().command_path


class _ListingCommand(TyperCommand):
    context_class = _ListingContext


models_app = typer.Typer(
    cls=ModelsGroup,
    help="Recorded Model and Transformer artifacts (`kfp-serve models [NAME] [--kind ...]`), "
    "and the models of multi-model endpoints (`models load|unload ENDPOINT MODEL`).",
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    """Add ``models`` (listing, load, unload) to ``app``."""
    from kfp_serve.cli.metadata_commands import models as list_artifacts

    models_app.command(LIST, hidden=True, cls=_ListingCommand)(fails_cleanly(list_artifacts))
    models_app.command("load")(fails_cleanly(load))
    models_app.command("unload")(fails_cleanly(unload))
    app.add_typer(models_app, name="models")
