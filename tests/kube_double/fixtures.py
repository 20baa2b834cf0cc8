"""pytest fixtures for the API double; import them in a conftest.py:

    from tests.kube_double.fixtures import kube_double, kubeconfig  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_double.server import KubeDouble


@pytest.fixture
def kube_double() -> Iterator[KubeDouble]:
    """A started API double, stopped after the test."""
    double = KubeDouble().start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def kubeconfig(kube_double: KubeDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig for the double (namespace "default"), also exported as KUBECONFIG."""
    path = kube_double.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path
