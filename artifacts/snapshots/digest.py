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
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from artifacts.errors import SnapshotError

DIGEST_PREFIX = "sha256:"
# Written inside every stored snapshot; never part of a digest. No *.json suffix: xgbserver
# refuses a model directory with two *.json files.
MANIFEST_NAME = ".kfp-snapshot.manifest"
CHUNK = 1 << 20  # read/hash/write buffer per worker
# Worker threads for hashing and copying: SHA-256 releases the GIL and the kernel's cost of
# creating files scales with cores, so one worker per usable core (more only add contention).
WORKERS = max(1, min(8, len(os.sched_getaffinity(0))))
# Files smaller than this are handled in batches of up to BATCH_FILES / BATCH_BYTES per
# directory (one directory per batch keeps workers out of each other's directory locks).
BATCH_FILE_MAX = 1 << 20
BATCH_FILES = 256
BATCH_BYTES = 16 << 20
FILE_COST = 256 << 10  # the cost of creating a file, in bytes copied (for ordering work)
FADVISE_BYTES = 4 << 20  # sequential read-ahead hint for files at least this large
# Files at least this large are copied by reading straight into a memory map of the new file
# and hashing from that map: one kernel copy instead of three, about half the CPU per byte.
MAPPED_COPY_BYTES = 1 << 20
FSYNC_ENV = "KFP_SERVE_SNAPSHOT_FSYNC"
# A cached file hash is trusted only if the file's ctime is older than this when it was
# hashed: a change within the same clock tick as the hash could otherwise go unnoticed.
CACHE_SAFETY_NS = 1_000_000_000

ProgressFn = Callable[[int], None]


# One encoder for every manifest line: json.dumps with separators builds a new encoder per
# call, a third of a re-snapshot's time on a tree of thousands of files. Same output.
_encode_line = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
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
        return _encode_line([self.kind, self.path, self.mode, self.size, self.sha256, self.target])


@dataclass(frozen=True)
class Manifest:
    """The sorted entries of a tree, its digest and total file size."""

    entries: tuple[Entry, ...]

    @cached_property
    def text(self) -> str:
        return "".join(e.line() + "\n" for e in self.entries)

    @cached_property
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


@dataclass(slots=True)
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
    append = out.append

    def walk(abs_dir: str, rel_dir: str) -> None:
        try:
            with os.scandir(abs_dir) as it:
                dir_entries = sorted(it, key=lambda d: d.name)
        except OSError as e:
            raise SnapshotError(f"cannot read directory {abs_dir!r}: {e}") from e
        prefix = rel_dir + "/" if rel_dir else ""
        for de in dir_entries:
            name = de.name
            if not rel_dir and name == MANIFEST_NAME:
                continue
            rel = prefix + name
            if "\n" in name or "\r" in name:
                raise SnapshotError(f"file name {rel!r} contains a newline; rename it")
            abspath = de.path
            st = de.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                append(_Scanned(Entry("f", rel, file_mode(mode), st.st_size), abspath, st))
            elif stat.S_ISDIR(mode):
                append(_Scanned(Entry("d", rel), abspath))
                walk(abspath, rel)
            elif stat.S_ISLNK(mode):
                target = os.readlink(abspath)
                check_link_target(rel, target, source=root)
                append(_Scanned(Entry("l", rel, target=target), abspath))
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
    """SHA-256 of one file, optionally copying it to ``copy_to`` in the same pass.

    Returns:
        (hex digest, size in bytes)
    """
    buf = bytearray(CHUNK)
    if expected is None:
        try:
            expected = os.lstat(path)
        except OSError as e:
            raise SnapshotError(f"cannot read {path!r}: {e}") from e
    sha = _stream(path, expected, buf, memoryview(buf), copy_to, 0o644, progress, False)
    return sha, expected.st_size


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _stream(
    src: str,
    expected: os.stat_result,
    buf: bytearray,
    view: memoryview,
    dst: str | None,
    mode: int,
    progress: ProgressFn | None,
    durable: bool,
    chmod: bool = True,
) -> str:
    """Read ``src`` once, hashing each chunk and (if ``dst``) writing that same chunk.

    The hashed bytes are the written bytes (one private buffer), so the digest describes
    exactly what was stored. A source that was replaced, grew, shrank or was written to since
    it was scanned (``expected``) is refused. ``dst`` is created with ``mode`` (writing
    through the new descriptor is allowed even if it is read-only); ``chmod`` sets it again
    explicitly, for when the umask would change it.
    """
    try:
        fd = os.open(src, _READ_FLAGS)
    except OSError as e:
        raise SnapshotError(f"cannot read {src!r} (changed while being read?): {e}") from e
    try:
        if expected.st_size >= FADVISE_BYTES:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger read-ahead when cold
        if dst is not None and expected.st_size >= MAPPED_COPY_BYTES:
            digest, total = _copy_mapped(fd, dst, expected.st_size, mode, progress, durable)
            after = os.fstat(fd)
            if total != after.st_size or _changed(expected, after):
                raise SnapshotError(f"{src!r} changed while it was being read; retry the snapshot")
            return digest
        out = os.open(dst, _CREATE_FLAGS, mode) if dst is not None else -1
        try:
            h = hashlib.sha256()
            total = 0
            readv, write = os.readv, os.write
            while n := readv(fd, (buf,)):
                chunk = view[:n]
                h.update(chunk)  # releases the GIL: the other workers run meanwhile
                if out >= 0:
                    while chunk:
                        chunk = chunk[write(out, chunk) :]
                total += n
                if progress:
                    progress(n)
            if out >= 0:
                if chmod:
                    os.fchmod(out, mode)
                if durable:
                    os.fsync(out)
        finally:
            if out >= 0:
                os.close(out)
        after = os.fstat(fd)
    except OSError as e:
        raise SnapshotError(f"cannot copy {src!r}: {e}") from e
    finally:
        os.close(fd)
    if total != after.st_size or _changed(expected, after):
        raise SnapshotError(f"{src!r} changed while it was being read; retry the snapshot")
    return h.hexdigest()


