"""kfp-serve's one file lock, on filelock: every "only one process at a time" goes through here.

The locks are advisory ``flock`` locks on a small file next to what they protect, taken by whole
processes: a kfp.local step, the CLI and a notebook can all hold them. A lock is released when
its holder exits, however it exits, so a crash never leaves a stale lock behind.

Use it as a context manager::

    with exclusive(directory / ".lock"):
        ...

or ask without waiting with :func:`try_exclusive`.
"""

from __future__ import annotations

import os
from pathlib import Path

import filelock

#: Lock files are private to the user who owns the state directory.
LOCK_MODE = 0o600


def exclusive(path: str | os.PathLike[str], *, timeout: float = -1) -> filelock.BaseFileLock:
    """An exclusive lock on ``path`` (created with its parent directories), not yet taken.

    Args:
        path: The lock file. It is left in place on release: removing a lock file while another
            process waits on it would let a third one lock a new file of the same name.
        timeout: Seconds :meth:`acquire` (and ``with``) wait; -1 waits as long as it takes.

    Raises:
        filelock.Timeout: on acquire, when ``timeout`` passed first.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # is_singleton=False: two holders in one process conflict like two processes do (the
    # pool and its client are tested in one process).
    return filelock.FileLock(os.fspath(path), timeout=timeout, mode=LOCK_MODE, is_singleton=False)


def try_exclusive(path: str | os.PathLike[str]) -> filelock.BaseFileLock | None:
    """The lock on ``path``, taken now, or None when another holder has it (never waits)."""
    lock = exclusive(path)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return None
    return lock
