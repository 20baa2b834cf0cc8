"""Rollout events of an InferenceService as core/v1 Events, where a Kubernetes user looks for
them (``kubectl describe inferenceservice``, ``kubectl get events``).

The Kubernetes backend records what it does to an InferenceService — serve, rollout, traffic
move, promote, rollback — as an Event on it (``involvedObject`` the InferenceService, with its
uid; ``reportingComponent`` kfp-serve), next to the Events KServe's controller records there
(InferenceServiceReady, InferenceServiceNotReady). :func:`recent` reads them all back, newest
last, in the shape the local registry's events have (``time``, ``action``, ``message``), so
``describe`` reads the same on every backend.

Pure functions over the ``kubernetes`` client: the backend passes its ``CoreV1Api`` and its
retrying call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kfp_serve.serving import constants
from kfp_serve.serving.backends.traffic import CANARY_FIELD, RolloutState

#: Who reports kfp-serve's own Events (``source.component`` and ``reportingComponent``).
COMPONENT = "kfp-serve"
#: Event reason per action: Kubernetes reasons are CamelCase, the action stays as locally.
REASONS = {
    "serve": "Serve",
    "rollout": "Rollout",
    "traffic": "TrafficMoved",
    "promote": "Promoted",
    "rollback": "RolledBack",
}

Call = Callable[..., Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(obj: dict[str, Any], action: str, message: str) -> dict[str, Any]:
    """The core/v1 Event recording ``action`` on InferenceService ``obj`` (as stored: it has
    the uid and resourceVersion the Event points at)."""
    meta = obj["metadata"]
    stamp = _now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go's naming: unique per object and moment, so two writers never collide.
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": REASONS.get(action, action.capitalize()),
        "action": action,
        "message": message,
        "type": "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def record(core: Any, call: Call, obj: dict[str, Any], action: str, message: str) -> None:
    """Create the Event of ``action`` on ``obj`` (``call`` retries and raises ApiException)."""
    body = event_body(obj, action, message)
    call(f"recording event {body['reason']}", core.create_namespaced_event,
         body["metadata"]["namespace"], body)


def selector(obj: dict[str, Any]) -> str:
    """The field selector of ``obj``'s Events: by kind, name and uid, like ``kubectl
    describe`` (an earlier InferenceService of the same name has another uid)."""
    meta = obj["metadata"]
    terms = [f"involvedObject.kind={obj.get('kind')}", f"involvedObject.name={meta['name']}"]
    if meta.get("uid"):
        terms.append(f"involvedObject.uid={meta['uid']}")
    return ",".join(terms)


def recent(core: Any, call: Call, obj: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` Events of ``obj``, oldest first, as ``{"time", "action",
    "message", "reason", "type", "source", "count"}``."""
    meta = obj["metadata"]
    found = call(
        f"listing events of InferenceService {meta['name']!r}",
        core.list_namespaced_event,
        meta["namespace"],
        field_selector=selector(obj),
        # The API's own JSON: timestamps as the server wrote them, no model round trip.
        _preload_content=False,
    )
    items = json.loads(found.data).get("items", [])
    # Oldest first; the name (object + nanoseconds) orders Events of the same second.
    items.sort(key=lambda e: (_entry(e)["time"], (e.get("metadata") or {}).get("name", "")))
    return [_entry(e) for e in items][-limit:]


def applied(obj: dict[str, Any]) -> tuple[str, str]:
    """(action, message) of an apply that stored ``obj``: ``rollout`` when it sets a canary
    share, else ``serve``; the message names the generation, model and share."""
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    model = " ".join(
        labels[k] for k in (constants.LABEL_MODEL_NAME, constants.LABEL_MODEL_VERSION)
        if labels.get(k)
    )
    if labels.get(constants.LABEL_MODEL_ID):
        model = f"{model} (id {labels[constants.LABEL_MODEL_ID]})".strip()
    canary = ((obj.get("spec") or {}).get("predictor") or {}).get(CANARY_FIELD)
    what = f"model {model}" if model else "the predictor"
    if canary is None:
        return "serve", f"applied generation {meta.get('generation', 1)}: {what}"
    return "rollout", (
        f"applied generation {meta.get('generation', 1)}: {what} as the latest revision "
        f"with {canary} % of requests"
    )


def moved(action: str, state: RolloutState) -> str:
    """The message of a traffic move that settled in ``state``."""
    split = ", ".join(f"{name} {percent} %" for name, percent in state.traffic.items())
    return f"{action}: traffic now {split or 'not reported'}"


def _entry(event: dict[str, Any]) -> dict[str, Any]:
    source = event.get("reportingComponent") or (event.get("source") or {}).get("component")
    when = event.get("lastTimestamp") or event.get("eventTime") or event.get(
        "firstTimestamp") or (event.get("metadata") or {}).get("creationTimestamp") or ""
    return {
        "time": when,
        "action": event.get("action") or event.get("reason") or "",
        "message": event.get("message") or "",
        "reason": event.get("reason") or "",
        "type": event.get("type") or "",
        "source": source or "",
        "count": event.get("count") or 1,
    }


__all__ = [
    "COMPONENT",
    "REASONS",
    "applied",
    "event_body",
    "moved",
    "recent",
    "record",
    "selector",
]
