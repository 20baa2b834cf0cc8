"""Real runtime servers for the runtime tests: trained here, started once per session.

Every server is a subprocess started through kfp_serve.serving.runtime.launch (the entry points
KServe
runs), bound to 127.0.0.1 on a free port; the tests talk to them over real HTTP with httpx.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kfp_serve.serving.runtime.launch import ServerProcess, start_server, stop_server, wait_ready

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass
class Served:
    """A running server and the in-process object it serves."""

    name: str
    model: Any
    proc: ServerProcess
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.proc.url


def _iris() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return X, y


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return _iris()


def _save_joblib(root: Path, name: str, obj: Any, file: str = "model.joblib") -> Path:
    d = root / name
    d.mkdir(parents=True)
    joblib.dump(obj, d / file)
    return d


def _train(root: Path) -> dict[str, tuple[Path, Any, dict[str, str]]]:
    """{server key: (artifact dir, in-process object, extra env)}."""
    X, y = _iris()
    rng = np.random.default_rng(0)
    out: dict[str, tuple[Path, Any, dict[str, str]]] = {}

    lr = LogisticRegression(max_iter=1000).fit(X, y)
    out["lr"] = (_save_joblib(root, "lr", lr), lr, {})
    out["lr-proba"] = (out["lr"][0], lr, {"PREDICT_PROBA": "true"})

    rf = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    out["rf"] = (_save_joblib(root, "rf", rf), rf, {})

    xgbc = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(X, y)
    out["xgbc"] = (_save_joblib(root, "xgbc", xgbc), xgbc, {})

    # A raw Booster (binary task, tiny data) saved the way xgbserver expects it.
    Xb = rng.normal(size=(80, 3))
    yb = (Xb[:, 0] + 0.5 * Xb[:, 1] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(Xb, label=yb), 5
    )
    d = root / "booster"
    d.mkdir()
    booster.save_model(str(d / "model.json"))
    out["booster"] = (d, booster, {})

    # An XGBClassifier saved as model.json: labels, like in-process XGBClassifier.predict.
    d = root / "xgbc-json"
    d.mkdir()
    xgbc.save_model(str(d / "model.json"))
    out["xgbc-json"] = (d, xgbc, {})

    frame = pd.DataFrame(X, columns=FEATURES)
    lr_df = LogisticRegression(max_iter=1000).fit(frame, y)
    out["lr-df"] = (_save_joblib(root, "lr-df", lr_df), lr_df, {})

    ridge = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X[:, :3], X[:, 3])
    out["ridge-pipe"] = (_save_joblib(root, "ridge-pipe", ridge), ridge, {})

    # Transformer artifact + the model trained on its output.
    scaler = StandardScaler().fit(X)
    t_dir = _save_joblib(root, "scaler", scaler, file="transformer.joblib")
    scaled_lr = LogisticRegression(max_iter=1000).fit(scaler.transform(X), y)
    out["scaled-lr"] = (_save_joblib(root, "scaled-lr", scaled_lr), scaled_lr, {})
    out["_scaler"] = (t_dir, scaler, {})
    return out


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    """Every test server, started in parallel and awaited together."""
    root = tmp_path_factory.mktemp("runtime-models")
    logs = tmp_path_factory.mktemp("runtime-logs")
    trained = _train(root)
    procs: dict[str, tuple[ServerProcess, Any]] = {}
    try:
        for key, (model_dir, obj, env) in trained.items():
            if key.startswith("_"):
                continue
            procs[key] = (
                start_server(
                    "predictor", "model", model_dir, env=env, log_path=logs / f"{key}.log"
                ),
                obj,
            )
        pred = procs["scaled-lr"][0]
        scaler_dir, scaler, _ = trained["_scaler"]
        for protocol in ("v1", "v2"):
            procs[f"transformer-{protocol}"] = (
                start_server(
                    "transformer",
                    "model",
                    scaler_dir,
                    predictor_host=f"127.0.0.1:{pred.port}",
                    predictor_protocol=protocol,
                    log_path=logs / f"transformer-{protocol}.log",
                ),
                scaler,
            )
        for proc, _ in procs.values():
            wait_ready(proc.url, timeout=180, proc=proc)
        served = {
            key: Served("model", obj, proc, httpx.Client(base_url=proc.url, timeout=30))
            for key, (proc, obj) in procs.items()
        }
        yield served
        for s in served.values():
            s.client.close()
    finally:
        for proc, _ in procs.values():
            stop_server(proc)


@pytest.fixture(scope="session", autouse=True)
def _stop_warm_pool() -> Iterator[None]:
    """Stop the session home's warm pool (the servers above are forked from it) at the end."""
    yield
    from kfp_serve.serving.runtime import warm_pool

    warm_pool.stop()


def v2_body(X: np.ndarray, datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    """A v2 request with one [N, F] tensor."""
    X = np.asarray(X)
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(X.shape),
                "datatype": datatype,
                "data": X.ravel().tolist(),
            }
        ],
        **extra,
    }


def v2_output(response: dict[str, Any]) -> np.ndarray:
    out = response["outputs"][0]
    return np.asarray(out["data"]).reshape(out["shape"])
