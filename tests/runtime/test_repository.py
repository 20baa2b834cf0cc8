"""The multi-model server (``predictor --multi_model``) over real HTTP: the v2 model repository
extension as KServe's agent and kfp-serve's backends drive it."""

from __future__ import annotations

from pathlib import Path

import httpx
import joblib
import pytest
import xgboost as xgb
from sklearn.linear_model import LogisticRegression

from kfp_serve.serving import constants
from kfp_serve.serving.runtime.launch import start_server, stop_server, wait_ready

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture()
def repo_server(tmp_path: Path, iris):
    """An empty sklearn multi-model server with a 10Mi limit; its model_dir is tmp_path/models."""
    models = tmp_path / "models"
    models.mkdir()
    proc = start_server(
        "predictor", "unused", models, log_path=tmp_path / "server.log",
        extra_args=["--multi_model=true", "--model_format=sklearn", "--memory_limit=10Mi"],
    )
    try:
        wait_ready(proc.url, timeout=120, proc=proc)
        with httpx.Client(base_url=proc.url, timeout=60, trust_env=False) as client:
            yield client, models
    finally:
        stop_server(proc)


def _save(directory: Path, est) -> Path:
    directory.mkdir(parents=True)
    joblib.dump(est, directory / "model.joblib")
    return directory


def _index(client: httpx.Client) -> dict:
    return {e["name"]: e for e in client.post("/v2/repository/index").json()}


def test_a_load_without_body_reads_the_model_from_model_dir_like_kserves_agent(
    repo_server, iris
) -> None:
    client, models = repo_server
    X, y = iris
    est = LogisticRegression(max_iter=300).fit(X, y + 3)
    _save(models / "agent-put", est)
    assert client.get("/v2/health/ready").status_code == 200  # ready with no model yet
    assert client.post("/v2/repository/models/agent-put/load").json() == {
        "name": "agent-put", "load": True}
    answer = client.post("/v1/models/agent-put:predict", json={"instances": ROWS}).json()
    assert answer["predictions"] == est.predict(ROWS).tolist()
    assert client.post("/v2/repository/models/agent-put/unload").json() == {
        "name": "agent-put", "unload": True}
    assert client.post("/v1/models/agent-put:predict", json={"instances": ROWS}).status_code == 404
    assert client.post("/v2/repository/models/agent-put/unload").status_code == 404


def test_a_failed_reload_keeps_the_loaded_version_serving_and_says_why(
    repo_server, iris, tmp_path
) -> None:
    client, _ = repo_server
    X, y = iris
    est = LogisticRegression(max_iter=300).fit(X, y)
    good = _save(tmp_path / "good", est)
    params = {"storage_uri": f"file://{good}", "framework": "sklearn", "memory": "4Mi"}
    assert client.post("/v2/repository/models/m/load", json={"parameters": params}).status_code \
        == 200
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"not a model")
    refused = client.post("/v2/repository/models/m/load", json={"parameters": {
        **params, "storage_uri": f"file://{broken}"}})
    assert refused.status_code == 503
    assert refused.json()["reason"] == constants.REASON_LOAD_FAILED
    # The loaded model still answers, and the index says what the last load ran into.
    answer = client.post("/v1/models/m:predict", json={"instances": ROWS}).json()
    assert answer["predictions"] == est.predict(ROWS).tolist()
    entry = _index(client)["m"]
    assert entry["state"] == "Ready" and entry["parameters"]["reason_code"] == "LoadFailed"
    assert client.post("/v2/repository/index", json={"ready": True}).json()[0]["name"] == "m"


def test_memory_is_counted_per_declared_model_and_a_reload_gives_its_own_back(
    repo_server, iris, tmp_path
) -> None:
    client, _ = repo_server
    X, y = iris
    d = _save(tmp_path / "d", LogisticRegression(max_iter=300).fit(X, y))

    def load(name: str, memory: str) -> httpx.Response:
        return client.post(f"/v2/repository/models/{name}/load", json={"parameters": {
            "storage_uri": f"file://{d}", "framework": "sklearn", "memory": memory}})

    assert load("a", "6Mi").status_code == 200
    refused = load("b", "6Mi")
    assert refused.status_code == 409
    body = refused.json()
    assert body["reason"] == constants.REASON_MEMORY_UNAVAILABLE
    assert "needs 6Mi" in body["error"] and "10Mi limit" in body["error"]
    # Replacing "a" with a bigger declaration counts "a" once, not twice.
    assert load("a", "9Mi").status_code == 200
    assert _index(client)["a"]["parameters"]["memory"] == "9Mi"
    assert load("a", "11Mi").status_code == 409


def test_bad_loads_are_refused_with_the_field_named(repo_server, iris, tmp_path) -> None:
    client, _ = repo_server
    X, y = iris
    xgb_dir = tmp_path / "x"
    xgb_dir.mkdir()
    xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(X, y).save_model(xgb_dir / "model.json")
    wrong = client.post("/v2/repository/models/x/load", json={"parameters": {
        "storage_uri": f"file://{xgb_dir}", "framework": "sklearn", "memory": "1Mi"}})
    assert wrong.status_code == 400
    assert wrong.json()["reason"] == constants.REASON_FRAMEWORK_MISMATCH
    assert "xgboost model" in wrong.json()["error"]
    bad_memory = client.post("/v2/repository/models/x/load", json={"parameters": {
        "memory": "lots"}})
    assert bad_memory.status_code == 400 and "memory" in bad_memory.json()["error"]
    assert client.post("/v2/repository/models/x/load", content=b"{oops").status_code == 400
    assert client.get("/v2/repository/index").status_code == 405
    assert client.post("/v2/repository/models//load").status_code == 404
