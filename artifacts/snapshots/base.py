"""The snapshot value, the backend protocol and the scheme registry.

A backend serves one URI scheme and is constructed with the store root URI, for example
``FileSnapshotBackend("file:///home/me/.kfp-serve/snapshots")``. ``SnapshotStore`` finds the
class for a scheme in ``BACKENDS`` (``"module:Class"``, imported on first use, so
``kfp_serve.artifacts.snapshots.pvc`` is only imported when a ``pvc://`` root or URI is used) or in
classes added with ``register_backend``.

Every snapshot URI ends with ``blake3-<64 hex>``, the tree digest of its content; a backend's
``verify``/``open``/``restore`` must recompute the digest of what it reads and refuse a mismatch.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.snapshots.copy import copy_tree
from kfp_serve.artifacts.snapshots.digest import (
    ALGORITHM,
    DIGEST_PREFIX,
    MANIFEST_NAME,
    Entry,
    Manifest,
    build_manifest,
    diff_manifests,
    digest_hex,
    hash_file,
    manifest_from,
    scan_tree,
)
from kfp_serve.artifacts.snapshots.progress import ByteProgress
from kfp_serve.registry import Implementations


@dataclass(frozen=True)
class Snapshot:
    """An immutable, content-addressed copy of a directory.

    Attributes:
        uri: Where it lives, e.g. ``file:///…/snapshots/blake3-<hex>`` or
            ``s3://bucket/prefix/blake3-<hex>``; for file:// and s3:// this is also the
            InferenceService ``storageUri``.
        digest: ``blake3:<hex>`` over names, modes and contents.
        size: Total bytes of the files.
    """

    uri: str
    digest: str
    size: int


@runtime_checkable
class SnapshotBackend(Protocol):
    """What a snapshot backend provides. Constructed as ``Backend(root_uri)``."""

    scheme: str
    root: str

    def snapshot(self, path: Path, *, progress: bool | None = None) -> Snapshot:
        """Store the tree at ``path`` (atomically; deduplicated) and return its Snapshot."""
        ...

    def exists(self, digest: str) -> bool:
        """True if a complete snapshot with this digest is stored under the root."""
        ...

    def verify(self, uri: str) -> Snapshot:
        """Re-hash the stored snapshot; raise SnapshotError if it does not match its digest."""
        ...

    def open(self, uri: str) -> Path:
        """A verified local directory holding the snapshot's tree (read-only: do not modify)."""
        ...

    def restore(self, uri: str, dest: Path) -> Path:
        """Copy the verified snapshot to ``dest`` (must not exist or be empty); return it."""
        ...


BACKENDS = Implementations(
    {
        "file": "kfp_serve.artifacts.snapshots.file:FileSnapshotBackend",
        "s3": "kfp_serve.artifacts.snapshots.s3:S3SnapshotBackend",
        "pvc": "kfp_serve.artifacts.snapshots.pvc:PvcSnapshotBackend",
    },
    error=SnapshotError,
    unknown=lambda scheme, known: (
        f"no snapshot backend for scheme {scheme!r}; use one of "
        + ", ".join(f"{s}://" for s in known)
    ),
    label=lambda scheme: f"the {scheme}:// snapshot backend",
)
register_backend = BACKENDS.register
backend_class = BACKENDS.get


#: The last component of every snapshot URI: the algorithm and the tree digest's hex.
SNAPSHOT_NAME = re.compile(rf"^{ALGORITHM}-([0-9a-f]{{64}})$")


def split_snapshot_uri(uri: str) -> tuple[str, str, str]:
    """Split ``scheme://root/blake3-<hex>`` into (scheme, root URI, digest).

    Raises:
        SnapshotError: not a snapshot URI (also refuses ``..`` and other tricks, since the
            last component must be exactly ``blake3-`` + 64 hex digits).
    """
    scheme, sep, rest = uri.partition("://")
    base, _, name = rest.rstrip("/").rpartition("/")
    match = SNAPSHOT_NAME.fullmatch(name)
    if not sep or not scheme or not match:
        raise SnapshotError(
            f"{uri!r} is not a snapshot URI; expected "
            f"'<scheme>://<root>/{ALGORITHM}-<64 hex digits>' "
            "as returned by SnapshotStore.snapshot()"
        )
    return scheme, f"{scheme}://{base}", DIGEST_PREFIX + match.group(1)


def snapshot_dir_name(digest: str) -> str:
    """``blake3-<hex>``: the directory/key name of a snapshot (no ':' for Kubernetes/S3)."""
    return f"{ALGORITHM}-{digest_hex(digest)}"


def verify_local_tree(directory: Path, digest: str, source: str) -> Manifest:
    """Re-hash a local snapshot copy (files in parallel) and refuse it unless it matches.

    Raises:
        SnapshotError: naming the snapshot and the files that differ.
    """
    if not directory.is_dir():
        raise SnapshotError(f"snapshot {source!r} does not exist")
    tree = scan_tree(directory)
    with ByteProgress(f"Verifying {directory.name[:19]}", tree.size) as progress:
        actual = build_manifest(directory, progress=progress, tree=tree)
    _check_digest(directory, actual, digest, source)
    return actual


def _check_digest(directory: Path, actual: Manifest, digest: str, source: str) -> None:
    if actual.digest == digest:
        return
    details: list[str] = []
    try:
        stored = Manifest.parse((directory / MANIFEST_NAME).read_text(), source)
        details = diff_manifests(stored, actual)
    except (OSError, SnapshotError):
        details = ["its manifest is missing or unreadable"]
    raise SnapshotError(
        f"snapshot {source!r} failed verification: its content does not match digest "
        f"{digest} ({'; '.join(details) or 'metadata differs'}). It was modified after it was "
        "taken; refusing to use it. Take a new snapshot of the original directory."
    )


def materialize(
    manifest: Manifest,
    dest: Path,
    fetch: Callable[[Entry, Path], object],
    progress: ByteProgress | None = None,
) -> None:
    """Create the directories and symlinks of ``manifest`` under ``dest`` and fetch its files.

    ``fetch(entry, path)`` writes one file; its hash is then checked against the manifest.
    """
    for entry in manifest.entries:
        target = dest / entry.path
        if entry.kind == "d":
            target.mkdir(parents=True, exist_ok=True)
        elif entry.kind == "l":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry.target, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            fetch(entry, target)
            content_hash, size = hash_file(str(target), progress)
            if content_hash != entry.content_hash or size != entry.size:
                raise SnapshotError(
                    f"file {entry.path!r} does not match the snapshot manifest (tampered or "
                    "corrupted object); refusing it"
                )
            os.chmod(target, entry.mode)


def copy_tree_verified(src: Path, dest: Path, digest: str, source: str) -> Path:
    """Restore a local snapshot copy into ``dest`` atomically (temp dir, rename), verified.

    One pass: every file is copied once and hashed back from the copy; the digest of what was
    written must equal ``digest`` before the temp directory is renamed to ``dest``.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SnapshotError(
            f"cannot restore {source!r} into {str(dest)!r}: it exists and is not an empty "
            "directory (choose a new path)"
        )
    if not src.is_dir():
        raise SnapshotError(f"snapshot {source!r} does not exist")
    tree = scan_tree(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.restore-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        with ByteProgress(f"Restoring {src.name[:19]}", tree.size) as progress:
            hashes = copy_tree(tree.items, tmp, read_only=False, progress=progress)
        _check_digest(src, manifest_from(tree.items, hashes), digest, source)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
