"""``describe``, ``rollout``, ``traffic``, ``promote`` and ``rollback``: what an endpoint serves
and moving its traffic between revisions (KServe's canary semantics on every backend)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kfp_serve.cli.errors import fails_cleanly
from kfp_serve.cli.ui import NamespaceOpt, Output, OutputOpt, dump, model_ref, render, say

TimeoutOpt = Annotated[float, typer.Option(help="Seconds traffic gets to move.")]


def describe(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    namespace: NamespaceOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """What an endpoint serves: URLs, revisions with model, traffic and state, config, events."""
    from kfp_serve.cli.endpoint_commands import check_name
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.delivery import known_revisions
    from kfp_serve.serving.describe import describe as describe_status
    from kfp_serve.serving.describe import recent_events

    backend = get_backend()
    status = backend.get(check_name(name), namespace)
    info = describe_status(status, known_revisions(status), recent_events(backend, status))
    if output is not Output.table:
        dump(info, output)
        return
    show_description(info)


def show_description(info: dict[str, Any]) -> None:
    """The description as a person reads it: a header, the revisions, config and events."""
    where = f"{info['backend']}" + (f", namespace {info['namespace']}" if info["namespace"] else "")
    state = "ready" if info["ready"] else f"not ready ({info['reason'] or '?'})"
    say(f"endpoint {info['name']} ({where}): {state}")
    if info["message"]:
        say(f"  {info['message']}")
    say(f"url: {info['url'] or '-'}")
    for role, url in info["urls"].items():
        say(f"  {role}: {url}")
    say(f"traffic: {info['traffic']}")
    render([revision_row(r) for r in info["revisions"]], Output.table, title="revisions")
    if info.get("models"):
        from kfp_serve.cli.multi_commands import hosted_rows

        render(hosted_rows(info["models"]), Output.table, title="models")
    say("serve config:")
    if info["serve_config"]:
        import yaml

        text = yaml.safe_dump(info["serve_config"], sort_keys=False, default_flow_style=False)
        for line in text.splitlines():
            say(f"  {line}")
    else:
        say("  (none recorded)")
    if info["events"]:
        rows = [{"time": e.get("time", ""), "action": e.get("action", ""),
                 "what": e.get("message", "")} for e in info["events"]]
        render(rows, Output.table, title="recent events")


def revision_row(rev: dict[str, Any]) -> dict[str, Any]:
    model = rev.get("model") or {}
    role = "latest" if rev["latest"] else ""
    if rev["stable"]:
        role = f"{role}, stable" if role else "stable"
    return {
        "revision": rev["name"], "role": role, "model": model.get("name", ""),
        "version": model.get("version", ""), "model id": model.get("id", ""),
        "alias": model.get("alias", ""), "transformer id": rev.get("transformer_id") or "",
        "traffic": f"{rev['percent']} %", "ready": "yes" if rev["ready"] else "no",
        "started": rev.get("created") or "",
    }


def rollout(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    model: Annotated[str, typer.Argument(help="Model: MLMD id, NAME (latest), NAME:VERSION or "
                                         "NAME@ALIAS.")],
    canary: Annotated[int | None, typer.Option(
        help="Percent of requests for the new revision (the stable one keeps the rest); with "
        "--gate, overrides the gate's canary.", min=0, max=100)] = None,
    gate: Annotated[str | None, typer.Option(
        help="Gate file (YAML/JSON): offline thresholds, canary, live window, alias. The "
        "candidate is promoted (alias moved) or rolled back automatically; exit code 1 when "
        "it is not promoted.")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="With --gate: the training data file (CSV/Parquet); its held-out split is the "
        "offline gate's data.")] = None,
    dataset_name: Annotated[str, typer.Option(
        help="With --gate and no --dataset: the built-in dataset trained on.")] = "iris",
    target_column: Annotated[str, typer.Option(help="With --dataset: the label column.")]
    = "target",
    test_size: Annotated[float, typer.Option(help="With --gate: the training's test_size.")]
    = 0.2,
    random_state: Annotated[int, typer.Option(
        help="With --gate: the training's random_state (the same rows are held out).")] = 42,
    champion: Annotated[str | None, typer.Option(
        help="With --gate: the model to compare with (default: the gate's alias, else what "
        "the endpoint serves).")] = None,
    replay: Annotated[bool, typer.Option(
        help="With --gate: send the held-out rows to the endpoint during the live window "
        "(when no clients call it).")] = False,
    transformer: Annotated[
        str | None, typer.Option("--transformer", help="Transformer: id, NAME or NAME:VERSION.")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="ServeConfig as JSON or @file.json.")
    ] = None,
    namespace: NamespaceOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds the new revision gets to be Ready.")]
    = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Serve a candidate model on an endpoint as a canary with a share of its requests; with
    --gate, a gated rollout that promotes or rolls back by itself."""
    from kfp_serve.cli.endpoint_commands import check_name, parse_json_arg
    from kfp_serve.errors import InputError
    from kfp_serve.serving import delivery

    serve_config = parse_json_arg(config, "--config") if config else None
    if gate is not None:
        if transformer:
            raise InputError("--gate rolls out a model alone: drop --transformer")
        gated_rollout(name, model_ref(model), gate, canary, dataset, dataset_name, target_column,
                      test_size, random_state, champion, replay, serve_config, namespace,
                      timeout, output)
        return
    if canary is None:
        raise InputError("rollout needs --canary N (percent for the new revision) or --gate "
                         "FILE (a gated rollout)")
    endpoint = delivery.rollout(
        check_name(name), model_ref(model), canary,
        transformer=model_ref(transformer) if transformer else None,
        serve_config=serve_config, namespace=namespace, timeout=timeout,
    )
    say(f"endpoint {endpoint.name!r} at {endpoint.url}: {traffic_of(endpoint.name, namespace)}")


