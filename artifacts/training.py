"""Training logic behind the ``train`` component: plain values and paths in, files out.

The function here knows nothing about KFP: the component passes it paths and values and turns
the returned :class:`TrainResult` into KFP metrics. That keeps the logic testable with
``tmp_path`` and runnable from a notebook or the palette entry point unchanged.

What it writes:

- ``model_dir``: the fitted estimator in the file name KServe's stock runtime loads
  (``model.joblib`` for scikit-learn, ``model.json`` for XGBoost; see
  ``kfp_serve.artifacts.layout``).
- ``transformer_dir``: the fitted preprocessing transformer as ``transformer.joblib``, when one
  is asked for (the model is then trained on its output).
- ``samples_path``: a JSON file of held-out requests (raw features, before any transformer) and
  the predictions the served endpoint must return for them (see :data:`SAMPLES_KEYS`).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.errors import ArtifactError
from kfp_serve.artifacts.layout import MODEL_JOBLIB, TRANSFORMER_JOBLIB, XGBOOST_JSON

SKLEARN = "sklearn"
XGBOOST = "xgboost"
FRAMEWORKS = (SKLEARN, XGBOOST)

#: Built-in scikit-learn datasets (shipped with scikit-learn, no download) by name.
BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits")
#: Estimators ``train_model`` can fit, per framework.
ESTIMATORS: dict[str, tuple[str, ...]] = {
    SKLEARN: ("logistic_regression", "random_forest"),
    XGBOOST: ("xgb_classifier",),
}
#: Preprocessing transformers fitted alongside the model ("" or "none" means no transformer).
PREPROCESSORS = ("standard_scaler", "min_max_scaler")
NO_PREPROCESSING = ("", "none")
#: A ``file://`` dataset URI is read as the local path after it.
FILE_SCHEME = "file://"
#: URI schemes read from an S3-compatible store: KFP names its own MinIO ``minio://`` (the URI
#: of a Dataset artifact another run wrote).
S3_SCHEMES = ("s3", "minio")
#: The first bytes of a Parquet file.
PARQUET_MAGIC = b"PAR1"
#: The package pandas needs (through fsspec) to read a dataset URI, by scheme; s3:// is read
#: with boto3 instead, like s3:// snapshots.
REMOTE_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
#: File left in ``transformer_dir`` when no transformer was fitted.
NO_TRANSFORMER_MARKER = "NO_TRANSFORMER.txt"
#: Version in the metadata a train step writes; the submit step records the real one.
UNSUBMITTED_VERSION = "0.0.0"

#: Output kinds of the samples file: "label" predictions compare exactly, "value" with tolerance.
OUTPUT_LABEL = "label"
OUTPUT_VALUE = "value"
#: Keys of the samples JSON file read by ``kfp_serve.serving.smoke``: raw ``instances``, the
# ``expected``
#: label of each, ``expected_values`` (class probabilities, the answer of a runtime serving
#: probabilities), ``output`` ("label"), ``feature_names`` and ``classes``.
SAMPLES_KEYS = ("instances", "expected", "expected_values", "output", "feature_names", "classes")


@dataclass
class TrainResult:
    """What a training run produced, besides the files.

    Attributes:
        framework: "sklearn" or "xgboost".
        estimator: The estimator name that was fitted.
        dataset: Where the data came from (a built-in name, a file name or a URI).
        has_transformer: Whether a transformer was fitted and saved.
        n_features: Number of raw input features (what a request carries).
        n_train: Rows used for fitting.
        n_test: Held-out rows used for the metrics.
        output: What the served model returns by default: "label" (class labels).
        metrics: Scalar metrics (accuracy, f1_macro, train_seconds).
        class_names: Class labels as strings, in confusion-matrix order.
        confusion_matrix: Rows are true classes, columns predicted classes.
    """

    framework: str
    estimator: str
    dataset: str
    has_transformer: bool
    n_features: int
    n_train: int
    n_test: int
    output: str
    metrics: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    confusion_matrix: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


def train_model(
    *,
    model_dir: str | os.PathLike[str],
    samples_path: str | os.PathLike[str],
    transformer_dir: str | os.PathLike[str] | None = None,
    framework: str = SKLEARN,
    estimator: str = "logistic_regression",
    preprocessing: str = "standard_scaler",
    dataset_path: str | os.PathLike[str] | None = None,
    dataset_name: str = "iris",
    target_column: str = "target",
    hyperparameters: dict[str, Any] | str | None = None,
    test_size: float = 0.2,
    random_state: int = 42,
    n_samples: int = 10,
    data_slice: int = 0,
    data_slices: int = 1,
) -> TrainResult:
    """Fit a classifier (and optional preprocessing transformer) and save it in KServe layout.

    Args:
        model_dir: Directory to write the model file into (created).
        samples_path: JSON file to write the held-out requests and expected predictions to.
        transformer_dir: Directory for the fitted transformer; needed when ``preprocessing``
            names one. Without a transformer it gets a marker file (see
            :data:`NO_TRANSFORMER_MARKER`).
        framework: "sklearn" or "xgboost".
        estimator: One of :data:`ESTIMATORS` for the framework.
        preprocessing: One of :data:`PREPROCESSORS`, or "" / "none" for no transformer.
        dataset_path: A CSV or parquet file with a ``target_column``; when None the built-in
            dataset ``dataset_name`` is used.
        dataset_name: One of :data:`BUILTIN_DATASETS`.
        target_column: Name of the label column in ``dataset_path``.
        hyperparameters: Keyword arguments for the estimator, as a dict or a JSON object string.
        test_size: Fraction of rows held out for metrics and smoke samples (0 < x < 1).
        random_state: Seed for the split and the estimator, so runs are reproducible.
        n_samples: How many held-out rows to write as smoke-test requests (at least 1).
        data_slice: Which slice of the data to train on, 0 to ``data_slices - 1``: one model
            per slice (per region, per customer) from one dataset.
        data_slices: How many slices the rows are dealt into (round robin, so every slice
            sees every class of a dataset sorted by label); 1 trains on all of it.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ArtifactError: An unknown framework, estimator, preprocessing or dataset, a missing
            target column, bad hyperparameters, or too little data.
    """
    import numpy as np
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    _check_choice(framework, FRAMEWORKS, "framework")
    _check_choice(estimator, ESTIMATORS[framework], f"estimator for framework {framework!r}")
    preprocessing = (preprocessing or "").strip().lower()
    if preprocessing not in NO_PREPROCESSING:
        _check_choice(preprocessing, PREPROCESSORS, "preprocessing")
        if transformer_dir is None:
            raise ArtifactError(
                f"preprocessing {preprocessing!r} needs a transformer_dir to save the transformer "
                "in (or pass preprocessing='none')"
            )
    if n_samples < 1:
        raise ArtifactError(f"n_samples must be at least 1, got {n_samples!r}")
    if data_slices < 1 or not 0 <= data_slice < data_slices:
        raise ArtifactError(
            f"data_slice must be between 0 and data_slices - 1 ({data_slices - 1}), and "
            f"data_slices at least 1; got data_slice={data_slice!r}, data_slices={data_slices!r}"
        )
    params = _parse_hyperparameters(hyperparameters)

    split = split_dataset(dataset_path, dataset_name, target_column, test_size, random_state,
                          data_slice=data_slice, data_slices=data_slices)
    x, feature_names, source = split.x, split.feature_names, split.source
    x_train, x_test, y_train, y_test = split.x_train, split.x_test, split.y_train, split.y_test

    start = time.perf_counter()
    transformer = None
    fit_x = x_train
    if preprocessing not in NO_PREPROCESSING:
        transformer = _make_preprocessor(preprocessing)
        fit_x = transformer.fit_transform(x_train)

    # XGBoost needs labels 0..k-1; keep the original labels to report and compare in.
    classes, y_train_idx = np.unique(y_train, return_inverse=True)
    model = _make_estimator(framework, estimator, params, random_state)
    try:
        model.fit(fit_x, y_train_idx if framework == XGBOOST else y_train)
    except (TypeError, ValueError) as e:
        raise ArtifactError(
            f"fitting {estimator!r} with hyperparameters {params!r} failed: {e}"
        ) from e
    train_seconds = time.perf_counter() - start

    eval_x = transformer.transform(x_test) if transformer is not None else x_test
    if framework == XGBOOST:
        y_pred = classes[np.asarray(model.predict(eval_x), dtype=int)]
    else:
        y_pred = model.predict(eval_x)
    labels = list(classes)
    matrix = confusion_matrix(y_test, y_pred, labels=labels)

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    has_transformer = transformer is not None
    if transformer_dir is not None:
        tdir = Path(transformer_dir)
        tdir.mkdir(parents=True, exist_ok=True)
        if has_transformer:
            import joblib

            joblib.dump(transformer, tdir / TRANSFORMER_JOBLIB)
        else:
            # A pipeline output must exist on a cluster; a marker says why it holds no
            # transformer, and submitting it as one fails on the missing transformer.joblib.
            (tdir / NO_TRANSFORMER_MARKER).write_text(
                f"trained with preprocessing={preprocessing!r}: no transformer was fitted\n"
            )
    if framework == XGBOOST:
        model.save_model(str(model_dir / XGBOOST_JSON))
    else:
        import joblib

        joblib.dump(model, model_dir / MODEL_JOBLIB)
    _describe(
        model_dir, transformer_dir if has_transformer else None, estimator, preprocessing,
        feature_names,
    )
    # Expected answers are what the saved model itself predicts: original labels for
    # scikit-learn, class indices for XGBoost (trained on 0..k-1; ``classes`` maps them back).
    # The probabilities are what a runtime answers instead when asked to (PREDICT_PROBA) or
    # built that way (the stock xgbserver returns Booster.predict()); smoke tests accept either.
    expected = [_plain(v) for v in model.predict(eval_x[:n_samples])]
    expected_values = np.asarray(model.predict_proba(eval_x[:n_samples]), dtype=float).tolist()
    samples = {
        # Raw features: a transformer in front of the model turns them into what it was fit on.
        "instances": np.asarray(x_test[:n_samples], dtype=float).tolist(),
        "expected": expected,
        "expected_values": expected_values,
        "output": OUTPUT_LABEL,
        "feature_names": feature_names,
        "classes": [_plain(c) for c in labels],
    }
    samples_path = Path(samples_path)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    samples_path.write_text(json.dumps(samples))

    return TrainResult(
        framework=framework,
        estimator=estimator,
        dataset=source,
        has_transformer=has_transformer,
        n_features=int(x.shape[1]),
        n_train=len(y_train),
        n_test=len(y_test),
        output=OUTPUT_LABEL,
        metrics={
            "accuracy": float(accuracy_score(y_test, y_pred)),
            "f1_macro": float(f1_score(y_test, y_pred, average="macro")),
            "train_seconds": round(train_seconds, 4),
        },
        class_names=[str(c) for c in labels],
        confusion_matrix=matrix.astype(int).tolist(),
    )


@dataclass
class Split:
    """A dataset and its train/held-out split (what ``train_model`` fits and evaluates on)."""

    x: Any
    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    feature_names: list[str] | None
    source: str


def split_dataset(
    dataset_path: str | os.PathLike[str] | None = None,
    dataset_name: str = "iris",
    target_column: str = "target",
    test_size: float = 0.2,
    random_state: int = 42,
    *,
    data_slice: int = 0,
    data_slices: int = 1,
) -> Split:
    """Load a dataset and split it as ``train_model`` does: the same arguments give the same
    held-out rows, so a later step (a gated rollout) can evaluate on exactly what training held
    out. With ``data_slices`` > 1 only slice ``data_slice`` of the rows (dealt round robin) is
    split.

    Raises:
        ArtifactError: unknown dataset, missing target column, a split that cannot be made.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ArtifactError(f"test_size must be between 0 and 1 (exclusive), got {test_size!r}")
    x, y, feature_names, source = _load_dataset(dataset_path, dataset_name, target_column)
    if data_slices > 1:
        x, y = x[data_slice::data_slices], y[data_slice::data_slices]
        source = f"{source} (slice {data_slice + 1} of {data_slices})"
    # Stratify when every class has at least two rows, so small test splits still see each class.
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_size, random_state=random_state, stratify=stratify
        )
    except ValueError as e:
        raise ArtifactError(f"cannot split {source!r} with test_size={test_size}: {e}") from e
    return Split(x, x_train, x_test, y_train, y_test, feature_names, source)


