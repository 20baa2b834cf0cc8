"""What was hashed before, so an unchanged tree costs a stat pass instead of a read.

Two records per source directory (keyed by its real path), both only an optimisation: a lost or
stale record costs a re-hash, never a wrong digest.

- The tree record: the *signature* of the tree (every path with its size, mtimes, ctime, inode
  and mode, see ``digest.scan_tree``) and the digest that tree had. Same signature, same digest:
  the whole decision "already stored?" is one scan.
- The file records: each file's hash by (size, mtime, ctime, inode), like git's index, for when
  only a few files changed.

A record is written only for files whose ctime is older than ``SAFETY_NS`` when it is written:
a change in the same clock tick as the stat could otherwise go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

SAFETY_NS = 1_000_000_000


def default_cache_dir() -> Path:
    from kfp_serve.artifacts.home import state_dir

    return state_dir() / "cache" / "tree-digest"


class DigestCache:
    """File hashes and the tree digest last computed for one source directory."""

    def __init__(self, root: str, cache_dir: Path | None = None) -> None:
        self._dir = cache_dir if cache_dir is not None else default_cache_dir()
        key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape"))
        stem = key.hexdigest()[:32]
        self._files_path = self._dir / f"{stem}.json"
        self._tree_path = self._dir / f"{stem}.tree"
        self._files: dict[str, list] | None = None  # loaded on first use
        self._dirty = False
        self._lock = threading.Lock()

    @property
    def seen(self) -> bool:
        """True if this directory was hashed (and the cache saved) before."""
        return self._files_path.is_file()

    def tree_digest(self, signature: str) -> str | None:
        """The digest recorded for a tree with this signature, if any."""
        try:
            record = json.loads(self._tree_path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(record, dict) and record.get("signature") == signature:
            return record.get("digest")
        return None

    def remember_tree(self, signature: str, newest_change_ns: int, digest: str) -> None:
        """Record the digest of a tree, unless one of its files changed too recently."""
        if newest_change_ns > time.time_ns() - SAFETY_NS:
            return
        _write_atomic(self._tree_path, json.dumps({"signature": signature, "digest": digest}))

    def _data(self) -> dict[str, list]:
        if self._files is None:
            try:
                self._files = json.loads(self._files_path.read_text())
            except (OSError, ValueError):
                self._files = {}
        return self._files

    def get(self, rel: str, st: os.stat_result) -> str | None:
        rec = self._data().get(rel)
        if rec and rec[:4] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
            return rec[4]
        return None

    def put(self, rel: str, st: os.stat_result, content_hash: str) -> None:
        if st.st_ctime_ns > time.time_ns() - SAFETY_NS:
            return
        with self._lock:
            data = self._data()
            data[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, content_hash]
            self._dirty = True

    def save(self, keep: Iterable[str], force: bool = False) -> None:
        """Write the file records, keeping only the paths in ``keep`` (``force``: even if
        unchanged, which records that the directory was seen)."""
        if not (self._dirty or force):
            return
        keep = set(keep)
        data = {k: v for k, v in self._data().items() if k in keep}
        _write_atomic(self._files_path, json.dumps(data))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        # The cache is an optimisation only; a failed write must not fail a snapshot.
        tmp.unlink(missing_ok=True)
