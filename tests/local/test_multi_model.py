"""Many models behind one local endpoint: real processes, real HTTP, real MLMD and snapshots.

One server process hosts every model of an endpoint; models are loaded and unloaded through
the v2 model repository extension while the others keep serving.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kfp_serve import Endpoint, Model, add_model, remove_model, serve_many
from kfp_serve.retry import wait_until
from kfp_serve.serving import constants
from kfp_serve.serving.backends.local import LocalBackend
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.multi import hosted_models

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def iris_xy() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def _estimator(i: int, X: np.ndarray, y: np.ndarray) -> Any:
    """Model ``i``: its own labels (``y + 10*i``) and, every third one, another estimator
    kind, so a wrong routing or a mixed-up load shows in the answers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    labels = y + 10 * i
    if i % 3 == 2:
        return DecisionTreeClassifier(max_depth=2, random_state=i).fit(X, labels)
    return LogisticRegression(max_iter=300, C=0.1 + i).fit(X, labels)


def _submit(name: str, est: Any, version: str = "1.0.0") -> int:
    return Model(model=est, name=name, version=version).submit_artifact()


@pytest.fixture()
def cleanup() -> Any:
    names: list[str] = []
    yield names
    backend = LocalBackend(progress=False, stop_grace=2.0)
    for name in names:
        try:
            backend.delete(name)
        except ServingError:
            pass


def test_ten_models_behind_one_endpoint_each_answer_like_their_in_process_model(
    iris_xy, cleanup
) -> None:
    X, y = iris_xy
    cleanup.append("ten")
    estimators = {f"ten-m{i}": _estimator(i, X, y) for i in range(10)}
    ids = [_submit(name, est) for name, est in estimators.items()]
    ep = serve_many("ten", ids, {"limits": {"memory": "1Gi"}}, memory="64Mi")

    hosted = hosted_models(ep)
    assert [m.name for m in hosted] == sorted(estimators)
    assert all(m.ready and m.version == "1.0.0" and m.memory == "64Mi" for m in hosted)
    assert {m.name for m in ep.refresh().models} == set(estimators)
    # One server process for all of them (and the router in front).
    status = ep.status
    assert set(status.components) == {"router", "predictor"}

    for name, est in estimators.items():
        expected = est.predict(np.array(ROWS)).tolist()
        assert ep.predict(ROWS, model=name)["predictions"] == expected, name
        v2 = ep.predict(ROWS, model=name, protocol="v2")
        assert v2["model_name"] == name and v2["outputs"][0]["data"] == expected, name
        assert httpx.get(f"{ep.url}/v2/models/{name}/ready", trust_env=False).json() == {
            "name": name, "ready": True}
        assert httpx.get(f"{ep.url}/v1/models/{name}", trust_env=False).status_code == 200
        meta = httpx.get(f"{ep.url}/v2/models/{name}", trust_env=False).json()
        assert meta["name"] == name and meta["versions"] == ["1.0.0"]

    server = httpx.get(f"{ep.url}/v2", trust_env=False).json()
    assert "model_repository_extension" in server["extensions"]
    index = httpx.post(f"{ep.url}/v2/repository/index", json={}, trust_env=False).json()
    assert [(e["name"], e["state"], e["version"]) for e in index] == [
        (name, "Ready", "1.0.0") for name in sorted(estimators)]
    missing = httpx.post(f"{ep.url}/v1/models/nope:predict", json={"instances": ROWS},
                         trust_env=False)
    assert missing.status_code == 404 and "ten-m0" in missing.json()["error"]