def _copy_mapped(
    fd: int, dst: str, size: int, mode: int, progress: ProgressFn | None, durable: bool
) -> tuple[str, int]:
    """Copy ``size`` bytes of ``fd`` into a new file ``dst`` through a map of ``dst``.

    The source is read straight into the mapped pages of the new file and hashed from them, so
    the digest describes exactly the stored bytes. Only our own, private new file is mapped:
    a source truncated meanwhile just reads short (and is refused), and ``posix_fallocate``
    reserves the blocks first, so a full disk is an OSError here, not a SIGBUS in the map.

    Returns:
        (hex digest, bytes copied).
    """
    import mmap

    # mmap needs a read-write descriptor.
    out = os.open(dst, (_CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR, mode)
    try:
        os.posix_fallocate(out, 0, size)
        h = hashlib.sha256()
        total = 0
        with mmap.mmap(out, size) as mapped, memoryview(mapped) as whole:
            while total < size:
                with whole[total : total + CHUNK] as window:
                    n = os.readv(fd, (window,))
                    if n == 0:
                        break  # the source shrank: the caller refuses the short copy
                    with window[:n] as chunk:
                        h.update(chunk)  # releases the GIL: the other workers run meanwhile
                total += n
                if progress:
                    progress(n)
            if durable:
                mapped.flush()
        os.fchmod(out, mode)
        if durable:
            os.fsync(out)
    finally:
        os.close(out)
    return h.hexdigest(), total


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) != (
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
        b.st_ino,
    )


def _jobs(files: list[_Scanned]) -> list[list[_Scanned]]:
    """Group files into work units: each large file alone, small files in per-directory batches.

    Ordered by estimated cost, largest first, so the workers finish together. Creating a file
    costs about as much as copying a few hundred KiB, hence the per-file weight.
    """
    jobs: list[list[_Scanned]] = []
    batch: list[_Scanned] = []
    batch_bytes = 0
    batch_dir = ""
    for item in files:
        size = item.entry.size
        if size >= BATCH_FILE_MAX:
            jobs.append([item])
            continue
        parent = item.entry.path.rpartition("/")[0]
        if batch and (
            parent != batch_dir or len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES
        ):
            jobs.append(batch)
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += size
        batch_dir = parent
    if batch:
        jobs.append(batch)
    jobs.sort(key=lambda job: -sum(i.entry.size + FILE_COST for i in job))
    return jobs


def _run_workers(
    jobs: list[list[_Scanned]], work: Callable[[_Scanned, bytearray, memoryview], None]
) -> None:
    """Run ``work(item, buffer, view)`` for every file of ``jobs`` on ``WORKERS`` threads."""
    if WORKERS <= 1 or len(jobs) <= 1:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for job in jobs:
            for item in job:
                work(item, buf, view)
        return
    pending = iter(jobs)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while not errors:
            with lock:
                job = next(pending, None)
            if job is None:
                return
            try:
                for item in job:
                    if errors:
                        return
                    work(item, buf, view)
            except BaseException as e:  # re-raised in the calling thread
                errors.append(e)
                return

    threads = [
        threading.Thread(target=worker, name=f"kfp-snapshot-{i}", daemon=True)
        for i in range(min(WORKERS, len(jobs)))
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as e:  # e.g. KeyboardInterrupt: stop the workers before cleanup
        errors.append(e)
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]


