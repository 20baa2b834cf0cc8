"""Model and Transformer: framework detection, signature, the saved layout, names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from kfp_serve.artifacts import ArtifactError, InvalidNameError, Model, Transformer, layout


def _sklearn_models(X, y):
    from sklearn.cluster import KMeans
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "classifier": RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y),
        "regressor": LinearRegression().fit(X, y),
        "pipeline": make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3)).fit(
            X, y
        ),
        "clusterer": KMeans(n_clusters=3, n_init=1, random_state=0).fit(X),
    }


@pytest.mark.parametrize(
    ("which", "output", "classes", "proba"),
    [
        ("classifier", "label", [0, 1, 2], True),
        ("regressor", "value", None, False),
        ("pipeline", "label", [0, 1, 2], True),
        ("clusterer", "label", None, False),
    ],
)
def test_sklearn_signature_and_layout(home, iris, tmp_path, which, output, classes, proba):
    X, y = iris
    model = Model(model=_sklearn_models(X, y)[which], name="m", version="2.0.0")
    assert model.framework == "sklearn"
    sig = model.signature
    assert (sig["n_features"], sig["output"], sig["classes"], sig["proba"]) == (
        4,
        output,
        classes,
        proba,
    )
    saved = model.save(tmp_path / "out")
    # The stock sklearnserver layout: one top-level *.joblib, plus the YAML metadata file.
    assert sorted(p.name for p in saved.iterdir()) == [layout.METADATA_FILE, layout.MODEL_JOBLIB]
    meta = layout.read_metadata(saved)
    assert meta["kind"] == "model" and meta["framework"] == "sklearn"
    assert meta["signature"] == sig
    assert layout.model_file(saved) == saved / layout.MODEL_JOBLIB
    assert joblib.load(saved / layout.MODEL_JOBLIB).predict(X[:2]) is not None


@pytest.mark.parametrize("kind", ["classifier", "regressor", "booster"])
def test_xgboost_models_save_native_json(iris, tmp_path, kind):
    import xgboost

    X, y = iris
    if kind == "regressor":
        fitted = xgboost.XGBRegressor(n_estimators=3).fit(X, y)
    else:
        fitted = xgboost.XGBClassifier(n_estimators=3).fit(X, y)
    if kind == "booster":
        fitted = fitted.get_booster()
    model = Model(model=fitted, name="xgb")
    assert model.framework == "xgboost"
    assert model.framework_version == xgboost.__version__
    assert model.signature["n_features"] == 4
    saved = model.save(tmp_path / "x")
    names = sorted(p.name for p in saved.iterdir())
    # xgbserver refuses two *.json files: the metadata must not be one.
    assert names == [layout.METADATA_FILE, layout.XGBOOST_JSON]
    booster = xgboost.Booster(model_file=str(saved / layout.XGBOOST_JSON))
    assert booster.num_features() == 4
    expected_output = {"classifier": "label", "regressor": "value", "booster": "value"}[kind]
    assert model.signature["output"] == expected_output


@pytest.mark.parametrize(
    "obj",
    [object(), {"weights": [1, 2]}, "model.pkl"],
    ids=["object", "dict", "str"],
)
def test_unsupported_model_lists_what_is_supported(obj):
    with pytest.raises(ArtifactError, match="supports scikit-learn.*XGBoost.*xgboost.Booster"):
        Model(model=obj, name="m")


def test_unfitted_model_is_refused():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(ArtifactError, match="not fitted"):
        Model(model=LogisticRegression(), name="m")


def test_transformer_as_model_points_to_transformer(scaler):
    with pytest.raises(ArtifactError, match="Transformer"):
        Model(model=scaler, name="m")


@pytest.mark.parametrize(
    ("name", "version"),
    [("Iris", "1.0.0"), ("iris_model", "1.0.0"), ("../etc", "1"), ("iris", "../1"), ("iris", "")],
)
def test_bad_names_and_versions_are_refused(classifier, name, version):
    with pytest.raises(InvalidNameError):
        Model(model=classifier, name=name, version=version)


def test_input_example_records_dtype_and_must_predict(classifier, iris):
    import numpy as np

    X, _ = iris
    model = Model(model=classifier, name="m", input_example=X[:3].astype(np.float32))
    assert model.signature["dtype"] == "float32"
    with pytest.raises(ArtifactError, match="cannot predict"):
        Model(model=classifier, name="m", input_example=[[1.0, 2.0]])


def test_transformer_from_object_and_from_dir(scaler, tmp_path):
    t = Transformer(name="scaler", transformer=scaler)
    assert t.signature["n_features"] == 4 and t.signature["n_features_out"] == 4
    saved = t.save(tmp_path / "t")
    assert sorted(p.name for p in saved.iterdir()) == [
        layout.METADATA_FILE,
        layout.TRANSFORMER_JOBLIB,
    ]
    assert layout.read_metadata(saved)["kind"] == "transformer"

    src = tmp_path / "src"
    src.mkdir()
    joblib.dump(scaler, src / layout.TRANSFORMER_JOBLIB)
    (src / "vocab.txt").write_text("extra files are kept")
    from_dir = Transformer(name="scaler", transformer_dir=src)
    saved2 = from_dir.save(tmp_path / "t2")
    assert (saved2 / "vocab.txt").read_text() == "extra files are kept"


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("empty", "has no 'transformer.joblib'"),
        ("garbage", "cannot load"),
        ("no-transform", "no transform"),
        ("missing", "not a directory"),
    ],
)
def test_transformer_dir_must_hold_a_loadable_transformer(tmp_path, setup, match):
    d = tmp_path / "d"
    if setup != "missing":
        d.mkdir()
    if setup == "garbage":
        (d / layout.TRANSFORMER_JOBLIB).write_bytes(b"not a pickle")
    if setup == "no-transform":
        joblib.dump({"a": 1}, d / layout.TRANSFORMER_JOBLIB)
    with pytest.raises(ArtifactError, match=match):
        Transformer(name="t", transformer_dir=d)


def test_transformer_needs_exactly_one_source(scaler, tmp_path):
    with pytest.raises(ArtifactError, match="exactly one"):
        Transformer(name="t")
    with pytest.raises(ArtifactError, match="exactly one"):
        Transformer(name="t", transformer=scaler, transformer_dir=tmp_path)


def test_metadata_file_is_deterministic(classifier, tmp_path):
    a = Model(model=classifier, name="m").save(tmp_path / "a")
    b = Model(model=classifier, name="m").save(tmp_path / "b")
    # No timestamps: identical models give identical trees, so snapshots deduplicate.
    for name in (layout.METADATA_FILE, layout.MODEL_JOBLIB):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_read_metadata_errors_name_the_directory(tmp_path):
    with pytest.raises(ArtifactError, match="kfp-serve-metadata.yaml"):
        layout.read_metadata(tmp_path)
    (tmp_path / layout.METADATA_FILE).write_text(json.dumps({"kind": "model"}))
    with pytest.raises(ArtifactError, match="missing keys"):
        layout.read_metadata(tmp_path)


def test_import_artifacts_is_cheap():
    code = (
        "import sys, time; t = time.perf_counter(); import artifacts; "
        "heavy = [m for m in ('sklearn', 'xgboost', 'ml_metadata', 'yaml', 'rich', 'boto3') "
        "if m in sys.modules]; print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    ).stdout.split(" ", 1)
    assert out[0] == "[]", out
    assert float(out[1]) < 0.5
