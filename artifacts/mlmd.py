"""ML Metadata, the one ``MetadataStore`` implementation: kfp-serve's types, contexts and safe
writes, over a SQLite file (``SqliteStore``) or MLMD's gRPC service (``GrpcStore``).

SQLite has one writer at a time and MLMD does not wait for a busy database, so every access
to a SQLite store holds an ``flock`` on ``<file>.lock`` (shared to read, exclusive to write),
and an operation that still meets "database is locked" (a writer outside kfp-serve) is retried.

Over gRPC there is no client-side lock: the service runs each call in one transaction and the
unique (type, name) of artifacts, executions and contexts refuses duplicates. A call the service
cannot take (UNAVAILABLE: not started yet, restarting) is retried until
``KFP_SERVE_MLMD_RETRY_DEADLINE`` seconds have passed; every call gives up after
``KFP_SERVE_MLMD_TIMEOUT`` seconds (a hung service never hangs a pipeline step); ABORTED (a
transaction that lost a conflict) is retried by MLMD's own client, as in every KFP component.
Writes are safe to retry: an execution carries a unique name, so a ``put_execution`` whose answer
was lost after the service committed it is found again instead of being written twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kfp_serve.artifacts.errors import AlreadyRecordedError, MetadataError
from kfp_serve.artifacts.metadata import (
    DEFAULT_GRPC_PORT,
    GRPC_HOST_ENV,
    GRPC_PORT_ENV,
    IN_CLUSTER_HOST,
    MLMD_ENV,
    MetadataStore,
    RunInfo,
    current_run,
    metadata_store,
    open_store,
    store_uri,
)
from kfp_serve.retry import retrying

INSTALL_COMMAND = "pip install --no-deps ml-metadata==1.17.1 && pip install absl-py six"
TIMEOUT_ENV = "KFP_SERVE_MLMD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
RETRY_DEADLINE_ENV = "KFP_SERVE_MLMD_RETRY_DEADLINE"
DEFAULT_RETRY_DEADLINE = 60.0
#: How long a SQLite operation keeps retrying "database is locked" (a writer outside kfp-serve).
SQLITE_LOCKED_DEADLINE = 30.0

# Type names. Namespaced so they never collide with KFP's own "system.*" types.
MODEL_TYPE = "kfp_serve.Model"
TRANSFORMER_TYPE = "kfp_serve.Transformer"
SNAPSHOT_TYPE = "kfp_serve.Snapshot"
EXPERIMENT_TYPE = "kfp_serve.Experiment"
RUN_TYPE = "kfp_serve.PipelineRun"
SUBMIT_EXECUTION = "kfp_serve.SubmitArtifact"
SNAPSHOT_EXECUTION = "kfp_serve.TakeSnapshot"
DEPLOY_EXECUTION = "kfp_serve.Deploy"
# Aliases and retired versions of one model name, and each change to them (artifacts/aliases.py).
ALIASES_CONTEXT = "kfp_serve.ModelAliases"
ALIAS_CHANGE_EXECUTION = "kfp_serve.AliasChange"
# KFP's own contexts, as its launcher makes them (backend/src/v2/metadata/client.go): a
# schemaless "system.PipelineRun" named by the run id, child of a "system.Pipeline".
KFP_RUN_TYPE = "system.PipelineRun"
KFP_PIPELINE_TYPE = "system.Pipeline"

KIND_TYPES = {"model": MODEL_TYPE, "transformer": TRANSFORMER_TYPE}

_S, _I = "STRING", "INT"
ARTIFACT_PROPERTIES = {
    "name": _S,
    "version": _S,
    "author": _S,
    "description": _S,
    "tags": _S,  # JSON object
    "framework": _S,
    "framework_version": _S,
    "signature": _S,  # JSON object
    "digest": _S,
    "snapshot_uri": _S,
}
ARTIFACT_TYPES = {
    MODEL_TYPE: ARTIFACT_PROPERTIES,
    TRANSFORMER_TYPE: ARTIFACT_PROPERTIES,
    SNAPSHOT_TYPE: {"digest": _S, "size": _I, "source_uri": _S},
}
CONTEXT_TYPES = {
    EXPERIMENT_TYPE: {"experiment": _S},
    RUN_TYPE: {"run_id": _S, "experiment": _S, "source": _S},
    ALIASES_CONTEXT: {"model": _S, "aliases": _S, "lifecycle": _S},  # JSON objects
}
EXECUTION_TYPES = {
    SUBMIT_EXECUTION: {"step": _S, "run_id": _S, "artifact_kind": _S},
    SNAPSHOT_EXECUTION: {"step": _S, "run_id": _S, "snapshot_uri": _S},
    DEPLOY_EXECUTION: {
        "step": _S,
        "run_id": _S,
        "endpoint": _S,
        "namespace": _S,
        "url": _S,
        "model_id": _I,
        "transformer_id": _I,
        # A deployment is an interval (artifacts/deployments.py): its share of the endpoint's
        # traffic, from the execution's create time to end_time ("" while it serves).
        "traffic_percent": _I,
        "revision": _S,
        "end_time": _S,
        "end_reason": _S,
    },
    ALIAS_CHANGE_EXECUTION: {
        "model": _S,
        "action": _S,
        "alias": _S,
        "version": _S,
        "previous_version": _S,
        "author": _S,
        "run_id": _S,
        "reason": _S,
    },
}

T = TypeVar("T")


def _mlmd() -> tuple[Any, Any, Any]:
    """Import ml_metadata lazily (it is not needed for ``import kfp_serve.artifacts``)."""
    try:
        from ml_metadata import errors
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2
    except ImportError as e:
        raise MetadataError(
            f"ML Metadata is not installed ({e}). Install it with: {INSTALL_COMMAND} "
            "(--no-deps because ml-metadata pins protobuf<5, which kfp and kserve cannot use)"
        ) from e
    return metadata_store, metadata_store_pb2, errors


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise MetadataError(f"{env}={raw!r} is not a number of seconds > 0 (e.g. {env}=30)")
    return value


class _Transient(Exception):
    """Carries an error that means "try the same call again" through the retry policy."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _first_line(e: Exception) -> str:
    # MLMD messages embed whole protos; the first line says what went wrong.
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class MlmdStore:
    """A connection to one MLMD store, with kfp-serve's types registered.

    Use ``metadata_store()`` rather than constructing it. ``raw`` is the ``ml_metadata``
    ``MetadataStore``; ``read()``/``write()`` are the locks every access goes through. The
    transports (``SqliteStore``, ``GrpcStore``) differ in how they connect, lock and retry.
    """

    kind = ""
    #: Seconds a call keeps being retried while ``_transient`` says its error will pass.
    retry_deadline = SQLITE_LOCKED_DEADLINE

    def __init__(self, uri: str) -> None:
        ms, pb, errors = _mlmd()
        self.uri = uri
        self.pb = pb
        self.errors = errors
        self._type_ids: dict[str, int] = {}
        self._contexts: dict[tuple[str, str], Any] = {}
        self.raw = self._connect(ms, pb)
        self._list_options = ms.ListOptions
        self._register_types()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- transport ---------------------------------------------------------------------------

    def _connect(self, ms: Any, pb: Any) -> Any:
        """Open the ``ml_metadata`` store for ``self.uri``."""
        raise NotImplementedError

    def read(self) -> contextlib.AbstractContextManager[None]:
        """Hold while reading several things that must agree (a no-op unless overridden)."""
        return contextlib.nullcontext()

    def write(self) -> contextlib.AbstractContextManager[None]:
        """Hold for a read-check-write sequence (a no-op unless overridden)."""
        return contextlib.nullcontext()

    def _transient(self, error: Exception) -> bool:
        """True if the same call may succeed when tried again."""
        return False

    def _gave_up(self, error: Exception, method: str) -> MetadataError:
        """The error once a transient failure outlasted ``retry_deadline``."""
        return self._failed(error, method)

    def _failed(self, error: Exception, method: str) -> MetadataError:
        message = f"MLMD {method} failed on {self.uri!r}: {_first_line(error)}"
        if isinstance(error, self.errors.AlreadyExistsError):
            return AlreadyRecordedError(message)
        return MetadataError(message)

    def _retrying(self, fn: Callable[[], T], method: str) -> T:
        def once() -> T:
            try:
                return fn()
            except Exception as e:
                if self._transient(e):
                    raise _Transient(e) from e
                raise

        try:
            return retrying(deadline=self.retry_deadline, on=_Transient, first_wait=0.01)(once)
        except _Transient as t:
            raise self._gave_up(t.error, method) from t.error

    def call(
        self, method: str, *args: Any, recover: Callable[[], Any] | None = None, **kwargs: Any
    ) -> Any:
        """Call ``raw.<method>`` with the transport's retries, as MetadataError on failure.

        Args:
            recover: Called when the store answers ALREADY_EXISTS; what it returns (unless
                None) is the call's result: the thing was written already (by another writer,
                or by this very call before its answer was lost).
        """
        fn = getattr(self.raw, method)

        def once() -> Any:
            try:
                return fn(*args, **kwargs)
            except self.errors.AlreadyExistsError:
                found = recover() if recover is not None else None
                if found is None:
                    raise
                return found

        try:
            return self._retrying(once, method)
        except self.errors.StatusError as e:
            raise self._failed(e, method) from e

    # -- reads (the MetadataStore protocol) --------------------------------------------------

    def get_artifacts_by_id(self, ids: Sequence[int]) -> list[Any]:
        return self.call("get_artifacts_by_id", list(ids)) if ids else []

    def get_artifact_by_type_and_name(self, type_name: str, name: str) -> Any | None:
        return self.call("get_artifact_by_type_and_name", type_name, name)

    def get_artifacts(self, filter_query: str) -> list[Any]:
        options = self._list_options(filter_query=filter_query)
        return self.call("get_artifacts", list_options=options)

    def get_executions_by_id(self, ids: Sequence[int]) -> list[Any]:
        return self.call("get_executions_by_id", list(ids)) if ids else []

    def get_events_by_artifact_ids(self, ids: Sequence[int]) -> list[Any]:
        return self.call("get_events_by_artifact_ids", list(ids)) if ids else []

    def get_events_by_execution_ids(self, ids: Sequence[int]) -> list[Any]:
        return self.call("get_events_by_execution_ids", list(ids)) if ids else []

    def get_contexts_by_execution(self, execution_id: int) -> list[Any]:
        return self.call("get_contexts_by_execution", execution_id)

    # -- types -------------------------------------------------------------------------------

    def _register_types(self) -> None:
        """Register kfp-serve's types; a no-op when they exist with the same properties."""
        pb = self.pb
        kinds = [
            ("artifact", ARTIFACT_TYPES, pb.ArtifactType, "artifact_type"),
            ("context", CONTEXT_TYPES, pb.ContextType, "context_type"),
            ("execution", EXECUTION_TYPES, pb.ExecutionType, "execution_type"),
        ]
        with self.read():
            existing = {
                kind: {t.name: t for t in self.call(f"get_{noun}s")} for kind, _, _, noun in kinds
            }
        for kind, wanted, proto, noun in kinds:
            for name, props in wanted.items():
                stored = existing[kind].get(name)
                if stored is not None and _same_properties(stored, props, pb):
                    self._type_ids[name] = stored.id
                    continue
                if stored is not None:
                    self._check_compatible(kind, stored, props)
                t = proto(name=name)
                for prop, ptype in props.items():
                    t.properties[prop] = getattr(pb, ptype)

                def registered_meanwhile(
                    noun: str = noun, name: str = name, props: dict[str, str] = props
                ) -> int | None:
                    # Another writer registered it between our read and our write.
                    found = self.call(f"get_{noun}", name)
                    return found.id if _same_properties(found, props, pb) else None

                with self.write():
                    try:
                        # can_add_fields: an older store gains new properties; can_omit_fields:
                        # a store written by a newer kfp-serve still works with this one.
                        self._type_ids[name] = self.call(
                            f"put_{noun}",
                            t,
                            can_add_fields=True,
                            can_omit_fields=True,
                            recover=registered_meanwhile,
                        )
                    except AlreadyRecordedError as e:
                        raise MetadataError(
                            f"MLMD {kind} type {name!r} in {self.uri!r} is incompatible with "
                            f"this kfp-serve: {e}"
                        ) from e
        self._type_names = {v: k for k, v in self._type_ids.items()}

    def _check_compatible(self, kind: str, stored: Any, props: dict[str, str]) -> None:
        names = {v: k for k, v in self.pb.PropertyType.items()}
        conflicts = [
            f"{p}: stored {names.get(stored.properties[p], '?')}, expected {t}"
            for p, t in props.items()
            if p in stored.properties and stored.properties[p] != getattr(self.pb, t)
        ]
        if conflicts:
            raise MetadataError(
                f"MLMD {kind} type {stored.name!r} in {self.uri!r} was registered with "
                f"incompatible properties ({'; '.join(conflicts)}). Use a new store "
                f"({MLMD_ENV}=sqlite:///new/path.sqlite) or migrate the old one; kfp-serve does "
                "not change property types of existing data."
            )

    def type_id(self, name: str) -> int:
        return self._type_ids[name]

    # -- contexts ----------------------------------------------------------------------------

    def context(self, type_name: str, name: str, properties: dict[str, Any]) -> Any:
        """Get or create the context ``name`` of ``type_name`` (call under ``write()``).

        Returns the whole stored context: ``put_execution`` upserts the contexts it is given,
        so a partial one (id only) would wipe the stored properties.
        """
        key = (type_name, name)
        if key in self._contexts:
            return self._contexts[key]
        found = self.call("get_context_by_type_and_name", type_name, name)
        if found is None:
            ctx = self.pb.Context(type_id=self.type_id(type_name), name=name)
            for k, v in properties.items():
                set_value(ctx.properties[k], v)

            def created_meanwhile() -> list[int] | None:
                # Another process of the same experiment created it first: use theirs.
                other = self.call("get_context_by_type_and_name", type_name, name)
                return [other.id] if other is not None else None

            [cid] = self.call("put_contexts", [ctx], recover=created_meanwhile)
            found = self.call("get_contexts_by_id", [cid])[0]
        self._contexts[key] = found
        return found

    def run_contexts(self, run: RunInfo | None = None) -> list[Any]:
        """Experiment and run contexts for ``run`` (default: this process), under ``write()``.

        Inside a KFP run (``run.source == "kfp"``) the run's ``system.PipelineRun`` context,
        which KFP's launcher created before the step started, is attached too, so KFP's own
        lineage view lists what the step recorded.
        """
        run = run or current_run()
        contexts = [
            self.context(EXPERIMENT_TYPE, run.experiment, {"experiment": run.experiment}),
            self.context(
                RUN_TYPE,
                run.run_id,
                {"run_id": run.run_id, "experiment": run.experiment, "source": run.source},
            ),
        ]
        if run.source == "kfp":
            kfp_ctx = self._kfp_run_context(run.run_id)
            if kfp_ctx is not None:
                contexts.append(kfp_ctx)
        return contexts

    def _kfp_run_context(self, run_id: str) -> Any | None:
        # Read fresh for every write, never cached: the write upserts the context as given, so
        # an old copy would undo whatever KFP changed on its own context meanwhile.
        try:
            return self.call("get_context_by_type_and_name", KFP_RUN_TYPE, run_id)
        except MetadataError:
            return None  # a store KFP never wrote to has no such type

    # -- safe writes -------------------------------------------------------------------------

    def full_artifacts(self, artifacts: Sequence[Any]) -> list[Any]:
        """Complete any artifact that has an id with its stored fields.

        ``put_execution``/``put_artifacts`` *replace* an existing artifact with what they are
        given: an artifact carrying only its id would lose its uri and properties. Starting from
        the stored artifact and merging the given fields on top makes that impossible.
        """
        ids = [a.id for a in artifacts if a.HasField("id")]
        stored = {a.id: a for a in self.get_artifacts_by_id(ids)}
        out = []
        for a in artifacts:
            if a.HasField("id"):
                if a.id not in stored:
                    raise MetadataError(f"artifact id {a.id} does not exist in {self.uri!r}")
                full = self.pb.Artifact()
                full.CopyFrom(stored[a.id])
                full.MergeFrom(a)
                a = full
            out.append(a)
        return out

    def put_execution(
        self,
        execution: Any,
        artifact_and_events: Sequence[tuple[Any, Any]],
        contexts: Sequence[Any],
    ) -> tuple[int, list[int], list[int]]:
        """``put_execution`` that never wipes an artifact and never writes twice.

        The execution gets a unique name when it has none: names are unique per execution
        type, so a call retried after the service committed it (and died before answering)
        meets ALREADY_EXISTS and finds its own execution instead of adding a second one.
        """
        full = self.full_artifacts([a for a, _ in artifact_and_events])
        pairs = [(a, e) for a, (_, e) in zip(full, artifact_and_events, strict=True)]
        if not execution.name:
            step = get_value(execution.properties, "step", "write")
            execution.name = f"{step}-{uuid.uuid4().hex}"

        def written_already() -> tuple[int, list[int], list[int]] | None:
            done = self.call(
                "get_execution_by_type_and_name",
                self._type_names[execution.type_id],
                execution.name,
            )
            if done is None:
                return None  # a real conflict (a duplicate artifact name): report it
            events = self.get_events_by_execution_ids([done.id])
            stored = self.get_artifacts_by_id([e.artifact_id for e in events])
            by_name = {(a.type_id, a.name): a.id for a in stored}
            ids = [a.id if a.HasField("id") else by_name.get((a.type_id, a.name)) for a, _ in pairs]
            if None in ids:
                return None
            return done.id, ids, [c.id for c in contexts]

        return self.call("put_execution", execution, pairs, list(contexts), recover=written_already)


