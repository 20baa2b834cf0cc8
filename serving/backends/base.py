"""What every serving backend (local processes, Kubernetes) offers to serve() and Endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from kfp_serve.artifacts.environment import running_in_pod
from kfp_serve.serving.errors import ServingError

BACKEND_ENV = "KFP_SERVE_BACKEND"
LOCAL = "local"
KUBERNETES = "kubernetes"


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


def get_backend(name: str | None = None) -> ServingBackend:
    """The backend called ``name`` (default: see default_backend_name)."""
    name = name or default_backend_name()
    if name == LOCAL:
        from kfp_serve.serving.backends.local import LocalBackend

        return LocalBackend()
    if name == KUBERNETES:
        from kfp_serve.serving.backends.kubernetes import KubernetesBackend

        return KubernetesBackend()
    raise ServingError(
        f"unknown serving backend {name!r} (from {BACKEND_ENV}): use {LOCAL!r} or {KUBERNETES!r}"
    )
