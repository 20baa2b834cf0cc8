"""serve(): artifacts in MLMD to a manifest (dry run) and to a working local endpoint."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kfp_serve import artifacts
from kfp_serve.artifacts.errors import MetadataError
from kfp_serve.serving import ServeConfigError, constants, serve
from kfp_serve.serving.backends.local import LocalBackend
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError
from tests.kserve_schema import reference_available, validate_strict


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def fitted():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    return X, scaler, model


@pytest.fixture
def submitted(home, fitted):
    _, scaler, model = fitted
    model_id = artifacts.Model(model=model, name="iris", version="1.0.0").submit_artifact()
    transformer_id = artifacts.Transformer(name="iris-scaler", transformer=scaler).submit_artifact()
    return model_id, transformer_id


def test_dry_run_resolves_ids_to_snapshots_and_records_provenance(submitted):
    model_id, transformer_id = submitted
    manifest = serve(
        model_id,
        transformer_id,
        serve_config={"limits": {"memory": "1Gi"}},
        name="iris",
        dry_run=True,
    )
    model, transformer = artifacts.get_artifact(model_id), artifacts.get_artifact(transformer_id)
    # Serving snapshots what it serves, and links the snapshot in MLMD.
    assert model.snapshot_uri and transformer.snapshot_uri
    predictor = manifest["spec"]["predictor"]["model"]
    assert predictor["storageUri"] == model.snapshot_uri
    assert predictor["modelFormat"] == {"name": "sklearn"}
    (container,) = manifest["spec"]["transformer"]["containers"]
    assert {"name": "STORAGE_URI", "value": transformer.snapshot_uri} in container["env"]
    labels = manifest["metadata"]["labels"]
    assert labels[constants.LABEL_MODEL_ID] == str(model_id)
    assert labels[constants.LABEL_TRANSFORMER_ID] == str(transformer_id)
    assert labels[constants.LABEL_MODEL_VERSION] == "1.0.0"
    assert [s["uri"] for s in artifacts.lineage(model_id)["snapshots"]] == [model.snapshot_uri]
    # A dry run applies nothing.
    assert LocalBackend(progress=False).list() == []
    if reference_available():
        assert validate_strict(manifest) == []


def test_dry_run_twice_reuses_the_snapshot(submitted):
    model_id, transformer_id = submitted
    first = serve(model_id, transformer_id, name="iris", dry_run=True)
    assert serve(model_id, transformer_id, name="iris", dry_run=True) == first
    assert len(artifacts.lineage(model_id)["snapshots"]) == 1


def test_accepts_model_objects_and_bare_estimators(home, fitted):
    _, scaler, model = fitted
    from_object = serve(artifacts.Model(model=model, name="obj"), dry_run=True)
    assert from_object["metadata"]["name"] == "obj"
    first = serve(model, scaler, name="bare", dry_run=True)
    again = serve(model, scaler, name="bare", dry_run=True)
    # The same fitted objects are the same artifacts: a notebook cell can be re-run.
    assert first == again
    assert {r.name for r in artifacts.list_artifacts()} == {"obj", "bare", "bare-transformer"}


@pytest.mark.parametrize(
    "call, error, words",
    [
        pytest.param(
            lambda ids: serve(987654, dry_run=True), MetadataError, "987654", id="unknown-id"
        ),
        pytest.param(
            lambda ids: serve(ids[1], dry_run=True),
            MetadataError,
            "is a transformer",
            id="transformer-as-model",
        ),
        pytest.param(
            lambda ids: serve(ids[0], ids[0], dry_run=True),
            MetadataError,
            "is a model",
            id="model-as-transformer",
        ),
        pytest.param(
            lambda ids: serve(ids[0], serve_config={"limitz": {}}, dry_run=True),
            ServeConfigError,
            "limitz",
            id="bad-config",
        ),
        pytest.param(
            lambda ids: serve(ids[0], name="../iris", dry_run=True),
            ValueError,
            "name",
            id="bad-name",
        ),
        pytest.param(
            lambda ids: serve(object(), name="x", dry_run=True),
            ValueError,
            "supported",
            id="unsupported-object",
        ),
    ],
)
def test_bad_calls_fail_clearly_and_record_nothing(submitted, call, error, words):
    before = [r.to_dict() for r in artifacts.list_artifacts()]
    with pytest.raises(error, match=words):
        call(submitted)
    assert [r.to_dict() for r in artifacts.list_artifacts()] == before


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_served_predictions_equal_in_process_and_stop_removes_it(submitted, fitted, protocol):
    from kfp_serve.cli import app

    X, scaler, model = fitted
    model_id, transformer_id = submitted
    name = f"iris-{protocol}"
    endpoint = serve(
        model_id,
        transformer_id,
        name=name,
        timeout=120,
        serve_config={"protocol_version": protocol},
    )
    try:
        rows = X[::7]
        expected = model.predict(scaler.transform(rows)).tolist()
        assert endpoint.predictions(rows) == expected
        assert Endpoint(name).predictions(rows.tolist()) == expected
        deployments = artifacts.lineage(model_id)["deployments"]
        assert [d["endpoint"] for d in deployments] == [name]
    finally:
        result = CliRunner().invoke(app, ["stop", name])
    assert result.exit_code == 0, result.output
    assert [s.name for s in LocalBackend(progress=False).list()] == []
    with pytest.raises(ServingError):
        Endpoint(name).predict(rows.tolist())


def test_served_manifest_is_the_dry_run_manifest(submitted):
    model_id, transformer_id = submitted
    dry = serve(model_id, transformer_id, name="same", dry_run=True)
    endpoint = serve(model_id, transformer_id, name="same", timeout=120)
    try:
        assert endpoint.status.manifest == dry
        assert json.loads(dry["metadata"]["annotations"][constants.ANNOTATION_SERVE_CONFIG]) == {}
        assert np.array(endpoint.predictions([[5.1, 3.5, 1.4, 0.2]])).shape == (1,)
    finally:
        LocalBackend(progress=False).delete("same")
