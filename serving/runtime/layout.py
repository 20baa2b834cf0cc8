"""File names of the artifact directory layout the runtimes read.

The artifacts package owns these names (``artifacts/layout.py``); this module re-exports them
and falls back to the documented defaults while that module is absent, so the runtimes never
drift from what the artifacts helper writes.
"""

from __future__ import annotations

try:  # pragma: no cover - depends on which modules exist in the tree
    from artifacts import layout as _artifacts_layout
except ImportError:  # pragma: no cover
    _artifacts_layout = None

SKLEARN_MODEL_FILE: str = getattr(_artifacts_layout, "SKLEARN_MODEL_FILE", "model.joblib")
XGBOOST_MODEL_FILE: str = getattr(_artifacts_layout, "XGBOOST_MODEL_FILE", "model.json")
XGBOOST_UBJ_MODEL_FILE: str = getattr(_artifacts_layout, "XGBOOST_UBJ_MODEL_FILE", "model.ubj")
TRANSFORMER_FILE: str = getattr(_artifacts_layout, "TRANSFORMER_FILE", "transformer.joblib")
METADATA_FILE: str = getattr(_artifacts_layout, "METADATA_FILE", "kfp-serve-metadata.yaml")

#: Well-known model file names, checked first, and the framework each one means.
MODEL_FILES: dict[str, str] = {
    SKLEARN_MODEL_FILE: "sklearn",
    XGBOOST_MODEL_FILE: "xgboost",
    XGBOOST_UBJ_MODEL_FILE: "xgboost",
}
#: Extensions the stock sklearnserver / xgbserver accept for a single top-level model file.
MODEL_EXTENSIONS: dict[str, str] = {
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".bst": "xgboost",
    ".json": "xgboost",
    ".ubj": "xgboost",
}
