"""Validation-free predict for plain sklearn linear models, and transform for sklearn scalers.

sklearn's ``predict`` re-validates its input on every call (array-API namespace dispatch,
dataframe detection, dtype and finiteness checks): for one row that is ~200 us of a ~250 us
call, and the codec has already validated the same array. For estimators whose ``predict`` is
exactly sklearn's linear code (checked by method identity, so subclasses that override anything
fall back to the estimator's own method), this module runs the same numpy operations sklearn
runs after its checks, so the results are bit-for-bit those of ``estimator.predict``.

Only dense, C-contiguous float64 2-D numpy input takes the fast path; anything else (DataFrames
for models fitted on them, Pipelines, other models) uses the estimator's own method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def fast_predict(estimator: Any, proba: bool) -> Callable[[Any], Any] | None:
    """A faster equivalent of ``estimator.predict`` (or ``predict_proba``), or None.

    Args:
        estimator: A fitted estimator.
        proba: Return the equivalent of ``predict_proba`` instead.

    Returns:
        A callable taking the validated array, or None when no exact fast path exists.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
    except ImportError:  # pragma: no cover - private sklearn layout changed: no fast path
        return None
    cls = type(estimator)
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if not isinstance(coef, np.ndarray) or coef.dtype != np.float64 or intercept is None:
        return None
    coef_t = coef.T if coef.ndim == 2 else coef
    fallback = estimator.predict_proba if proba else estimator.predict

    def scores_of(X: np.ndarray) -> np.ndarray:
        return X @ coef_t + intercept

    def guarded(fn: Callable[[np.ndarray], Any]) -> Callable[[Any], Any]:
        def run(X: Any) -> Any:
            if type(X) is np.ndarray and X.dtype == np.float64 and X.ndim == 2:
                return fn(X)
            return fallback(X)

        return run

    if isinstance(estimator, LinearClassifierMixin):
        if cls.decision_function is not LinearClassifierMixin.decision_function or not isinstance(
            getattr(estimator, "classes_", None), np.ndarray
        ):
            return None
        classes = estimator.classes_

        def decision(X: np.ndarray) -> np.ndarray:
            s = scores_of(X)
            return s.reshape(-1) if (s.ndim > 1 and s.shape[1] == 1) else s

        if not proba:
            if cls.predict is not LinearClassifierMixin.predict:
                return None

            def predict(X: np.ndarray) -> np.ndarray:
                s = decision(X)
                idx = (s > 0).astype(np.intp) if s.ndim == 1 else s.argmax(axis=1)
                return classes.take(idx, axis=0)

            return guarded(predict)

        if cls.predict_proba is not LogisticRegression.predict_proba:
            return None
        from scipy.special import expit
        from sklearn.utils.extmath import softmax

        if classes.size <= 2:

            def predict_proba(X: np.ndarray) -> np.ndarray:
                p = decision(X)
                p = expit(p, out=p)
                return np.stack([1 - p, p], axis=1)

        else:

            def predict_proba(X: np.ndarray) -> np.ndarray:
                return softmax(decision(X), copy=False)

        return guarded(predict_proba)

    if isinstance(estimator, LinearModel) and not proba:
        if (
            cls.predict is not LinearModel.predict
            or cls._decision_function is not LinearModel._decision_function
        ):
            return None
        return guarded(scores_of)
    return None


# --------------------------------------------------------------------------------------------
# Transformers


def _dense_output_only(obj: Any) -> bool:
    """True when ``obj.transform`` returns what its own code computes (no set_output wrapping)."""
    try:
        from sklearn import get_config
    except ImportError:  # pragma: no cover
        return False
    own = getattr(obj, "_sklearn_output_config", None) or {}
    return own.get("transform", "default") == "default" and (
        get_config().get("transform_output", "default") == "default"
    )


def _float64_vector(value: Any, n_features: int) -> np.ndarray | None:
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (n_features,):
        return value
    return None


