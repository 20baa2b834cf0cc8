"""Shared fixtures for component tests: an isolated KFP_SERVE_HOME and kfp.local setup."""

import pytest


@pytest.fixture
def kfp_home(tmp_path, monkeypatch):
    """KFP_SERVE_HOME in tmp_path, local serving, and the default component image."""
    home = tmp_path / "home"
    monkeypatch.setenv("KFP_SERVE_HOME", str(home))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "local")
    monkeypatch.delenv("KFP_SERVE_MLMD", raising=False)
    monkeypatch.delenv("KFP_SERVE_SNAPSHOT_STORE", raising=False)
    monkeypatch.delenv("METADATA_GRPC_SERVICE_HOST", raising=False)
    yield home
    # Whatever a test served in this home stops with it (a refused multi-model load, say,
    # leaves its parent running), so no server outlives the test.
    from kfp_serve.serving.backends.local.backend import LocalBackend

    backend = LocalBackend(progress=False)
    for status in backend.list():
        backend.delete(status.name)


@pytest.fixture
def kfp_local(kfp_home):
    """kfp.local with the subprocess runner in this venv; artifacts under KFP_SERVE_HOME."""
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(kfp_home / "pipeline-root"),
        raise_on_error=True,
    )
    return kfp_home
