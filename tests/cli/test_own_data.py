"""Training on the user's own CSV, serving it, and asking it with a DataFrame and --proba."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from tests.cli.conftest import assert_clean_error, last_error, run_script, stop_quietly

SUFFIX = uuid.uuid4().hex[:6]
ENDPOINT = f"cli-churn-{SUFFIX}"
FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_hours"]


@pytest.fixture(scope="module")
def churn_csv(tmp_path_factory, iris):
    """A CSV with named feature columns and a ``churned`` label column."""
    import pandas as pd

    X, y = iris
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["churned"] = y
    path = tmp_path_factory.mktemp("data") / "churn.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def churn_run(churn_csv):
    outcome = run_script(
        "run", "sklearn-transformer", "--param", f"dataset={churn_csv}",
        "--param", "target_column=churned", "-p", f"endpoint_name={ENDPOINT}",
        "-p", f"model_name=churn-{SUFFIX}", "-p", f"transformer_name=churn-scaler-{SUFFIX}",
        "-o", "json", timeout=300,
    )
    assert outcome.exit_code == 0, outcome.stderr[-3000:]
    yield json.loads(outcome.stdout)
    stop_quietly(ENDPOINT)


def test_the_columns_become_the_models_feature_names(churn_run):
    from kfp_serve import artifacts

    assert churn_run["blessed"] is True
    record = artifacts.get_artifact(churn_run["model_id"])
    assert record.signature["feature_names"] == FEATURES


def test_the_endpoint_takes_a_dataframe_by_column_name(churn_run, iris):
    import pandas as pd

    from kfp_serve.serving.endpoint import Endpoint

    X, _ = iris
    rows = X[[0, 75, 149]]
    endpoint = Endpoint(ENDPOINT)
    by_position = endpoint.predictions(rows.tolist())
    # Columns in another order: matched by name, not position.
    frame = pd.DataFrame(rows, columns=FEATURES)[list(reversed(FEATURES))]
    assert endpoint.predictions(frame) == by_position
    assert by_position == [0, 1, 2]


def test_explain_labels_attributions_with_the_feature_names(churn_run):
    outcome = run_script("explain", ENDPOINT, "--data", "[[5.1, 3.5, 1.4, 0.2]]", timeout=60)
    assert outcome.exit_code == 0, outcome.stderr
    assert FEATURES[0] in outcome.stdout and FEATURES[-1] in outcome.stdout


def test_predict_proba_on_a_stock_runtime_names_serve_proba(churn_run):
    """The pipeline serves on kserve-sklearnserver, which reads PREDICT_PROBA only when it
    starts (and ignores a request's choice): the CLI says how to serve it."""
    outcome = run_script("predict", ENDPOINT, "--proba", "--data", "[[5.1, 3.5, 1.4, 0.2]]",
                         timeout=60)
    assert_clean_error(outcome, "runs kserve-sklearnserver", "kfp-serve serve MODEL_ID --proba")


def test_predict_proba_asks_the_kfp_serve_runtime_per_request(cli, iris_model, iris):
    """On kfp-serve's runtime (labels by default) ``--proba`` gets one probability per class
    for that request, and the next request without it gets labels again."""
    model_id, estimator = iris_model
    name = f"cli-perreq-{SUFFIX}"
    rows = iris[0][[0, 149]]
    config = json.dumps({"predictor": {"runtime": "kfp-serve"}})
    try:
        served = run_script("serve", str(model_id), "--name", name, "--config", config,
                            timeout=180)
        assert served.exit_code == 0, served.stderr
        outcome = run_script("predict", name, "--proba", "--data", json.dumps(rows.tolist()),
                             timeout=60)
        assert outcome.exit_code == 0, outcome.stderr
        probabilities = json.loads(outcome.stdout)["predictions"]
        np.testing.assert_allclose(probabilities, estimator.predict_proba(rows), atol=1e-9)
        labels = run_script("predict", name, "--data", json.dumps(rows.tolist()), timeout=60)
        assert json.loads(labels.stdout)["predictions"] == estimator.predict(rows).tolist()
        # The same from Python, over v2 (``parameters.predict_proba``).
        from kfp_serve.serving.endpoint import Endpoint

        answer = Endpoint(name).predict(rows, protocol="v2", proba=True)["outputs"][0]
        got = np.asarray(answer["data"]).reshape(answer["shape"])
        np.testing.assert_allclose(got, estimator.predict_proba(rows), atol=1e-9)
    finally:
        stop_quietly(name)


def test_serve_proba_then_predict_proba_gives_probabilities(cli, iris_model):
    model_id, estimator = iris_model
    name = f"cli-proba-{SUFFIX}"
    try:
        served = run_script("serve", str(model_id), "--name", name, "--proba", timeout=180)
        assert served.exit_code == 0, served.stderr
        outcome = run_script("predict", name, "--proba", "--data", "[[5.1, 3.5, 1.4, 0.2]]",
                             timeout=60)
        assert outcome.exit_code == 0, outcome.stderr
        answer = json.loads(outcome.stdout)
        probabilities = answer["predictions"][0]
        expected = estimator.predict_proba([[5.1, 3.5, 1.4, 0.2]])[0]
        assert probabilities == pytest.approx(list(expected), abs=1e-6)
    finally:
        stop_quietly(name)


def test_run_trains_on_an_s3_dataset(s3_endpoint, churn_csv, monkeypatch):
    """``--param dataset=s3://...`` reads through the S3 settings of an s3:// snapshot store."""
    import boto3

    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_endpoint)):
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="cli-data")
    client.put_object(Bucket="cli-data", Key="churn.csv", Body=churn_csv.read_bytes())
    name = f"cli-s3-{SUFFIX}"
    try:
        outcome = run_script(
            "run", "sklearn-transformer", "-p", "dataset=s3://cli-data/churn.csv",
            "-p", "target_column=churned", "-p", f"endpoint_name={name}",
            "-p", f"model_name={name}", "-p", f"transformer_name={name}-scaler", "-o", "json",
            timeout=300,
        )
        assert outcome.exit_code == 0, outcome.stderr[-3000:]
        from kfp_serve import artifacts

        record = artifacts.get_artifact(json.loads(outcome.stdout)["model_id"])
        assert record.signature["feature_names"] == FEATURES
        lineage = run_script("lineage", str(record.id), timeout=60)
        assert "dataset s3://cli-data/churn.csv" in lineage.stdout, lineage.stdout
        missing = run_script("run", "sklearn-transformer", "-p", "dataset=s3://cli-data/no.csv",
                             "-p", "target_column=churned", "-p", f"endpoint_name={name}",
                             timeout=300)
        error, _ = last_error(missing)
        assert "step 'train' failed" in error and "'s3://cli-data/no.csv' does not exist" in error
    finally:
        stop_quietly(name)