def _scaler_op(obj: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The dense float64 arithmetic of one fitted sklearn scaler, or None when not exact."""
    try:
        from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler
    except ImportError:  # pragma: no cover
        return None
    cls = type(obj)
    n = getattr(obj, "n_features_in_", None)
    if not isinstance(n, int) or not _dense_output_only(obj):
        return None
    if cls is StandardScaler:
        mean = _float64_vector(obj.mean_, n) if obj.with_mean else None
        scale = _float64_vector(obj.scale_, n) if obj.with_std else None
        if (obj.with_mean and mean is None) or (obj.with_std and scale is None):
            return None

        def standard(X: np.ndarray) -> np.ndarray:
            X = X - mean if mean is not None else X.copy()
            if scale is not None:
                X /= scale
            return X

        return standard
    if cls is RobustScaler:
        center = _float64_vector(obj.center_, n) if obj.with_centering else None
        scale = _float64_vector(obj.scale_, n) if obj.with_scaling else None
        if (obj.with_centering and center is None) or (obj.with_scaling and scale is None):
            return None

        def robust(X: np.ndarray) -> np.ndarray:
            X = X - center if center is not None else X.copy()
            if scale is not None:
                X /= scale
            return X

        return robust
    if cls is MinMaxScaler:
        scale, offset = _float64_vector(obj.scale_, n), _float64_vector(obj.min_, n)
        if scale is None or offset is None:
            return None
        lo, hi = (float(v) for v in obj.feature_range)
        clip = bool(obj.clip)

        def minmax(X: np.ndarray) -> np.ndarray:
            X = X * scale
            X += offset
            if clip:
                np.clip(X, lo, hi, out=X)
            return X

        return minmax
    if cls is MaxAbsScaler:
        scale = _float64_vector(obj.scale_, n)
        if scale is None:
            return None
        clip = bool(getattr(obj, "clip", False))

        def maxabs(X: np.ndarray) -> np.ndarray:
            X = X / scale
            if clip:
                np.clip(X, -1.0, 1.0, out=X)
            return X

        return maxabs
    return None


def fast_transform(obj: Any) -> Callable[[Any], Any] | None:
    """A faster equivalent of ``obj.transform`` for fitted sklearn scalers, or None.

    Covers StandardScaler, RobustScaler, MinMaxScaler and MaxAbsScaler (exact classes, not
    subclasses) and Pipelines made only of them: the same float64 numpy operations sklearn runs
    after its input checks, so results are bit-for-bit those of ``obj.transform``. Anything else
    -- other transformers, ``set_output`` wrapping, non-float64 fitted statistics -- gets None,
    and at call time only a 2-D float64 ndarray with the fitted feature count takes the fast
    path; other input goes to ``obj.transform``.

    Args:
        obj: A fitted transformer.

    Returns:
        A callable taking the validated array, or None when no exact fast path exists.
    """
    try:
        from sklearn.pipeline import Pipeline
    except ImportError:  # pragma: no cover
        return None
    if type(obj) is Pipeline:
        if not _dense_output_only(obj):
            return None
        ops = []
        for _, step in obj.steps:
            if step is None or step == "passthrough":
                continue
            op = _scaler_op(step)
            if op is None:
                return None
            ops.append(op)
        if not ops:
            return None
        n = getattr(obj.steps[0][1], "n_features_in_", None)
        if not isinstance(n, int):
            return None

        def chain(X: np.ndarray) -> np.ndarray:
            for op in ops:
                X = op(X)
            return X

        op: Callable[[np.ndarray], np.ndarray] | None = chain
    else:
        op = _scaler_op(obj)
        n = getattr(obj, "n_features_in_", None)
    if op is None:
        return None
    fallback = obj.transform

    def transform(X: Any) -> Any:
        if type(X) is np.ndarray and X.dtype == np.float64 and X.ndim == 2 and X.shape[1] == n:
            return op(X)
        return fallback(X)

    return transform
