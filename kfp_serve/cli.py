"""The ``kfp-serve`` command line: run, compile and upload pipelines; serve, query and stop
endpoints; browse models and lineage in ML Metadata.

Every command is a thin shell over a library function. Heavy modules (kfp, kserve, sklearn) are
imported inside the commands that need them, so ``kfp-serve --help`` answers at once.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="kfp-serve",
    help="From a trained model to a smoke-tested KServe endpoint, on a laptop or a cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Kubernetes namespace (cluster only).")
]


def new_table(*headers: str, **options: Any) -> Table:
    """A table whose cells wrap (fold) instead of being cut off with "…": ids, names and paths
    are what people copy."""
    table = Table(*headers, **options)
    for column in table.columns:
        column.overflow = "fold"
    return table


def show(table: Table) -> None:
    """Print ``table``; into a pipe or file as wide as it needs, one line per row (grep-able)."""
    if out.is_terminal:
        out.print(table)
        return
    needed = out.measure(table, options=out.options.update_width(100_000)).maximum
    # Console.print caps width= at the console's own width: a wider console does the job.
    Console(file=out.file, width=max(out.width, needed)).print(table)


def say(text: str) -> None:
    """One line of plain text on stdout (no markup, no wrapping: paths and URLs stay whole)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def fails_cleanly(command):
    """Turn the errors kfp-serve raises on purpose into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from kfp_serve.errors import KfpServeError

        try:
            return command(*args, **kwargs)
        except (KfpServeError, ValueError, OSError) as e:
            # The message is text, not markup: a "[...]" in it (a list of choices) must print
            # as is.
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def parse_json_arg(value: str, option: str) -> Any:
    """JSON given inline, or ``@path`` to read it from a file."""
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"{option}: file {str(path)!r} not found (use @path/to/file.json)")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option}: not valid JSON ({e}); pass JSON inline or @file.json") from e


def parse_params(params: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (numbers, true, objects) is used as such."""
    result: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: write it as NAME=VALUE (e.g. --param version=2)")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


@app.command()
@fails_cleanly
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name, e.g. sklearn-transformer.")],
    param: Annotated[
        list[str], typer.Option("--param", "-p", help="Pipeline parameter NAME=VALUE.")
    ] = [],  # noqa: B006 - typer needs a literal default
) -> None:
    """Run a pipeline locally with kfp.local, showing each step, then summarise the result."""
    from kfp_serve.pipelines import PIPELINES
    from kfp_serve.pipelines.local_run import run_local

    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {sorted(PIPELINES)}")
    result = run_local(pipeline, parse_params(param), progress=True)
    print_run_summary(result)


def print_run_summary(result: dict[str, Any]) -> None:
    table = new_table(title="Pipeline run", show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for key, value in result.items():
        if key != "step_seconds":
            table.add_row(key, escape(str(value)))
    for step, seconds in result.get("step_seconds", {}).items():
        table.add_row(f"step {step}", f"{seconds:.1f} s")
    show(table)


@app.command("compile")
@fails_cleanly
def compile_(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the YAML.")] = Path(
        "compiled"
    ),
) -> None:
    """Compile every pipeline and component to KFP IR YAML (and the palette files)."""
    from kfp_serve.build import build_all

    written = build_all(out_dir)
    for path in written:
        say(str(path))


@app.command()
@fails_cleanly
def upload(
    host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://localhost:8080.")],
    pipeline: Annotated[str, typer.Option(help="Pipeline name.")] = "sklearn-transformer",
    namespace: NamespaceOpt = None,
    version: Annotated[
        str | None, typer.Option(help="Version name (default: pipeline name + UTC time).")
    ] = None,
) -> None:
    """Upload a pipeline to a KFP cluster; uploading again adds a new pipeline version."""
    from kfp_serve.pipelines.upload import upload_pipeline

    result = upload_pipeline(pipeline, host=host, namespace=namespace, version=version)
    say(f"uploaded {result['name']!r} version {result['version']!r} (id {result['id']})")


