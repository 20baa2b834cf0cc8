"""The ``train`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple, Optional

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kfp_serve.components.defs._base import component


@component
def train(
    model: Output[Model],
    transformer: Output[Artifact],
    samples: Output[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    dataset: Optional[Input[Dataset]] = None,  # noqa: UP045 - KFP reads Optional, not X | None
    dataset_uri: str = "",
    dataset_name: str = "iris",
    target_column: str = "target",
    framework: str = "sklearn",
    estimator: str = "logistic_regression",
    preprocessing: str = "standard_scaler",
    hyperparameters: str = "{}",
    test_size: float = 0.2,
    random_state: int = 42,
    n_samples: int = 10,
    data_slice: int = 0,
    data_slices: int = 1,
) -> NamedTuple("TrainOutputs", [("has_transformer", bool), ("accuracy", float)]):
    """Train a scikit-learn or XGBoost classifier and save it in KServe's model layout.

    The data is a CSV or Parquet file with a target column (an input Dataset, a path or a URI),
    or a scikit-learn built-in dataset by name; the file's column names become the model's
    feature names. An optional preprocessing transformer (a scaler) is fitted alongside and
    saved separately, so it can be served as a KServe transformer in front of the model. A
    held-out part of the data gives the metrics, the confusion matrix and the sample requests
    (with their expected predictions) that smoke_predict later sends to the endpoint.

    Args:
        model: The fitted model directory (model.joblib or model.json).
        transformer: The fitted transformer directory (transformer.joblib); empty when
            preprocessing is "none".
        samples: Held-out requests and the predictions the endpoint must return (JSON).
        metrics: Accuracy, macro F1 and training time on the held-out data.
        confusion_matrix: Confusion matrix on the held-out data.
        dataset: A CSV or Parquet file with a target column; leave unconnected to use
            dataset_uri or dataset_name.
        dataset_uri: A CSV or Parquet path or URI (file://, s3://, minio://, gs://, https://)
            read when no dataset is connected; empty to use dataset_name.
        dataset_name: Built-in dataset used when no dataset is given: iris, wine,
            breast_cancer or digits.
        target_column: Name of the label column in the dataset file.
        framework: "sklearn" or "xgboost".
        estimator: sklearn: "logistic_regression" or "random_forest"; xgboost:
            "xgb_classifier".
        preprocessing: "standard_scaler", "min_max_scaler", or "none" for no transformer.
        hyperparameters: Estimator keyword arguments as a JSON object, e.g. {"C": 0.5}.
        test_size: Fraction of rows held out for evaluation (between 0 and 1).
        random_state: Seed for the split and the estimator, for reproducible runs.
        n_samples: Number of held-out rows written as smoke-test requests.
        data_slice: Which slice of the rows to train on, from 0 to data_slices - 1 (one model
            per slice of one dataset).
        data_slices: How many slices the rows are dealt into, round robin; 1 for all rows.

    Returns:
        has_transformer: True when a transformer was fitted and saved.
        accuracy: Accuracy on the held-out data.
    """
    from kfp_serve.artifacts.training import train_model

    result = train_model(
        model_dir=model.path, transformer_dir=transformer.path, samples_path=samples.path,
        dataset_path=dataset.path if dataset is not None else (dataset_uri or None),
        dataset_name=dataset_name,
        target_column=target_column, framework=framework, estimator=estimator,
        preprocessing=preprocessing, hyperparameters=hyperparameters, test_size=test_size,
        random_state=random_state, n_samples=n_samples, data_slice=data_slice,
        data_slices=data_slices,
    )
    for key, value in result.metrics.items():
        metrics.log_metric(key, value)
    confusion_matrix.log_confusion_matrix(result.class_names, result.confusion_matrix)
    model.metadata.update(
        framework=result.framework, n_features=result.n_features, dataset=result.dataset
    )
    return (result.has_transformer, result.metrics["accuracy"])
