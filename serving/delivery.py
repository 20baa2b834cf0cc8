"""Progressive delivery from Python: canary a candidate, move traffic, promote, roll back.

Each call picks the backend as ``serve()`` does (``backend=`` or ``KFP_SERVE_BACKEND``, else
local outside a pod) and has KServe's semantics on every backend::

    rollout("iris", "iris:2.0.0", canary=20)   # 2.0.0 gets 20 %, the stable revision 80 %
    set_traffic("iris", 50)                    # half and half
    promote("iris")                            # 2.0.0 takes all traffic, the old one stops
    rollback("iris")                           # or: the stable revision takes all again

Every change is recorded in ML Metadata as deployment intervals (which model served what share
from when to when: ``kfp_serve.artifacts.deployments``); ``stop`` ends them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from kfp_serve.artifacts import deployments
from kfp_serve.serving.backends.traffic import CANARY_FIELD, RolloutState, check_percent
from kfp_serve.serving.config import ServeConfig
from kfp_serve.serving.errors import ServingError

if TYPE_CHECKING:
    from kfp_serve.artifacts import ArtifactRecord
    from kfp_serve.serving.backends.base import (
        EndpointStatus,
        RevisionStatus,
        ServingBackend,
        TrafficBackend,
    )
    from kfp_serve.serving.endpoint import Endpoint

logger = logging.getLogger(__name__)

#: Default seconds a traffic move gets to take effect.
TRAFFIC_TIMEOUT = 120.0


def rollout(
    name: str,
    model: Any,
    canary: int,
    *,
    transformer: Any = None,
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    namespace: str | None = None,
    wait: bool = True,
    timeout: float = 300.0,
    backend: str | None = None,
) -> Endpoint:
    """Serve ``model`` on endpoint ``name`` as a canary that gets ``canary`` % of requests.

    The revision serving now keeps the rest. Then ``set_traffic``, ``promote`` or
    ``rollback``.

    Args:
        name: The endpoint.
        model: What ``serve()`` accepts: an id, ``"iris"``, ``"iris:2.0.0"``, ``"iris@challenger"``.
        canary: Percent of requests for the new revision (0..100; 100 replaces at once).
        transformer, serve_config, namespace, wait, timeout, backend: as for ``serve()``; the
            config's ``predictor.canaryTrafficPercent`` is set to ``canary``.

    Raises:
        ServingError: bad percent, or the candidate did not become Ready (the stable revision
            keeps serving all traffic).
    """
    from kfp_serve.serving.deploy import serve

    cfg = ServeConfig.coerce(serve_config)
    cfg = dataclasses.replace(cfg, predictor={**cfg.predictor, CANARY_FIELD: check_percent(canary)})
    return serve(  # type: ignore[return-value]  # not a dry run: an Endpoint
        model,
        transformer,
        serve_config=cfg,
        name=name,
        namespace=namespace,
        wait=wait,
        timeout=timeout,
        backend=backend,
    )


def stop(name: str, namespace: str | None = None, *, backend: str | None = None) -> None:
    """Stop endpoint ``name`` (its processes, or its InferenceService); lineage no longer
    claims it serves.

    Raises:
        ServingError: there is no such endpoint.
    """
    from kfp_serve.artifacts.deployments import end_deployments
    from kfp_serve.serving.backends.base import DOCKER, LOCAL, get_backend
    from kfp_serve.serving.liveness import reconcile

    chosen = get_backend(backend)
    status = _status_or_none(chosen, name, namespace)
    if chosen.name in (LOCAL, DOCKER):
        # Before the processes are stopped: what died on its own ends as "process exited"
        # (when it was last seen), not as served until this stop.
        reconcile(name)
    chosen.delete(name, namespace)
    _recorded(end_deployments, name, (status.namespace if status else None) or namespace)


def set_traffic(
    name: str,
    percent: int,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Send ``percent`` % of endpoint ``name``'s requests to its latest revision, the rest to
    the stable one (0 is a rollback, 100 makes the latest revision the stable one)."""
    chosen = _traffic_backend(backend)
    state = chosen.set_traffic(name, percent, namespace, timeout=timeout)
    _record_move(chosen, name, namespace, deployments.TRAFFIC_CHANGED)
    return state


