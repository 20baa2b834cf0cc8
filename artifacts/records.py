"""Reading and writing kfp-serve artifacts in MLMD: records, lookup, lineage (deployment
intervals are written by ``kfp_serve.artifacts.deployments``).

An artifact's MLMD name is ``<name>@<version>`` (unique per type), so a lookup by name and
version is one indexed query and the database itself refuses a duplicate. Every write happens
under the store's write lock in one ``put_execution`` call: the artifact, its producing
execution, the INPUT/OUTPUT events and the run/experiment contexts appear together or not at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kfp_serve.artifacts.errors import AlreadyRecordedError, MetadataError
from kfp_serve.artifacts.metadata import MetadataStore, RunInfo, current_run, metadata_store
from kfp_serve.artifacts.mlmd import (
    DEPLOY_EXECUTION,
    EXPERIMENT_TYPE,
    KIND_TYPES,
    MODEL_TYPE,
    RUN_TYPE,
    SNAPSHOT_EXECUTION,
    SNAPSHOT_TYPE,
    SUBMIT_EXECUTION,
    TRANSFORMER_TYPE,
    get_value,
    set_value,
)
from kfp_serve.artifacts.names import validate_name, validate_version

_TYPE_KINDS = {v: k for k, v in KIND_TYPES.items()}


@dataclass(frozen=True)
class ArtifactRecord:
    """A model or transformer as recorded in MLMD.

    Attributes:
        id: The MLMD artifact id (what ``submit_artifact()`` returned).
        kind: "model" or "transformer".
        uri: The local directory it was saved to.
        signature: The input/output signature (see ``kfp_serve.artifacts.layout``).
        snapshot_uri: The latest snapshot linked to it (what ``serve()`` uses), or None.
        digest: That snapshot's digest, or None.
        create_time: When it was recorded (UTC).
        state: The MLMD state ("LIVE" for everything kfp-serve records).
    """

    id: int
    kind: str
    name: str
    version: str
    uri: str
    framework: str
    framework_version: str
    signature: dict[str, Any]
    snapshot_uri: str | None
    digest: str | None
    author: str
    description: str
    tags: dict[str, str]
    create_time: datetime
    state: str = "LIVE"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (create_time as ISO 8601)."""
        d = asdict(self)
        d["create_time"] = self.create_time.isoformat()
        return d


def mlmd_name(name: str, version: str) -> str:
    """The unique MLMD artifact name for name+version ('@' cannot occur in either)."""
    return f"{name}@{version}"


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _json(props: Any, key: str, default: Any) -> Any:
    raw = get_value(props, key)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def to_record(store: MetadataStore, artifact: Any) -> ArtifactRecord:
    kind = _TYPE_KINDS.get(artifact.type)
    if kind is None:
        raise MetadataError(
            f"MLMD artifact {artifact.id} in {store.uri!r} is a {artifact.type!r}, not a "
            "kfp-serve model or transformer"
        )
    p = artifact.properties
    return ArtifactRecord(
        id=artifact.id,
        kind=kind,
        name=get_value(p, "name", ""),
        version=get_value(p, "version", ""),
        uri=artifact.uri,
        framework=get_value(p, "framework", ""),
        framework_version=get_value(p, "framework_version", ""),
        signature=_json(p, "signature", {}),
        snapshot_uri=get_value(p, "snapshot_uri") or None,
        digest=get_value(p, "digest") or None,
        author=get_value(p, "author", ""),
        description=get_value(p, "description", ""),
        tags=_json(p, "tags", {}),
        create_time=_time(artifact.create_time_since_epoch),
        state=store.pb.Artifact.State.Name(artifact.state),
    )


def _store(store: MetadataStore | None) -> MetadataStore:
    return store if store is not None else metadata_store()


