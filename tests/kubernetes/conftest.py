"""Fixtures for the Kubernetes backend tests: the API double, a kubeconfig, a backend."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.kube_double.fixtures import kube_double, kubeconfig  # noqa: F401
from tests.kube_double.server import KubeDouble


@pytest.fixture
def progress() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def backend(kube_double: KubeDouble, kubeconfig: Path, progress: io.StringIO,  # noqa: F811
            monkeypatch: pytest.MonkeyPatch):
    """A KubernetesBackend on the double, as a laptop with a kubeconfig would have it."""
    from kfp_serve.serving.backends import kubernetes as kb

    monkeypatch.delenv("KFP_SERVE_INGRESS", raising=False)
    monkeypatch.delenv("INGRESS_HOST", raising=False)
    return kb.KubernetesBackend(kubeconfig=kubeconfig, progress=progress, request_timeout=5.0)