def test_load_and_unload_under_concurrent_traffic_to_the_other_models(iris_xy, cleanup) -> None:
    X, y = iris_xy
    cleanup.append("busy")
    steady = {f"busy-s{i}": _estimator(i, X, y) for i in range(2)}
    ep = serve_many("busy", [_submit(n, e) for n, e in steady.items()],
                    {"limits": {"memory": "512Mi"}})
    expected = {n: e.predict(np.array(ROWS)).tolist() for n, e in steady.items()}
    counts = dict.fromkeys(steady, 0)
    errors: list[str] = []
    stop = threading.Event()

    def hammer(name: str) -> None:
        with httpx.Client(base_url=ep.url, timeout=30, trust_env=False) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"/v1/models/{name}:predict", json={"instances": ROWS})
                    if r.status_code != 200 or r.json()["predictions"] != expected[name]:
                        errors.append(f"{name}: HTTP {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:  # a dropped connection is an error too
                    errors.append(f"{name}: {e!r}")
                counts[name] += 1

    def traffic_moved_on() -> None:
        """Every client got answers after the last change (waits on requests, not time)."""
        before = dict(counts)
        wait_until(lambda: all(counts[n] >= before[n] + 5 for n in counts), deadline=120,
                   interval=0.01, describe="traffic")

    threads = [threading.Thread(target=hammer, args=(n,), daemon=True) for n in steady]
    for t in threads:
        t.start()
    try:
        traffic_moved_on()
        for round_ in range(3):
            name = f"busy-x{round_}"
            est = _estimator(round_ + 5, X, y)
            status = add_model(ep, _submit(name, est))
            assert status.ready
            traffic_moved_on()
            assert ep.predict(ROWS, model=name)["predictions"] == est.predict(
                np.array(ROWS)).tolist()
            # A new version under the same name replaces the old one in place.
            newer = _estimator(round_ + 6, X, y)
            assert add_model(ep, _submit(name, newer, "2.0.0")).version == "2.0.0"
            assert ep.predict(ROWS, model=name)["predictions"] == newer.predict(
                np.array(ROWS)).tolist()
            traffic_moved_on()
            remove_model(ep, name)
            traffic_moved_on()
            gone = httpx.post(f"{ep.url}/v1/models/{name}:predict", json={"instances": ROWS},
                              trust_env=False)
            assert gone.status_code == 404
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert all(c > 20 for c in counts.values()), counts
    assert [m.name for m in hosted_models(ep)] == sorted(steady)


def _tamper(snapshot_uri: str) -> None:
    from kfp_serve.artifacts.snapshots import SnapshotStore

    opened = Path(SnapshotStore().open(snapshot_uri))
    target = opened / "model.joblib"
    os.chmod(target, 0o600)
    target.write_bytes(target.read_bytes()[:-8] + b"tampered")


def test_a_tampered_snapshot_is_refused_at_load_and_the_others_keep_serving(
    iris_xy, cleanup
) -> None:
    from kfp_serve import artifacts

    X, y = iris_xy
    cleanup.append("guarded")
    good = _estimator(0, X, y)
    ep = serve_many("guarded", [_submit("guarded-ok", good)])
    bad_id = _submit("guarded-bad", _estimator(1, X, y))
    _tamper(artifacts.snapshot_artifact(bad_id).uri)

    with pytest.raises(ServingError, match=r"refused model 'guarded-bad' \(LoadFailed\)"):
        add_model(ep, bad_id)
    assert ep.predict(ROWS, model="guarded-ok")["predictions"] == good.predict(
        np.array(ROWS)).tolist()
    never = httpx.post(f"{ep.url}/v1/models/guarded-bad:predict", json={"instances": ROWS},
                       trust_env=False)
    assert never.status_code == 404
    # The reason is in the repository index and in the endpoint's model list (describe).
    index = {e["name"]: e for e in httpx.post(f"{ep.url}/v2/repository/index", json={},
                                               trust_env=False).json()}
    assert index["guarded-bad"]["state"] == "NotReady"
    assert index["guarded-bad"]["parameters"]["reason_code"] == constants.REASON_LOAD_FAILED
    assert "cannot be served" in index["guarded-bad"]["reason"]
    listed = {m.name: m for m in hosted_models(ep)}
    assert listed["guarded-ok"].ready
    assert not listed["guarded-bad"].ready
    assert listed["guarded-bad"].reason == constants.REASON_LOAD_FAILED
    assert "cannot be served" in listed["guarded-bad"].message
    # Nothing recorded it as deployed: lineage shows only what serves.
    assert artifacts.lineage(bad_id)["deployments"] == []


def test_loading_past_the_memory_limit_is_refused_with_the_numbers(iris_xy, cleanup) -> None:
    X, y = iris_xy
    cleanup.append("tight")
    ests = {f"tight-m{i}": _estimator(i, X, y) for i in range(3)}
    ids = {n: _submit(n, e) for n, e in ests.items()}
    ep = serve_many("tight", [ids["tight-m0"], ids["tight-m1"]],
                    {"limits": {"memory": "100Mi"}}, memory="40Mi")
    with pytest.raises(ServingError) as refused:
        add_model(ep, ids["tight-m2"], memory="40Mi")
    text = str(refused.value)
    assert constants.REASON_MEMORY_UNAVAILABLE in text
    for number in ("40Mi", "80Mi", "100Mi", str(100 * 2**20), str(20 * 2**20)):
        assert number in text, (number, text)
    listed = {m.name: m for m in hosted_models(ep)}
    assert listed["tight-m2"].reason == constants.REASON_MEMORY_UNAVAILABLE
    for name in ("tight-m0", "tight-m1"):
        assert ep.predict(ROWS, model=name)["predictions"] == ests[name].predict(
            np.array(ROWS)).tolist()
    # Memory given back by an unload makes room.
    remove_model(ep, "tight-m0")
    assert add_model(ep, ids["tight-m2"], memory="40Mi").ready
    assert ep.predict(ROWS, model="tight-m2")["predictions"] == ests["tight-m2"].predict(
        np.array(ROWS)).tolist()


def test_each_hosted_model_is_recorded_as_deployed_on_the_endpoint(iris_xy, cleanup) -> None:
    from kfp_serve import artifacts

    X, y = iris_xy
    cleanup.append("traced")
    ids = [_submit(f"traced-m{i}", _estimator(i, X, y)) for i in range(2)]
    ep = serve_many("traced", ids)
    for i, model_id in enumerate(ids):
        (deployment,) = artifacts.lineage(model_id)["deployments"]
        assert deployment["endpoint"] == "traced"
        assert deployment["model_id"] == model_id
        assert deployment["url"] == f"{ep.url}/v1/models/traced-m{i}:predict"


def test_models_are_reloaded_into_a_new_revision_of_the_parent(iris_xy, cleanup) -> None:
    from kfp_serve.serving.trained_model import parent_inference_service

    X, y = iris_xy
    cleanup.append("rolled")
    ests = {f"rolled-m{i}": _estimator(i, X, y) for i in range(2)}
    ep = serve_many("rolled", [_submit(n, e) for n, e in ests.items()])
    first = ep.status.components["predictor"]
    backend = LocalBackend(progress=False, stop_grace=2.0)
    # Another spec (a label) is a new revision: a new server, which starts empty.
    changed = parent_inference_service("rolled", "sklearn", serve_config={"labels": {"x": "y"}})
    status = backend.apply(changed)
    assert status.components["predictor"] != first
    assert [m.name for m in status.models] == sorted(ests)
    assert all(m.ready for m in status.models)
    ep.refresh()
    for name, est in ests.items():
        assert ep.predict(ROWS, model=name)["predictions"] == est.predict(
            np.array(ROWS)).tolist()


def test_bad_requests_are_refused_before_anything_loads(iris_xy, cleanup) -> None:
    import xgboost as xgb

    from kfp_serve.serving.errors import ServeConfigError

    X, y = iris_xy
    cleanup.append("picky")
    sk = _submit("picky-sk", _estimator(0, X, y))
    xg = _submit("picky-xgb", xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, y))
    with pytest.raises(ServeConfigError, match="one framework"):
        serve_many("picky", [sk, xg])
    with pytest.raises(ServeConfigError, match="two models are named 'picky-sk'"):
        serve_many("picky", [sk, _submit("picky-sk", _estimator(1, X, y), "2.0.0")])
    ep = serve_many("picky", [sk])
    with pytest.raises(ServingError, match="is a xgboost model; endpoint 'picky' hosts sklearn"):
        add_model(ep, xg)
    with pytest.raises(ServingError, match="hosts no model named 'nope'"):
        remove_model(ep, "nope")
    # The server checks the framework itself too (a TrainedModel applied by hand).
    direct = httpx.post(
        f"{ep.status.components['predictor']}/v2/repository/models/picky-xgb/load",
        json={"parameters": {"storage_uri": "file:///nowhere", "framework": "xgboost",
                             "memory": "1Mi"}},
        trust_env=False,
    )
    assert direct.status_code == 400
    assert direct.json()["reason"] == constants.REASON_FRAMEWORK_MISMATCH