def _artifact(store: MetadataStore, artifact_id: int) -> Any:
    if isinstance(artifact_id, bool) or not isinstance(artifact_id, int):
        raise MetadataError(f"artifact id must be an int, got {artifact_id!r}")
    with store.read():
        found = store.get_artifacts_by_id([artifact_id])
    if not found:
        raise MetadataError(
            f"no artifact with id {artifact_id} in {store.uri!r} (ids come from "
            "submit_artifact(); list them with artifacts.list_artifacts())"
        )
    return found[0]


def get_artifact(artifact_id: int, *, store: MetadataStore | None = None) -> ArtifactRecord:
    """The record of a model or transformer by MLMD id.

    Raises:
        MetadataError: no such id, or the id is not a kfp-serve model/transformer.
    """
    store = _store(store)
    return to_record(store, _artifact(store, artifact_id))


def _version_key(version: str) -> tuple:
    """Order versions naturally: 1.10.0 > 1.9.0, and 1.0.0 > 1.0.0-rc1 > 1.0.0-a."""
    parts = re.split(r"[._+-]", version)
    key = []
    for part in parts:
        # (kind, number, text): numeric parts compare as numbers and sort above text parts.
        key.append((1, int(part), "") if part.isdigit() else (0, 0, part))
    # A release ("1.0.0") sorts above its pre-releases ("1.0.0-rc1"): pad with a high marker.
    key.append((2, 0, ""))
    return tuple(key)


def _live(store: MetadataStore, type_name: str, name: str | None = None) -> list[Any]:
    query = f"type = '{type_name}' AND state = LIVE"
    if name is not None:
        # Safe to embed: names are DNS-1123 labels (validated before this point).
        query += f" AND properties.name.string_value = '{name}'"
    with store.read():
        return store.get_artifacts(query)


def find_artifact(
    name: str,
    version: str | None = None,
    *,
    kind: str | None = None,
    missing_ok: bool = False,
    store: MetadataStore | None = None,
) -> ArtifactRecord | None:
    """Find a model or transformer by name, the latest version when ``version`` is None.

    "Latest" is the highest version in natural order (``1.10.0`` > ``1.9.0``; a release above
    its pre-releases), ties broken by the later submission.

    Args:
        name: The artifact name.
        version: An exact version, or None for the latest.
        kind: "model" or "transformer" when a model and a transformer share the name.
        missing_ok: Return None instead of raising when nothing matches.

    Raises:
        MetadataError: nothing found (unless ``missing_ok``), or the name is ambiguous.
    """
    validate_name(name)
    if version is not None:
        validate_version(version)
    store = _store(store)
    kinds = [kind] if kind else list(KIND_TYPES)
    for k in kinds:
        if k not in KIND_TYPES:
            raise MetadataError(f"kind {k!r} is not one of {list(KIND_TYPES)}")
    found = []
    for k in kinds:
        if version is not None:
            with store.read():
                a = store.get_artifact_by_type_and_name(KIND_TYPES[k], mlmd_name(name, version))
            if a is not None:
                found.append(a)
        else:
            found.extend(_live(store, KIND_TYPES[k], name))
    if not found and missing_ok:
        return None
    if not found:
        what = f"{name!r} version {version!r}" if version else repr(name)
        known = sorted({r.name for r in list_artifacts(store=store)})
        raise MetadataError(
            f"no {kind or 'model or transformer'} named {what} in {store.uri!r}; known names: "
            f"{known or 'none (submit one with Model(...).submit_artifact())'}"
        )
    kinds_found = {a.type for a in found}
    if len(kinds_found) > 1:
        raise MetadataError(
            f"both a model and a transformer are named {name!r}; pass kind='model' or "
            "kind='transformer'"
        )
    best = max(found, key=lambda a: (_version_key(get_value(a.properties, "version", "")), a.id))
    return to_record(store, best)


def list_artifacts(
    kind: str | None = None,
    *,
    store: MetadataStore | None = None,
) -> list[ArtifactRecord]:
    """All models and/or transformers, oldest first.

    Args:
        kind: "model", "transformer" or None for both.
    """
    store = _store(store)
    if kind is not None and kind not in KIND_TYPES:
        raise MetadataError(f"kind {kind!r} is not one of {list(KIND_TYPES)} (or None for both)")
    out = []
    for k in [kind] if kind else list(KIND_TYPES):
        arts = _live(store, KIND_TYPES[k])
        out.extend(to_record(store, a) for a in arts)
    return sorted(out, key=lambda r: r.id)


