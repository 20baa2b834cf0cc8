"""Model and Transformer artifacts, the ML Metadata store and the snapshot store.

Attributes load on first use so that ``import kfp_serve.artifacts`` stays cheap (no sklearn,
xgboost or
ml_metadata until they are needed)::

    from kfp_serve.artifacts import Model, find_artifact, lineage, SnapshotStore
    model_id = Model(model=clf, name="iris", version="1.0.0").submit_artifact()
"""

from kfp_serve._lazy import lazy_exports
from kfp_serve.artifacts.errors import (
    ArtifactError,
    InvalidNameError,
    KfpServeError,
    MetadataError,
    SnapshotError,
)

_EXPORTS = {
    "Model": "kfp_serve.artifacts.model",
    "Transformer": "kfp_serve.artifacts.model",
    "ArtifactRecord": "kfp_serve.artifacts.records",
    "get_artifact": "kfp_serve.artifacts.records",
    "find_artifact": "kfp_serve.artifacts.records",
    "list_artifacts": "kfp_serve.artifacts.records",
    "lineage": "kfp_serve.artifacts.records",
    "link_snapshot": "kfp_serve.artifacts.records",
    "record_deployment": "kfp_serve.artifacts.deployments",
    "record_traffic": "kfp_serve.artifacts.deployments",
    "end_deployments": "kfp_serve.artifacts.deployments",
    "Share": "kfp_serve.artifacts.deployments",
    "snapshot_artifact": "kfp_serve.artifacts.records",
    "metadata_store": "kfp_serve.artifacts.metadata",
    "MetadataStore": "kfp_serve.artifacts.metadata",
    "set_alias": "kfp_serve.artifacts.aliases",
    "ensure_servable": "kfp_serve.artifacts.aliases",
    "resolve": "kfp_serve.artifacts.aliases",
    "list_aliases": "kfp_serve.artifacts.aliases",
    "alias_history": "kfp_serve.artifacts.aliases",
    "previous_version": "kfp_serve.artifacts.aliases",
    "deprecate": "kfp_serve.artifacts.aliases",
    "archive": "kfp_serve.artifacts.aliases",
    "parse_ref": "kfp_serve.artifacts.aliases",
    "ModelRef": "kfp_serve.artifacts.aliases",
    "ResolvedModel": "kfp_serve.artifacts.aliases",
    "AliasChange": "kfp_serve.artifacts.aliases",
    "UnservableVersionError": "kfp_serve.artifacts.aliases",
    "SnapshotStore": "kfp_serve.artifacts.snapshots",
    "Snapshot": "kfp_serve.artifacts.snapshots",
}

__all__ = [
    "AliasChange",
    "ArtifactError",
    "ArtifactRecord",
    "InvalidNameError",
    "KfpServeError",
    "MetadataError",
    "MetadataStore",
    "Model",
    "ModelRef",
    "ResolvedModel",
    "Snapshot",
    "Share",
    "SnapshotError",
    "SnapshotStore",
    "Transformer",
    "UnservableVersionError",
    "alias_history",
    "archive",
    "deprecate",
    "end_deployments",
    "ensure_servable",
    "find_artifact",
    "get_artifact",
    "lineage",
    "link_snapshot",
    "list_aliases",
    "list_artifacts",
    "metadata_store",
    "parse_ref",
    "previous_version",
    "record_deployment",
    "record_traffic",
    "resolve",
    "set_alias",
    "snapshot_artifact",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
