"""Validation-free predict for plain sklearn linear models.

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