@dataclass
class Submission:
    """What ``record_submission`` writes: one model/transformer artifact and its properties."""

    kind: str
    name: str
    version: str
    properties: dict[str, Any]
    inputs: Sequence[int] = field(default_factory=tuple)


def record_submission(
    sub: Submission,
    place: Callable[[bool], str],
    *,
    allow_overwrite: bool = False,
    on_existing: Callable[[ArtifactRecord], int | None] | None = None,
    run: RunInfo | None = None,
    store: MetadataStore | None = None,
) -> int:
    """Record a new model/transformer version with its lineage; return its MLMD id.

    ``place(replacing)`` runs under the store's write lock after the duplicate check and
    returns the artifact's URI (it moves the saved directory into place).

    Args:
        sub: What to record.
        place: Moves the files into place; returns the URI.
        allow_overwrite: Replace an existing name+version.
        on_existing: Called with the existing record of name+version (under the lock); if it
            returns an id, that id is returned and nothing is written.
        run: The run/experiment to record under (default: ``current_run()``).
        store: The MLMD store.

    Raises:
        MetadataError: name+version exists and ``allow_overwrite`` is False.
    """
    store = _store(store)
    pb = store.pb
    type_name = KIND_TYPES[sub.kind]
    unique = mlmd_name(sub.name, sub.version)
    run = run or current_run()
    with store.write():
        existing = store.get_artifact_by_type_and_name(type_name, unique)
        if existing is not None and on_existing is not None:
            reused = on_existing(to_record(store, existing))
            if reused is not None:
                return reused
        if existing is not None and not allow_overwrite:
            raise MetadataError(
                f"{sub.kind} {sub.name!r} version {sub.version!r} already exists (id "
                f"{existing.id}, {store.uri!r}); released versions are not overwritten. Use a "
                "new version, or submit_artifact(allow_overwrite=True) to replace it"
            )
        uri = place(existing is not None)
        inputs = []
        for input_id in sub.inputs:
            found = store.get_artifacts_by_id([input_id])
            if not found:
                raise MetadataError(f"input artifact id {input_id} does not exist in {store.uri!r}")
            inputs.append(found[0])

        artifact = pb.Artifact(type_id=store.type_id(type_name), name=unique, uri=uri)
        if existing is not None:
            # MLMD names are immutable, so a replaced version is updated in place (same id):
            # new properties, and the snapshot link cleared, since that snapshot holds the old
            # content. Lineage keeps the earlier executions and snapshots.
            artifact.id = existing.id
            artifact.properties["snapshot_uri"].string_value = ""
            artifact.properties["digest"].string_value = ""
        artifact.state = pb.Artifact.LIVE
        for k, v in {"name": sub.name, "version": sub.version, **sub.properties}.items():
            if v is not None:
                set_value(artifact.properties[k], v)
        pairs: list[tuple[Any, Any]] = []
        execution = pb.Execution(type_id=store.type_id(SUBMIT_EXECUTION))
        execution.last_known_state = pb.Execution.COMPLETE
        for k, v in {
            "step": "submit_artifact",
            "run_id": run.run_id,
            "artifact_kind": sub.kind,
        }.items():
            set_value(execution.properties[k], v)
        for a in inputs:
            pairs.append((a, pb.Event(type=pb.Event.INPUT)))
        pairs.append((artifact, pb.Event(type=pb.Event.OUTPUT)))
        try:
            _, artifact_ids, _ = store.put_execution(execution, pairs, store.run_contexts(run))
        except AlreadyRecordedError as e:
            # Another writer recorded the same name+version between the check and the write
            # (writers on other machines share no lock; the store's unique names decide).
            raise MetadataError(
                f"{sub.kind} {sub.name!r} version {sub.version!r} was just recorded by another "
                f"writer ({store.uri!r}); released versions are not overwritten. Use a new "
                "version, or submit_artifact(allow_existing=True) to reuse identical content"
            ) from e
        return artifact_ids[-1]


