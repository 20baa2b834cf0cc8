"""The ``snapshot`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Artifact, Input

from kfp_serve.components.defs._base import component


@component
def snapshot(
    artifact: Input[Artifact],
    artifact_id: int,
    store: str = "",
) -> NamedTuple("SnapshotOutputs", [("uri", str), ("digest", str), ("size", int)]):
    """Take an immutable, content-addressed snapshot of a saved artifact and link it in MLMD.

    The snapshot is what the endpoint serves: it is verified against its digest before a model
    server loads it, so the served bytes are exactly the ones recorded.

    Args:
        artifact: The saved artifact directory from a submit step.
        artifact_id: The MLMD id of that artifact (the submit step's output).
        store: Snapshot store URI: file://..., s3://bucket/prefix or pvc://...; empty for the
            default (KFP_SERVE_SNAPSHOT_STORE, else a local store under KFP_SERVE_HOME).

    Returns:
        uri: The snapshot URI.
        digest: The BLAKE3 digest of the snapshot's directory tree.
        size: The snapshot's size in bytes.
    """
    from kfp_serve.components.ops import snapshot as take_snapshot

    taken = take_snapshot(artifact_id, artifact.path, store)
    return (taken.uri, taken.digest, taken.size)