class SqliteStore(MlmdStore):
    """MLMD over a SQLite file (``sqlite:///abs/path.sqlite``), with an flock per access."""

    kind = "sqlite"

    def _connect(self, ms: Any, pb: Any) -> Any:
        path = Path(self.uri[len("sqlite://") :])
        if not path.is_absolute():
            raise MetadataError(f"{MLMD_ENV}={self.uri!r}: use sqlite:///absolute/path.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = path.with_name(path.name + ".lock")
        self._local = threading.local()
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = str(path)
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        # Creating the schema of a new file is a write: hold the lock.
        with self.write():
            return self._retrying(lambda: ms.MetadataStore(config), "open")

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        # Re-entrant within a thread: an exclusive holder may call read helpers.
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read(self) -> contextlib.AbstractContextManager[None]:
        """Shared lock for reads."""
        return self._flock(fcntl.LOCK_SH)

    def write(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock for a read-modify-write sequence."""
        return self._flock(fcntl.LOCK_EX)

    def _transient(self, error: Exception) -> bool:
        text = str(error).lower()
        return "database is locked" in text or "database is busy" in text


class GrpcStore(MlmdStore):
    """MLMD's gRPC service (``grpc://host:port``): KFP's ``metadata-grpc-service`` on a cluster.

    Attributes:
        address: ``host:port``.
        timeout: Seconds one call may take (``KFP_SERVE_MLMD_TIMEOUT``, default 30).
        retry_deadline: Seconds an unreachable service is retried
            (``KFP_SERVE_MLMD_RETRY_DEADLINE``, default 60).
    """

    kind = "grpc"

    def _connect(self, ms: Any, pb: Any) -> Any:
        host, _, port = self.uri[len("grpc://") :].rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise MetadataError(f"{MLMD_ENV}={self.uri!r} is not grpc://host:port")
        self.address = f"{host}:{port}"
        self.timeout = _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        self.retry_deadline = _seconds(RETRY_DEADLINE_ENV, DEFAULT_RETRY_DEADLINE)
        config = pb.MetadataStoreClientConfig(host=host, port=int(port))
        config.client_timeout_sec = self.timeout
        return ms.MetadataStore(config)  # connects on the first call

    def _transient(self, error: Exception) -> bool:
        return isinstance(error, self.errors.UnavailableError)

    def _gave_up(self, error: Exception, method: str) -> MetadataError:
        return MetadataError(
            f"the MLMD gRPC service at {self.address} is unreachable ({_first_line(error)}); "
            f"retried {method} for {self.retry_deadline:g} s ({RETRY_DEADLINE_ENV}). Check that "
            f"it is running and that {GRPC_HOST_ENV}/{GRPC_PORT_ENV} (or {MLMD_ENV}) name it, "
            f"or set {MLMD_ENV}=sqlite:///path to use a local file"
        )

    def _failed(self, error: Exception, method: str) -> MetadataError:
        if isinstance(error, self.errors.DeadlineExceededError):
            return MetadataError(
                f"the MLMD gRPC service at {self.address} did not answer {method} within "
                f"{self.timeout:g} s ({TIMEOUT_ENV}); it may be overloaded or hung"
            )
        return super()._failed(error, method)


def _same_properties(stored: Any, props: dict[str, str], pb: Any) -> bool:
    return all(
        p in stored.properties and stored.properties[p] == getattr(pb, t) for p, t in props.items()
    )


def set_value(value: Any, v: Any) -> None:
    """Set an MLMD ``Value`` from a Python value (dicts/lists as JSON strings)."""
    if isinstance(v, bool) or isinstance(v, dict | list):
        value.string_value = json.dumps(v, sort_keys=True)
    elif isinstance(v, int):
        value.int_value = v
    elif isinstance(v, float):
        value.double_value = v
    else:
        value.string_value = str(v)


def completed_execution(store: Any, type_name: str, properties: dict[str, Any]) -> Any:
    """A new MLMD ``Execution`` of ``type_name``, COMPLETE, with ``properties`` set."""
    execution = store.pb.Execution(
        type_id=store.type_id(type_name), last_known_state=store.pb.Execution.COMPLETE
    )
    for key, value in properties.items():
        set_value(execution.properties[key], value)
    return execution


def get_value(props: Any, key: str, default: Any = None) -> Any:
    """Read a property map entry as a Python value (None/``default`` when unset)."""
    if key not in props:
        return default
    v = props[key]
    which = v.WhichOneof("value")
    return getattr(v, which) if which else default


__all__ = [
    "DEFAULT_GRPC_PORT",
    "GRPC_HOST_ENV",
    "GRPC_PORT_ENV",
    "GrpcStore",
    "IN_CLUSTER_HOST",
    "KFP_PIPELINE_TYPE",
    "KFP_RUN_TYPE",
    "MLMD_ENV",
    "MetadataStore",
    "MlmdStore",
    "RETRY_DEADLINE_ENV",
    "RunInfo",
    "SqliteStore",
    "TIMEOUT_ENV",
    "completed_execution",
    "current_run",
    "get_value",
    "metadata_store",
    "open_store",
    "set_value",
    "store_uri",
]
