"""Shared fixtures for pipeline tests."""

import pytest


@pytest.fixture
def kfp_home(tmp_path, monkeypatch):
    """KFP_SERVE_HOME in tmp_path and the local serving backend; endpoints stopped after."""
    home = tmp_path / "home"
    monkeypatch.setenv("KFP_SERVE_HOME", str(home))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "local")
    for name in ("KFP_SERVE_MLMD", "KFP_SERVE_SNAPSHOT_STORE", "METADATA_GRPC_SERVICE_HOST",
                 "KFP_SERVE_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    yield home
    from kfp_serve.serving.backends.base import get_backend

    backend = get_backend("local")
    for status in backend.list():
        backend.delete(status.name)
    from kfp_serve.serving.runtime import warm_pool

    warm_pool.stop()  # the home's warm pool would otherwise idle for minutes
