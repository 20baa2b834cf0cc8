"""Where a local server loads its artifact from: a verified snapshot, or a plain directory."""

from __future__ import annotations

from pathlib import Path

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.serving.errors import ServingError


def resolve_storage(uri: str, *, field: str = "storageUri") -> Path:
    """A local directory to load an artifact from.

    A snapshot URI (file:// or s3://, ending in ``blake3-<hex>``) is opened through the snapshot
    store, which verifies its digest: a tampered or incomplete snapshot is refused, never loaded.
    A plain directory (a path, or a file:// URI that is not a snapshot) is used as it is.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in ("", "file", "s3"):
        raise ServingError(
            f"{field} {uri!r}: the local backend loads file:// and s3:// snapshots or local "
            f"directories, not {scheme}://; serve it on a cluster (KFP_SERVE_BACKEND=kubernetes)"
        )
    from kfp_serve.artifacts.snapshots.base import SNAPSHOT_NAME

    if scheme and SNAPSHOT_NAME.fullmatch(uri.rstrip("/").rsplit("/", 1)[-1]):
        from kfp_serve.artifacts.snapshots import SnapshotStore

        try:
            return Path(SnapshotStore().open(uri))
        except SnapshotError as e:
            raise ServingError(f"{field} {uri!r} cannot be served: {e}") from e
    if scheme == "s3":
        raise ServingError(
            f"{field} {uri!r} is not a snapshot: the local backend loads s3:// artifacts only as "
            "snapshots (artifacts.SnapshotStore().snapshot(dir).uri)"
        )
    path = Path(uri[len("file://") :] if scheme == "file" else uri).expanduser()
    if not path.is_dir():
        raise ServingError(
            f"{field} {uri!r} does not exist or is not a directory: save the artifact again "
            "or pass its model directory"
        )
    return path.resolve()