def _describe(
    model_dir: Path, transformer_dir: str | os.PathLike[str] | None, estimator: str,
    preprocessing: str, feature_names: list[str] | None,
) -> None:
    """Write ``kfp-serve-metadata.yaml`` (framework, signature) next to the saved files.

    The signature is computed from the saved files, exactly as a submit step would compute it
    from them, but here scikit-learn is loaded already: the submit steps then record the
    artifacts without unpickling them (see ``kfp_serve.artifacts.Model.from_dir``), and each trained
    directory is a complete artifact in the stock serving layout. Name and version are
    placeholders until a submit step gives the real ones. The models are fitted on plain
    arrays (a served model gets arrays, and one fitted on a DataFrame warns on every request),
    so the data's column names are recorded in the signature here: clients send DataFrames
    with them and ``explain`` labels its attributions with them.
    """
    from kfp_serve.artifacts.layout import write_metadata
    from kfp_serve.artifacts.model import Model, Transformer, load_model_file

    model = Model(
        load_model_file(model_dir), _placeholder(estimator), UNSUBMITTED_VERSION, author=""
    )
    if feature_names and not model.signature.get("feature_names"):
        model.signature["feature_names"] = list(feature_names)
    write_metadata(model_dir, model.metadata())
    if transformer_dir is not None:
        transformer = Transformer(
            _placeholder(preprocessing), transformer_dir=transformer_dir,
            version=UNSUBMITTED_VERSION, author="",
        )
        if feature_names and not transformer.signature.get("feature_names"):
            transformer.signature["feature_names"] = list(feature_names)
        write_metadata(transformer_dir, transformer.metadata())