@app.command()
@fails_cleanly
def serve(
    model_id: Annotated[int, typer.Argument(help="MLMD id of the Model artifact.")],
    transformer_id: Annotated[
        int | None, typer.Option("--transformer", help="MLMD id of a Transformer artifact.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Endpoint name (default: model name).")] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="ServeConfig as JSON or @file.json.")
    ] = None,
    namespace: NamespaceOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the manifest, apply nothing.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Ready.")] = 300.0,
) -> None:
    """Serve a model (and transformer) from ML Metadata as an InferenceService."""
    from kfp_serve import serving
    serve_config = parse_json_arg(config, "--config") if config else None
    result = serving.serve(
        model_id, transformer_id, serve_config=serve_config, name=name, namespace=namespace,
        dry_run=dry_run, timeout=timeout,
    )
    if dry_run:
        out.print_json(data=result)
    else:
        say(f"endpoint {result.name!r} is ready at {result.url}")


@app.command()
@fails_cleanly
def predict(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    data: Annotated[str, typer.Option(help="Rows as JSON (e.g. [[5.1,3.5,1.4,0.2]]) or @file.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Send rows to an endpoint and print its answer."""
    from kfp_serve.serving.endpoint import Endpoint

    rows = parse_json_arg(data, "--data")
    out.print_json(data=Endpoint(check_name(name), namespace).predict(rows))


@app.command()
@fails_cleanly
def explain(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    data: Annotated[str, typer.Option(help="Rows as JSON or @file.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Per-feature attributions for rows, from the served model."""
    from kfp_serve.serving.endpoint import Endpoint

    rows = parse_json_arg(data, "--data")
    out.print_json(data=Endpoint(check_name(name), namespace).explain(rows))


@app.command()
@fails_cleanly
def endpoints(namespace: NamespaceOpt = None) -> None:
    """List endpoints with their URL, served model ids and health."""
    from kfp_serve.serving import constants
    from kfp_serve.serving.backends.base import get_backend

    table = new_table("name", "url", "health", "model id", "transformer id", "reason")
    for status in get_backend().list(namespace):
        labels = status.manifest.get("metadata", {}).get("labels", {})
        table.add_row(
            status.name, status.url or "-", health_label(status),
            labels.get(constants.LABEL_MODEL_ID, "-"),
            labels.get(constants.LABEL_TRANSFORMER_ID, "-"), escape(status.message or ""),
        )
    show(table)


def health_label(status: Any) -> str:
    """ready, dead (a server process is gone) or the backend's reason, coloured."""
    if status.ready:
        return "[green]ready[/green]"
    if status.reason == "ProcessExited":
        return "[red]dead[/red]"
    return f"[red]{escape(status.reason or 'not ready')}[/red]"


@app.command()
@fails_cleanly
def stop(
    name: Annotated[str, typer.Argument(help="Endpoint name.")], namespace: NamespaceOpt = None
) -> None:
    """Stop an endpoint and clean up its processes (local) or InferenceService (cluster)."""
    from kfp_serve.serving.backends.base import get_backend

    get_backend().delete(check_name(name), namespace)
    say(f"stopped {name!r}")


@app.command()
@fails_cleanly
def models(
    kind: Annotated[str | None, typer.Option(help="model or transformer.")] = None,
) -> None:
    """List Model and Transformer artifacts recorded in ML Metadata."""
    from kfp_serve import artifacts
    table = new_table("id", "kind", "name", "version", "framework", "author", "snapshot")
    for rec in artifacts.list_artifacts(kind=kind):
        table.add_row(
            *(escape(v) for v in (
                str(rec.id), rec.kind, rec.name, rec.version, rec.framework or "-",
                rec.author or "-", rec.snapshot_uri or "-",
            ))
        )
    show(table)


@app.command()
@fails_cleanly
def lineage(
    artifact_id: Annotated[int, typer.Argument(help="MLMD id of an artifact.")],
    png: Annotated[Path | None, typer.Option(help="Also draw the lineage graph as PNG.")] = None,
) -> None:
    """Show where an artifact came from and what points to it."""
    from kfp_serve import artifacts
    from kfp_serve.lineage_view import draw_lineage, lineage_rows

    graph = artifacts.lineage(artifact_id)
    table = new_table("relation", "what", "id", "detail")
    for row in lineage_rows(graph):
        table.add_row(*(escape(cell) for cell in row))
    show(table)
    if png:
        draw_lineage(graph, png)
        say(f"wrote {png}")


@app.command()
@fails_cleanly
def demo() -> None:
    """Run the sklearn-with-transformer pipeline locally end to end and show the result."""
    from kfp_serve.demo import run_demo

    run_demo(out)


def check_name(name: str) -> str:
    from kfp_serve.artifacts.names import validate_name

    return validate_name(name, "NAME")


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
