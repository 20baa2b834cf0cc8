"""Fixtures for the artifacts tests: a fresh KFP_SERVE_HOME (real MLMD, real files).

Tests marked ``every_store`` run once per metadata store: MLMD on the home's SQLite file, and
MLMD's gRPC service (MLMD's own store in a server process on 127.0.0.1, over the same file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kfp_serve.artifacts.mlmd import MLMD_ENV
from tests.mlmd_grpc.fixtures import MlmdGrpcServer, start_mlmd_grpc  # noqa: F401

STORE_KINDS = ("sqlite", "grpc")

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "every_store: run the test once per metadata store (sqlite, grpc)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("every_store") and "home" in metafunc.fixturenames:
        metafunc.parametrize("home", STORE_KINDS, indirect=True)


@pytest.fixture
def home(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    start_mlmd_grpc: Callable[..., MlmdGrpcServer],  # noqa: F811
) -> Path:
    """An empty KFP_SERVE_HOME; MLMD and snapshots default to it. With the ``grpc`` store
    (``every_store`` tests), kfp-serve reaches MLMD through a gRPC server over the same file."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "home"
    monkeypatch.setenv("KFP_SERVE_HOME", str(path))
    if getattr(request, "param", "sqlite") == "grpc":
        server = start_mlmd_grpc(db=path / "mlmd.sqlite")
        monkeypatch.setenv(MLMD_ENV, server.uri)
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