def _placeholder(choice: str) -> str:
    return choice.replace("_", "-")


def read_samples(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a samples file written by :func:`train_model` and check its shape.

    Raises:
        ArtifactError: The file is missing, not JSON, or lacks keys.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"samples file {str(path)!r} does not exist") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"samples file {str(path)!r} is not JSON: {e}") from e
    missing = [k for k in ("instances", "expected", "output") if k not in data]
    if missing:
        raise ArtifactError(f"samples file {str(path)!r} lacks keys {missing}")
    if len(data["instances"]) != len(data["expected"]):
        raise ArtifactError(
            f"samples file {str(path)!r}: {len(data['instances'])} instances but "
            f"{len(data['expected'])} expected predictions"
        )
    return data


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ArtifactError(f"unknown {what} {value!r}; use one of {list(choices)}")


def _parse_hyperparameters(value: dict[str, Any] | str | None) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ArtifactError(
                f"hyperparameters must be a JSON object, e.g. '{{\"C\": 0.5}}'; got {value!r}: {e}"
            ) from e
    if not isinstance(value, dict):
        raise ArtifactError(f"hyperparameters must be a JSON object, got {value!r}")
    return dict(value)


def _load_dataset(
    dataset_path: str | os.PathLike[str] | None, dataset_name: str, target_column: str
) -> tuple[Any, Any, list[str] | None, str]:
    """Return (X as float64 array, y array, feature names, description of the source)."""
    import numpy as np

    if dataset_path is None or str(dataset_path) == "":
        _check_choice(dataset_name, BUILTIN_DATASETS, "built-in dataset")
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{dataset_name}")()
        names = [str(n) for n in bunch.feature_names]
        return np.asarray(bunch.data, dtype=float), np.asarray(bunch.target), names, dataset_name

    import pandas as pd

    text = str(dataset_path)
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME):]
    # A URI is recorded whole (lineage shows where the data is); a local file by its name.
    scheme, _, rest = text.partition("://")
    if scheme in S3_SCHEMES:
        # The same S3 client (credentials, endpoint) as an s3:// snapshot store.
        from kfp_serve.artifacts.snapshots.s3 import read_object

        data = read_object(f"s3://{rest}")
        # A KFP Dataset artifact's file often has no suffix: Parquet says so in its first bytes.
        frame = _read_frame(pd, io.BytesIO(data), text, parquet=data.startswith(PARQUET_MAGIC))
        return _frame_arrays(frame, text, target_column)
    if "://" in text:
        # gs://, http(s)://, ...: pandas reads them (through fsspec for gs://, if installed).
        return _frame_arrays(_read_frame(pd, text, text), text, target_column)
    path = Path(text)
    if path.is_dir():
        # A KFP Dataset artifact may be a directory holding one data file.
        files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".parquet", ".pq"))
        if len(files) != 1:
            raise ArtifactError(
                f"dataset directory {str(path)!r} must hold exactly one .csv or .parquet file, "
                f"found {[p.name for p in files]}"
            )
        path = files[0]
    if not path.is_file():
        raise ArtifactError(
            f"dataset file {str(path)!r} does not exist (set dataset to a CSV or Parquet path "
            "or URI)"
        )
    return _frame_arrays(_read_frame(pd, path, str(path)), path.name, target_column)