def test_a_single_model_endpoint_has_no_repository_and_takes_no_models(
    model_dir, cleanup
) -> None:
    from tests.local.conftest import make_manifest

    cleanup.append("solo")
    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(make_manifest("solo", model_dir[0]))
    server = httpx.get(f"{status.url}/v2", trust_env=False).json()
    assert "model_repository_extension" not in server["extensions"]
    refused = httpx.post(f"{status.url}/v2/repository/index", json={}, trust_env=False)
    assert refused.status_code == 404 and "multi-model" in refused.json()["error"]
    with pytest.raises(ServingError, match="serves one model"):
        add_model(Endpoint("solo"), 1)


def test_the_readme_snippet_runs_as_written(iris_xy, tmp_path, monkeypatch) -> None:
    import re

    from kfp_serve import artifacts

    X, y = iris_xy
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path))
    for i, (name, version) in enumerate(
        [("east", "1.0.0"), ("west", "1.0.0"), ("south", "1.0.0"), ("north", "1.2.0")]
    ):
        _submit(name, _estimator(i, X, y), version)
    artifacts.set_alias("west", "champion", "1.0.0")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"## Many models behind one endpoint\n.*?```python\n(.*?)```", readme,
                     re.S).group(1)
    scope: dict = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)
        assert [(m.name, m.version, m.memory) for m in hosted_models("regions")] == [
            ("east", "1.0.0", "64Mi"), ("north", "1.2.0", "128Mi"), ("south", "1.0.0", "64Mi")]
    finally:
        LocalBackend(progress=False, stop_grace=2.0).delete_all()


