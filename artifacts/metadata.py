"""The metadata store protocol, the registry of implementations, and which store to use.

Records and lineage (``kfp_serve.artifacts.records``) are written against ``MetadataStore``:
the ML Metadata calls they make, on MLMD's own protos (``store.pb``), plus the store's locks and
the run/experiment contexts. ``STORES`` maps a URI scheme to the class that serves it
(``"module:Class"``, imported on first use, the way ``snapshots.base.BACKENDS`` does); today
both schemes are transports of the one implementation, ``kfp_serve.artifacts.mlmd``.

Store selection (``store_uri()``):

1. ``KFP_SERVE_MLMD``: ``sqlite:///abs/path.sqlite`` or ``grpc://host:port``;
2. ``METADATA_GRPC_SERVICE_HOST`` (+ ``METADATA_GRPC_SERVICE_PORT``, default 8080), the KFP
   convention, or running in a pod (KFP's ``metadata-grpc-service.kubeflow:8080``);
3. otherwise SQLite at ``$KFP_SERVE_HOME/mlmd.sqlite``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kfp_serve.artifacts.errors import MetadataError
from kfp_serve.registry import Implementations

MLMD_ENV = "KFP_SERVE_MLMD"
GRPC_HOST_ENV = "METADATA_GRPC_SERVICE_HOST"
GRPC_PORT_ENV = "METADATA_GRPC_SERVICE_PORT"
IN_CLUSTER_HOST = "metadata-grpc-service.kubeflow"
DEFAULT_GRPC_PORT = 8080

#: The run id kfp-serve's components pass (and Kale steps export), then KFP's own.
RUN_ID_ENV = "KFP_SERVE_RUN_ID"
RUN_ID_ENVS = (RUN_ID_ENV, "KFP_RUN_ID")
EXPERIMENT_ENVS = ("KFP_SERVE_EXPERIMENT", "KFP_EXPERIMENT_NAME")
POD_NAME_ENV = "KFP_POD_NAME"
DEFAULT_EXPERIMENT = "default"


@dataclass(frozen=True)
class RunInfo:
    """The pipeline run and experiment that writes to the metadata store from this process."""

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
    experiment = next((env[k] for k in EXPERIMENT_ENVS if env.get(k)), DEFAULT_EXPERIMENT)
    run_id = next((env[k] for k in RUN_ID_ENVS if env.get(k)), None)
    if run_id:
        return RunInfo(experiment, run_id, "kfp")
    if env.get(POD_NAME_ENV):
        return RunInfo(experiment, f"pod-{env[POD_NAME_ENV]}", "pod")
    return RunInfo(experiment, _process_run_id(), "local")


_run_ids: dict[int, str] = {}


def _process_run_id() -> str:
    # Keyed by pid: a forked child is a different run from its parent.
    pid = os.getpid()
    if pid not in _run_ids:
        _run_ids[pid] = f"local-{socket.gethostname()}-{pid}-{int(time.time() * 1000)}"
    return _run_ids[pid]


@runtime_checkable
class MetadataStore(Protocol):
    """What records and lineage need from a metadata store. Constructed as ``Store(uri)``.

    Reads return MLMD protos (``pb.Artifact``, ``pb.Execution``, ``pb.Event``, ``pb.Context``);
    every failure is a ``MetadataError`` that names the store.
    """

    uri: str
    #: ``ml_metadata.proto.metadata_store_pb2``: the messages records are built from.
    pb: Any

    def read(self) -> contextlib.AbstractContextManager[None]:
        """Hold while reading several things that must agree with each other."""
        ...

    def write(self) -> contextlib.AbstractContextManager[None]:
        """Hold for a read-check-write sequence (a duplicate check, then the write)."""
        ...

    def type_id(self, name: str) -> int:
        """The id of one of kfp-serve's registered types."""
        ...

    def run_contexts(self, run: RunInfo | None = None) -> list[Any]:
        """The experiment and run contexts to attach a write to (created when missing)."""
        ...

    def get_artifacts_by_id(self, ids: Sequence[int]) -> list[Any]: ...

    def get_artifact_by_type_and_name(self, type_name: str, name: str) -> Any | None: ...

    def get_artifacts(self, filter_query: str) -> list[Any]:
        """Artifacts matching an MLMD filter query (``type = 'x' AND state = LIVE``)."""
        ...

    def get_executions_by_id(self, ids: Sequence[int]) -> list[Any]: ...

    def get_events_by_artifact_ids(self, ids: Sequence[int]) -> list[Any]: ...

    def get_events_by_execution_ids(self, ids: Sequence[int]) -> list[Any]: ...

    def get_contexts_by_execution(self, execution_id: int) -> list[Any]: ...

    def put_execution(
        self,
        execution: Any,
        artifact_and_events: Sequence[tuple[Any, Any]],
        contexts: Sequence[Any],
    ) -> tuple[int, list[int], list[int]]:
        """Write an execution, its artifacts, events and context links in one transaction.

        Artifacts that carry an id are completed from the stored ones first (never wiped), and
        a write retried after a lost answer is recognised, not repeated.
        """
        ...


STORES = Implementations(
    {
        "sqlite": "kfp_serve.artifacts.mlmd:SqliteStore",
        "grpc": "kfp_serve.artifacts.mlmd:GrpcStore",
    },
    error=MetadataError,
    unknown=lambda scheme, known: (
        f"{MLMD_ENV}: no metadata store for {scheme!r} URIs; use sqlite:///abs/path.sqlite "
        "or grpc://host:port"
    ),
    label=lambda scheme: f"the {scheme}:// metadata store",
)
register_store = STORES.register
store_class = STORES.get


def open_store(uri: str) -> MetadataStore:
    """A new connection to the store at ``uri`` (prefer the cached ``metadata_store()``).

    Raises:
        MetadataError: an unknown scheme, a malformed URI, or a store that cannot be opened.
    """
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise MetadataError(
            f"{MLMD_ENV}={uri!r} is not a store URI: use sqlite:///abs/path.sqlite or "
            "grpc://host:port"
        )
    return store_class(scheme)(uri)


def store_uri() -> str:
    """The metadata store URI this process uses (see the module docstring for the order)."""
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


_stores: dict[tuple[int, str], MetadataStore] = {}
_stores_lock = threading.Lock()


def metadata_store(uri: str | None = None) -> MetadataStore:
    """The metadata store for ``uri`` (default: chosen from the environment), cached per process.

    Raises:
        MetadataError: ml-metadata is not installed (the message has the install command), or
            the store cannot be opened.
    """
    uri = uri or store_uri()
    key = (os.getpid(), uri)  # a forked child opens its own connection
    with _stores_lock:
        if key not in _stores:
            _stores[key] = open_store(uri)
        return _stores[key]
