"""Deployments in MLMD as time intervals: which model served an endpoint, at what share of its
traffic, from when to when.

Each ``kfp_serve.Deploy`` execution is one interval: an endpoint served a model (and
transformer) with ``traffic_percent`` % of its requests from the execution's create time until
``end_time`` (empty while it still serves), with INPUT events on the served artifacts. When the
traffic of an endpoint changes (a new model, a canary share, promote, rollback, stop),
:func:`record_traffic` ends every open interval that no longer holds and opens one for each new
share, in one MLMD transaction (``put_lineage_subgraph``), under the store's write lock: lineage
never shows a half-applied change, and a stopped endpoint is no longer claimed to serve.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kfp_serve.artifacts.metadata import MetadataStore, current_run, metadata_store
from kfp_serve.artifacts.mlmd import DEPLOY_EXECUTION, get_value, set_value
from kfp_serve.artifacts.names import validate_name
from kfp_serve.artifacts.records import _artifact, to_record

#: ``end_reason`` values.
STOPPED = "stopped"
REPLACED = "replaced"
TRAFFIC_CHANGED = "traffic changed"
PROMOTED = "promoted"
ROLLED_BACK = "rolled back"
#: The endpoint's processes died (a crash, kill -9) while it was recorded as serving.
EXITED = "process exited"
#: Custom property of an interval that ended with :data:`EXITED`: the last time its processes
#: were known to run (their logs' last write), as ISO time. A crash is found only when someone
#: looks, so ``end_time`` (when it was found dead) is later than the real end.
LAST_SEEN = "last_seen"


@dataclass(frozen=True)
class Share:
    """A model (and transformer) serving ``percent`` % of an endpoint's requests.

    ``model_id`` None: the backend reports the revision but not its model (a cluster knows the
    latest revision's labels only); it is the model of the endpoint's open interval that no
    other share names, if there is exactly one.
    """

    model_id: int | None
    percent: int
    transformer_id: int | None = None
    revision: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _open_intervals(store: MetadataStore, name: str, namespace: str) -> list[Any]:
    # Safe to embed: endpoint names and namespaces are DNS-1123 labels (validated first).
    query = f"type = '{DEPLOY_EXECUTION}' AND properties.endpoint.string_value = '{name}'"
    options = store._list_options(filter_query=query)  # type: ignore[attr-defined]
    executions = store.call("get_executions", list_options=options)  # type: ignore[attr-defined]
    return [
        x
        for x in executions
        if (get_value(x.properties, "namespace") or "") == namespace
        and not get_value(x.properties, "end_time")
    ]


def open_deployments(
    name: str, namespace: str | None, *, store: MetadataStore | None = None
) -> list[Share]:
    """What MLMD says endpoint ``name`` serves now: its open intervals, as shares."""
    return list(open_intervals(name, namespace, store=store).values())


def open_intervals(
    name: str, namespace: str | None, *, store: MetadataStore | None = None
) -> dict[int, Share]:
    """Endpoint ``name``'s open intervals: Deploy execution id -> its share."""
    validate_name(name, "endpoint name")
    namespace = validate_name(namespace, "namespace") if namespace else ""
    store = store if store is not None else metadata_store()
    with store.read():
        found = _open_intervals(store, name, namespace)
    shares = {}
    for x in found:
        model_id, transformer_id, percent = _interval_key(x)
        shares[x.id] = Share(
            model_id, percent, transformer_id or None, get_value(x.properties, "revision")
        )
    return shares


def _key(model_id: int | None, transformer_id: int | None, percent: int) -> tuple:
    return (model_id, transformer_id or 0, percent)


def _interval_key(x: Any) -> tuple:
    p = x.properties
    # An interval written before shares were recorded served all traffic.
    percent = get_value(p, "traffic_percent", 100) if "traffic_percent" in p else 100
    return _key(get_value(p, "model_id"), get_value(p, "transformer_id") or 0, percent)


def record_traffic(
    name: str,
    namespace: str | None,
    shares: list[Share],
    url: str | None = None,
    *,
    reason: str = TRAFFIC_CHANGED,
    store: MetadataStore | None = None,
) -> list[int]:
    """Make endpoint ``name``'s open deployment intervals match ``shares``, atomically.

    An open interval whose model, transformer and share are all still in ``shares`` stays
    open; every other one ends now with ``reason``; each remaining share with a percent above 0
    opens a new interval. ``shares=[]`` ends them all (the endpoint was stopped).

    Returns:
        The ids of the Deploy executions open afterwards, in the order of ``shares``.
    """
    validate_name(name, "endpoint name")
    namespace = validate_name(namespace, "namespace") if namespace else ""
    store = store if store is not None else metadata_store()
    pb = store.pb
    run = current_run()
    with store.write():
        open_now = _open_intervals(store, name, namespace)
        known = {s.model_id for s in shares if s.model_id is not None}
        orphans = {_interval_key(x)[0] for x in open_now} - known
        resolved = []
        for share in shares:
            if share.model_id is None:
                if len(orphans) != 1:
                    continue  # a model nobody can name: nothing true to record
                share = Share(next(iter(orphans)), share.percent, share.transformer_id,
                              share.revision)
                if share.transformer_id is None:
                    share = _with_open_transformer(share, open_now)
            resolved.append(share)
        keep: dict[tuple, Any] = {}
        for x in open_now:
            keep.setdefault(_interval_key(x), x)
        executions: list[Any] = []
        served: list[Any] = []
        edges: list[tuple[int, int, Any]] = []
        result: list[int | None] = []
        stamp = _now()
        kept_ids = set()
        for share in resolved:
            existing = keep.pop(_key(share.model_id, share.transformer_id, share.percent), None)
            if existing is not None:
                kept_ids.add(existing.id)
                result.append(existing.id)
                continue
            if share.percent <= 0 or share.model_id is None:
                continue
            execution = pb.Execution(
                type_id=store.type_id(DEPLOY_EXECUTION),
                name=f"serve-{uuid.uuid4().hex}",
                last_known_state=pb.Execution.RUNNING,
            )
            props = {
                "step": "serve",
                "run_id": run.run_id,
                "endpoint": name,
                "namespace": namespace,
                "url": url or "",
                "model_id": share.model_id,
                "transformer_id": share.transformer_id or 0,
                "traffic_percent": share.percent,
                "revision": share.revision,
                "end_time": "",
            }
            for k, v in props.items():
                set_value(execution.properties[k], v)
            index = len(executions)
            executions.append(execution)
            result.append(None)
            for artifact_id in [share.model_id, share.transformer_id]:
                if artifact_id:
                    artifact = _artifact(store, artifact_id)
                    to_record(store, artifact)  # a kfp-serve model or transformer
                    edges.append((index, len(served), pb.Event(type=pb.Event.INPUT)))
                    served.append(artifact)
        for x in open_now:
            if x.id in kept_ids:
                continue
            set_value(x.properties["end_time"], stamp)
            set_value(x.properties["end_reason"], reason)
            x.last_known_state = pb.Execution.COMPLETE
            executions.append(x)
        if not executions:
            return [i for i in result if i is not None]
        contexts = store.run_contexts(run)
        new_ids, _, _ = store.call(  # type: ignore[attr-defined]
            "put_lineage_subgraph",
            executions,
            store.full_artifacts(served),  # type: ignore[attr-defined]
            contexts,
            edges,
            reuse_context_if_already_exist=True,
        )
    it = iter(new_ids)
    return [i if i is not None else next(it) for i in result]


def _with_open_transformer(share: Share, open_now: list[Any]) -> Share:
    for x in open_now:
        if get_value(x.properties, "model_id") == share.model_id:
            transformer = get_value(x.properties, "transformer_id") or None
            return Share(share.model_id, share.percent, transformer, share.revision)
    return share


def end_intervals(
    execution_ids: list[int],
    reason: str,
    *,
    last_seen: str | None = None,
    store: MetadataStore | None = None,
) -> list[int]:
    """End these open Deploy intervals now with ``reason`` (the others stay as they are).

    For intervals whose endpoint stopped serving without a traffic change that
    :func:`record_traffic` could see (its processes died): ``last_seen`` is kept with them.

    Returns:
        The ids of the intervals this call ended (one already ended, or not a Deploy
        execution, is left alone: two readers may find the same dead endpoint).
    """
    if not execution_ids:
        return []
    store = store if store is not None else metadata_store()
    pb = store.pb
    stamp = _now()
    with store.write():
        ending = [
            x
            for x in store.get_executions_by_id(execution_ids)
            if x.type == DEPLOY_EXECUTION and not get_value(x.properties, "end_time")
        ]
        for x in ending:
            set_value(x.properties["end_time"], stamp)
            set_value(x.properties["end_reason"], reason)
            if last_seen:
                # It ran when the interval opened (the backend saw it Ready), whatever its log
                # says.
                opened = datetime.fromtimestamp(x.create_time_since_epoch / 1000, UTC)
                seen = max(datetime.fromisoformat(last_seen), opened)
                set_value(x.custom_properties[LAST_SEEN], seen.isoformat(timespec="seconds"))
            x.last_known_state = pb.Execution.COMPLETE
        if ending:
            store.call("put_executions", ending)  # type: ignore[attr-defined]
    return [x.id for x in ending]


def record_deployment(
    name: str,
    namespace: str | None,
    model_id: int,
    transformer_id: int | None = None,
    url: str | None = None,
    *,
    store: MetadataStore | None = None,
) -> int:
    """Record that endpoint ``name`` serves ``model_id`` (and ``transformer_id``) with all of
    its traffic; whatever it served before ends now.

    Returns:
        The id of the Deploy execution, which has INPUT events on the served artifacts.
    """
    [execution_id] = record_traffic(
        name, namespace, [Share(model_id, 100, transformer_id)], url, reason=REPLACED, store=store
    )
    return execution_id


def end_deployments(
    name: str, namespace: str | None, *, reason: str = STOPPED, store: MetadataStore | None = None
) -> None:
    """Endpoint ``name`` serves nothing any more: end its open intervals."""
    record_traffic(name, namespace, [], reason=reason, store=store)


__all__ = [
    "EXITED",
    "LAST_SEEN",
    "PROMOTED",
    "REPLACED",
    "ROLLED_BACK",
    "STOPPED",
    "TRAFFIC_CHANGED",
    "Share",
    "end_deployments",
    "end_intervals",
    "open_deployments",
    "open_intervals",
    "record_deployment",
    "record_traffic",
]
