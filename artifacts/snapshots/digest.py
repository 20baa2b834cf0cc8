"""Content digests of directory trees: the identity of a snapshot.

A tree is described by a *manifest*: one JSON line per entry (directory, regular file or
relative symlink) in sorted path order, holding the entry's kind, mode, size, content hash and
path. The tree digest is ``sha256:`` + the SHA-256 of that manifest text, so two trees with the
same names, modes and contents have the same digest wherever they live.

Modes are normalised the way git does it (a file is executable or not): the snapshot store
keeps files read-only, and umask differences between machines must not change a digest.

Refused, because a snapshot must be a self-contained tree: symlinks that point outside the tree
(or are absolute), sockets/FIFOs/devices, and, when a manifest is read back, any path that is
absolute or contains ``..`` (path traversal).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from artifacts.errors import SnapshotError

DIGEST_PREFIX = "sha256:"
# Written inside every stored snapshot; never part of a digest. No *.json suffix: xgbserver
# refuses a model directory with two *.json files.
MANIFEST_NAME = ".kfp-snapshot.manifest"
CHUNK = 1 << 20
# Hash a few files at once: hashlib releases the GIL, so two cores hash twice as fast.
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))
# A cached file hash is trusted only if the file's ctime is older than this when it was
# hashed: a change within the same clock tick as the hash could otherwise go unnoticed.
CACHE_SAFETY_NS = 1_000_000_000

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Entry:
    """One entry of a tree: ``kind`` is "d" (directory), "f" (file) or "l" (symlink)."""

    kind: str
    path: str
    mode: int = 0
    size: int = 0
    sha256: str = ""
    target: str = ""

    def line(self) -> str:
        """The entry's manifest line (compact JSON, so any file name round-trips)."""
        return json.dumps(
            [self.kind, self.path, self.mode, self.size, self.sha256, self.target],
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class Manifest:
    """The sorted entries of a tree, its digest and total file size."""

    entries: tuple[Entry, ...]

    @property
    def text(self) -> str:
        return "".join(e.line() + "\n" for e in self.entries)

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "f")

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "f"]

    @classmethod
    def parse(cls, text: str, source: str = "manifest") -> Manifest:
        """Parse manifest text, refusing path traversal and malformed lines."""
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                kind, path, mode, size, sha, target = json.loads(line)
                entry = Entry(str(kind), str(path), int(mode), int(size), str(sha), str(target))
            except (ValueError, TypeError) as e:
                raise SnapshotError(f"{source}: line {n} is malformed: {line[:80]!r}") from e
            if entry.kind not in ("d", "f", "l"):
                raise SnapshotError(f"{source}: line {n} has unknown kind {entry.kind!r}")
            check_relative_path(entry.path, source)
            if entry.kind == "l":
                check_link_target(entry.path, entry.target, source)
            entries.append(entry)
        return cls(tuple(entries))


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``, validated (it becomes a directory/key name)."""
    hexpart = digest.removeprefix(DIGEST_PREFIX)
    if not digest.startswith(DIGEST_PREFIX) or len(hexpart) != 64 or not _is_hex(hexpart):
        raise SnapshotError(f"{digest!r} is not a sha256 digest ('sha256:' + 64 hex digits)")
    return hexpart


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def check_relative_path(path: str, source: str = "snapshot") -> None:
    """Refuse a path that is empty, absolute or climbs out of the tree."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\x00" in path or str(p) != path:
        raise SnapshotError(f"{source}: path {path!r} escapes the tree (path traversal refused)")


def check_link_target(link: str, target: str, source: str = "snapshot") -> None:
    """Refuse a symlink whose target is absolute or resolves outside the tree."""
    if not target or target.startswith("/"):
        raise SnapshotError(
            f"{source}: symlink {link!r} -> {target!r} is absolute; a snapshot must be "
            "self-contained (use a relative link inside the directory, or copy the file)"
        )
    depth = len(PurePosixPath(link).parts) - 1
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth + (part != ".")
        if depth < 0:
            raise SnapshotError(
                f"{source}: symlink {link!r} -> {target!r} points outside the tree; a snapshot "
                "must be self-contained (copy the target into the directory instead)"
            )


def file_mode(st_mode: int) -> int:
    """Normalised mode: 0o755 for an executable file, 0o644 otherwise."""
    return 0o755 if st_mode & 0o111 else 0o644


@dataclass
class _Scanned:
    entry: Entry
    abspath: str
    st: os.stat_result | None = None


