"""Copying a scanned tree while hashing it: the write path of snapshots and restores.

Every file is copied with ``copy_file_range`` (the kernel moves the bytes between page caches,
as ``cp`` does) and then hashed back from the *new* file, so the digest describes exactly the
stored bytes and each byte is copied once.

Two threads share the work without getting in each other's way:

- the calling thread copies the large files, chunk by chunk, and hands each chunk to
- the hasher thread, which hashes it right behind the copy; while it has no chunk to hash, it
  copies and hashes small files itself, a directory's batch at a time.

Two threads copying large files at once were slower than one (they contend for page
allocation in the kernel); creating many small files is mostly per-file work, which the second
core can take while the first one streams bytes. When the large files are done, the calling
thread takes small batches too.

Where ``copy_file_range`` is unavailable (another filesystem, another OS), files are read and
written through a buffer instead.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.snapshots.cache import DigestCache
from kfp_serve.artifacts.snapshots.digest import (
    CHUNK,
    WORKERS,
    ProgressFn,
    Scanned,
    check_unchanged,
    new_hash,
    open_source,
)

FSYNC_ENV = "KFP_SERVE_SNAPSHOT_FSYNC"
# Bytes per copy_file_range call: the unit the hasher receives. Large enough for few calls,
# small enough that hashing a big file starts (and ends) right behind its copy.
COPY_CHUNK = 8 << 20
# Files at least this large are copied by the calling thread and hashed by the hasher thread;
# smaller ones are copied and hashed in one go, in batches of at most SMALL_BATCH_FILES files
# of one directory (so that two threads rarely create files in the same directory).
LARGE_FILE = 1 << 20
SMALL_BATCH_FILES = 256
# Chunks copied but not yet hashed, at most (each pending file holds two descriptors open).
MAX_PENDING_CHUNKS = 64
# copy_file_range refusals that mean "not here", not "failed": fall back to read/write.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def durable_writes() -> bool:
    """True if ``KFP_SERVE_SNAPSHOT_FSYNC`` asks for power-loss durable snapshots."""
    return os.environ.get(FSYNC_ENV, "").lower() in ("1", "true", "yes")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _NewFile:
    """A file being copied: its source and new descriptors, and the hash of what is written."""

    item: Scanned
    src: int
    dst: int
    hasher: object = field(default_factory=new_hash)


_DONE = -1  # a queue entry's length that means "the file is complete"


class _TreeCopy:
    """Copies the files of one tree into ``dest``; ``hashes`` holds what was stored."""

    def __init__(
        self,
        dest: str,
        mask: int,
        progress: ProgressFn | None,
        cache: DigestCache | None,
        durable: bool,
    ) -> None:
        self.dest = dest
        self.mask = mask
        self.umask = _umask()
        self.progress = progress
        self.cache = cache
        self.durable = durable
        self.hashes: dict[str, str] = {}
        self.error: BaseException | None = None
        self.kernel_copy = hasattr(os, "copy_file_range")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._small: Iterator[list[Scanned]] = iter(())

    def run(self, large: list[Scanned], small: list[list[Scanned]], threaded: bool) -> None:
        buf = bytearray(CHUNK)
        self._small = iter(small)  # next() on it is atomic: both threads take batches
        if not threaded:
            for item in large:
                self._copy_whole(item, buf)
            self._copy_small_batches(buf)
            self._raise()
            return
        hasher = threading.Thread(target=self._hash_loop, name="kfp-snapshot-hash", daemon=True)
        hasher.start()
        try:
            for item in large:
                if self.error is not None:
                    break
                self._copy_piped(item, buf)
            self._copy_small_batches(buf)
        except BaseException as e:
            self._fail(e)
        finally:
            self._queue.put(None)
            hasher.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e

    # -- one file ------------------------------------------------------------------------

    def _open(self, item: Scanned) -> _NewFile:
        src = open_source(item.abspath)
        target = f"{self.dest}/{item.entry.path}"
        try:
            dst = os.open(target, _CREATE_FLAGS, item.entry.mode & self.mask)
        except OSError as e:
            os.close(src)
            raise SnapshotError(f"cannot create {target!r}: {e}") from e
        return _NewFile(item, src, dst)

    def _copy_chunk(self, new: _NewFile, n: int, buf: bytearray) -> int:
        """Copy up to ``n`` bytes at the current positions; 0 at the end of the source."""
        if self.kernel_copy:
            try:
                return os.copy_file_range(new.src, new.dst, n)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel_copy = False  # the positions are where the kernel left them
        view = memoryview(buf)
        got = os.readv(new.src, (view[: min(n, len(buf))],))
        done = 0
        while done < got:
            done += os.write(new.dst, view[done:got])
        return got

    def _hash_back(self, new: _NewFile, offset: int, n: int, buf: bytearray) -> None:
        """Hash ``n`` bytes of the new file from ``offset``: what was just written there."""
        view = memoryview(buf)
        end = offset + n
        update = new.hasher.update
        while offset < end:
            got = os.preadv(new.dst, (view[: min(len(buf), end - offset)],), offset)
            if got == 0:
                raise SnapshotError(f"{new.item.abspath!r}: its copy ended short")
            update(view[:got])  # releases the GIL: the other thread runs meanwhile
            offset += got
        if self.progress:
            self.progress(n)

    def _finish(self, new: _NewFile, copied: int) -> None:
        """Check the source did not change, then record the hash (descriptors stay open)."""
        item = new.item
        assert item.st is not None
        check_unchanged(item.abspath, item.st, os.fstat(new.src), copied)
        mode = item.entry.mode & self.mask
        if self.umask is None or mode & self.umask:  # else open() already set the mode
            os.fchmod(new.dst, mode)
        if self.durable:
            os.fsync(new.dst)
        content_hash = new.hasher.hexdigest()
        self.hashes[item.entry.path] = content_hash
        if self.cache is not None:
            self.cache.put(item.entry.path, item.st, content_hash)

    def _copy_whole(self, item: Scanned, buf: bytearray) -> None:
        """Copy and hash one file in this thread."""
        new = self._open(item)
        try:
            copied = 0
            while copied < item.entry.size:  # a file that grew meanwhile is refused
                n = self._copy_chunk(new, COPY_CHUNK, buf)
                if n == 0:
                    break
                self._hash_back(new, copied, n, buf)
                copied += n
            self._finish(new, copied)
        except OSError as e:
            raise SnapshotError(f"cannot copy {item.abspath!r}: {e}") from e
        finally:
            os.close(new.src)
            os.close(new.dst)

    def _copy_small_batches(self, buf: bytearray) -> None:
        while self.error is None and (batch := next(self._small, None)) is not None:
            for item in batch:
                self._copy_whole(item, buf)

    # -- large files: copied here, hashed by the hasher thread ------------------------------

    def _copy_piped(self, item: Scanned, buf: bytearray) -> None:
        new = self._open(item)
        copied = 0
        try:
            while copied < item.entry.size:
                n = self._copy_chunk(new, COPY_CHUNK, buf)
                if n == 0:
                    break
                while self._queue.qsize() >= MAX_PENDING_CHUNKS and self.error is None:
                    time.sleep(0.0005)  # the hasher is behind: let it catch up
                self._queue.put((new, copied, n))
                copied += n
        except OSError as e:
            self._fail(SnapshotError(f"cannot copy {item.abspath!r}: {e}"))
        finally:
            self._queue.put((new, copied, _DONE))  # the hasher closes the descriptors

    def _hash_loop(self) -> None:
        buf = bytearray(CHUNK)
        get_nowait = self._queue.get_nowait
        while True:
            try:
                job = get_nowait()
            except queue.Empty:
                # Nothing to hash yet: copy a batch of small files meanwhile.
                batch = next(self._small, None) if self.error is None else None
                if batch is not None:
                    try:
                        for item in batch:
                            self._copy_whole(item, buf)
                    except BaseException as e:
                        self._fail(e)
                    continue
                job = self._queue.get()
            if job is None:
                return
            new, offset, n = job
            try:
                if self.error is None:
                    if n == _DONE:
                        self._finish(new, offset)
                    else:
                        self._hash_back(new, offset, n, buf)
            except OSError as e:
                self._fail(SnapshotError(f"cannot copy {new.item.abspath!r}: {e}"))
            except BaseException as e:
                self._fail(e)
            finally:
                if n == _DONE:
                    os.close(new.src)
                    os.close(new.dst)


def _small_batches(files: list[Scanned]) -> list[list[Scanned]]:
    """Small files in path order, cut into batches of one directory each."""
    batches: list[list[Scanned]] = []
    batch: list[Scanned] = []
    batch_dir = ""
    for item in files:
        parent = item.entry.path.rpartition("/")[0]
        if batch and (parent != batch_dir or len(batch) >= SMALL_BATCH_FILES):
            batches.append(batch)
            batch = []
        batch.append(item)
        batch_dir = parent
    if batch:
        batches.append(batch)
    return batches


def copy_tree(
    items: list[Scanned],
    dest: str | os.PathLike[str],
    *,
    read_only: bool,
    progress: ProgressFn | None = None,
    cache: DigestCache | None = None,
    durable: bool = False,
) -> dict[str, str]:
    """Copy the scanned tree into the existing, empty directory ``dest``, hashing as it copies.

    Files get their normalised mode (``read_only``: without write bits). A source file that
    changes while it is copied is refused. Nothing is fsynced unless ``durable`` (then every
    file and directory is, before this returns).

    Returns:
        {relative path: content hash} of the files, as stored.
    """
    dest = os.fspath(dest)
    large, small = [], []
    for item in items:
        e = item.entry
        if e.kind == "d":
            os.mkdir(f"{dest}/{e.path}")
        elif e.kind == "l":
            os.symlink(e.target, f"{dest}/{e.path}")
        else:
            (large if e.size >= LARGE_FILE else small).append(item)
    work = _TreeCopy(dest, 0o555 if read_only else 0o777, progress, cache, durable)
    work.run(large, _small_batches(small), threaded=WORKERS > 1 and len(large) + len(small) > 1)
    if durable:
        for item in items:
            if item.entry.kind == "d":
                fsync_dir(f"{dest}/{item.entry.path}")
        fsync_dir(dest)
    return work.hashes


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
