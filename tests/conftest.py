"""Fixtures shared by every test area."""

import os

import pytest

from kfp_serve.artifacts import environment


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory):
    """No test touches the user's ~/.kfp-serve or a cluster: a session KFP_SERVE_HOME, local
    serving; endpoints still running at the end are stopped."""
    names = ("KFP_SERVE_HOME", "KFP_SERVE_BACKEND", "KFP_SERVE_WARM_POOL_IDLE")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["KFP_SERVE_HOME"] = str(tmp_path_factory.mktemp("kfp-serve-home"))
    os.environ["KFP_SERVE_BACKEND"] = "local"
    # Many tests use a home of their own, and each home that serves gets a warm server pool
    # (~250 MB): let idle ones go quickly instead of after the default ten minutes.
    os.environ["KFP_SERVE_WARM_POOL_IDLE"] = "30"
    yield
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.runtime import warm_pool

    backend = LocalBackend(progress=False, stop_grace=2.0)
    for status in backend.list():
        backend.delete(status.name)
    warm_pool.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's) on 127.0.0.1: its URL."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