def scan_tree(root: str | os.PathLike[str]) -> list[_Scanned]:
    """Walk ``root`` (not following symlinks) and return its entries in sorted path order.

    File entries carry no hash yet. The reserved manifest file at the top level is skipped.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise SnapshotError(f"{root!r} is not a directory; a snapshot is taken of a directory")
    out: list[_Scanned] = []

    def walk(abs_dir: str, rel_dir: str) -> None:
        try:
            names = sorted(os.listdir(abs_dir))
        except OSError as e:
            raise SnapshotError(f"cannot read directory {abs_dir!r}: {e}") from e
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not rel_dir and name == MANIFEST_NAME:
                continue
            if "\n" in name or "\r" in name:
                raise SnapshotError(f"file name {rel!r} contains a newline; rename it")
            abspath = os.path.join(abs_dir, name)
            st = os.lstat(abspath)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(abspath)
                check_link_target(rel, target, source=root)
                out.append(_Scanned(Entry("l", rel, target=target), abspath))
            elif stat.S_ISDIR(st.st_mode):
                out.append(_Scanned(Entry("d", rel), abspath))
                walk(abspath, rel)
            elif stat.S_ISREG(st.st_mode):
                entry = Entry("f", rel, file_mode(st.st_mode), st.st_size)
                out.append(_Scanned(entry, abspath, st))
            else:
                raise SnapshotError(
                    f"{abspath!r} is not a regular file, directory or symlink (a socket, FIFO "
                    "or device); remove it before taking a snapshot"
                )

    walk(root, "")
    return out


def hash_file(
    path: str,
    progress: ProgressFn | None = None,
    copy_to: str | None = None,
    expected: os.stat_result | None = None,
) -> tuple[str, int]:
    """SHA-256 of a file, optionally copying it to ``copy_to`` first.

    When copying, the kernel copies the bytes (``copy_file_range``, no trip through Python) and
    the *copy* is hashed, so the digest describes exactly the stored bytes; a source that
    changed meanwhile is reported through its stat.

    Returns:
        (hex digest, size in bytes)
    """
    with open(path, "rb") as src:
        before = os.fstat(src.fileno())
        if copy_to is not None:
            with open(copy_to, "xb") as out:
                _kernel_copy(src.fileno(), out.fileno(), before.st_size)
        after = os.fstat(src.fileno())
        if copy_to is None:
            sha, size = _hash_fd(src, progress)
            after = os.fstat(src.fileno())
    if copy_to is not None:
        with open(copy_to, "rb") as copied:
            sha, size = _hash_fd(copied, progress)
    ref = expected or before
    if _changed(ref, after) or size != after.st_size:
        raise SnapshotError(f"{path!r} changed while it was being read; retry the snapshot")
    return sha, size


def _hash_fd(f: Any, progress: ProgressFn | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])  # hashlib releases the GIL: threads hash in parallel
        size += n
        if progress:
            progress(n)
    return h.hexdigest(), size


def _kernel_copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between file descriptors inside the kernel where possible."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
        if left <= 0:
            return
    except OSError:
        pass  # EXDEV/ENOSYS/EINVAL on some filesystems: fall back to a plain copy
    os.lseek(src, size - left, os.SEEK_SET)
    os.lseek(dst, size - left, os.SEEK_SET)
    while chunk := os.read(src, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) != (
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
        b.st_ino,
    )


def _run_parallel(jobs: Iterable[Callable[[], None]]) -> None:
    jobs = list(jobs)
    if len(jobs) <= 1 or HASH_THREADS == 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for fut in [pool.submit(job) for job in jobs]:
            fut.result()


class DigestCache:
    """File hashes remembered by (path, size, mtime, ctime, inode), like git's index.

    It lets a re-snapshot of an unchanged tree skip reading the files. Only the decision "this
    tree is already stored" uses it; bytes that are written to a store are always hashed as
    they are copied, and snapshots are verified by a full re-hash before they are loaded.
    """

    def __init__(self, root: str, cache_dir: Path | None) -> None:
        self._file: Path | None = None
        self._data: dict[str, list] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self.seen = False  # True if this tree was hashed (and the cache saved) before
        if cache_dir is None:
            return
        key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape"))
        self._file = cache_dir / f"{key.hexdigest()[:32]}.json"
        try:
            self._data = json.loads(self._file.read_text())
            self.seen = True
        except (OSError, ValueError):
            self._data = {}

    def get(self, rel: str, st: os.stat_result) -> str | None:
        rec = self._data.get(rel)
        if rec and rec[:4] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
            return rec[4]
        return None

    def put(self, rel: str, st: os.stat_result, sha: str) -> None:
        if self._file is None or st.st_ctime_ns > time.time_ns() - CACHE_SAFETY_NS:
            return
        with self._lock:
            self._data[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha]
            self._dirty = True

    def save(self, keep: Iterable[str], force: bool = False) -> None:
        """Write the cache, keeping only the paths in ``keep`` (``force``: even if unchanged)."""
        if self._file is None or not (self._dirty or force):
            return
        keep = set(keep)
        data = {k: v for k, v in self._data.items() if k in keep}
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._file)
        except OSError:
            # The cache is an optimisation only; a failed write must not fail a snapshot.
            tmp.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    from artifacts.home import state_dir

    return state_dir() / "cache" / "tree-digest"


def build_manifest(
    root: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    use_cache: bool = False,
    cache_dir: Path | None = None,
    scanned: list[_Scanned] | None = None,
) -> Manifest:
    """Hash every file under ``root`` and return the tree's manifest.

    Args:
        root: The directory.
        progress: Called with a byte count as file data is read (and for cache hits).
        use_cache: Reuse hashes of files whose stat is unchanged since they were last hashed.
        cache_dir: Where the cache lives (default ``$KFP_SERVE_HOME/cache/tree-digest``).
        scanned: A result of ``scan_tree(root)`` to reuse.
    """
    root = os.fspath(root)
    items = scanned if scanned is not None else scan_tree(root)
    cache = DigestCache(root, (cache_dir or default_cache_dir()) if use_cache else None)
    hashes: dict[str, str] = {}
    jobs = []
    for item in items:
        if item.entry.kind != "f":
            continue
        hit = cache.get(item.entry.path, item.st) if use_cache and item.st else None
        if hit:
            hashes[item.entry.path] = hit
            if progress:
                progress(item.entry.size)
            continue

        def job(item: _Scanned = item) -> None:
            sha, _ = hash_file(item.abspath, progress, expected=item.st)
            hashes[item.entry.path] = sha
            cache.put(item.entry.path, item.st, sha)

        jobs.append((item.entry.size, job))
    # Largest first, so the threads finish together.
    _run_parallel(job for _, job in sorted(jobs, key=lambda t: -t[0]))
    cache.save(hashes)
    return _manifest_from(items, hashes)


def cached_manifest(
    root: str, items: list[_Scanned], cache_dir: Path | None = None
) -> Manifest | None:
    """The manifest from the digest cache alone, or None if any file is not cached."""
    cache = DigestCache(root, cache_dir or default_cache_dir())
    hashes = {}
    for item in items:
        if item.entry.kind == "f":
            hit = cache.get(item.entry.path, item.st) if item.st else None
            if hit is None:
                return None
            hashes[item.entry.path] = hit
    return _manifest_from(items, hashes)


def _manifest_from(items: list[_Scanned], hashes: dict[str, str]) -> Manifest:
    entries = []
    for item in items:
        e = item.entry
        if e.kind == "f":
            e = Entry("f", e.path, e.mode, e.size, hashes[e.path])
        entries.append(e)
    return Manifest(tuple(entries))


def tree_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Digest of a directory tree over names, modes and contents.

    Returns:
        (``"sha256:<hex>"``, total size of the files in bytes)

    Raises:
        SnapshotError: ``path`` is not a directory, or holds a symlink pointing outside the tree,
            an absolute symlink, or a special file.
    """
    manifest = build_manifest(path)
    return manifest.digest, manifest.size


def diff_manifests(expected: Manifest, actual: Manifest, limit: int = 5) -> list[str]:
    """Human-readable differences between two manifests (for tamper errors)."""
    exp = {e.path: e for e in expected.entries}
    act = {e.path: e for e in actual.entries}
    out = []
    for path in sorted(exp.keys() | act.keys()):
        a, b = exp.get(path), act.get(path)
        if a == b:
            continue
        if b is None:
            out.append(f"{path!r} is missing")
        elif a is None:
            out.append(f"{path!r} was added")
        elif a.sha256 != b.sha256 or a.size != b.size:
            out.append(f"{path!r} content changed")
        else:
            out.append(f"{path!r} changed (kind, mode or link target)")
        if len(out) >= limit:
            out.append("…")
            break
    return out