def link_snapshot(artifact_id: int, snapshot: Any, *, store: MetadataStore | None = None) -> None:
    """Link a snapshot to the artifact it was taken of.

    Sets the artifact's ``snapshot_uri`` and ``digest`` (what ``serve()`` uses) and records a
    Snapshot artifact with an execution: INPUT the model/transformer, OUTPUT the snapshot.

    Args:
        artifact_id: The model/transformer id.
        snapshot: An ``kfp_serve.artifacts.Snapshot`` (uri, digest, size).
    """
    store = _store(store)
    pb = store.pb
    run = current_run()
    with store.write():
        artifact = _artifact(store, artifact_id)
        to_record(store, artifact)  # refuses ids that are not models/transformers
        updated = pb.Artifact()
        updated.CopyFrom(artifact)
        updated.properties["snapshot_uri"].string_value = snapshot.uri
        updated.properties["digest"].string_value = snapshot.digest
        snap = store.get_artifact_by_type_and_name(SNAPSHOT_TYPE, snapshot.uri)
        if snap is None:
            snap = pb.Artifact(type_id=store.type_id(SNAPSHOT_TYPE), name=snapshot.uri)
            snap.uri = snapshot.uri
            snap.state = pb.Artifact.LIVE
            snap.properties["digest"].string_value = snapshot.digest
            snap.properties["size"].int_value = int(snapshot.size)
            snap.properties["source_uri"].string_value = artifact.uri
        execution = pb.Execution(type_id=store.type_id(SNAPSHOT_EXECUTION))
        execution.last_known_state = pb.Execution.COMPLETE
        for k, v in {
            "step": "snapshot",
            "run_id": run.run_id,
            "snapshot_uri": snapshot.uri,
        }.items():
            set_value(execution.properties[k], v)
        store.put_execution(
            execution,
            [(updated, pb.Event(type=pb.Event.INPUT)), (snap, pb.Event(type=pb.Event.OUTPUT))],
            store.run_contexts(run),
        )


def snapshot_artifact(
    artifact_id: int, snapshot_store: Any = None, *, store: MetadataStore | None = None
) -> Any:
    """Snapshot a submitted artifact's directory and link the snapshot to it.

    Args:
        artifact_id: The model/transformer id.
        snapshot_store: An ``kfp_serve.artifacts.SnapshotStore`` (default: ``SnapshotStore()``).

    Returns:
        The ``Snapshot``.
    """
    from kfp_serve.artifacts.snapshots import SnapshotStore

    record = get_artifact(artifact_id, store=store)
    snap = (snapshot_store or SnapshotStore()).snapshot(record.uri)
    if snap.uri != record.snapshot_uri:
        link_snapshot(artifact_id, snap, store=store)
    return snap


def _summary(store: MetadataStore, a: Any) -> dict[str, Any]:
    if a.type in _TYPE_KINDS:
        r = to_record(store, a)
        return {"id": r.id, "kind": r.kind, "name": r.name, "version": r.version, "uri": r.uri}
    return {"id": a.id, "type": a.type, "name": a.name, "uri": a.uri}


