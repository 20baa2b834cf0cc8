"""Built-in per-feature attributions, served at ``POST /v1/models/NAME:explain``.

Response shape (JSON)::

    {
      "model_name": "iris",
      "method": "xgboost_shap" | "linear",
      "explanations": [            # one entry per model output (class or target)
        {
          "output": "setosa" | 1 | null,  # class label / target index; null for a single output
          "feature_names": ["f0", ...],    # names of the features the attributions refer to
          "attributions": [[...], ...],    # one row per request row, one value per feature
          "base_value": 0.12               # the model's output with no feature information
        }
      ]
    }

For every row, ``sum(attributions[row]) + base_value`` equals the model's raw score for that
output: the margin (log-odds) for XGBoost classifiers and linear classifiers, the prediction for
regressors.

- ``xgboost_shap``: XGBoost's native TreeSHAP contributions (``pred_contribs=True``); the bias
  column becomes ``base_value``.
- ``linear``: ``coefficient x value`` for sklearn linear models (LogisticRegression,
  LinearRegression, Ridge, ... and Pipelines ending in one). In a Pipeline, the preceding steps
  are applied first, so attributions refer to the transformed features the linear model sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _dense(X: Any) -> np.ndarray:
    if hasattr(X, "toarray"):  # scipy sparse (e.g. a OneHotEncoder step)
        X = X.toarray()
    elif hasattr(X, "to_numpy"):  # pandas DataFrame (set_output="pandas")
        X = X.to_numpy()
    return np.asarray(X, dtype=np.float64)


def _default_names(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _plain(value: Any) -> Any:
    """numpy scalars -> JSON-friendly Python scalars."""
    return value.item() if isinstance(value, np.generic) else value


def explain_xgboost(
    booster: Any, X: Any, feature_names: tuple[str, ...] | None, classes: list[Any] | None
) -> dict[str, Any]:
    """XGBoost's native SHAP contributions for every row of ``X``.

    Args:
        booster: The model's ``xgboost.Booster``.
        X: Validated input rows.
        feature_names: Names to report (else the booster's, else ``f0``, ``f1``, ...).
        classes: Class labels of a classifier; None for regressors and raw boosters.

    Returns:
        ``{"method": "xgboost_shap", "explanations": [...]}`` (see the module docstring).
    """
    import xgboost as xgb

    dm = xgb.DMatrix(np.asarray(X, dtype=np.float32), nthread=1)
    contribs = booster.predict(dm, pred_contribs=True, validate_features=False)
    n_features = contribs.shape[-1] - 1
    names = list(feature_names or booster.feature_names or _default_names(n_features, "f"))
    if contribs.ndim == 2:
        # Binary classifiers explain the positive class's log-odds.
        label = (classes[1] if len(classes) == 2 else None) if classes else None
        per_output = [(label, contribs)]
    else:
        labels = classes if classes and len(classes) == contribs.shape[1] else None
        per_output = [
            (labels[k] if labels else k, contribs[:, k, :]) for k in range(contribs.shape[1])
        ]
    return {
        "method": "xgboost_shap",
        "explanations": [
            {
                "output": _plain(label),
                "feature_names": names,
                "attributions": c[:, :-1].astype(np.float64).tolist(),
                "base_value": float(c[0, -1]),
            }
            for label, c in per_output
        ],
    }


def find_linear(estimator: Any) -> tuple[Any, Any] | None:
    """``(preceding_steps_or_None, linear_model)`` when ``estimator`` is linear, else None.

    A model counts as linear when it comes from ``sklearn.linear_model`` and has ``coef_``
    and ``intercept_`` (LogisticRegression, LinearRegression, Ridge, Lasso, SGD*, ...).
    """
    pre = None
    final = estimator
    try:
        from sklearn.pipeline import Pipeline
    except ImportError:  # pragma: no cover - sklearn is a dependency
        return None
    if isinstance(estimator, Pipeline):
        final = estimator.steps[-1][1]
        if len(estimator.steps) > 1:
            pre = estimator[:-1]
    module = type(final).__module__
    if (
        module.startswith("sklearn.linear_model")
        and hasattr(final, "coef_")
        and hasattr(final, "intercept_")
    ):
        return pre, final
    return None


def explain_linear(estimator: Any, X: Any, feature_names: tuple[str, ...] | None) -> dict[str, Any]:
    """Coefficient x value attributions of a linear sklearn model (or Pipeline ending in one).

    Args:
        estimator: The served estimator.
        X: Validated input rows.
        feature_names: The model's input feature names, if known.

    Returns:
        ``{"method": "linear", "explanations": [...]}`` (see the module docstring).

    Raises:
        NotImplementedError: ``estimator`` is not linear.
    """
    found = find_linear(estimator)
    if found is None:
        raise NotImplementedError(f"{type(estimator).__name__} is not a linear model")
    pre, final = found
    Xt = _dense(pre.transform(X) if pre is not None else X)
    coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))

    names: list[str] | None = None
    if pre is None:
        names = list(feature_names) if feature_names else None
    else:
        try:
            names = [str(n) for n in pre.get_feature_names_out()]
        except Exception:  # noqa: BLE001 - a step without get_feature_names_out
            names = None
    if names is None or len(names) != Xt.shape[1]:
        names = _default_names(Xt.shape[1], "x")

    classes = getattr(final, "classes_", None)
    if classes is not None:
        labels = [classes[1]] if coef.shape[0] == 1 and len(classes) == 2 else list(classes)
    elif np.ndim(final.coef_) == 1:
        labels = [None]
    else:
        labels = list(range(coef.shape[0]))
    explanations = []
    for k, label in enumerate(labels):
        base = intercept[k] if intercept.shape[0] > k else intercept[0]
        explanations.append(
            {
                "output": _plain(label),
                "feature_names": names,
                "attributions": (Xt * coef[k]).tolist(),
                "base_value": float(base),
            }
        )
    return {"method": "linear", "explanations": explanations}
