"""``serve``, ``predict``, ``explain``, ``endpoints``, ``stop``, ``logs`` and ``pool``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kfp_serve.cli.errors import CliError, fails_cleanly
from kfp_serve.cli.ui import NamespaceOpt, Output, OutputOpt, dump, model_ref, render, say

#: Server roles whose logs ``kfp-serve logs --component`` shows.
COMPONENTS = ("predictor", "transformer", "router")
#: Seconds between two looks at a log file with ``logs --follow``.
FOLLOW_INTERVAL = 0.5


def parse_json_arg(value: str, option: str) -> Any:
    """JSON given inline, or ``@path`` to read it from a file."""
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise CliError(f"{option}: file {str(path)!r} not found",
                           f"pass {option} @path/to/file.json or inline JSON")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{option}: not valid JSON ({e})",
                       f"pass JSON inline or {option} @file.json") from e


def check_name(name: str) -> str:
    from kfp_serve.artifacts.names import validate_name

    return validate_name(name, "NAME")


def with_proba(config: dict[str, Any] | None) -> dict[str, Any]:
    """``config`` with ``PREDICT_PROBA=true`` in the predictor's environment."""
    from kfp_serve.serving.constants import PREDICT_PROBA_ENV

    config = dict(config or {})
    predictor = dict(config.get("predictor") or {})
    container = dict(predictor.get("container") or {})
    env = [e for e in container.get("env") or [] if dict(e).get("name") != PREDICT_PROBA_ENV]
    container["env"] = [*env, {"name": PREDICT_PROBA_ENV, "value": "true"}]
    predictor["container"] = container
    config["predictor"] = predictor
    return config


def serve(
    model_ids: Annotated[
        list[str], typer.Argument(metavar="MODEL...", help="MLMD id of the Model artifact, or "
                                  "name[:version|@alias]; several with --multi.")
    ],
    multi: Annotated[
        str | None, typer.Option("--multi", metavar="NAME", help="Serve every MODEL behind one "
                                 "multi-model endpoint NAME (same framework).")
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="With --multi: memory each model declares (default 64Mi), "
                                 "counted against the endpoint's limits.memory.")
    ] = None,
    transformer: Annotated[
        str | None, typer.Option("--transformer", help="Transformer: MLMD id, NAME or "
                                 "NAME:VERSION.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Endpoint name (default: model name).")] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="ServeConfig as JSON or @file.json.")
    ] = None,
    proba: Annotated[
        bool, typer.Option("--proba", help="Answer with class probabilities (predict_proba) "
                           "by default (PREDICT_PROBA=true); `predict --proba` asks per request.")
    ] = False,
    namespace: NamespaceOpt = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the manifest (YAML; --output json), apply nothing.")
    ] = False,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="Format of --dry-run: yaml or json.")
    ] = Output.yaml,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Ready.")] = 300.0,
) -> None:
    """Serve a model (and transformer) from ML Metadata as an InferenceService."""
    from kfp_serve import serving
    from kfp_serve.cli.multi_commands import serve_multi

    serve_config = parse_json_arg(config, "--config") if config else None
    if proba:
        serve_config = with_proba(serve_config)
    if multi is not None:
        if transformer is not None or name is not None:
            raise CliError("--multi serves models alone under NAME: no --transformer or --name",
                           "`kfp-serve serve --multi NAME MODEL...`")
        serve_multi(check_name(multi), model_ids, serve_config=serve_config, memory=memory,
                    namespace=namespace, timeout=timeout, dry_run=dry_run, output=output)
        return
    if len(model_ids) != 1:
        raise CliError(f"serve takes one MODEL, got {len(model_ids)}",
                       "serve several behind one endpoint with `kfp-serve serve --multi NAME "
                       "MODEL...`")
    result = serving.serve(
        model_ref(model_ids[0]), model_ref(transformer) if transformer else None,
        serve_config=serve_config, name=name, namespace=namespace, dry_run=dry_run,
        timeout=timeout,
    )
    if dry_run:
        dump(result, Output.json if output is Output.json else Output.yaml)
    else:
        say(f"endpoint {result.name!r} is ready at {result.url}")


def predict(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    data: Annotated[str, typer.Option(help="Rows as JSON (e.g. [[5.1,3.5,1.4,0.2]]) or @file.")],
    proba: Annotated[
        bool, typer.Option("--proba", help="Class probabilities (predict_proba) instead of "
                           "labels, asked per request; an endpoint on a stock KServe runtime "
                           "needs `kfp-serve serve MODEL_ID --proba`.")
    ] = False,
    namespace: NamespaceOpt = None,
    model: Annotated[
        str | None, typer.Option(help="The hosted model to ask, on a multi-model endpoint.")
    ] = None,
) -> None:
    """Send rows to an endpoint and print its answer."""
    from kfp_serve.serving.endpoint import Endpoint

    rows = parse_json_arg(data, "--data")
    endpoint = Endpoint(check_name(name), namespace)
    dump(endpoint.predict(rows, proba=proba, model=model), Output.json)


