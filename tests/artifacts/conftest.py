"""Fixtures for the artifacts tests: a fresh KFP_SERVE_HOME (real SQLite MLMD, real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

_ENV = (
    "KFP_SERVE_MLMD",
    "KFP_SERVE_SNAPSHOT_STORE",
    "METADATA_GRPC_SERVICE_HOST",
    "METADATA_GRPC_SERVICE_PORT",
    "KFP_SERVE_RUN_ID",
    "KFP_RUN_ID",
    "KFP_POD_NAME",
    "KFP_SERVE_EXPERIMENT",
    "KFP_EXPERIMENT_NAME",
    "KUBERNETES_SERVICE_HOST",
    "KFP_SERVE_PROGRESS",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty KFP_SERVE_HOME; MLMD and snapshots default to it."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "home"
    monkeypatch.setenv("KFP_SERVE_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def iris() -> tuple:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def classifier(iris: tuple):
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    return LogisticRegression(max_iter=500).fit(X, y)


@pytest.fixture(scope="session")
def scaler(iris: tuple):
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(iris[0])
