"""Lineage checked against what really runs: a local endpoint whose processes died is not
claimed to serve.

MLMD's deployment intervals (``kfp_serve.artifacts.deployments``) end when kfp-serve moves
traffic or stops an endpoint. A local server that crashes or is killed (``kill -9``) tells
nobody, so its interval would stay open for ever. :func:`reconcile` compares an endpoint's open
intervals with its registry record and the supervisor's pid + start-time check, and ends those
whose processes are gone (``process exited``, with when they were last seen);
:func:`lineage` does that for every local endpoint an artifact's lineage says serves it, then
reads the lineage. ``kfp-serve lineage`` and ``stop`` go through here.

Only local (and Docker) endpoints are judged: their registry is on this machine. An interval of
a name with no record here is left alone: with a shared ML Metadata store it may be another
home's endpoint.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kfp_serve.artifacts import deployments
from kfp_serve.artifacts.errors import MetadataError

if TYPE_CHECKING:
    from kfp_serve.artifacts.metadata import MetadataStore
    from kfp_serve.serving.backends.local.registry import EndpointRecord, ProcessRecord

logger = logging.getLogger(__name__)


def reconcile(name: str, *, store: MetadataStore | None = None) -> list[int]:
    """End the open deployment intervals of local endpoint ``name`` that its processes no
    longer serve: its router, or the servers of the interval's revision, have exited.

    A failure to write ML Metadata is logged, not raised: the caller only wanted to look.

    Returns:
        The ids of the Deploy executions it ended.
    """
    from kfp_serve.serving.backends.local import registry

    record = registry.read_record(name)
    if record is None:
        return []
    try:
        opened = deployments.open_intervals(name, None, store=store)
        ended: list[int] = []
        for execution_id, share in opened.items():
            gone = _gone(record, share)
            if gone:
                ended += deployments.end_intervals(
                    [execution_id], deployments.EXITED, last_seen=_last_seen(gone), store=store
                )
    except MetadataError as e:
        logger.warning("endpoint %r: lineage in ML Metadata not checked: %s", name, e)
        return []
    if ended:
        logger.info("endpoint %r: its processes have exited; lineage no longer says it serves",
                    name)
    return ended


def lineage(artifact_id: int, *, store: MetadataStore | None = None) -> dict[str, Any]:
    """``kfp_serve.artifacts.lineage(artifact_id)``, after the local endpoints it names as
    serving were checked (see :func:`reconcile`)."""
    from kfp_serve import artifacts

    graph = artifacts.lineage(artifact_id, store=store)
    names = sorted({d["endpoint"] for d in graph["deployments"]
                    if d["serving"] and not d["namespace"]})
    ended = [i for name in names for i in reconcile(name, store=store)]
    return artifacts.lineage(artifact_id, store=store) if ended else graph


def _gone(record: EndpointRecord, share: deployments.Share) -> list[ProcessRecord]:
    """The processes that should serve ``share`` and have exited ([] if all run, or if the
    record no longer routes to the share's revision: whoever moved the traffic records that)."""
    from kfp_serve.serving.backends.local import registry

    revisions = {registry.revision_name(record.name, r.revision): r for r in record.revisions}
    rev = revisions.get(share.revision)
    if rev is not None:
        if record.traffic.get(str(rev.revision), 0) <= 0:
            return []
        processes = [record.router, *rev.processes]
    else:
        # Recorded without its revision (a multi-model parent, an old interval): the endpoint
        # serves it while the router and every revision with traffic run.
        processes = [record.router, *(p for r in record.active for p in r.processes)]
    return [p for p in processes if not p.alive()]


def _last_seen(processes: list[ProcessRecord]) -> str | None:
    """The last time any of these exited processes wrote its log (ISO, UTC): the latest moment
    it is known to have run. None when no log is a file (a container's lives in the engine)."""
    times = []
    for p in processes:
        try:
            times.append(os.stat(p.log).st_mtime)
        except OSError:
            continue
    if not times:
        return None
    return datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds")


__all__ = ["lineage", "reconcile"]