def lineage(artifact_id: int, *, store: MetadataStore | None = None) -> dict[str, Any]:
    """Where an artifact came from and what uses it.

    Returns:
        A dict with ``artifact`` (the record as a dict), ``produced_by`` (execution id, type,
        step, time, or None), ``run`` and ``experiment`` (names, or None), ``inputs`` (artifacts
        the producing execution read), ``snapshots`` (uri, digest, size, time) and
        ``deployments``: one interval per Deploy execution (execution id, endpoint, namespace,
        url, model/transformer ids, ``traffic_percent``, ``start_time``, ``end_time`` and
        ``end_reason`` (None while ``serving``), ``last_seen`` (when an endpoint whose
        processes died was last known to run); see ``kfp_serve.artifacts.deployments``).

        This is what MLMD recorded. A local endpoint that crashed is only known to have ended
        once something looks at its processes: ``kfp_serve.serving.liveness.lineage`` (what
        ``kfp-serve lineage`` shows) checks them first.
    """
    store = _store(store)
    with store.read():
        artifact = _artifact(store, artifact_id)
        record = to_record(store, artifact)
        events = store.get_events_by_artifact_ids([artifact_id])
        exec_ids = sorted({e.execution_id for e in events})
        executions = {x.id: x for x in store.get_executions_by_id(exec_ids)} if exec_ids else {}
        producer = None
        for e in sorted(events, key=lambda e: e.execution_id):
            # The latest OUTPUT event: a version replaced with allow_overwrite has several.
            if e.type == store.pb.Event.OUTPUT and e.execution_id in executions:
                producer = executions[e.execution_id]
        out: dict[str, Any] = {
            "artifact": record.to_dict(),
            "produced_by": None,
            "run": None,
            "experiment": None,
            "inputs": [],
            "snapshots": [],
            "deployments": [],
        }
        if producer is not None:
            out["produced_by"] = {
                "execution_id": producer.id,
                "type": producer.type,
                "step": get_value(producer.properties, "step"),
                "create_time": _time(producer.create_time_since_epoch).isoformat(),
            }
            for ctx in store.get_contexts_by_execution(producer.id):
                if ctx.type == RUN_TYPE:
                    out["run"] = ctx.name
                elif ctx.type == EXPERIMENT_TYPE:
                    out["experiment"] = ctx.name
            in_ids = [
                e.artifact_id
                for e in store.get_events_by_execution_ids([producer.id])
                if e.type == store.pb.Event.INPUT
            ]
            if in_ids:
                out["inputs"] = [_summary(store, a) for a in store.get_artifacts_by_id(in_ids)]
        for e in events:
            x = executions.get(e.execution_id)
            if x is None or e.type != store.pb.Event.INPUT:
                continue
            when = _time(x.create_time_since_epoch).isoformat()
            if x.type == SNAPSHOT_EXECUTION:
                outs = [
                    ev.artifact_id
                    for ev in store.get_events_by_execution_ids([x.id])
                    if ev.type == store.pb.Event.OUTPUT
                ]
                for s in store.get_artifacts_by_id(outs) if outs else []:
                    out["snapshots"].append(
                        {
                            "id": s.id,
                            "uri": s.uri,
                            "digest": get_value(s.properties, "digest"),
                            "size": get_value(s.properties, "size"),
                            "create_time": when,
                        }
                    )
            elif x.type == DEPLOY_EXECUTION:
                p = x.properties
                # An interval recorded before shares were (no traffic_percent) served all.
                end = get_value(p, "end_time") or None
                out["deployments"].append(
                    {
                        "execution_id": x.id,
                        "endpoint": get_value(p, "endpoint"),
                        "namespace": get_value(p, "namespace") or None,
                        "url": get_value(p, "url") or None,
                        "model_id": get_value(p, "model_id"),
                        "transformer_id": get_value(p, "transformer_id") or None,
                        "create_time": when,
                        "traffic_percent": get_value(p, "traffic_percent", 100)
                        if "traffic_percent" in p
                        else 100,
                        "revision": get_value(p, "revision") or None,
                        "start_time": when,
                        "end_time": end,
                        "end_reason": get_value(p, "end_reason") or None,
                        # Set when its processes were found dead (deployments.LAST_SEEN).
                        "last_seen": get_value(x.custom_properties, "last_seen"),
                        "serving": end is None,
                    }
                )
    return out


__all__ = [
    "ArtifactRecord",
    "MODEL_TYPE",
    "TRANSFORMER_TYPE",
    "find_artifact",
    "get_artifact",
    "lineage",
    "link_snapshot",
    "list_artifacts",
    "record_submission",
    "snapshot_artifact",
]