def promote(
    name: str,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Let the canary (latest revision) of endpoint ``name`` take all traffic.

    Raises:
        ServingError: the endpoint has no canary (the message says what serves).
    """
    chosen = _traffic_backend(backend)
    state = chosen.promote(name, namespace, timeout=timeout)
    _record_move(chosen, name, namespace, deployments.PROMOTED)
    return state


def rollback(
    name: str,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Send all of endpoint ``name``'s traffic back to its stable revision.

    Raises:
        ServingError: there is no previous revision to roll back to.
    """
    chosen = _traffic_backend(backend)
    state = chosen.rollback(name, namespace, timeout=timeout)
    _record_move(chosen, name, namespace, deployments.ROLLED_BACK)
    return state


def rollout_state(
    name: str, namespace: str | None = None, *, backend: str | None = None
) -> RolloutState:
    """Endpoint ``name``'s revisions and where its traffic goes now."""
    return _traffic_backend(backend).rollout_state(name, namespace)


def _traffic_backend(name: str | None) -> TrafficBackend:
    from kfp_serve.serving.backends.base import TrafficBackend, get_backend

    chosen = get_backend(name)
    if not isinstance(chosen, TrafficBackend):
        raise ServingError(
            f"the {chosen.name!r} serving backend cannot move traffic between revisions; "
            "use the local or kubernetes backend (backend= or KFP_SERVE_BACKEND)"
        )
    return chosen


# -- what serves: before a change, and in MLMD after it ----------------------------------------


def serving_before(
    backend: ServingBackend, name: str, namespace: str | None
) -> list[RevisionStatus]:
    """The revisions endpoint ``name`` has now ([] when there is no such endpoint yet)."""
    from kfp_serve.serving.describe import revisions

    status = _status_or_none(backend, name, namespace)
    return revisions(status) if status is not None else []


def replaced(name: str, before: list[RevisionStatus], model: ArtifactRecord) -> str | None:
    """``iris: 1.0.0 → 2.0.0`` when serving ``model`` on ``name`` replaces (or canaries next
    to) another model; None for a first serve or the same model again."""
    if not before:
        return None
    old = max(before, key=lambda r: (r.percent, r.latest))
    if old.model.get("id") == str(model.id):
        return None
    old_name, old_version = old.model.get("name"), old.model.get("version")
    if not old_version:
        was = f"model {old.model['id']}" if old.model.get("id") else f"revision {old.name}"
    elif old_name and old_name != model.name:
        was = f"{old_name} {old_version}"
    else:
        was = old_version
    now = model.version if was == old_version else f"{model.name} {model.version}"
    return f"{name}: {was} → {now}"


def known_revisions(status: EndpointStatus) -> list[RevisionStatus]:
    """``status``'s revisions, a revision whose model the backend does not report (a cluster's
    stable one: the labels describe the spec applied last) named from MLMD's open deployment
    intervals, when exactly one open interval's model is not named by another revision."""
    from kfp_serve.serving.describe import revisions

    revs = revisions(status)
    unnamed = [r for r in revs if not r.model.get("id")]
    if len(unnamed) != 1:
        return revs
    from kfp_serve.artifacts import get_artifact
    from kfp_serve.artifacts.deployments import open_deployments
    from kfp_serve.artifacts.errors import MetadataError

    try:
        open_now = open_deployments(status.name, status.namespace)
        candidates = {str(s.model_id) for s in open_now} - {r.model.get("id") for r in revs}
        if len(candidates) != 1:
            return revs
        record = get_artifact(int(candidates.pop()))
    except MetadataError as e:
        logger.info("endpoint %r: models of its revisions not looked up: %s", status.name, e)
        return revs
    model = {"id": str(record.id), "name": record.name, "version": record.version}
    return [dataclasses.replace(r, model=model) if r is unnamed[0] else r for r in revs]


def record_shares(
    status: EndpointStatus,
    namespace: str | None,
    reason: str,
    *,
    latest: tuple[int, int | None] | None = None,
) -> None:
    """Record in MLMD which model serves which share of ``status``'s endpoint now.

    Args:
        latest: (model id, transformer id) of the latest revision, when the caller knows
            them better than the manifest's labels (serve() just resolved them).
    """
    from kfp_serve.artifacts.deployments import Share, record_traffic
    from kfp_serve.serving.describe import revisions

    shares = []
    for rev in revisions(status):
        model_id = int(rev.model["id"]) if rev.model.get("id", "").isdigit() else None
        transformer_id = int(rev.transformer_id) if (rev.transformer_id or "").isdigit() else None
        if rev.latest and latest is not None:
            model_id, transformer_id = latest
        shares.append(Share(model_id, rev.percent, transformer_id, rev.name))
    record_traffic(status.name, namespace, shares, status.url, reason=reason)


def _record_move(backend: ServingBackend, name: str, namespace: str | None, reason: str) -> None:
    status = backend.get(name, namespace)
    _recorded(record_shares, status, namespace or status.namespace, reason)


def _recorded(write: Any, *args: Any) -> None:
    """Traffic has moved already: a lineage write that fails is reported, not raised."""
    from kfp_serve.artifacts.errors import MetadataError

    try:
        write(*args)
    except MetadataError as e:
        logger.warning("lineage in ML Metadata not updated: %s", e)


def _status_or_none(
    backend: ServingBackend, name: str, namespace: str | None
) -> EndpointStatus | None:
    try:
        return backend.get(name, namespace)
    except ServingError:
        return None


__all__ = ["promote", "rollback", "rollout", "rollout_state", "set_traffic", "stop"]