def explain(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    data: Annotated[str, typer.Option(help="Rows as JSON or @file.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Per-feature attributions for rows, from the served model."""
    from kfp_serve.serving.endpoint import Endpoint

    rows = parse_json_arg(data, "--data")
    dump(Endpoint(check_name(name), namespace).explain(rows), Output.json)


def endpoint_rows(namespace: str | None) -> list[dict[str, Any]]:
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.delivery import known_revisions
    from kfp_serve.serving.describe import traffic_summary

    rows = []
    for status in get_backend().list(namespace):
        revs = known_revisions(status)
        # The ids of what answers requests now: after a rollback, not the idle canary's.
        serving = [r for r in revs if r.percent > 0] or revs[:1]
        rows.append({
            "name": status.name, "url": status.url or "", "health": health(status),
            "traffic": traffic_summary(revs),
            "model id": ", ".join(r.model["id"] for r in serving if r.model.get("id")),
            "transformer id": ", ".join(r.transformer_id for r in serving if r.transformer_id),
            "grpc": status.grpc_address or "",
            "reason": status.message or "",
        })
    return rows


def health(status: Any) -> str:
    """ready, dead (a server process is gone) or the backend's reason."""
    if status.ready:
        return "ready"
    if status.reason == "ProcessExited":
        return "dead"
    return status.reason or "not ready"


def endpoints(namespace: NamespaceOpt = None, output: OutputOpt = Output.table) -> None:
    """List endpoints with their URL, gRPC address, traffic per model version, served model ids
    and health."""

    rows = endpoint_rows(namespace)
    if output is Output.table and not rows:
        say("no endpoints (start one with `kfp-serve serve MODEL_ID` or `kfp-serve run`)")
        return
    render(rows, output)


def stop(
    name: Annotated[str | None, typer.Argument(help="Endpoint name.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every endpoint.")] = False,
    ignore_missing: Annotated[
        bool, typer.Option("--ignore-missing", help="No error when NAME does not exist.")
    ] = False,
    namespace: NamespaceOpt = None,
) -> None:
    """Stop an endpoint and clean up its processes (local) or InferenceService (cluster).

    Stopping the last local endpoint also stops the warm pool of model servers.
    """
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.errors import ServingError

    if all_ == (name is not None):
        raise CliError("give an endpoint NAME or --all, not both or neither",
                       "`kfp-serve stop NAME` or `kfp-serve stop --all`")
    backend = get_backend()
    names = [s.name for s in backend.list(namespace)] if all_ else [check_name(name or "")]
    if not names:
        say("no endpoints: nothing to stop")
    from kfp_serve.serving.delivery import stop as stop_endpoint

    for each in names:
        try:
            stop_endpoint(each, namespace, backend=backend.name)
        except ServingError as e:
            if ignore_missing and not _exists(backend, each, namespace):
                say(f"no endpoint {each!r}: nothing to stop")
                continue
            # The backend's message names where it looked and `kfp-serve endpoints`.
            raise CliError(str(e), "pass --ignore-missing to stop what exists without an "
                           "error") from e
        say(f"stopped {each!r}")


def _exists(backend: Any, name: str, namespace: str | None) -> bool:
    return any(s.name == name for s in backend.list(namespace))


def home() -> str:
    from kfp_serve.artifacts.home import state_dir

    return str(state_dir())


def _stop_pool(*, quiet: bool) -> bool:
    from kfp_serve.serving.runtime import warm_pool

    stopped = warm_pool.stop()
    if not quiet:
        say("stopped the warm pool" if stopped else "no warm pool is running")
    return stopped


def pool_stop() -> None:
    """Stop the warm pool of model servers (running endpoints keep their servers)."""
    _stop_pool(quiet=False)


def log_files(name: str, component: str | None) -> dict[str, Path]:
    """Role -> log file of the latest revision of local endpoint ``name``."""
    from kfp_serve.serving.backends.local.registry import read_record

    record = read_record(check_name(name))
    if record is None:
        raise CliError(f"no local endpoint named {name!r} in KFP_SERVE_HOME={home()!r}",
                       "run `kfp-serve endpoints` to list them")
    latest = record.latest
    files = {"predictor": latest.predictor.log, "router": record.router.log}
    if latest.transformer is not None:
        files["transformer"] = latest.transformer.log
    if component is not None:
        if component not in files:
            raise CliError(f"endpoint {name!r} has no {component}",
                           f"use --component {' or --component '.join(sorted(files))}")
        files = {component: files[component]}
    return {role: Path(path) for role, path in files.items()}



def logs(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    component: Annotated[
        str | None, typer.Option("--component", "-c", help="predictor, transformer or router "
                                 "(default: all of them).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")]
    = False,
    tail: Annotated[int, typer.Option(help="Lines to show from the end of each log.")] = 50,
) -> None:
    """Show the logs of a local endpoint's servers (processes or containers)."""
    if component is not None and component not in COMPONENTS:
        raise CliError(f"--component {component!r} is not one of {', '.join(COMPONENTS)}",
                       "use --component predictor, transformer or router")
    from kfp_serve.serving.backends.local.supervisor import CONTAINER_LOG_PREFIX, log_tail

    files = log_files(name, component)
    prefix = len(files) > 1
    offsets: dict[str, int] = {}
    for role, path in list(files.items()):
        if str(path).startswith(CONTAINER_LOG_PREFIX):
            # A container of the Docker backend: its output is in the engine (`docker logs`).
            for line in log_tail(str(path), tail).splitlines() if tail > 0 else []:
                say(f"[{role}] {line}" if prefix else line)
            del files[role]
            continue
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines()[-tail:] if tail > 0 else []:
            say(f"[{role}] {line}" if prefix else line)
        offsets[role] = len(text.encode())
    while follow:
        time.sleep(FOLLOW_INTERVAL)
        for role, path in files.items():
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offsets[role])
                chunk = f.read()
            offsets[role] += len(chunk)
            for line in chunk.decode(errors="replace").splitlines():
                say(f"[{role}] {line}" if prefix else line)


pool_app = typer.Typer(help="The warm pool of ready-imported model servers (local).",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    for command in (serve, predict, explain, endpoints, stop, logs):
        app.command(command.__name__)(fails_cleanly(command))
    pool_app.command("stop")(fails_cleanly(pool_stop))
    app.add_typer(pool_app, name="pool")
