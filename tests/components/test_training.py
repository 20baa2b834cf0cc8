"""kfp_serve.artifacts.training.train_model: the logic behind the train component, with tmp_path."""

import json

import joblib
import pandas as pd
import pytest

from kfp_serve.artifacts.errors import ArtifactError
from kfp_serve.artifacts.layout import MODEL_JOBLIB, TRANSFORMER_JOBLIB, XGBOOST_JSON
from kfp_serve.artifacts.training import NO_TRANSFORMER_MARKER, read_samples, train_model


def test_sklearn_with_transformer_writes_layout_and_samples(tmp_path):
    result = train_model(
        model_dir=tmp_path / "model", transformer_dir=tmp_path / "transformer",
        samples_path=tmp_path / "samples.json", n_samples=5,
    )
    assert (tmp_path / "model" / MODEL_JOBLIB).is_file()
    assert (tmp_path / "transformer" / TRANSFORMER_JOBLIB).is_file()
    assert result.has_transformer and result.framework == "sklearn"
    assert result.metrics["accuracy"] > 0.8
    assert len(result.confusion_matrix) == len(result.class_names) == 3
    assert sum(map(sum, result.confusion_matrix)) == result.n_test == 30

    samples = read_samples(tmp_path / "samples.json")
    assert len(samples["instances"]) == len(samples["expected"]) == 5
    # Instances are raw features: transformer then model reproduces the expected labels.
    model = joblib.load(tmp_path / "model" / MODEL_JOBLIB)
    scaler = joblib.load(tmp_path / "transformer" / TRANSFORMER_JOBLIB)
    assert model.predict(scaler.transform(samples["instances"])).tolist() == samples["expected"]
    assert len(samples["expected_values"][0]) == 3


def test_xgboost_without_transformer_leaves_marker(tmp_path):
    result = train_model(
        model_dir=tmp_path / "m", transformer_dir=tmp_path / "t", samples_path=tmp_path / "s",
        framework="xgboost", estimator="xgb_classifier", preprocessing="none",
        dataset_name="breast_cancer", hyperparameters='{"n_estimators": 5}',
    )
    assert (tmp_path / "m" / XGBOOST_JSON).is_file()
    assert not result.has_transformer
    assert (tmp_path / "t" / NO_TRANSFORMER_MARKER).is_file()
    assert result.n_features == 30
    samples = json.loads((tmp_path / "s").read_text())
    assert set(samples["expected"]) <= {0, 1}


def test_csv_dataset_with_string_labels(tmp_path):
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map({0: "setosa", 1: "versicolor", 2: "virginica"})
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    result = train_model(
        model_dir=tmp_path / "m", samples_path=tmp_path / "s.json", dataset_path=csv,
        target_column="species", preprocessing="none", estimator="random_forest",
    )
    assert result.class_names == ["setosa", "versicolor", "virginica"]
    assert result.dataset == "data.csv"
    assert set(read_samples(tmp_path / "s.json")["expected"]) <= set(result.class_names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"framework": "torch"}, "unknown framework", id="framework"),
        pytest.param({"estimator": "svm"}, "unknown estimator", id="estimator"),
        pytest.param({"preprocessing": "pca"}, "unknown preprocessing", id="preprocessing"),
        pytest.param({"dataset_name": "mnist"}, "unknown built-in dataset", id="dataset"),
        pytest.param({"hyperparameters": "{C: 1}"}, "must be a JSON object", id="bad-json"),
        pytest.param({"hyperparameters": "[1]"}, "must be a JSON object", id="not-object"),
        pytest.param({"hyperparameters": '{"nope": 1}'}, "nope", id="unknown-hyperparameter"),
        pytest.param({"test_size": 1.5}, "test_size", id="test-size"),
        pytest.param({"n_samples": 0}, "n_samples", id="n-samples"),
        pytest.param({"data_slice": 3, "data_slices": 3}, "data_slice must be between 0 and",
                     id="slice-past-the-end"),
        pytest.param({"data_slices": 0}, "data_slices at least 1", id="no-slices"),
    ],
)
def test_bad_arguments_name_the_problem(tmp_path, kwargs, message):
    kwargs = {"transformer_dir": tmp_path / "t", **kwargs}
    with pytest.raises(ArtifactError, match=message):
        train_model(model_dir=tmp_path / "m", samples_path=tmp_path / "s", **kwargs)


def test_missing_target_column_lists_columns(tmp_path):
    csv = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2, 3, 4, 5], "b": [0, 1, 0, 1, 0]}).to_csv(csv, index=False)
    with pytest.raises(ArtifactError, match=r"no target column 'target'.*\['a', 'b'\]"):
        train_model(model_dir=tmp_path / "m", samples_path=tmp_path / "s", dataset_path=csv,
                    preprocessing="none")


def test_transformer_requires_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="transformer_dir"):
        train_model(model_dir=tmp_path / "m", samples_path=tmp_path / "s")


