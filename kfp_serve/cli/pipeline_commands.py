"""``run``, ``pipelines``, ``compile`` and ``upload``: the pipelines as a user lives with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from kfp_serve.cli.errors import CliError, did_you_mean, fails_cleanly
from kfp_serve.cli.ui import NamespaceOpt, Output, OutputOpt, dump, new_table, render, say, show


def pipeline_names() -> list[str]:
    from kfp_serve.pipelines import PIPELINES

    return sorted(PIPELINES)


def check_pipeline(name: str) -> Any:
    """The pipeline called ``name``, or an error with the closest name and the list."""
    from kfp_serve.pipelines import PIPELINES

    if name not in PIPELINES:
        suggestion = did_you_mean(name, PIPELINES)
        raise CliError(
            f"unknown pipeline {name!r}; choose one of {', '.join(sorted(PIPELINES))}",
            f"{suggestion} (`kfp-serve pipelines` lists them with their parameters)"
            if suggestion else "run `kfp-serve pipelines` to list them with their parameters",
        )
    return PIPELINES[name]


def parameter_rows(pipeline: Any) -> list[dict[str, Any]]:
    """One row per pipeline parameter: name, type, default, description (from the IR)."""
    inputs = pipeline.component_spec.inputs or {}
    return [
        {"parameter": name, "type": spec.type.lower(),
         "default": spec.default if spec.default is not None else "",
         "description": spec.description or ""}
        for name, spec in inputs.items()
    ]


def pipelines_help() -> str:
    """The pipelines and their parameters, for ``run --help`` (built from the pipelines)."""
    from kfp_serve.pipelines import PIPELINES

    parts = ["Pipelines and their parameters (--param NAME=VALUE):"]
    for name in sorted(PIPELINES):
        pipeline = PIPELINES[name]
        parts.append(f"{name}: {pipeline.description or ''}")
        for row in parameter_rows(pipeline):
            parts.append(f"  {row['parameter']} (default {json.dumps(row['default'])}): "
                         f"{row['description']}")
    return "\n\n" + "\n\n".join(parts)


class RunCommand(TyperCommand):
    """``run``, whose help lists the pipelines: built when asked for, so that importing the
    pipelines (and kfp) never slows down any other command."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self.help and "Pipelines and their parameters" not in self.help:
            self.help += pipelines_help()
        super().format_help(ctx, formatter)


