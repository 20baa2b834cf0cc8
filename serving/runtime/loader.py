"""Load a model or transformer directory in the stock KServe layout, ready to serve.

No kserve import here: the loader is plain sklearn/xgboost/joblib, so tests and other modules
can use it without paying for (or being configured by) kserve's import.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfp_serve.serving.constants import PREDICT_PROBA_PARAM
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime import fidelity, layout
from kfp_serve.serving.runtime.codec import FeatureSpec, RequestError
from kfp_serve.serving.runtime.explain import explain_linear, explain_xgboost, find_linear
from kfp_serve.serving.runtime.fastpath import fast_predict, fast_transform

log = logging.getLogger(__name__)

#: Above this many rows XGBoost may use every core; below, one thread is faster (and leaves
#: the other cores to the HTTP server and to concurrent requests).
XGB_PARALLEL_ROWS = 1024


def env_flag(name: str, default: bool = False) -> bool:
    """True when the environment variable is set to a truthy value (like kserve's strtobool)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "y", "on", "t")


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """The kfp-serve metadata of a directory, or {} when it has none.

    Raises:
        ServingError: The file exists but is not a YAML mapping.
    """
    path = model_dir / layout.METADATA_FILE
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ServingError(f"{str(path)!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ServingError(f"{str(path)!r} must hold a YAML mapping, got {type(data).__name__}")
    return data


def find_model_file(model_dir: Path) -> tuple[Path, str]:
    """The one model file of a directory and its framework ("sklearn" or "xgboost").

    The well-known names (``model.joblib``, ``model.json``, ``model.ubj``) win; otherwise exactly
    one top-level file with a stock extension is accepted, as the stock runtimes do.

    Raises:
        ServingError: No model file, or more than one candidate.
    """
    if not model_dir.is_dir():
        raise ServingError(f"model directory {str(model_dir)!r} does not exist")
    for name, framework in layout.MODEL_FILES.items():
        if (model_dir / name).is_file():
            return model_dir / name, framework
    candidates = [
        (p, fw)
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name != layout.METADATA_FILE
        for ext, fw in layout.MODEL_EXTENSIONS.items()
        if p.name.endswith(ext)
    ]
    if len(candidates) != 1:
        found = [p.name for p, _ in candidates] or sorted(p.name for p in model_dir.iterdir())
        raise ServingError(
            f"{str(model_dir)!r} must hold exactly one model file "
            f"({', '.join(layout.MODEL_FILES)}); found {found}"
        )
    return candidates[0]


def _signature(metadata: dict[str, Any]) -> dict[str, Any]:
    sig = metadata.get("signature") or {}
    return sig if isinstance(sig, dict) else {}


def _allow_nan(estimator: Any) -> bool:
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except Exception:  # noqa: BLE001 - not an sklearn estimator: be strict about NaN
        return False


def _feature_spec(
    sig: dict[str, Any], obj: Any, *, n_features_key: str, dtype: Any, allow_nan: bool
) -> FeatureSpec:
    n_features = sig.get(n_features_key)
    if n_features is None:
        n_features = getattr(obj, "n_features_in_", None)
    names = sig.get("feature_names")
    fitted_names = getattr(obj, "feature_names_in_", None)
    if names is None and fitted_names is not None:
        names = [str(n) for n in fitted_names]
    return FeatureSpec(
        n_features=int(n_features) if n_features is not None else None,
        feature_names=tuple(names) if names else None,
        dtype=np.dtype(sig.get("dtype") or dtype),
        allow_nan=allow_nan,
        frame_input=fitted_names is not None,
    )


def _single_thread(estimator: Any) -> None:
    """Set every ``n_jobs`` in an estimator (or pipeline) to 1: one row must not fan out."""
    try:
        params = estimator.get_params(deep=True)
    except Exception:  # noqa: BLE001 - not an sklearn-style estimator
        return
    keys = {k: 1 for k in params if k == "n_jobs" or k.endswith("__n_jobs")}
    if keys:
        try:
            estimator.set_params(**keys)
        except Exception as e:  # noqa: BLE001 - best effort; serving still works
            log.debug("could not set n_jobs=1: %s", e)


@dataclass
class ServedModel:
    """A loaded model: validated-input spec plus predict/explain callables."""

    framework: str
    path: Path
    spec: FeatureSpec
    predict: Callable[[Any], Any]
    explainer: Callable[[Any], dict[str, Any]] | None
    explain_unsupported: str
    metadata: dict[str, Any] = field(default_factory=dict)
    estimator: Any = None
    #: The answers a request may ask for, whatever the default (True: probabilities, False:
    #: labels); None when the runtime being rehearsed does not read the request's choice
    #: (KServe's stock runtimes ignore it, so the rehearsal does too).
    per_request: dict[bool, Callable[[Any], Any]] | None = None

    def predictor_for(self, proba: bool | None) -> Callable[[Any], Any]:
        """What answers a request asking for probabilities (True), labels (False) or the
        server's default (None).

        Raises:
            RequestError: The model cannot answer what was asked (no ``predict_proba``).
        """
        if proba is None or self.per_request is None:
            return self.predict
        method = self.per_request.get(proba)
        if method is None:
            raise RequestError(
                f"this {self.framework} model ({type(self.estimator).__name__}) has no "
                f"predict_proba(): ask for labels (leave {PREDICT_PROBA_PARAM!r} out)"
            )
        return method

    def explain(self, X: Any) -> dict[str, Any]:
        """Per-feature attributions (see :mod:`kfp_serve.serving.runtime.explain`).

        Raises:
            NotImplementedError: The model has no built-in explainer (HTTP 501).
        """
        if self.explainer is None:
            raise NotImplementedError(self.explain_unsupported)
        return self.explainer(X)


def load_model(
    model_dir: str | Path, *, predict_proba: bool = False, runtime: str = fidelity.KFP_SERVE
) -> ServedModel:
    """Load a model directory.

    Args:
        model_dir: Directory in the stock layout.
        predict_proba: Answer with class probabilities instead of labels (PREDICT_PROBA).
        runtime: The ServingRuntime whose answers to give (see
            :mod:`kfp_serve.serving.runtime.fidelity`).

    Returns:
        The loaded model.

    Raises:
        ServingError: The directory, file or model is not servable (by ``runtime`` either);
            the message says why.
    """
    model_dir = Path(model_dir)
    path, framework = find_model_file(model_dir)
    metadata = read_metadata(model_dir)
    sig = _signature(metadata)
    if framework == "xgboost" and path.suffix == ".bst" and _is_lightgbm_file(path):
        framework = "lightgbm"
    if runtime == fidelity.LGB_SERVER and path.suffix == ".bst":
        framework = "lightgbm"  # what lgbserver makes of any .bst file
    if fidelity.stock(runtime):
        wanted = fidelity.FRAMEWORKS[runtime]
        if framework != wanted:
            exts = (
                [".bst"]
                if wanted == "lightgbm"
                else [e for e, fw in layout.MODEL_EXTENSIONS.items() if fw == wanted]
            )
            raise ServingError(
                f"the manifest names {runtime!r}, which loads only {', '.join(exts)} files, "
                f"but {str(model_dir)!r} holds {path.name!r}; on the cluster it would not load "
                f"either: name the runtime for {framework} models"
            )
    if framework == "lightgbm":
        return _load_lightgbm(path, metadata, sig)
    if runtime == fidelity.XGB_SERVER:
        return _load_xgbserver(path, metadata, sig)
    if framework == "xgboost":
        return _load_xgboost(path, metadata, sig, predict_proba)
    # sklearnserver falls back to predict() silently when there is no predict_proba().
    proba_fallback = runtime == fidelity.SKLEARN_SERVER
    return _load_sklearn(path, metadata, sig, predict_proba, proba_fallback=proba_fallback)


def _load_xgbserver(path: Path, metadata: dict[str, Any], sig: dict[str, Any]) -> ServedModel:
    """What KServe's xgbserver serves: ``Booster.predict(DMatrix(X))``, whatever saved it."""
    import xgboost as xgb

    booster = _read_booster(path)
    booster.set_param({"nthread": 1})

    names = sig.get("feature_names") or booster.feature_names
    booster_names = booster.feature_names

    def predict(X: Any) -> Any:
        # The codec has ordered the columns as fitted; naming them lets a booster trained on
        # a DataFrame accept a plain matrix too (xgbserver itself needs named v1 records then).
        return booster.predict(xgb.DMatrix(X, nthread=1, feature_names=booster_names))

    return _served_xgboost(path, metadata, sig, booster, names, predict, classes=None)


def _is_lightgbm_file(path: Path) -> bool:
    """True when ``path`` is a LightGBM text model (``Booster.save_model``), which starts with
    a ``tree`` line; XGBoost's ``.bst`` files are binary."""
    with path.open("rb") as f:
        return f.read(5) in (b"tree\n", b"tree\r")


def _load_lightgbm(path: Path, metadata: dict[str, Any], sig: dict[str, Any]) -> ServedModel:
    """What KServe's lgbserver serves: ``Booster.predict(X)`` (class probabilities for a
    classifier, p(positive class) alone for a binary one; ``PREDICT_PROBA`` is not read)."""
    try:
        import lightgbm as lgb
    except ImportError as e:
        raise ServingError(
            f"{str(path)!r} is a LightGBM model but lightgbm is not installed here: "
            "`pip install lightgbm`"
        ) from e
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as e:
        raise ServingError(f"cannot load {str(path)!r} as a LightGBM model: {e}") from e
    # lgbserver names the input columns with the booster's feature names (Column_0... when it
    # was trained on a matrix), so records must use those names there as here.
    names = sig.get("feature_names") or booster.feature_name()
    spec = FeatureSpec(
        n_features=int(sig.get("n_features") or booster.num_feature()),
        feature_names=tuple(names) if names else None,
        dtype=np.dtype(np.float64),
        allow_nan=True,  # NaN is LightGBM's "missing" value
        frame_input=False,
    )

    def predict(X: Any) -> Any:
        return booster.predict(X, num_threads=1)

    return ServedModel(
        framework="lightgbm",
        path=path,
        spec=spec,
        predict=predict,
        explainer=None,
        explain_unsupported=(
            "LightGBM models have no built-in explainer here; kfp-serve explains XGBoost "
            "models (SHAP contributions) and linear sklearn models (coefficient x value)"
        ),
        metadata=metadata,
        estimator=booster,
    )


def _load_sklearn(
    path: Path,
    metadata: dict[str, Any],
    sig: dict[str, Any],
    predict_proba: bool,
    *,
    proba_fallback: bool = False,
) -> ServedModel:
    import joblib
    import sklearn

    try:
        est = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - unpickling can raise anything
        raise ServingError(f"cannot load {str(path)!r} with joblib: {e!r}") from e
    if not hasattr(est, "predict"):
        raise ServingError(f"{str(path)!r} holds a {type(est).__name__}, which has no predict()")
    # Inputs are validated once, by the codec (shape, dtype, NaN/inf); sklearn's second
    # finiteness scan per request is redundant on the hot path.
    sklearn.set_config(assume_finite=True)
    _single_thread(est)
    has_proba = hasattr(est, "predict_proba")
    if predict_proba and proba_fallback and not has_proba:
        predict_proba = False
    if predict_proba and not has_proba:
        raise ServingError(
            f"PREDICT_PROBA=true but {type(est).__name__} has no predict_proba(); "
            f"unset PREDICT_PROBA to serve its predictions"
        )
    answers = {False: fast_predict(est, False) or xgb_fast_predict(est, False) or est.predict}
    if has_proba:
        answers[True] = (
            fast_predict(est, True) or xgb_fast_predict(est, True) or est.predict_proba
        )
    predict = answers[predict_proba]

    explainer = None
    unsupported = (
        f"{type(est).__name__} has no built-in explainer; kfp-serve explains XGBoost models "
        f"(SHAP contributions) and linear sklearn models (coefficient x value)"
    )
    xgb_booster = _xgb_booster_of(est)
    spec = _feature_spec(
        sig, est, n_features_key="n_features", dtype=np.float64, allow_nan=_allow_nan(est)
    )
    if xgb_booster is not None:
        classes = list(getattr(est, "classes_", [])) or None

        def explainer(X: Any) -> dict[str, Any]:
            return explain_xgboost(xgb_booster, X, spec.feature_names, classes)

    elif find_linear(est) is not None:

        def explainer(X: Any) -> dict[str, Any]:
            return explain_linear(est, X, spec.feature_names)

    return ServedModel(
        framework="sklearn",
        path=path,
        spec=spec,
        predict=predict,
        explainer=explainer,
        explain_unsupported=unsupported,
        metadata=metadata,
        estimator=est,
        # sklearnserver reads PREDICT_PROBA only, when it starts.
        per_request=None if proba_fallback else answers,
    )


def _xgboost_if_loaded() -> Any:
    """The xgboost module if it is imported already, else None.

    An unpickled XGBoost estimator has imported xgboost on its way in; for any other model,
    importing it only to check ``isinstance`` would cost every sklearn server start.
    """
    return sys.modules.get("xgboost")


def _xgb_booster_of(est: Any) -> Any:
    """The Booster of an XGBoost sklearn-API estimator, else None."""
    xgb = _xgboost_if_loaded()
    if xgb is None:
        return None
    if isinstance(est, xgb.XGBModel):
        booster = est.get_booster()
        booster.set_param({"nthread": 1})
        return booster
    return None


def _load_xgboost(
    path: Path, metadata: dict[str, Any], sig: dict[str, Any], predict_proba: bool
) -> ServedModel:
    import xgboost as xgb

    booster = _read_booster(path)
    sk_meta = booster.attr("scikit_learn")
    est_type = json.loads(sk_meta).get("_estimator_type") if sk_meta else None
    classes = sig.get("classes")
    n_cpu = os.cpu_count() or 1

    if est_type in ("classifier", "regressor"):
        # Saved from the sklearn API: serve with the same class so predict() means labels
        # (not raw probabilities) exactly as in-process XGBClassifier.predict does.
        est = xgb.XGBClassifier() if est_type == "classifier" else xgb.XGBRegressor()
        est.load_model(str(path))
        est.set_params(n_jobs=1)
        inner = est.get_booster()
        inner.set_param({"nthread": 1})
        if predict_proba and est_type != "classifier":
            raise ServingError("PREDICT_PROBA=true but the XGBoost model is a regressor")
        label_map = np.asarray(classes) if (classes and est_type == "classifier") else None

        def answer(proba: bool) -> Callable[[Any], Any]:
            method = xgb_fast_predict(est, proba, validate_features=False) or _validation_off(
                est.predict_proba if proba else est.predict
            )

            def run(X: Any) -> Any:
                out = _with_threads(inner, X, n_cpu, lambda: method(X))
                return label_map[out] if label_map is not None and not proba else out

            return run

        answers = {False: answer(False)}
        if est_type == "classifier":
            answers[True] = answer(True)
        predict = answers[predict_proba]

    else:
        inner = booster
        inner.set_param({"nthread": 1})
        answers = None  # a bare Booster answers its objective's output: no labels to choose

        def predict(X: Any) -> Any:
            return _with_threads(inner, X, n_cpu, lambda: inner.inplace_predict(X))

    names = sig.get("feature_names") or inner.feature_names
    out_classes = classes if est_type == "classifier" else None
    served = _served_xgboost(path, metadata, sig, inner, names, predict, classes=out_classes)
    served.per_request = answers
    return served


def _read_booster(path: Path) -> Any:
    """The XGBoost booster saved at ``path``; ServingError when it is not one."""
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as e:
        raise ServingError(f"cannot load {str(path)!r} as an XGBoost model: {e}") from e
    return booster


def _served_xgboost(
    path: Path,
    metadata: dict[str, Any],
    sig: dict[str, Any],
    booster: Any,
    names: Any,
    predict: Any,
    classes: list[Any] | None,
) -> ServedModel:
    """An XGBoost model served by ``predict``: its input spec and explainer from ``booster``."""
    n_features = sig.get("n_features") or booster.num_features()
    spec = FeatureSpec(
        n_features=int(n_features),
        feature_names=tuple(names) if names else None,
        # XGBoost computes in float32 whatever it is given; converting once here is cheapest.
        dtype=np.dtype(np.float32),
        allow_nan=True,  # NaN is XGBoost's "missing" value
        frame_input=False,
    )

    def explainer(X: Any) -> dict[str, Any]:
        return explain_xgboost(booster, X, spec.feature_names, classes)

    return ServedModel(
        framework="xgboost",
        path=path,
        spec=spec,
        predict=predict,
        explainer=explainer,
        explain_unsupported="",
        metadata=metadata,
        estimator=booster,
    )


def _validation_off(method: Callable[..., Any]) -> Callable[[Any], Any]:
    def run(X: Any) -> Any:
        return method(X, validate_features=False)

    return run


def xgb_fast_predict(
    est: Any, predict_proba: bool, *, validate_features: bool = True
) -> Callable[[Any], Any] | None:
    """``XGBClassifier``/``XGBRegressor`` predict (or predict_proba) without the wrapper costs.

    The sklearn wrapper runs every call inside ``xgboost.config_context`` (a JSON round trip
    of the global config through the C API, twice for a classifier) and re-derives the
    iteration range; for one row that is a large share of the call. This calls
    ``Booster.inplace_predict`` with the arguments the wrapper would pass (iteration range,
    ``missing``, predict type "value", ``validate_features``) and applies the wrapper's own
    post-processing: argmax / 0.5 threshold for labels, the two-column stack for binary
    probabilities. Results are identical to ``est.predict(X, validate_features=...)`` /
    ``est.predict_proba(...)``.

    Only the exact ``XGBClassifier``/``XGBRegressor`` classes with a tree booster qualify
    (subclasses such as the random-forest wrappers, ``gblinear``, ``multi:softmax``
    probabilities and non-numpy input use the wrapper's method).

    Returns:
        A callable taking the validated array, or None when the wrapper must be used.
    """
    xgb = _xgboost_if_loaded()
    if xgb is None:
        return None
    cls = type(est)
    if cls not in (xgb.XGBClassifier, xgb.XGBRegressor) or est.booster == "gblinear":
        return None
    if predict_proba and cls is not xgb.XGBClassifier:
        return None
    try:
        booster = est.get_booster()
        iteration_range = est._get_iteration_range(None)
    except Exception:  # noqa: BLE001 - unfitted or a changed private API: use the wrapper
        return None
    missing = est.missing
    wrapper = est.predict_proba if predict_proba else est.predict
    inplace = booster.inplace_predict

    def raw(X: np.ndarray) -> np.ndarray:
        return inplace(
            X,
            iteration_range=iteration_range,
            predict_type="value",
            missing=missing,
            validate_features=validate_features,
        )

    def guarded(fn: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        def run(X: Any) -> Any:
            if type(X) is np.ndarray and X.ndim == 2:
                return fn(X)
            return wrapper(X, validate_features=validate_features)

        return run

    if cls is xgb.XGBRegressor:
        return guarded(raw)
    objective = est.objective
    n_classes = int(est.n_classes_)
    if predict_proba:
        if objective == "multi:softmax":
            return None

        def proba(X: np.ndarray) -> np.ndarray:
            p = raw(X)
            if p.ndim == 2 and (p.shape[1] == n_classes or (n_classes == 2 and p.shape[1] >= 2)):
                return p
            return np.vstack((1.0 - p, p)).transpose()

        return guarded(proba)

    def labels(X: np.ndarray) -> np.ndarray:
        p = raw(X)
        if p.ndim > 1 and n_classes != 2:
            return np.argmax(p, axis=1)
        if p.ndim > 1 and p.shape[1] != 1:  # multi-label
            out = np.zeros(p.shape)
            out[p > 0.5] = 1
            return out
        if objective == "multi:softmax":
            return p.astype(np.int32)
        out = np.repeat(0, p.shape[0])
        out[p > 0.5] = 1
        return out

    return guarded(labels)


def _with_threads(booster: Any, X: Any, n_cpu: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` single-threaded, or with every core for a large batch."""
    if n_cpu > 1 and len(X) >= XGB_PARALLEL_ROWS:
        booster.set_param({"nthread": n_cpu})
        try:
            return fn()
        finally:
            booster.set_param({"nthread": 1})
    return fn()


@dataclass
class ServedTransformer:
    """A loaded transformer: validated-input spec plus the transform callable."""

    path: Path
    spec: FeatureSpec
    transform: Callable[[Any], Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    transformer: Any = None


def load_transformer(model_dir: str | Path) -> ServedTransformer:
    """Load a transformer directory (``transformer.joblib`` with ``.transform``).

    Raises:
        ServingError: Missing file, or an object without ``transform``.
    """
    import joblib

    model_dir = Path(model_dir)
    path = model_dir / layout.TRANSFORMER_FILE
    if not path.is_file():
        present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else None
        raise ServingError(
            f"transformer directory {str(model_dir)!r} has no {layout.TRANSFORMER_FILE!r} "
            f"(contents: {present})"
        )
    try:
        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - unpickling can raise anything
        raise ServingError(f"cannot load {str(path)!r} with joblib: {e!r}") from e
    if not callable(getattr(obj, "transform", None)):
        raise ServingError(f"{str(path)!r} holds a {type(obj).__name__} without .transform()")
    _single_thread(obj)
    metadata = read_metadata(model_dir)
    spec = _feature_spec(
        _signature(metadata),
        obj,
        n_features_key="n_features",
        dtype=np.float64,
        allow_nan=_allow_nan(obj),
    )
    return ServedTransformer(
        path=path,
        spec=spec,
        transform=fast_transform(obj) or obj.transform,
        metadata=metadata,
        transformer=obj,
    )
