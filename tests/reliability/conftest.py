"""Fixtures for the reliability and security tests (issue 7).

Everything runs on the embedded defaults in a private KFP_SERVE_HOME: SQLite MLMD, the file://
snapshot store and the local serving backend, with real server processes on 127.0.0.1. One
endpoint (predictor + transformer, served through ``kfp_serve.serving.serve``) is shared by the
load,
bad-payload, binding and secret tests, because starting servers costs seconds; its ServeConfig
carries a request-size limit and secret references, and a fake secret value sits in the
environment every server inherits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: Variables that would point MLMD, snapshots or serving somewhere other than the private home.
_FOREIGN_ENV = (
    "KFP_SERVE_MLMD",
    "KFP_SERVE_SNAPSHOT_STORE",
    "METADATA_GRPC_SERVICE_HOST",
    "METADATA_GRPC_SERVICE_PORT",
    "KUBERNETES_SERVICE_HOST",
    "KFP_SERVE_RUN_ID",
    "KFP_RUN_ID",
    "KFP_POD_NAME",
    "KFP_SERVE_ROUTER_MAX_BODY",
    "KFP_SERVE_MAX_BODY_BYTES",
)

ENDPOINT = "iris-rel"
#: The request-size limit the shared endpoint's ServeConfig sets (bytes).
MAX_BODY = 1 << 20
#: Fake secret values: exported in the environment the servers inherit, never to be shown.
SECRET_ENV = {
    "DB_PASSWORD": "pw-7f3a9c1e-DO-NOT-LEAK",
    "IRIS_API_TOKEN": "tok-52be0d44-DO-NOT-LEAK",
}
SECRET_SERVE_CONFIG: dict[str, Any] = {
    "env": [
        {"name": "KFP_SERVE_MAX_BODY_BYTES", "value": str(MAX_BODY)},
        {
            "name": "DB_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "iris-db", "key": "password"}},
        },
    ],
    "env_from": [{"secretRef": {"name": "iris-api-credentials"}}],
}


@pytest.fixture(scope="package", autouse=True)
def reliability_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private KFP_SERVE_HOME on the local backend; every endpoint left is stopped after."""
    home = tmp_path_factory.mktemp("kfp-serve-reliability")
    saved = {k: os.environ.get(k) for k in (*_FOREIGN_ENV, "KFP_SERVE_HOME", "KFP_SERVE_BACKEND")}
    for key in _FOREIGN_ENV:
        os.environ.pop(key, None)
    os.environ["KFP_SERVE_HOME"] = str(home)
    os.environ["KFP_SERVE_BACKEND"] = "local"
    try:
        yield home
    finally:
        stop_all_endpoints()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stop_all_endpoints() -> None:
    from kfp_serve.serving.backends.local import LocalBackend

    backend = LocalBackend(progress=False, stop_grace=2.0)
    for status in backend.list():
        backend.delete(status.name)


@dataclass
class Trained:
    """A scaler + classifier pair fitted on iris, submitted to MLMD."""

    X: np.ndarray
    expected: Any  # rows -> labels through scaler and classifier, computed in-process
    predictor_expected: Any  # rows -> labels of the classifier alone (the predictor's view)
    model_id: int
    transformer_id: int


@pytest.fixture(scope="package")
def trained(reliability_home: Path) -> Trained:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from kfp_serve import artifacts
    X, y = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    model_id = artifacts.Model(model=clf, name="iris", version="1.0.0").submit_artifact()
    transformer_id = artifacts.Transformer(name="iris-scaler", transformer=scaler).submit_artifact()
    return Trained(
        X=X,
        expected=lambda rows: clf.predict(scaler.transform(np.asarray(rows))).tolist(),
        predictor_expected=lambda rows: clf.predict(np.asarray(rows)).tolist(),
        model_id=model_id,
        transformer_id=transformer_id,
    )


@dataclass
class Served:
    """The shared endpoint: its client, component URLs and server pids."""

    name: str
    endpoint: Any  # kfp_serve.serving.endpoint.Endpoint
    urls: dict[str, str]  # router, transformer, predictor
    pids: dict[str, int]  # router, transformer, predictor
    trained: Trained


def server_pids(name: str) -> dict[str, int]:
    """Role -> pid of the processes behind local endpoint ``name`` (from its registry)."""
    from kfp_serve.serving.backends.local.registry import read_record

    record = read_record(name)
    assert record is not None, f"endpoint {name!r} has no registry record"
    pids = {"router": record.router.pid}
    for proc in record.latest.processes:
        pids[proc.role] = proc.pid
    return pids


@pytest.fixture(scope="package")
def served(trained: Trained) -> Iterator[Served]:
    """The shared endpoint: transformer + predictor behind the router, served by serve()."""
    from kfp_serve import serving
    from kfp_serve.serving.runtime.warm_pool import ENABLE_ENV

    for key, value in SECRET_ENV.items():
        os.environ[key] = value
    # Servers started plainly: test_security reads their environment from /proc, which for a
    # server forked from a warm pool (one an earlier test may have left idling) shows the
    # pool's start-up environment, not the one the server runs with.
    os.environ[ENABLE_ENV] = "0"
    try:
        started = time.monotonic()
        endpoint = serving.serve(
            trained.model_id,
            trained.transformer_id,
            serve_config=SECRET_SERVE_CONFIG,
            name=ENDPOINT,
            timeout=120,
        )
        assert time.monotonic() - started < 120
        urls = dict(endpoint.status.components)
        assert {"router", "transformer", "predictor"} <= set(urls), urls
        yield Served(ENDPOINT, endpoint, urls, server_pids(ENDPOINT), trained)
        endpoint.close()
    finally:
        for key in (*SECRET_ENV, ENABLE_ENV):
            os.environ.pop(key, None)
        from kfp_serve.serving.backends.local import LocalBackend

        backend = LocalBackend(progress=False, stop_grace=2.0)
        if ENDPOINT in {s.name for s in backend.list()}:
            backend.delete(ENDPOINT)
