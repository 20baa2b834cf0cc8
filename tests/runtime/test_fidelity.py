"""Local answers equal the stock runtime's: tested against KServe's own server code.

KServe's ``SKLearnModel`` (kserve-sklearnserver), ``XGBoostModel`` (kserve-xgbserver) and
``LightGBMModel`` (kserve-lgbserver) are read from a KServe source checkout (not part of this
project) and run in-process on the same artifacts; our predictor, started with
``--serving_runtime`` as the local backend starts it for a manifest naming that runtime, must
answer the same bytes of JSON data for v1 and v2, with and without ``PREDICT_PROBA``. Set
``KSERVE_SOURCE_GIT`` to a KServe git directory (default: the mirror fetched on these machines);
without one these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.linear_model import Ridge

from kfp_serve.serving.runtime.launch import start_server, stop_server, wait_ready
from tests.runtime.conftest import v2_body

SOURCE_ENV = "KSERVE_SOURCE_GIT"
DEFAULT_SOURCE = "/work/.mirror/kserve+kserve/repo"
RUNTIME_FILES = {
    "kserve-sklearnserver": ("python/sklearnserver/sklearnserver/model.py", "SKLearnModel"),
    "kserve-xgbserver": ("python/xgbserver/xgbserver/model.py", "XGBoostModel"),
    "kserve-lgbserver": ("python/lgbserver/lgbserver/model.py", "LightGBMModel"),
}


@pytest.fixture(scope="module")
def kserve_models(tmp_path_factory) -> dict[str, type]:
    """KServe's own model classes, loaded from its source (storage download stubbed out)."""
    git_dir = os.environ.get(SOURCE_ENV, DEFAULT_SOURCE)
    if not Path(git_dir).is_dir():
        pytest.skip(f"no KServe source checkout at {git_dir} (set {SOURCE_ENV})")
    from kfp_serve.serving.runtime import _kserve  # noqa: F401 - kserve without argv parsing

    # Only the storage initializer is missing here; the model is on local disk already.
    storage = types.ModuleType("kserve_storage")
    storage.Storage = type("Storage", (), {"download": staticmethod(lambda uri: uri)})
    sys.modules.setdefault("kserve_storage", storage)
    out = tmp_path_factory.mktemp("kserve-source")
    classes = {}
    for runtime, (path, cls) in RUNTIME_FILES.items():
        text = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"],
            capture_output=True, text=True, check=True,
        ).stdout
        target = out / f"{runtime.replace('-', '_')}.py"
        target.write_text(text)
        spec = importlib.util.spec_from_file_location(target.stem, target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        classes[runtime] = getattr(module, cls)
    return classes


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, iris) -> dict[str, Path]:
    X, y = iris
    root = tmp_path_factory.mktemp("fidelity-models")
    from sklearn.linear_model import LogisticRegression

    dirs = {}
    for key, obj, file in (
        ("lr", LogisticRegression(max_iter=1000).fit(X, y), "model.joblib"),
        ("ridge", Ridge().fit(X[:, :3], X[:, 3]), "model.joblib"),
    ):
        dirs[key] = root / key
        dirs[key].mkdir()
        joblib.dump(obj, dirs[key] / file)
    xgbc = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(X, y)
    dirs["xgbc"] = root / "xgbc"
    dirs["xgbc"].mkdir()
    xgbc.save_model(str(dirs["xgbc"] / "model.json"))
    Xb = np.random.default_rng(0).normal(size=(60, 3))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2},
                        xgb.DMatrix(Xb, label=(Xb[:, 0] > 0).astype(int)), 4)
    dirs["booster"] = root / "booster"
    dirs["booster"].mkdir()
    booster.save_model(str(dirs["booster"] / "model.json"))
    # LightGBM: the text model file lgbserver loads (one .bst), from the sklearn wrapper.
    for key, est, Xl, yl in (
        ("lgbc", lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1), X, y),
        ("lgb-binary", lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1), X,
         (y == 2).astype(int)),
        ("lgb-regressor", lgb.LGBMRegressor(n_estimators=5, num_leaves=4, verbose=-1),
         X[:, :3], X[:, 3]),
    ):
        dirs[key] = root / key
        dirs[key].mkdir()
        est.fit(Xl, yl).booster_.save_model(str(dirs[key] / "model.bst"))
    return dirs


