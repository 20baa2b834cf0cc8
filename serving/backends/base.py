"""What every serving backend (local processes, Kubernetes) offers to serve() and Endpoint, and
the registry that picks one by name.

``get_backend`` finds the class for a name in ``BACKENDS`` (``"module:Class"``, imported on
first use, so the Kubernetes client is only imported when that backend is used) or among classes
added with ``register_backend`` — the shape of ``artifacts/snapshots/base.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from kfp_serve.artifacts.environment import running_in_pod
from kfp_serve.registry import Implementations
from kfp_serve.serving.errors import ServingError

BACKEND_ENV = "KFP_SERVE_BACKEND"
LOCAL = "local"
KUBERNETES = "kubernetes"

#: Values of EndpointStatus.reason that clients act on.
REASON_PROCESS_EXITED = "ProcessExited"
REASON_NOT_READY = "NotReady"
REASON_STARTING = "Starting"


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


def default_backend_name() -> str:
    """KFP_SERVE_BACKEND if set, else kubernetes inside a pod and local elsewhere."""
    return os.environ.get(BACKEND_ENV) or (KUBERNETES if running_in_pod() else LOCAL)


BACKENDS = Implementations(
    {
        LOCAL: "kfp_serve.serving.backends.local.backend:LocalBackend",
        KUBERNETES: "kfp_serve.serving.backends.kubernetes:KubernetesBackend",
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
