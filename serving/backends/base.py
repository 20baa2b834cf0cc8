"""What every serving backend (local processes, Kubernetes) offers to serve() and Endpoint, and
the registry that picks one by name.

``get_backend`` finds the class for a name in ``BACKENDS`` (``"module:Class"``, imported on
first use, so the Kubernetes client is only imported when that backend is used) or among classes
added with ``register_backend`` — the shape of ``artifacts/snapshots/base.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kfp_serve.artifacts.environment import running_in_pod
from kfp_serve.registry import Implementations
from kfp_serve.serving import constants
from kfp_serve.serving.backends.traffic import RolloutState
from kfp_serve.serving.errors import ServingError

BACKEND_ENV = "KFP_SERVE_BACKEND"
LOCAL = "local"
KUBERNETES = "kubernetes"
DOCKER = "docker"

#: Values of EndpointStatus.reason that clients act on.
REASON_PROCESS_EXITED = "ProcessExited"
REASON_NOT_READY = "NotReady"
REASON_STARTING = "Starting"


@dataclass
class TrainedModelStatus:
    """The state of one model hosted by a multi-model endpoint (a KServe TrainedModel).

    Attributes:
        name: The model's name on the endpoint (its ``/v1/models/{name}`` path).
        parent: The multi-model endpoint (InferenceService) hosting it.
        ready: True once it is loaded and answers.
        reason: Why it is not ready (``MemoryResourceUnavailable``, ``LoadFailed``, ...).
        message: The details, e.g. the numbers of a memory refusal or a load error.
        storage_uri: Where it was loaded from (``spec.model.storageUri``).
        framework: Its model format.
        memory: The memory it declared (``spec.model.memory``, a quantity).
        url: Its predict URL (``status.url``), None until it is ready.
        namespace: Kubernetes namespace (None locally).
        labels: Its labels: kfp-serve's model id, name and version among them.
    """

    name: str
    parent: str
    ready: bool
    reason: str | None = None
    message: str | None = None
    storage_uri: str = ""
    framework: str = ""
    memory: str = ""
    url: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The model version it serves (from kfp-serve's label), None if unknown."""
        return self.labels.get(constants.LABEL_MODEL_VERSION)


#: Values of TrainedModelStatus.reason (named in constants.py: the model server reports them).
REASON_MEMORY_UNAVAILABLE = constants.REASON_MEMORY_UNAVAILABLE
REASON_LOAD_FAILED = constants.REASON_LOAD_FAILED
REASON_FRAMEWORK_MISMATCH = constants.REASON_FRAMEWORK_MISMATCH


@dataclass
class RevisionStatus:
    """One revision of an endpoint: the model it serves and its share of requests."""

    name: str
    percent: int
    ready: bool
    #: Newest revision (the canary while one is in progress).
    latest: bool = False
    #: The stable (latest rolled-out) revision.
    stable: bool = False
    created: str | None = None
    #: ``id``, ``name``, ``version`` and ``alias`` of the served model (those that are known).
    model: dict[str, str] = field(default_factory=dict)
    transformer_id: str | None = None
    #: role -> URL of this revision's servers, where the backend knows them.
    urls: dict[str, str] = field(default_factory=dict)


@dataclass
class EndpointStatus:
    """The state of one served InferenceService, as a backend sees it."""

    name: str
    backend: str
    url: str | None
    ready: bool
    namespace: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    message: str | None = None
    #: Extra URLs a client may need, e.g. {"predictor": ..., "transformer": ...}.
    components: dict[str, str] = field(default_factory=dict)
    #: Extra HTTP headers a client must send (a Host header through an ingress).
    headers: dict[str, str] = field(default_factory=dict)
    #: The models a multi-model endpoint hosts ([] for a single-model endpoint).
    models: list[TrainedModelStatus] = field(default_factory=list)
    #: Every revision with its traffic share, latest first; empty when the backend reports
    #: them only in the manifest's KServe status (see ``kfp_serve.serving.describe``).
    revisions: list[RevisionStatus] = field(default_factory=list)
    #: Recent rollout events, oldest first (``time``, ``action``, ``message``, ...).
    events: list[dict[str, Any]] = field(default_factory=list)
    #: ``host:port`` of the endpoint's OIP gRPC service, None when it serves no gRPC.
    grpc_address: str | None = None


class ServingBackend(Protocol):
    """Applies InferenceService manifests and reports on them."""

    name: str

    def apply(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> EndpointStatus: ...

    def get(self, name: str, namespace: str | None = None) -> EndpointStatus: ...

    def list(self, namespace: str | None = None) -> list[EndpointStatus]: ...

    def delete(self, name: str, namespace: str | None = None) -> None: ...


class MultiModelBackend(ServingBackend, Protocol):
    """A backend that also hosts many models behind one endpoint (KServe TrainedModels).

    The parent InferenceService (``trained_model.parent_inference_service``) is applied with
    ``apply``; each model is then loaded into its running server without a restart.
    """

    def apply_trained_model(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> TrainedModelStatus:
        """Load (or reload) the model ``manifest`` describes into its parent.

        With ``wait``, a model that does not become ready raises ServingError (its reason and
        message in the text); the parent's other models keep serving either way.
        """
        ...

    def delete_trained_model(self, name: str, namespace: str | None = None) -> None:
        """Unload model ``name`` and forget it (ServingError if there is none)."""
        ...

    def list_trained_models(
        self, parent: str, namespace: str | None = None
    ) -> list[TrainedModelStatus]:
        """The models endpoint ``parent`` hosts (or failed to load), by name."""
        ...


def supports_multi_model(backend: ServingBackend) -> bool:
    """True if ``backend`` can host TrainedModels (it has the MultiModelBackend methods)."""
    return all(
        callable(getattr(backend, m, None))
        for m in ("apply_trained_model", "delete_trained_model", "list_trained_models")
    )


@runtime_checkable
class TrafficBackend(ServingBackend, Protocol):
    """A backend that moves traffic between revisions with KServe's canary semantics
    (see :mod:`.traffic`)."""

    def set_traffic(
        self, name: str, percent: int, namespace: str | None = None, *, timeout: float = ...
    ) -> RolloutState: ...

    def promote(
        self, name: str, namespace: str | None = None, *, timeout: float = ...
    ) -> RolloutState: ...

    def rollback(
        self, name: str, namespace: str | None = None, *, timeout: float = ...
    ) -> RolloutState: ...

    def rollout_state(self, name: str, namespace: str | None = None) -> RolloutState: ...


def default_backend_name() -> str:
    """KFP_SERVE_BACKEND if set, else kubernetes inside a pod and local elsewhere."""
    return os.environ.get(BACKEND_ENV) or (KUBERNETES if running_in_pod() else LOCAL)


BACKENDS = Implementations(
    {
        LOCAL: "kfp_serve.serving.backends.local.backend:LocalBackend",
        KUBERNETES: "kfp_serve.serving.backends.kubernetes:KubernetesBackend",
        DOCKER: "kfp_serve.serving.backends.docker.backend:DockerBackend",
    },
    error=ServingError,
    unknown=lambda name, known: (
        f"unknown serving backend {name!r} (from {BACKEND_ENV} or backend=): use one of "
        + ", ".join(repr(n) for n in known)
    ),
    label=lambda name: f"the {name!r} serving backend",
)
register_backend = BACKENDS.register
backend_names = BACKENDS.names
backend_class = BACKENDS.get


def get_backend(name: str | None = None) -> ServingBackend:
    """A new instance of the backend called ``name`` (default: see default_backend_name)."""
    return backend_class(name or default_backend_name())()