def test_serve_many_again_is_declarative_and_leaves_unchanged_models_alone(
    iris_xy, cleanup
) -> None:
    X, y = iris_xy
    cleanup.append("again")
    ests = {f"again-m{i}": _estimator(i, X, y) for i in range(3)}
    ids = {n: _submit(n, e) for n, e in ests.items()}
    from kfp_serve.serving.backends.local.registry import read_record

    ep = serve_many("again", [ids["again-m0"], ids["again-m1"]])
    before = {m.name: m for m in hosted_models(ep)}
    server_log = Path(read_record("again").latest.predictor.log)
    newer = _estimator(7, X, y)
    ep = serve_many("again", ["again-m0", ids["again-m2"], _submit("again-m1", newer, "2.0.0")])
    after = {m.name: m for m in hosted_models(ep)}
    assert sorted(after) == ["again-m0", "again-m1", "again-m2"]
    assert after["again-m1"].version == "2.0.0"
    # The unchanged model was not loaded again (the server logs every load).
    assert server_log.read_text().count("loaded model 'again-m0'") == 1
    assert server_log.read_text().count("loaded model 'again-m1'") == 2
    assert ep.predict(ROWS, model="again-m1")["predictions"] == newer.predict(
        np.array(ROWS)).tolist()
    ep = serve_many("again", ["again-m0"])
    assert [m.name for m in hosted_models(ep)] == ["again-m0"]
    assert before["again-m0"].url == hosted_models(ep)[0].url
    assert ep.predict(ROWS, model="again-m0")["predictions"] == ests["again-m0"].predict(
        np.array(ROWS)).tolist()


def test_asking_a_multi_model_endpoint_without_a_model_says_which_to_name(
    iris_xy, cleanup
) -> None:
    X, y = iris_xy
    cleanup.append("which")
    ep = serve_many("which", [_submit("which-a", _estimator(0, X, y))])
    with pytest.raises(ServingError, match=r"hosts several models: pass model= one of \['which-a'"):
        ep.predict(ROWS)


class _StagingBackend(LocalBackend):
    """The local backend handing models over through the server's model directory, as the
    Docker backend does for servers that see only their mounted directory."""

    stage_trained_models = True


def test_models_staged_into_the_model_directory_load_verified_and_leave_with_unload(
    iris_xy, cleanup
) -> None:
    from kfp_serve import artifacts
    from kfp_serve.serving.backends.local.trained_models import models_dir

    X, y = iris_xy
    cleanup.append("staged")
    est = _estimator(0, X, y)
    backend = _StagingBackend(progress=False, stop_grace=2.0)
    ep = serve_many("staged", [_submit("staged-a", est)], backend=backend)
    assert (models_dir("staged") / "staged-a" / "model.joblib").is_file()
    assert hosted_models(ep)[0].ready
    assert ep.predict(ROWS, model="staged-a")["predictions"] == est.predict(
        np.array(ROWS)).tolist()
    bad = _submit("staged-bad", _estimator(1, X, y))
    _tamper(artifacts.snapshot_artifact(bad).uri)
    with pytest.raises(ServingError, match="LoadFailed"):
        add_model(ep, bad)
    assert not (models_dir("staged") / "staged-bad").exists()
    assert ep.predict(ROWS, model="staged-a")["predictions"] == est.predict(
        np.array(ROWS)).tolist()
    remove_model(ep, "staged-a")
    assert not (models_dir("staged") / "staged-a").exists()