def _tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("framework, estimator, preprocessing", [
    ("sklearn", "logistic_regression", "standard_scaler"),
    ("sklearn", "random_forest", "min_max_scaler"),
    ("xgboost", "xgb_classifier", "none"),
])
def test_the_same_seed_and_data_save_the_same_bytes(tmp_path, framework, estimator,
                                                    preprocessing):
    """What makes a re-run reuse the recorded artifact instead of failing on a duplicate."""
    trees = []
    for run, seed in (("a", 42), ("b", 42), ("c", 7)):
        root = tmp_path / run
        train_model(model_dir=root / "model", transformer_dir=root / "transformer",
                    samples_path=root / "samples.json", framework=framework,
                    estimator=estimator, preprocessing=preprocessing, random_state=seed,
                    dataset_name="wine")
        trees.append(_tree_bytes(root))
    assert trees[0] == trees[1]
    if estimator != "logistic_regression":  # lbfgs does not use the seed; the split does
        assert trees[0] != trees[2]


def test_a_dataset_uri_keeps_its_column_names(tmp_path):
    from kfp_serve.artifacts.layout import read_metadata

    frame = pd.DataFrame({"age": [20, 30, 40, 50, 60, 70, 25, 35, 45, 55],
                          "income": [1, 3, 2, 5, 4, 6, 2, 3, 4, 5],
                          "churned": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]})
    path = tmp_path / "churn.parquet"
    frame.to_parquet(path)
    result = train_model(model_dir=tmp_path / "model", transformer_dir=tmp_path / "t",
                         samples_path=tmp_path / "s.json", dataset_path=f"file://{path}",
                         target_column="churned", test_size=0.3)
    assert result.dataset == "churn.parquet" and result.n_features == 2
    assert read_metadata(tmp_path / "model")["signature"]["feature_names"] == ["age", "income"]
    assert read_samples(tmp_path / "s.json")["feature_names"] == ["age", "income"]


CHURN = pd.DataFrame({"age": [20, 30, 40, 50, 60, 70, 25, 35, 45, 55],
                      "income": [1, 3, 2, 5, 4, 6, 2, 3, 4, 5],
                      "churned": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]})


@pytest.fixture
def s3_data(s3_endpoint, monkeypatch):
    """A bucket ``data`` on the moto server, with the AWS variables an s3:// store reads."""
    boto3 = pytest.importorskip("boto3")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_endpoint)):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket="data")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


@pytest.mark.parametrize(("uri", "parquet"), [
    ("s3://data/churn.csv", False),
    ("s3://data/nested/churn.parquet", True),
    # A Dataset artifact of a KFP run on its MinIO: no suffix, and KFP's own scheme.
    ("minio://data/v2/artifacts/run/train/dataset", True),
    ("minio://data/v2/artifacts/run/train/table", False),
])
def test_an_s3_dataset_is_read_with_the_snapshot_stores_settings(tmp_path, s3_data, uri,
                                                                  parquet):
    import io

    from kfp_serve.artifacts.layout import read_metadata

    buffer = io.BytesIO()
    CHURN.to_parquet(buffer) if parquet else CHURN.to_csv(buffer, index=False)
    key = uri.split("://", 1)[1].split("/", 1)[1]
    s3_data.put_object(Bucket="data", Key=key, Body=buffer.getvalue())
    result = train_model(model_dir=tmp_path / "model", transformer_dir=tmp_path / "t",
                         samples_path=tmp_path / "s.json", dataset_path=uri,
                         target_column="churned", test_size=0.3)
    assert result.dataset == uri and result.n_features == 2  # lineage shows where it was
    assert read_metadata(tmp_path / "model")["signature"]["feature_names"] == ["age", "income"]


def test_an_s3_dataset_that_is_not_there_is_named(tmp_path, s3_data):
    with pytest.raises(ArtifactError, match=r"'s3://data/nope.csv' does not exist"):
        train_model(model_dir=tmp_path / "m", samples_path=tmp_path / "s.json",
                    dataset_path="s3://data/nope.csv", target_column="churned",
                    preprocessing="none")


def test_an_s3_dataset_without_credentials_names_the_variables(tmp_path, monkeypatch):
    pytest.importorskip("boto3")
    # Nothing boto3 could find credentials in: no variables, no shared files, no profile.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ArtifactError) as caught:
        train_model(model_dir=tmp_path / "m", samples_path=tmp_path / "s.json",
                    dataset_path="s3://data/churn.csv", target_column="churned",
                    preprocessing="none")
    message = str(caught.value)
    assert "no S3 credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_ENDPOINT_URL" in message


def test_slices_deal_the_rows_out_round_robin(tmp_path):
    """Each slice learns a third of the rows, every class among them (iris is sorted by label)."""
    whole = train_model(model_dir=tmp_path / "all", samples_path=tmp_path / "all.json",
                        preprocessing="none")
    parts = [
        train_model(model_dir=tmp_path / f"m{i}", samples_path=tmp_path / f"s{i}.json",
                    preprocessing="none", data_slice=i, data_slices=3)
        for i in range(3)
    ]
    assert sum(p.n_train + p.n_test for p in parts) == whole.n_train + whole.n_test == 150
    assert [p.dataset for p in parts] == [f"iris (slice {i} of 3)" for i in (1, 2, 3)]
    assert all(p.class_names == whole.class_names and len(p.class_names) == 3 for p in parts)
    files = [(tmp_path / f"m{i}" / "model.joblib").read_bytes() for i in range(3)]
    assert len(set(files)) == 3  # three different models