def hash_files(
    items: list[_Scanned],
    progress: ProgressFn | None = None,
    cache: DigestCache | None = None,
) -> dict[str, str]:
    """Hash the files among ``items`` in parallel: {relative path: sha256 hex}."""
    hashes: dict[str, str] = {}
    todo = []
    for item in items:
        if item.entry.kind != "f" or item.st is None:
            continue
        hit = cache.get(item.entry.path, item.st) if cache is not None else None
        if hit:
            hashes[item.entry.path] = hit
            if progress:
                progress(item.entry.size)
        else:
            todo.append(item)

    def work(item: _Scanned, buf: bytearray, view: memoryview) -> None:
        assert item.st is not None
        sha = _stream(item.abspath, item.st, buf, view, None, 0, progress, False)
        hashes[item.entry.path] = sha
        if cache is not None:
            cache.put(item.entry.path, item.st, sha)

    _run_workers(_jobs(todo), work)
    return hashes


def copy_tree(
    items: list[_Scanned],
    dest: str | os.PathLike[str],
    *,
    read_only: bool,
    progress: ProgressFn | None = None,
    cache: DigestCache | None = None,
    durable: bool = False,
) -> dict[str, str]:
    """Copy the scanned tree into the existing, empty directory ``dest``, hashing as it copies.

    Every file is read once: each chunk is hashed and written from the same buffer, on
    ``WORKERS`` threads (file creation and SHA-256 both use a core each). Files get their
    normalised mode (``read_only``: without write bits). Nothing is fsynced unless
    ``durable`` (then every file and directory is, before this returns).

    Returns:
        {relative path: sha256 hex} of the files, as copied.
    """
    dest = os.fspath(dest)
    files = []
    for item in items:
        e = item.entry
        target = os.path.join(dest, e.path)
        if e.kind == "d":
            os.mkdir(target)
        elif e.kind == "l":
            os.symlink(e.target, target)
        else:
            files.append(item)
    hashes: dict[str, str] = {}
    mask = 0o555 if read_only else 0o777
    umask = _umask()

    def work(item: _Scanned, buf: bytearray, view: memoryview) -> None:
        assert item.st is not None
        e = item.entry
        target = os.path.join(dest, e.path)
        mode = e.mode & mask
        chmod = umask is None or bool(mode & umask)  # skip a syscall when the umask is harmless
        sha = _stream(item.abspath, item.st, buf, view, target, mode, progress, durable, chmod)
        hashes[e.path] = sha
        if cache is not None:
            cache.put(e.path, item.st, sha)

    _run_workers(_jobs(files), work)
    if durable:
        for item in items:
            if item.entry.kind == "d":
                fsync_dir(os.path.join(dest, item.entry.path))
        fsync_dir(dest)
    return hashes


def _umask() -> int | None:
    """The process umask, read without changing it (None if unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_writes() -> bool:
    """True if ``KFP_SERVE_SNAPSHOT_FSYNC`` asks for power-loss durable snapshots."""
    return os.environ.get(FSYNC_ENV, "").lower() in ("1", "true", "yes")


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

    def manifest(self, items: list[_Scanned]) -> Manifest | None:
        """The manifest from cached hashes alone, or None if any file is not cached."""
        hashes = {}
        for item in items:
            if item.entry.kind == "f":
                hit = self.get(item.entry.path, item.st) if item.st else None
                if hit is None:
                    return None
                hashes[item.entry.path] = hit
        return _manifest_from(items, hashes)

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
    cache: DigestCache | None = None,
) -> Manifest:
    """Hash every file under ``root`` (in parallel) and return the tree's manifest.

    Args:
        root: The directory.
        progress: Called with a byte count as file data is read (and for cache hits).
        use_cache: Reuse hashes of files whose stat is unchanged since they were last hashed.
        cache_dir: Where the cache lives (default ``$KFP_SERVE_HOME/cache/tree-digest``).
        scanned: A result of ``scan_tree(root)`` to reuse.
        cache: An already loaded cache to use (implies ``use_cache``).
    """
    root = os.fspath(root)
    items = scanned if scanned is not None else scan_tree(root)
    if cache is None and use_cache:
        cache = DigestCache(root, cache_dir or default_cache_dir())
    hashes = hash_files(items, progress, cache)
    if cache is not None:
        cache.save(hashes)
    return _manifest_from(items, hashes)


def cached_manifest(
    root: str, items: list[_Scanned], cache_dir: Path | None = None
) -> Manifest | None:
    """The manifest from the digest cache alone, or None if any file is not cached."""
    return DigestCache(root, cache_dir or default_cache_dir()).manifest(items)


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
