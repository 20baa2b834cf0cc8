"""Answer as the ServingRuntime the manifest names does.

A local endpoint rehearses the cluster, so its answers must be the ones the named runtime gives:

- ``kserve-sklearnserver`` (KServe's ``SKLearnModel.predict``): ``predict(X)``, or
  ``predict_proba(X)`` when env ``PREDICT_PROBA`` is ``true`` *and* the estimator has it
  (otherwise predict, silently).
- ``kserve-xgbserver`` (KServe's ``XGBoostModel.predict``): the Booster's output on a ``DMatrix``
  of the input, whatever the model was saved from: probabilities for a classifier, never labels;
  ``PREDICT_PROBA`` is not read.
- ``kfp-serve`` (kfp-serve's own ServingRuntime): the richer answers (an ``XGBClassifier`` saved
  as model.json answers labels like in-process ``predict``; ``PREDICT_PROBA`` on a model without
  ``predict_proba`` is an error at load, not a silent fallback).

- ``kserve-lgbserver`` (KServe's ``LightGBMModel.predict``): ``Booster.predict(X)`` of the one
  ``.bst`` file (LightGBM's text format): class probabilities for a classifier (p(positive
  class) alone for a binary one), values for a regressor; ``PREDICT_PROBA`` is not read. A
  LightGBM file answers so under any runtime: there is no estimator to give labels.
"""

from __future__ import annotations

#: Runtimes whose answers the predictor can reproduce; the first is the default.
RUNTIMES = ("kfp-serve", "kserve-sklearnserver", "kserve-xgbserver", "kserve-lgbserver")
KFP_SERVE = "kfp-serve"
SKLEARN_SERVER = "kserve-sklearnserver"
XGB_SERVER = "kserve-xgbserver"
LGB_SERVER = "kserve-lgbserver"
#: Environment variable naming the runtime (the local backend sets it from the manifest).
RUNTIME_ENV = "KFP_SERVE_SERVING_RUNTIME"
#: Platform names reported in v2 model metadata, per runtime.
PLATFORMS = {
    SKLEARN_SERVER: "sklearn",
    XGB_SERVER: "xgboost",
    LGB_SERVER: "lightgbm",
}


#: The framework of the model files each stock runtime loads.
FRAMEWORKS = {SKLEARN_SERVER: "sklearn", XGB_SERVER: "xgboost", LGB_SERVER: "lightgbm"}


def stock(runtime: str | None) -> bool:
    """True when ``runtime`` is one of KServe's stock runtimes (answers must match it)."""
    return runtime in (SKLEARN_SERVER, XGB_SERVER, LGB_SERVER)
