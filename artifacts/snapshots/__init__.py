"""Snapshots: immutable, content-addressed, verified copies of artifact directories.

``SnapshotStore(root)`` picks the backend from the root's URI scheme (``file://``, ``s3://``,
``pvc://``); the root defaults to ``$KFP_SERVE_SNAPSHOT_STORE``, else
``file://$KFP_SERVE_HOME/snapshots``.
"""

from __future__ import annotations

import os
from pathlib import Path

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.snapshots.base import (
    BACKENDS,
    Snapshot,
    SnapshotBackend,
    backend_class,
    register_backend,
    split_snapshot_uri,
)
from kfp_serve.artifacts.snapshots.digest import tree_digest

STORE_ENV = "KFP_SERVE_SNAPSHOT_STORE"

__all__ = [
    "BACKENDS",
    "STORE_ENV",
    "Snapshot",
    "SnapshotBackend",
    "SnapshotError",
    "SnapshotStore",
    "default_root",
    "register_backend",
    "tree_digest",
]


def default_root() -> str:
    """The snapshot store root from ``KFP_SERVE_SNAPSHOT_STORE``, else the local default."""
    root = os.environ.get(STORE_ENV)
    if root:
        return root
    from kfp_serve.artifacts.home import state_dir

    return f"file://{state_dir() / 'snapshots'}"


def _normalise(root: str) -> str:
    if "://" not in root:
        # A bare path is a convenience for the local store.
        path = Path(root).expanduser()
        if not path.is_absolute():
            path = path.resolve()
        return f"file://{path}"
    return root.rstrip("/")


class SnapshotStore:
    """A snapshot store; the backend is chosen by the URI scheme of ``root``.

    Args:
        root: ``file:///path``, ``s3://bucket/prefix``, ``pvc://…`` or a local path. Default:
            ``$KFP_SERVE_SNAPSHOT_STORE``, else ``file://$KFP_SERVE_HOME/snapshots``.

    ``restore``/``open``/``verify`` accept any snapshot URI: a URI under another root (or of
    another scheme) is handled by the backend for that root, since a URI is self-describing.
    """

    def __init__(self, root: str | None = None) -> None:
        self.root = _normalise(root or default_root())
        self.scheme = self.root.partition("://")[0]
        self.backend: SnapshotBackend = backend_class(self.scheme)(self.root)

    def __repr__(self) -> str:
        return f"SnapshotStore({self.root!r})"

    def snapshot(self, path: str | os.PathLike[str], *, progress: bool | None = None) -> Snapshot:
        """Take (or find) the snapshot of the directory at ``path``.

        Raises:
            SnapshotError: ``path`` is not a directory or holds symlinks that leave it.
        """
        return self.backend.snapshot(Path(path), progress=progress)

    def _backend_for(self, uri: str) -> SnapshotBackend:
        scheme, root, _ = split_snapshot_uri(uri)
        if scheme == self.scheme and root.rstrip("/") == self.backend.root.rstrip("/"):
            return self.backend
        return backend_class(scheme)(root)

    def exists(self, uri: str) -> bool:
        """True if the snapshot ``uri`` is stored (not verified)."""
        _, _, digest = split_snapshot_uri(uri)
        return self._backend_for(uri).exists(digest)

    def verify(self, uri: str) -> Snapshot:
        """Re-hash the snapshot; raise SnapshotError if it was tampered with or is missing."""
        return self._backend_for(uri).verify(uri)

    def open(self, uri: str) -> Path:
        """A verified local directory to load the snapshot from (do not modify it)."""
        return self._backend_for(uri).open(uri)

    def restore(self, uri: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the verified snapshot into ``dest`` (new or empty directory) and return it."""
        return self._backend_for(uri).restore(uri, Path(dest))