def _read_frame(pd: Any, source: Any, shown: str, *, parquet: bool | None = None) -> Any:
    """Read a CSV or Parquet file (``parquet`` None: by the suffix of ``shown``) into a
    DataFrame."""
    if parquet is None:
        parquet = shown.endswith((".parquet", ".pq"))
    try:
        if parquet:
            return pd.read_parquet(source)
        return pd.read_csv(source)
    except ImportError as e:
        package = REMOTE_PACKAGES.get(shown.partition("://")[0], "")
        needs = f" ({package}: pip install {package})" if package else ""
        raise ArtifactError(f"reading {shown!r} needs an optional package{needs}: {e}") from e
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise ArtifactError(f"cannot read dataset {shown!r}: {e}") from e


def _frame_arrays(
    frame: Any, name: str, target_column: str
) -> tuple[Any, Any, list[str] | None, str]:
    """(X, y, feature names, source) of a DataFrame with a ``target_column``."""
    import pandas as pd

    if target_column not in frame.columns:
        raise ArtifactError(
            f"dataset {name!r} has no target column {target_column!r}; columns are "
            f"{list(frame.columns)} (set target_column)"
        )
    features = frame.drop(columns=[target_column])
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ArtifactError(
            f"dataset {name!r}: feature columns {non_numeric} are not numeric; encode them "
            "before training"
        )
    if len(frame) < 4:
        raise ArtifactError(f"dataset {name!r} has {len(frame)} rows; need at least 4")
    return (
        features.to_numpy(dtype=float),
        frame[target_column].to_numpy(),
        [str(c) for c in features.columns],
        name,
    )


def _make_preprocessor(name: str) -> Any:
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    return {"standard_scaler": StandardScaler, "min_max_scaler": MinMaxScaler}[name]()


def _make_estimator(framework: str, estimator: str, params: dict[str, Any], seed: int) -> Any:
    try:
        if framework == XGBOOST:
            from xgboost import XGBClassifier

            # A few small trees keep training and serving fast; user values override.
            defaults = {"n_estimators": 50, "max_depth": 4, "random_state": seed, "n_jobs": 1}
            return XGBClassifier(**{**defaults, **params})
        if estimator == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(**{"n_estimators": 50, "random_state": seed, **params})
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 1000, **params})
    except TypeError as e:
        raise ArtifactError(f"invalid hyperparameters for {estimator!r}: {e}") from e


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so labels survive JSON unchanged."""
    return value.item() if hasattr(value, "item") else value
