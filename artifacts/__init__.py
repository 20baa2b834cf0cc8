"""Model and Transformer artifacts, the ML Metadata store and the snapshot store.

Attributes load on first use so that ``import artifacts`` stays cheap (no sklearn, xgboost or
ml_metadata until they are needed)::

    from artifacts import Model, find_artifact, lineage, SnapshotStore
    model_id = Model(model=clf, name="iris", version="1.0.0").submit_artifact()
"""

from importlib import import_module
from typing import Any

from artifacts.errors import (
    ArtifactError,
    InvalidNameError,
    KfpServeError,
    MetadataError,
    SnapshotError,
)

_EXPORTS = {
    "Model": "artifacts.model",
    "Transformer": "artifacts.model",
    "ArtifactRecord": "artifacts.records",
    "get_artifact": "artifacts.records",
    "find_artifact": "artifacts.records",
    "list_artifacts": "artifacts.records",
    "lineage": "artifacts.records",
    "link_snapshot": "artifacts.records",
    "record_deployment": "artifacts.records",
    "snapshot_artifact": "artifacts.records",
    "metadata_store": "artifacts.mlmd",
    "SnapshotStore": "artifacts.snapshots",
    "Snapshot": "artifacts.snapshots",
}

__all__ = [
    "ArtifactError",
    "ArtifactRecord",
    "InvalidNameError",
    "KfpServeError",
    "MetadataError",
    "Model",
    "Snapshot",
    "SnapshotError",
    "SnapshotStore",
    "Transformer",
    "find_artifact",
    "get_artifact",
    "lineage",
    "link_snapshot",
    "list_artifacts",
    "metadata_store",
    "record_deployment",
    "snapshot_artifact",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'artifacts' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
