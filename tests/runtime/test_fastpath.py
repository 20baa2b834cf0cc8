"""Fast paths must give exactly what the library's own methods give (bit for bit).

- ``fast_transform``: sklearn scalers (and Pipelines of them) vs ``obj.transform``;
- ``xgb_fast_predict``: ``Booster.inplace_predict`` + the wrapper's post-processing vs
  ``XGBClassifier.predict``/``predict_proba`` and ``XGBRegressor.predict``; and the loader's
  served ``predict`` for model files (sklearn-API JSON and raw Booster files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_iris
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    Normalizer,
    RobustScaler,
    StandardScaler,
)

from kfp_serve.serving.runtime.fastpath import fast_transform
from kfp_serve.serving.runtime.loader import load_model, xgb_fast_predict


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=3.0, scale=[1.0, 10.0, 0.1, 5.0], size=(200, 4))
    Xq = rng.normal(loc=3.0, scale=[2.0, 20.0, 0.3, 9.0], size=(37, 4))  # outside the fit range
    return X, Xq


SCALERS = {
    "standard": lambda: StandardScaler(),
    "standard-no-mean": lambda: StandardScaler(with_mean=False),
    "standard-no-std": lambda: StandardScaler(with_std=False),
    "standard-copy-false": lambda: StandardScaler(copy=False),
    "robust": lambda: RobustScaler(),
    "robust-no-centering": lambda: RobustScaler(with_centering=False),
    "robust-no-scaling": lambda: RobustScaler(with_scaling=False),
    "minmax": lambda: MinMaxScaler(),
    "minmax-range-clip": lambda: MinMaxScaler(feature_range=(-2, 3), clip=True),
    "maxabs": lambda: MaxAbsScaler(),
    "pipeline": lambda: make_pipeline(StandardScaler(), "passthrough", MinMaxScaler(clip=True)),
}


@pytest.mark.parametrize("key", list(SCALERS))
def test_fast_transform_is_bit_identical(key: str):
    X, Xq = _data()
    obj = SCALERS[key]().fit(X)
    fast = fast_transform(obj)
    assert fast is not None
    for rows in (Xq, Xq[:1], Xq[5:6].copy(order="F"), np.asfortranarray(Xq)):
        before = rows.copy()
        expected = obj.transform(rows.copy())
        got = fast(rows)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected, strict=True)
        np.testing.assert_array_equal(rows, before)  # the caller's array is left alone


def test_fast_transform_nan_and_zero_variance_columns_match():
    X, Xq = _data()
    X[:, 2] = 7.0  # zero variance: sklearn's scale_ is 1 for it
    Xq[::3, 1] = np.nan
    for make in (StandardScaler, RobustScaler, MinMaxScaler, MaxAbsScaler):
        obj = make().fit(X)
        np.testing.assert_array_equal(fast_transform(obj)(Xq), obj.transform(Xq))


def test_fast_transform_falls_back_for_other_input():
    X, Xq = _data()
    obj = StandardScaler().fit(X)
    fast = fast_transform(obj)
    frame = pd.DataFrame(Xq)
    np.testing.assert_array_equal(fast(frame), obj.transform(frame))
    ints = np.rint(Xq).astype(np.int64)
    np.testing.assert_array_equal(fast(ints), obj.transform(ints))
    with pytest.raises(ValueError, match="features"):
        fast(Xq[:, :3])  # sklearn's own check and message


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda X: Normalizer().fit(X), id="other-transformer"),
        pytest.param(
            lambda X: StandardScaler().set_output(transform="pandas").fit(X), id="set-output-pandas"
        ),
        pytest.param(
            lambda X: make_pipeline(StandardScaler(), Normalizer()).fit(X),
            id="pipeline-with-other-step",
        ),
        pytest.param(lambda X: type("MyScaler", (StandardScaler,), {})().fit(X), id="subclass"),
    ],
)
def test_no_fast_transform_when_not_exact(make):
    X, _ = _data()
    assert fast_transform(make(X)) is None


# --------------------------------------------------------------------------------------------
# XGBoost


def _xgb_cases() -> dict[str, tuple[object, np.ndarray]]:
    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(3)
    Xb = rng.normal(size=(300, 5))
    yb = (Xb[:, 0] + Xb[:, 1] * Xb[:, 2] > 0).astype(int)
    Xq = np.vstack([X[::7], X[::7] + rng.normal(scale=0.5, size=X[::7].shape)])
    Xbq = rng.normal(size=(40, 5))
    Xbq[::4, 1] = np.nan  # missing values take the default branch
    small = {"n_estimators": 8, "max_depth": 3}
    return {
        "multiclass": (xgb.XGBClassifier(**small).fit(X, y), Xq),
        "multi-softmax": (xgb.XGBClassifier(objective="multi:softmax", **small).fit(X, y), Xq),
        "binary": (xgb.XGBClassifier(**small).fit(Xb, yb), Xbq),
        "binary-early-stop": (
            xgb.XGBClassifier(n_estimators=50, max_depth=3, early_stopping_rounds=2).fit(
                Xb[:200], yb[:200], eval_set=[(Xb[200:], yb[200:])], verbose=False
            ),
            Xbq,
        ),
        "regressor": (xgb.XGBRegressor(**small).fit(Xb, Xb[:, 0] * 2 + 1), Xbq),
    }


XGB_CASES = _xgb_cases()


@pytest.mark.parametrize("key", list(XGB_CASES))
@pytest.mark.parametrize("proba", [False, True], ids=["predict", "proba"])
def test_xgb_fast_predict_is_identical(key: str, proba: bool):
    est, Xq = XGB_CASES[key]
    if proba and not isinstance(est, xgb.XGBClassifier):
        assert xgb_fast_predict(est, proba) is None
        return
    fast = xgb_fast_predict(est, proba)
    if proba and key == "multi-softmax":
        assert fast is None  # softmax over margins: the wrapper's own method is used
        return
    assert fast is not None
    method = est.predict_proba if proba else est.predict
    for rows in (Xq, Xq[:1]):
        expected = method(rows)
        got = fast(rows)
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.parametrize("key", ["multiclass", "binary", "regressor", "multi-softmax"])
@pytest.mark.parametrize("proba", [False, True], ids=["predict", "proba"])
def test_served_xgboost_json_matches_the_wrapper(tmp_path: Path, key: str, proba: bool):
    """model.json saved from the sklearn API: served labels/probabilities == in-process."""
    est, Xq = XGB_CASES[key]
    if proba and isinstance(est, xgb.XGBRegressor):
        return
    est.save_model(str(tmp_path / "model.json"))
    served = load_model(tmp_path, predict_proba=proba)
    rows = Xq.astype(np.float32)  # the codec hands XGBoost float32
    expected = (est.predict_proba if proba else est.predict)(rows)
    np.testing.assert_array_equal(served.predict(rows), expected, strict=True)


def test_served_booster_files_match_booster_predict(tmp_path: Path):
    X, y = load_iris(return_X_y=True)
    for name, params, label in (
        ("binary", {"objective": "binary:logistic"}, (y > 0).astype(int)),
        ("multi", {"objective": "multi:softprob", "num_class": 3}, y),
    ):
        booster = xgb.train({**params, "max_depth": 2}, xgb.DMatrix(X, label=label), 6)
        d = tmp_path / name
        d.mkdir()
        booster.save_model(str(d / "model.ubj"))
        served = load_model(d)
        rows = X[::9].astype(np.float32)
        np.testing.assert_array_equal(served.predict(rows), booster.predict(xgb.DMatrix(rows)))
