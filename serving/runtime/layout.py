"""File names of the artifact directory layout the runtimes read.

``artifacts/layout.py`` owns the names (the artifacts helper writes directories with them);
this module re-exports them for the runtimes and adds the extensions the stock KServe runtimes
accept, so a directory written by someone else's tool still loads.
"""

from __future__ import annotations

from kfp_serve.artifacts.layout import (
    METADATA_FILE,
    SKLEARN_MODEL_FILE,
    TRANSFORMER_FILE,
    XGBOOST_MODEL_FILE,
    XGBOOST_UBJ_MODEL_FILE,
)

__all__ = [
    "METADATA_FILE",
    "MODEL_EXTENSIONS",
    "MODEL_FILES",
    "SKLEARN_MODEL_FILE",
    "TRANSFORMER_FILE",
    "XGBOOST_MODEL_FILE",
    "XGBOOST_UBJ_MODEL_FILE",
]

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
