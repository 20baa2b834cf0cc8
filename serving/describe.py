"""What an endpoint serves now: its revisions, their models and traffic shares, its config.

Pure functions over an :class:`EndpointStatus`. The local backend reports every revision with
its model; a cluster reports revisions and traffic in the InferenceService's KServe status,
where only the latest revision's model is known (the labels describe the spec applied last).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from kfp_serve.serving import constants
from kfp_serve.serving.backends.base import EndpointStatus, RevisionStatus
from kfp_serve.serving.backends.traffic import rollout_state
from kfp_serve.serving.errors import ServingError

logger = logging.getLogger(__name__)

#: Rollout events ``describe`` shows (the newest).
RECENT_EVENTS = 10

_MODEL_LABELS = (
    ("id", constants.LABEL_MODEL_ID),
    ("name", constants.LABEL_MODEL_NAME),
    ("version", constants.LABEL_MODEL_VERSION),
    ("alias", constants.LABEL_MODEL_ALIAS),
)


def revisions(status: EndpointStatus) -> list[RevisionStatus]:
    """The endpoint's revisions, latest first, each with its share of requests."""
    if status.revisions:
        return status.revisions
    manifest = status.manifest or {}
    meta = manifest.get("metadata") or {}
    labels = meta.get("labels") or {}
    model = {key: str(labels[label]) for key, label in _MODEL_LABELS if label in labels}
    transformer = labels.get(constants.LABEL_TRANSFORMER_ID)
    state = rollout_state(manifest)
    if not state.latest_created:
        # Not reconciled yet (or a backend without revisions): the applied spec is all there is.
        return [
            RevisionStatus(
                name=meta.get("name") or status.name,
                percent=100 if status.ready else 0,
                ready=status.ready,
                latest=True,
                stable=True,
                created=meta.get("creationTimestamp"),
                model=model,
                transformer_id=transformer,
            )
        ]
    names = [state.latest_created, *(n for n in state.traffic if n != state.latest_created)]
    return [
        RevisionStatus(
            name=name,
            percent=state.percent(name),
            # An older revision that still gets traffic was Ready when it rolled out.
            ready=name == state.latest_ready or name != state.latest_created,
            latest=name == state.latest_created,
            stable=name == state.latest_rolled_out,
            created=meta.get("creationTimestamp") if name == state.latest_created else None,
            model=model if name == state.latest_created else {},
            transformer_id=transformer if name == state.latest_created else None,
        )
        for name in names
    ]


def traffic_summary(revs: list[RevisionStatus]) -> str:
    """``iris 2.0.0 (20 %) / 1.0.0 (80 %)``: each revision's model and share, latest first."""
    parts = []
    shown_name = None
    for rev in revs:
        name = rev.model.get("name")
        version = rev.model.get("version")
        if name and version:
            label = version if name == shown_name else f"{name} {version}"
            shown_name = name
        elif rev.model.get("id"):
            label = f"model {rev.model['id']}"
        else:
            label = rev.name
        parts.append(f"{label} ({rev.percent} %)")
    return " / ".join(parts)


def serve_config(status: EndpointStatus) -> dict[str, Any]:
    """The ServeConfig the latest revision was applied with (empty when none was recorded)."""
    annotations = ((status.manifest or {}).get("metadata") or {}).get("annotations") or {}
    text = annotations.get(constants.ANNOTATION_SERVE_CONFIG)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text}
    return value if isinstance(value, dict) else {"value": value}


def recent_events(backend: Any, status: EndpointStatus) -> list[dict[str, Any]]:
    """The endpoint's recent rollout events: the ones ``status`` carries (a local registry
    keeps them), else those a backend reads on request (``events()``: a cluster's Events, not
    fetched by every ``get``, which traffic moves poll). A refusal to read them is logged:
    the rest of the description still answers."""
    read = getattr(backend, "events", None)
    if status.events or not callable(read):
        return status.events
    try:
        return read(status.name, status.namespace, limit=RECENT_EVENTS)
    except ServingError as e:
        logger.warning("endpoint %r: events not shown: %s", status.name, e)
        return []


def describe(
    status: EndpointStatus,
    revs: list[RevisionStatus] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything a person asks about a served endpoint, as plain JSON-ready data.

    Args:
        revs: Its revisions, when the caller knows more of them than ``status`` says (see
            ``kfp_serve.serving.delivery.known_revisions``).
        events: Its recent events, when the backend reports them apart from ``status``
            (see :func:`recent_events`).
    """
    revs = revs if revs is not None else revisions(status)
    events = events if events is not None else status.events
    return {
        "name": status.name,
        "namespace": status.namespace,
        "backend": status.backend,
        "ready": status.ready,
        "reason": status.reason,
        "message": status.message,
        "url": status.url,
        "urls": dict(status.components),
        "traffic": traffic_summary(revs),
        "revisions": [asdict(r) for r in revs],
        "serve_config": serve_config(status),
        "events": list(events[-RECENT_EVENTS:]),
        # A multi-model endpoint's hosted models (TrainedModels), with version and readiness.
        "models": [{**asdict(m), "version": m.version} for m in status.models],
    }


__all__ = ["describe", "recent_events", "revisions", "serve_config", "traffic_summary"]