def parse_params(params: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (numbers, true, objects) is used as such."""
    result: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--param {item!r}: write it as NAME=VALUE",
                           "e.g. --param model_version=1.0.1")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def check_param_names(pipeline: Any, params: dict[str, Any]) -> None:
    """Unknown parameters are an error with the closest known name."""
    inputs = pipeline.component_spec.inputs or {}
    for key in params:
        if key not in inputs:
            suggestion = did_you_mean(key, inputs)
            raise CliError(
                f"unknown parameter(s) [{key!r}]; this pipeline takes: "
                + ", ".join(f"{k}={v.default!r}" for k, v in inputs.items()),
                f"{suggestion} (`kfp-serve pipelines` describes every parameter)"
                if suggestion else "run `kfp-serve pipelines` to see every parameter",
            )


def with_defaults(pipeline: Any, params: dict[str, Any]) -> dict[str, Any]:
    inputs = pipeline.component_spec.inputs or {}
    return {**{k: v.default for k, v in inputs.items() if v.default is not None}, **params}


def run_command(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (see `kfp-serve pipelines`).")],
    param: Annotated[
        list[str], typer.Option("--param", "-p", help="Pipeline parameter NAME=VALUE.")
    ] = [],  # noqa: B006 - typer needs a literal default
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Compare with the latest recorded version: "
                           "identical content reuses it, different content is recorded under "
                           "the patch version after it (--param new_version=true).")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Run a pipeline locally with kfp.local, showing each step, then summarise the result.

    Running it again with the same parameters reuses the recorded artifacts (training is
    deterministic given random_state); different content under the same version is refused.
    """
    from kfp_serve.pipelines.checks import check_params
    from kfp_serve.pipelines.local_run import run_local

    chosen = check_pipeline(pipeline)
    params = parse_params(param)
    check_param_names(chosen, params)
    if new_version:
        params["new_version"] = True
    # Names, versions, ServeConfig and snapshot store: checked here too, before kfp.local
    # starts, so a typo costs no step (the pipeline's validate step checks again on a cluster).
    check_params(with_defaults(chosen, params))
    check_local_dataset(str(params.get("dataset") or ""))
    result = run_local(pipeline, params, progress=True)
    result.update(recorded_versions(result))
    result["metrics"] = model_metrics(result.get("model_id"))
    if output is not Output.table:
        dump(result, output)
        return
    print_run_summary(result)


def check_local_dataset(dataset: str) -> None:
    """A local dataset file that is not there: an error before any step runs (kfp.local runs
    the steps on this machine; on a cluster the file would be the pod's to find)."""
    text = dataset.removeprefix("file://")
    path = Path(text)
    if not text or "://" in text or path.exists():
        return
    parent = path.parent if path.parent.is_dir() else None
    nearby = [p.name for p in parent.iterdir()] if parent is not None else []
    suggestion = did_you_mean(path.name, nearby)
    raise CliError(f"--param dataset: file {dataset!r} does not exist",
                   suggestion or "pass a CSV or Parquet path, or an s3:// URI")


def recorded_versions(result: dict[str, Any]) -> dict[str, str]:
    """``model_version`` (and ``transformer_version``) the run recorded or reused: with
    --new-version the user learns here which one it was."""
    from kfp_serve.artifacts.records import get_artifact

    return {
        f"{kind}_version": get_artifact(result[f"{kind}_id"]).version
        for kind in ("model", "transformer") if result.get(f"{kind}_id")
    }


def model_metrics(model_id: int | None) -> dict[str, str]:
    """The training metrics recorded with the model (accuracy, F1), by name."""
    if not model_id:
        return {}
    from kfp_serve.artifacts.records import get_artifact
    from kfp_serve.components.ops import recorded_metrics

    return recorded_metrics(get_artifact(model_id).tags)


def print_run_summary(result: dict[str, Any]) -> None:
    table = new_table(title="Pipeline run", show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for key, value in result.items():
        if key not in ("step_seconds", "metrics"):
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    for metric, value in result.get("metrics", {}).items():
        table.add_row(f"metric {metric}", value)
    for step, seconds in result.get("step_seconds", {}).items():
        table.add_row(f"step {step}", f"{seconds:.1f} s")
    show(table)


def pipelines_command(
    name: Annotated[str | None, typer.Argument(help="Show only this pipeline.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List the pipelines with their parameters, defaults and descriptions."""
    from kfp_serve.pipelines import PIPELINES

    names = [check_pipeline(name) and name] if name else sorted(PIPELINES)
    if output is not Output.table:
        dump([{"pipeline": n, "description": PIPELINES[n].description,
               "parameters": parameter_rows(PIPELINES[n])} for n in names], output)
        return
    for n in names:
        say(f"{n}: {PIPELINES[n].description}")
        render(parameter_rows(PIPELINES[n]), output)


def compile_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the YAML.")] = Path(
        "compiled"
    ),
    image: Annotated[
        str | None,
        typer.Option(help="The image to compile against, e.g. REGISTRY/kfp-serve:TAG "
                     "(default: KFP_SERVE_IMAGE, else the default name)."),
    ] = None,
) -> None:
    """Compile every pipeline and component to KFP IR YAML (and the palette files and the
    ClusterServingRuntime)."""
    from kfp_serve.build import build_all

    try:
        written = build_all(out_dir, image=image)
    except RuntimeError as e:
        raise CliError(str(e), "run `kfp-serve compile --image NAME` on its own") from e
    for path in written:
        say(str(path))


def upload_command(
    host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://localhost:8080.")],
    pipeline: Annotated[str, typer.Option(help="Pipeline name.")] = "sklearn-transformer",
    namespace: NamespaceOpt = None,
    version: Annotated[
        str | None, typer.Option(help="Version name (default: pipeline name + UTC time).")
    ] = None,
) -> None:
    """Upload a pipeline to a KFP cluster; uploading again adds a new pipeline version."""
    from kfp_serve.pipelines.upload import upload_pipeline

    check_pipeline(pipeline)
    result = upload_pipeline(pipeline, host=host, namespace=namespace, version=version)
    say(f"uploaded {result['name']!r} version {result['version']!r} (id {result['id']})")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("run", cls=RunCommand)(fails_cleanly(run_command))
    app.command("pipelines")(fails_cleanly(pipelines_command))
    app.command("compile")(fails_cleanly(compile_command))
    app.command("upload")(fails_cleanly(upload_command))
