"""``file://`` snapshots: a content-addressed directory store on the local filesystem.

Layout under the root: ``blake3-<hex>/`` (the tree, files read-only, plus the manifest file) and
``.tmp/<pid>-<random>/`` (work in progress). A snapshot becomes visible with one ``rename`` of
a complete temp directory, so a crash or SIGKILL midway leaves only a ``.tmp`` entry, which is
never listed or opened and is swept by the next snapshot once its process is gone.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.snapshots.base import (
    Snapshot,
    copy_tree_verified,
    snapshot_dir_name,
    split_snapshot_uri,
    verify_local_tree,
)
from kfp_serve.artifacts.snapshots.cache import DigestCache
from kfp_serve.artifacts.snapshots.copy import copy_tree, durable_writes, fsync_dir
from kfp_serve.artifacts.snapshots.digest import (
    MANIFEST_NAME,
    build_manifest,
    cached_hashes,
    manifest_from,
    scan_tree,
)
from kfp_serve.artifacts.snapshots.progress import ByteProgress

TMP_DIR = ".tmp"


def file_uri_path(uri: str) -> Path:
    """The absolute path of a ``file://`` URI (a bare absolute path is accepted too)."""
    if "://" not in uri:
        path = Path(uri)
    else:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise SnapshotError(f"{uri!r} is not a local file:// URI (use file:///absolute/path)")
        path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise SnapshotError(f"{uri!r} must name an absolute path (file:///absolute/path)")
    return path


class FileSnapshotBackend:
    """Snapshots stored in a local directory, addressed by ``file://<root>/blake3-<hex>``."""

    scheme = "file"

    def __init__(self, root: str) -> None:
        self.path = file_uri_path(root)
        self.root = f"file://{self.path}"

    def _dir(self, digest: str) -> Path:
        return self.path / snapshot_dir_name(digest)

    def uri_for(self, digest: str) -> str:
        """The URI a snapshot with ``digest`` has in this store."""
        return f"file://{self._dir(digest)}"

    def exists(self, digest: str) -> bool:
        return self._dir(digest).is_dir()

    def snapshot(self, path: Path, *, progress: bool | None = None) -> Snapshot:
        """Copy the tree at ``path`` into the store, or find it already there.

        An unchanged tree that was snapshotted from the same path before costs a stat pass
        (digest cache) or a digest pass, never a copy. A new tree is hashed while it is copied
        (each chunk is hashed back from the new file right after the kernel copied it, see
        ``copy.py``), so the stored bytes are exactly the hashed ones.

        Durability: the snapshot appears with one ``rename`` of a complete work directory, so a
        crash or SIGKILL of this process never leaves a visible partial snapshot. Files are not
        fsynced by default (like ``cp -r``): after a power loss or kernel crash a snapshot can
        be incomplete on disk, which the verification on ``open``/``restore``/``verify``
        detects and refuses. ``KFP_SERVE_SNAPSHOT_FSYNC=1`` fsyncs every file and directory
        before the rename (and the store directory after it), making a visible snapshot
        durable too.
        """
        src = Path(path).resolve()
        tree = scan_tree(src)
        cache = DigestCache(str(src))
        # The whole tree unchanged since its last snapshot: one scan, nothing read.
        digest = cache.tree_digest(tree.signature)
        if digest is not None and self.exists(digest):
            return Snapshot(self.uri_for(digest), digest, tree.size)

        manifest = None
        if cache.seen:
            # This path was snapshotted before: most likely little changed, so a digest pass
            # (cached hashes for unchanged files, no writes) decides whether to copy at all.
            hashes = cached_hashes(tree.items, cache)
            if hashes is not None:
                manifest = manifest_from(tree.items, hashes)
                cache.remember_tree(tree.signature, tree.newest_change_ns, manifest.digest)
            else:  # build_manifest records the tree itself
                with ByteProgress(f"Hashing {src.name}", tree.size, progress) as bar:
                    manifest = build_manifest(src, progress=bar, tree=tree, cache=cache)
        if manifest is not None and self.exists(manifest.digest):
            return Snapshot(self.uri_for(manifest.digest), manifest.digest, manifest.size)

        self._sweep_tmp()
        durable = durable_writes()
        tmp = self.path / TMP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            with ByteProgress(f"Snapshotting {src.name}", tree.size, progress) as bar:
                # Read-only: a snapshot is immutable (the digest is re-checked anyway).
                hashes = copy_tree(
                    tree.items, tmp, read_only=True, progress=bar, cache=cache, durable=durable
                )
            new = manifest_from(tree.items, hashes)
            if manifest is not None and new.digest != manifest.digest:
                raise SnapshotError(f"{str(src)!r} changed while it was being snapshotted; retry")
            # Saved even when no hash was cacheable yet: it records that this path was seen.
            cache.save(hashes, force=True)
            _write_manifest(tmp / MANIFEST_NAME, new.text, durable)
            final = self._dir(new.digest)
            try:
                os.rename(tmp, final)
            except OSError as e:
                # Another process stored the same content first: same digest, same bytes.
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            if durable:
                fsync_dir(self.path)
            cache.remember_tree(tree.signature, tree.newest_change_ns, new.digest)
            return Snapshot(self.uri_for(new.digest), new.digest, new.size)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _sweep_tmp(self) -> None:
        """Remove work directories left by processes that died mid-snapshot."""
        tmp_root = self.path / TMP_DIR
        if not tmp_root.is_dir():
            return
        for entry in tmp_root.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                shutil.rmtree(entry, ignore_errors=True)

    def _local(self, uri: str) -> tuple[Path, str]:
        scheme, _, digest = split_snapshot_uri(uri)
        if scheme != "file":
            raise SnapshotError(f"{uri!r} is not a file:// snapshot URI")
        return file_uri_path(uri), digest

    def verify(self, uri: str) -> Snapshot:
        path, digest = self._local(uri)
        manifest = verify_local_tree(path, digest, uri)
        return Snapshot(uri, digest, manifest.size)

    def open(self, uri: str) -> Path:
        path, digest = self._local(uri)
        verify_local_tree(path, digest, uri)
        return path

    def restore(self, uri: str, dest: Path) -> Path:
        path, digest = self._local(uri)
        return copy_tree_verified(path, Path(dest), digest, uri)


def _write_manifest(path: Path, text: str, durable: bool) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    if durable:
        fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
