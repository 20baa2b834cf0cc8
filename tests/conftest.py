"""Fixtures shared by every test area."""

import pytest

from artifacts import environment


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch):
    """Tests run as on a laptop, even when CI itself runs inside a Kubernetes pod."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def inside_a_pod(monkeypatch, tmp_path):
    """Make this process look like a pod whose service account lives in ``namespace``."""

    def enter(namespace: str = "default"):
        account = tmp_path / "serviceaccount"
        account.mkdir(exist_ok=True)
        (account / "namespace").write_text(namespace)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        monkeypatch.setattr(environment, "SERVICE_ACCOUNT_DIR", account)
        return account

    return enter