CASES = {
    # key: (artifact, runtime, PREDICT_PROBA)
    "sk-lr": ("lr", "kserve-sklearnserver", False),
    "sk-lr-proba": ("lr", "kserve-sklearnserver", True),
    "sk-ridge-proba": ("ridge", "kserve-sklearnserver", True),  # no predict_proba: predict
    "xgb-classifier": ("xgbc", "kserve-xgbserver", False),  # the booster's probabilities
    "xgb-classifier-proba": ("xgbc", "kserve-xgbserver", True),  # PREDICT_PROBA is not read
    "xgb-booster": ("booster", "kserve-xgbserver", False),
    "lgb-classifier": ("lgbc", "kserve-lgbserver", False),  # the booster's probabilities
    "lgb-classifier-proba": ("lgbc", "kserve-lgbserver", True),  # PREDICT_PROBA is not read
    "lgb-binary": ("lgb-binary", "kserve-lgbserver", False),  # p(positive class) alone
    "lgb-regressor": ("lgb-regressor", "kserve-lgbserver", False),
}


@pytest.fixture(scope="module")
def ours(tmp_path_factory, artifacts) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("fidelity-logs")
    procs = {}
    try:
        for key, (art, runtime, proba) in CASES.items():
            procs[key] = start_server(
                "predictor", "model", artifacts[art], log_path=logs / f"{key}.log",
                env={"PREDICT_PROBA": "true" if proba else "false"},
                extra_args=[f"--serving_runtime={runtime}"],
            )
        for p in procs.values():
            wait_ready(p.url, timeout=180, proc=p)
        yield procs
    finally:
        for p in procs.values():
            stop_server(p)


def _theirs(kserve_models, artifacts, key: str, monkeypatch) -> Any:
    art, runtime, proba = CASES[key]
    monkeypatch.setenv("PREDICT_PROBA", "true" if proba else "false")
    cls = kserve_models[runtime]
    model = cls("model", str(artifacts[art])) if runtime == "kserve-sklearnserver" else cls(
        "model", str(artifacts[art]), 1
    )
    model.load()
    return model


def _rows(key: str, iris) -> np.ndarray:
    if CASES[key][0] in ("ridge", "lgb-regressor"):
        return iris[0][:6, :3]
    if CASES[key][0] == "booster":
        return np.random.default_rng(1).normal(size=(6, 3))
    return iris[0][::25]


@pytest.mark.parametrize("key", list(CASES))
def test_v1_answers_equal_kserve_runtime(ours, kserve_models, artifacts, iris, key, monkeypatch):
    X = _rows(key, iris)
    theirs = _theirs(kserve_models, artifacts, key, monkeypatch)
    expected = theirs.predict({"instances": X.tolist()})
    r = httpx.post(f"{ours[key].url}/v1/models/model:predict",
                   json={"instances": X.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == expected


@pytest.mark.parametrize("key", list(CASES))
def test_v2_answers_equal_kserve_runtime(ours, kserve_models, artifacts, iris, key, monkeypatch):
    from kserve import InferInput, InferRequest

    X = _rows(key, iris)
    theirs = _theirs(kserve_models, artifacts, key, monkeypatch)
    inp = InferInput("input-0", list(X.shape), "FP64")
    inp.set_data_from_numpy(X, binary_data=False)
    expected, _ = theirs.predict(InferRequest("model", [inp])).to_rest()
    r = httpx.post(f"{ours[key].url}/v2/models/model/infer", json=v2_body(X), timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["outputs"]
    want = expected["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in got] == [
        (o["name"], o["datatype"], o["shape"]) for o in want
    ]
    assert [o["data"] for o in got] == [o["data"] for o in want]


@pytest.mark.parametrize("key", ["sk-lr", "xgb-classifier"])
def test_stock_runtimes_ignore_a_requests_predict_proba(ours, iris, key):
    """The stock servers read PREDICT_PROBA only when they start, and ignore a request's
    ``predict_proba``: the rehearsal answers as they would (Endpoint.predict(proba=True)
    refuses such an endpoint instead)."""
    X = _rows(key, iris)
    url = f"{ours[key].url}/v1/models/model:predict"
    plain = httpx.post(url, json={"instances": X.tolist()}, timeout=30)
    asked = httpx.post(url, json={"instances": X.tolist(), "predict_proba": True}, timeout=30)
    assert asked.status_code == plain.status_code == 200, asked.text
    assert asked.json() == plain.json()


def test_runtime_refuses_a_directory_it_could_not_load(tmp_path, artifacts):
    """kserve-xgbserver loads only booster files: a joblib directory fails here as there."""
    p = start_server("predictor", "m", artifacts["lr"], log_path=tmp_path / "x.log",
                     extra_args=["--serving_runtime=kserve-xgbserver"], warm=False)
    assert p.wait(timeout=120) == 2
    log = (tmp_path / "x.log").read_text()
    assert "kserve-xgbserver" in log and "model.joblib" in log