def gated_rollout(
    name: str, model: int | str, gate: str, canary: int | None, dataset: str | None,
    dataset_name: str, target_column: str, test_size: float, random_state: int,
    champion: str | None, replay: bool, serve_config: Any, namespace: str | None,
    timeout: float, output: Output,
) -> None:
    """``rollout --gate``: run it, print the verdict report, exit 1 unless promoted."""
    import dataclasses
    import json
    from pathlib import Path

    from kfp_serve.cli.endpoint_commands import check_name
    from kfp_serve.components.ops import rollout as run_gated
    from kfp_serve.serving.gated_rollout import load_gate, report_json

    policy = load_gate(Path(gate))  # a bad gate fails before anything else
    if canary is not None:
        policy = dataclasses.replace(policy, canary=canary)
    report = run_gated(
        model, check_name(name), policy, dataset_path=dataset or "", dataset_name=dataset_name,
        target_column=target_column, test_size=test_size, random_state=random_state,
        champion=champion or "", serve_config=serve_config, namespace=namespace or "",
        replay=replay, timeout=timeout,
    )
    if output is Output.table:
        typer.echo(report.to_markdown())
    else:
        dump(json.loads(report_json(report)), output)
    if not report.promoted:
        raise typer.Exit(code=1)


def traffic(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    percent: Annotated[int, typer.Argument(help="Percent for the latest revision (0-100).",
                                           min=0, max=100)],
    namespace: NamespaceOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Send PERCENT of an endpoint's requests to its latest revision, the rest to the stable."""
    from kfp_serve.cli.endpoint_commands import check_name
    from kfp_serve.serving import delivery

    delivery.set_traffic(check_name(name), percent, namespace, timeout=timeout)
    say(f"{name}: {traffic_of(name, namespace)}")


def promote(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    namespace: NamespaceOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Let an endpoint's canary (its latest revision) take all traffic."""
    from kfp_serve.cli.endpoint_commands import check_name
    from kfp_serve.serving import delivery

    delivery.promote(check_name(name), namespace, timeout=timeout)
    say(f"promoted {name}: {traffic_of(name, namespace)}")


def rollback(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    namespace: NamespaceOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Send all of an endpoint's traffic back to its stable revision."""
    from kfp_serve.cli.endpoint_commands import check_name
    from kfp_serve.serving import delivery

    delivery.rollback(check_name(name), namespace, timeout=timeout)
    say(f"rolled back {name}: {traffic_of(name, namespace)}")


def traffic_of(name: str, namespace: str | None) -> str:
    """``iris 2.0.0 (20 %) / 1.0.0 (80 %)`` for endpoint ``name`` now."""
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.delivery import known_revisions
    from kfp_serve.serving.describe import traffic_summary

    return traffic_summary(known_revisions(get_backend().get(name, namespace)))


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    for command in (describe, rollout, traffic, promote, rollback):
        app.command(command.__name__)(fails_cleanly(command))
