"""The ML Metadata store: connection, types, contexts and safe writes.

Store selection (``metadata_store()``):

1. ``KFP_SERVE_MLMD``: ``sqlite:///abs/path.sqlite`` or ``grpc://host:port``;
2. ``METADATA_GRPC_SERVICE_HOST`` (+ ``METADATA_GRPC_SERVICE_PORT``, default 8080), the KFP
   convention, or running in a pod (KFP's ``metadata-grpc-service.kubeflow:8080``);
3. otherwise SQLite at ``$KFP_SERVE_HOME/mlmd.sqlite``.

SQLite has one writer at a time and MLMD does not wait for a busy database, so every access
to a SQLite store holds an ``flock`` on ``<file>.lock`` (shared to read, exclusive to write),
and an operation that still meets "database is locked" (a writer outside kfp-serve) is retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kfp_serve.artifacts.errors import MetadataError

MLMD_ENV = "KFP_SERVE_MLMD"
GRPC_HOST_ENV = "METADATA_GRPC_SERVICE_HOST"
GRPC_PORT_ENV = "METADATA_GRPC_SERVICE_PORT"
IN_CLUSTER_HOST = "metadata-grpc-service.kubeflow"
DEFAULT_GRPC_PORT = 8080
INSTALL_COMMAND = "pip install --no-deps ml-metadata==1.17.1 && pip install absl-py six"

# Type names. Namespaced so they never collide with KFP's own "system.*" types.
MODEL_TYPE = "kfp_serve.Model"
TRANSFORMER_TYPE = "kfp_serve.Transformer"
SNAPSHOT_TYPE = "kfp_serve.Snapshot"
EXPERIMENT_TYPE = "kfp_serve.Experiment"
RUN_TYPE = "kfp_serve.PipelineRun"
SUBMIT_EXECUTION = "kfp_serve.SubmitArtifact"
SNAPSHOT_EXECUTION = "kfp_serve.TakeSnapshot"
DEPLOY_EXECUTION = "kfp_serve.Deploy"
KFP_RUN_TYPE = "system.PipelineRun"  # KFP's own run context, linked when it exists

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


@dataclass(frozen=True)
class RunInfo:
    """The pipeline run and experiment that writes to MLMD from this process."""

    experiment: str
    run_id: str
    source: str  # "kfp" | "pod" | "local"


def current_run() -> RunInfo:
    """The run/experiment from the KFP environment, else ``default`` and a per-process run.

    ``KFP_SERVE_RUN_ID``/``KFP_RUN_ID`` name the run (components pass KFP's run id), and
    ``KFP_SERVE_EXPERIMENT``/``KFP_EXPERIMENT_NAME`` the experiment. In a KFP pod without a run
    id, the pod name (``KFP_POD_NAME``) identifies the step.
    """
    env = os.environ
    experiment = env.get("KFP_SERVE_EXPERIMENT") or env.get("KFP_EXPERIMENT_NAME") or "default"
    run_id = env.get("KFP_SERVE_RUN_ID") or env.get("KFP_RUN_ID")
    if run_id:
        return RunInfo(experiment, run_id, "kfp")
    if env.get("KFP_POD_NAME"):
        return RunInfo(experiment, f"pod-{env['KFP_POD_NAME']}", "pod")
    return RunInfo(experiment, _process_run_id(), "local")


_run_ids: dict[int, str] = {}


def _process_run_id() -> str:
    # Keyed by pid: a forked child is a different run from its parent.
    pid = os.getpid()
    if pid not in _run_ids:
        _run_ids[pid] = f"local-{socket.gethostname()}-{pid}-{int(time.time() * 1000)}"
    return _run_ids[pid]


def store_uri() -> str:
    """The MLMD store URI this process uses (see the module docstring for the order)."""
    override = os.environ.get(MLMD_ENV)
    if override:
        return override
    host = os.environ.get(GRPC_HOST_ENV)
    from kfp_serve.artifacts.environment import running_in_pod

    if host or running_in_pod():
        port = os.environ.get(GRPC_PORT_ENV) or DEFAULT_GRPC_PORT
        return f"grpc://{host or IN_CLUSTER_HOST}:{port}"
    from kfp_serve.artifacts.home import state_dir

    return f"sqlite://{state_dir() / 'mlmd.sqlite'}"


class Store:
    """A connection to one MLMD store, with kfp-serve's types registered.

    Use ``metadata_store()`` rather than constructing it. ``raw`` is the ``ml_metadata``
    ``MetadataStore``; ``read()``/``write()`` are the locks every access goes through.
    """

    LOCK_RETRIES = 60

    def __init__(self, uri: str) -> None:
        ms, pb, errors = _mlmd()
        self.uri = uri
        self.pb = pb
        self.errors = errors
        self._ms = ms
        self._lock_path: Path | None = None
        self._local = threading.local()
        self._type_ids: dict[str, int] = {}
        self._context_ids: dict[tuple[str, str], int] = {}
        if uri.startswith("sqlite://"):
            path = Path(uri[len("sqlite://") :])
            if not path.is_absolute():
                raise MetadataError(f"{MLMD_ENV}={uri!r}: use sqlite:///absolute/path.sqlite")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.kind = "sqlite"
            self._lock_path = path.with_name(path.name + ".lock")
            config = pb.ConnectionConfig()
            config.sqlite.filename_uri = str(path)
            config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
            # Creating the schema of a new file is a write: hold the lock.
            with self.write():
                self.raw = self._retry(lambda: ms.MetadataStore(config), "open")
        elif uri.startswith("grpc://"):
            host, _, port = uri[len("grpc://") :].rstrip("/").rpartition(":")
            if not host or not port.isdigit():
                raise MetadataError(f"{uri!r} is not grpc://host:port")
            self.kind = "grpc"
            config = pb.MetadataStoreClientConfig(host=host, port=int(port))
            config.client_timeout_sec = 30
            try:
                self.raw = ms.MetadataStore(config)
            except Exception as e:  # grpc raises its own error types
                raise MetadataError(
                    f"cannot reach the MLMD gRPC service at {host}:{port}: {e}. Check "
                    f"{GRPC_HOST_ENV}/{GRPC_PORT_ENV}, or set {MLMD_ENV}=sqlite:///path to use "
                    "a local file"
                ) from e
        else:
            raise MetadataError(
                f"{MLMD_ENV}={uri!r} is not supported: use sqlite:///abs/path.sqlite or "
                "grpc://host:port"
            )
        self._register_types()

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # -- locking -----------------------------------------------------------------------------
    # Not kfp_serve.locks: filelock's only shared lock (ReadWriteLock) is a SQLite database
    # of its own, not an flock, so it cannot share the lock file existing readers hold.

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
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
        """Shared lock for reads (SQLite only; a no-op for gRPC)."""
        return self._flock(fcntl.LOCK_SH)

    def write(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock for a read-modify-write sequence (SQLite only)."""
        return self._flock(fcntl.LOCK_EX)

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        for attempt in range(self.LOCK_RETRIES):
            try:
                return fn()
            except Exception as e:
                text = str(e).lower()
                transient = "database is locked" in text or "database is busy" in text
                if not transient or attempt == self.LOCK_RETRIES - 1:
                    raise
                time.sleep(min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``raw.<method>`` with retries on a locked database, as MetadataError on failure."""
        fn = getattr(self.raw, method)
        try:
            return self._retry(lambda: fn(*args, **kwargs), method)
        except self.errors.StatusError as e:
            # MLMD messages embed whole protos; the first line says what went wrong.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MetadataError(f"MLMD {method} failed on {self.uri!r}: {first[:300]}") from e

    # -- types -------------------------------------------------------------------------------

    def _register_types(self) -> None:
        """Register kfp-serve's types; a no-op when they exist with the same properties."""
        pb = self.pb
        kinds = [
            (
                "artifact",
                ARTIFACT_TYPES,
                pb.ArtifactType,
                "get_artifact_types",
                "put_artifact_type",
            ),
            ("context", CONTEXT_TYPES, pb.ContextType, "get_context_types", "put_context_type"),
            (
                "execution",
                EXECUTION_TYPES,
                pb.ExecutionType,
                "get_execution_types",
                "put_execution_type",
            ),
        ]
        with self.read():
            existing = {
                kind: {t.name: t for t in self.call(getter)} for kind, _, _, getter, _ in kinds
            }
        for kind, wanted, proto, _, putter in kinds:
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
                with self.write():
                    try:
                        # can_add_fields: an older store gains new properties; can_omit_fields:
                        # a store written by a newer kfp-serve still works with this one.
                        self._type_ids[name] = self._retry(
                            lambda t=t, putter=putter: getattr(self.raw, putter)(
                                t, can_add_fields=True, can_omit_fields=True
                            ),
                            putter,
                        )
                    except self.errors.AlreadyExistsError as e:
                        raise MetadataError(
                            f"MLMD {kind} type {name!r} in {self.uri!r} is incompatible with "
                            f"this kfp-serve: {e}"
                        ) from e

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
        """Get or create the context ``name`` of ``type_name`` (call under ``write()``)."""
        key = (type_name, name)
        pb = self.pb
        if key in self._context_ids:
            return pb.Context(id=self._context_ids[key], type_id=self.type_id(type_name), name=name)
        found = self.call("get_context_by_type_and_name", type_name, name)
        if found is None:
            ctx = pb.Context(type_id=self.type_id(type_name), name=name)
            for k, v in properties.items():
                set_value(ctx.properties[k], v)
            [cid] = self.call("put_contexts", [ctx])
            found = pb.Context(id=cid, type_id=ctx.type_id, name=name)
        self._context_ids[key] = found.id
        return found

    def run_contexts(self, run: RunInfo | None = None) -> list[Any]:
        """Experiment and run contexts for ``run`` (default: this process), under ``write()``."""
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
            # Attach to KFP's own run context too, so KFP's UI lists the artifacts.
            try:
                kfp_ctx = self.call("get_context_by_type_and_name", KFP_RUN_TYPE, run.run_id)
            except MetadataError:
                kfp_ctx = None
            if kfp_ctx is not None:
                contexts.append(kfp_ctx)
        return contexts

    # -- safe writes -------------------------------------------------------------------------

    def full_artifacts(self, artifacts: Sequence[Any]) -> list[Any]:
        """Complete any artifact that has an id with its stored fields.

        ``put_execution``/``put_artifacts`` *replace* an existing artifact with what they are
        given: an artifact carrying only its id would lose its uri and properties. Starting from
        the stored artifact and merging the given fields on top makes that impossible.
        """
        ids = [a.id for a in artifacts if a.HasField("id")]
        stored = {a.id: a for a in self.call("get_artifacts_by_id", ids)} if ids else {}
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
        """``put_execution`` that never wipes an artifact (see ``full_artifacts``)."""
        full = self.full_artifacts([a for a, _ in artifact_and_events])
        pairs = [(a, e) for a, (_, e) in zip(full, artifact_and_events, strict=True)]
        return self.call("put_execution", execution, pairs, list(contexts))


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


def get_value(props: Any, key: str, default: Any = None) -> Any:
    """Read a property map entry as a Python value (None/``default`` when unset)."""
    if key not in props:
        return default
    v = props[key]
    which = v.WhichOneof("value")
    return getattr(v, which) if which else default


_stores: dict[tuple[int, str], Store] = {}
_stores_lock = threading.Lock()


def metadata_store(uri: str | None = None) -> Store:
    """The MLMD store for ``uri`` (default: chosen from the environment), cached per process.

    Raises:
        MetadataError: ml-metadata is not installed (the message has the install command), or
            the store cannot be opened.
    """
    uri = uri or store_uri()
    key = (os.getpid(), uri)  # a forked child opens its own connection
    with _stores_lock:
        if key not in _stores:
            _stores[key] = Store(uri)
        return _stores[key]
