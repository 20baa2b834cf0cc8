"""Fixtures for the local backend: a private KFP_SERVE_HOME, saved models, manifests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

# Every server these tests start inherits this, so none of them touches the user's real state.
_HOME: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def kfp_serve_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private KFP_SERVE_HOME for the session; every endpoint left is stopped at the end."""
    global _HOME
    home = tmp_path_factory.mktemp("kfp-serve-home")
    old = os.environ.get("KFP_SERVE_HOME")
    os.environ["KFP_SERVE_HOME"] = str(home)
    os.environ["KFP_SERVE_BACKEND"] = "local"
    _HOME = home
    yield home
    from kfp_serve.serving.backends.local import LocalBackend

    backend = LocalBackend(progress=False, stop_grace=2.0)
    for status in backend.list():
        backend.delete(status.name)
    from kfp_serve.serving.runtime import warm_pool

    warm_pool.stop()  # the home's warm pool would otherwise idle for minutes
    if old is None:
        os.environ.pop("KFP_SERVE_HOME", None)
    else:
        os.environ["KFP_SERVE_HOME"] = old


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


def _save_model(directory: Path, estimator: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, directory / "model.joblib")
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, iris: Any) -> tuple[Path, Any]:
    """A LogisticRegression on iris, saved in the stock layout; (dir, fitted estimator)."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    est = LogisticRegression(max_iter=500).fit(X, y)
    return _save_model(tmp_path_factory.mktemp("model-a"), est), est


@pytest.fixture(scope="session")
def shifted_model_dir(tmp_path_factory: pytest.TempPathFactory, iris: Any) -> tuple[Path, Any]:
    """The same model with classes 10, 11, 12: its answers are told apart from model_dir's."""
    from sklearn.linear_model import LogisticRegression

    X, y = iris
    est = LogisticRegression(max_iter=500).fit(X, y + 10)
    return _save_model(tmp_path_factory.mktemp("model-b"), est), est


@pytest.fixture(scope="session")
def scaled_pair(tmp_path_factory: pytest.TempPathFactory, iris: Any) -> tuple[Path, Path, Any]:
    """A StandardScaler transformer dir, a model dir fitted on scaled rows, and f(X) in-process."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = iris
    scaler = StandardScaler().fit(X)
    est = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    t_dir = tmp_path_factory.mktemp("transformer")
    joblib.dump(scaler, t_dir / "transformer.joblib")
    m_dir = _save_model(tmp_path_factory.mktemp("model-scaled"), est)
    return t_dir, m_dir, lambda rows: est.predict(scaler.transform(rows))


@pytest.fixture(scope="session")
def corrupt_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("model-corrupt")
    (directory / "model.joblib").write_bytes(b"this is not a joblib file")
    return directory


def make_manifest(
    name: str,
    model: Path,
    *,
    protocol: str = "v1",
    transformer: Path | None = None,
    canary: int | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest the lead's builder emits for these artifacts (plain directories)."""
    from kfp_serve.serving.isvc import Provenance, build_inference_service

    cfg: dict[str, Any] = {"protocol_version": protocol}
    if canary is not None:
        cfg["predictor"] = {"canary_traffic_percent": canary}
    if env:
        cfg["env"] = env
    return build_inference_service(
        name,
        f"file://{model}",
        "sklearn",
        transformer_uri=f"file://{transformer}" if transformer else None,
        serve_config=cfg,
        provenance=Provenance(model_id=7, transformer_id=8 if transformer else None),
    )


@pytest.fixture()
def backend() -> Any:
    from kfp_serve.serving.backends.local import LocalBackend

    return LocalBackend(progress=False, stop_grace=2.0)
