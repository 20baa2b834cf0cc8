"""The one process supervisor of local serving: start detached, check, signal, stop, read logs.

Every process local serving starts — model servers (plain or from the warm pool), the router of
an endpoint, the warm pool itself — is started by :func:`start_detached` and stopped by
:func:`stop`, so they all behave alike:

- its own session (``setsid``): no terminal signals from the caller, its own process group to
  stop (with whatever it forked), and it outlives the caller;
- stdin from /dev/null and stdout+stderr appended to a log file, never an inherited pipe: a
  kfp.local step that starts a server and leaves its output pipe open never finishes;
- identity is pid *and* start time (``/proc/<pid>/stat``): pids are reused, so a process is only
  considered alive, or safe to signal, while both match.

Cheap to import (standard library and :mod:`kfp_serve.locks` only): the model servers and the
router use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, TypeVar

from kfp_serve.locks import exclusive
from kfp_serve.retry import wait_until

P = TypeVar("P", bound=subprocess.Popen)

#: Seconds between SIGTERM and SIGKILL unless the caller says otherwise.
DEFAULT_GRACE = 5.0
#: Seconds to wait for a SIGKILLed process to disappear (it cannot refuse; this is scheduling).
KILL_WAIT = 1.0
#: How much of a log :func:`log_tail` reads from the end at most.
TAIL_BYTES = 8192

#: Popen objects of processes this process started: kept so they are not garbage-collected with
#: a ResourceWarning while they run, and so their exit codes can be read.
_CHILDREN: dict[int, subprocess.Popen] = {}


class Supervised(Protocol):
    """Anything that names a supervised process: its pid and its start time.

    A record with a non-empty ``container`` (see :class:`.registry.ProcessRecord`) names a
    container of the Docker backend instead: checked, stopped and read through the engine.
    """

    pid: int
    start_time: int


#: How a log that lives in the Docker engine (a container's output) is named in a record.
CONTAINER_LOG_PREFIX = "docker:"


def _container(process: object) -> bool:
    """True for a record of a container. The registry of endpoints is shared by both backends
    and read by any process (the CLI, a notebook), so every check and stop here must handle
    both; the container side lives in the Docker backend and is imported only when needed."""
    return bool(getattr(process, "container", ""))


def _containers():  # noqa: ANN202 - the module, imported on first use (it needs the docker SDK)
    from kfp_serve.serving.backends.docker import containers

    return containers


# --------------------------------------------------------------------------------------------
# Identity


def start_time(pid: int, *, zombie: bool = False) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when it is gone.

    A zombie has exited but not been reaped by its parent: it no longer serves, so it counts as
    gone unless ``zombie`` (a parent reading its own child's start time before it can reap it).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X") and not zombie:
        return None
    return int(rest[19])


def alive(process: Supervised) -> bool:
    """True while the recorded process runs (same pid *and* same start time)."""
    if _container(process):
        return _containers().alive(process)
    proc = _CHILDREN.get(process.pid)
    if proc is not None:
        proc.poll()  # our own exited child: reap it, or it lingers as a zombie
    return start_time(process.pid) == process.start_time


def exit_code(pid: int) -> int | None:
    """The exit code of ``pid`` if this process started it and it has exited, else None."""
    proc = _CHILDREN.get(pid)
    return proc.poll() if proc is not None else None


# --------------------------------------------------------------------------------------------
# Start


def start_detached(
    cmd: list[str],
    *,
    log: str | os.PathLike[str],
    env: dict[str, str],
    cwd: str | os.PathLike[str],
    pass_fds: tuple[int, ...] = (),
    popen: type[P] = subprocess.Popen,  # type: ignore[assignment]
) -> P:
    """Start ``cmd`` detached (see the module docstring); does not wait for anything.

    Args:
        cmd: The argv.
        log: File that stdout and stderr are appended to (parents are created).
        env: The complete environment.
        cwd: Working directory.
        pass_fds: Descriptors the process inherits (e.g. a listening socket).
        popen: The ``subprocess.Popen`` subclass to return.
    """
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            env=env,
            cwd=cwd,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def adopt(proc: subprocess.Popen) -> None:
    """Track a process started elsewhere (the warm pool) like one :func:`start_detached` made."""
    _CHILDREN[proc.pid] = proc


def forget(proc: subprocess.Popen) -> None:
    """Stop tracking ``proc`` (it has exited and been reaped, e.g. a launcher that forked)."""
    _CHILDREN.pop(proc.pid, None)


# --------------------------------------------------------------------------------------------
# Signal and stop


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``.

    A group outlives its leader while anything it forked runs, and its id is not handed to a
    new group until then: so what is listed here is ours even after the leader has gone.
    """
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        # Fields after the command name: state, ppid, pgrp, ...
        rest = raw[raw.rfind(b")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_group(process: Supervised, sig: int) -> None:
    """Send ``sig`` to the process group of ``process``, if it is still the one recorded.

    Supervised processes run in their own session (pgid == pid), so the group also takes any
    worker processes they forked.
    """
    if not alive(process):
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Not a group we lead after all (the process left its session): signal only the
        # process itself, which the start-time check says is ours.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def stop(processes: Iterable[Supervised], grace: float = DEFAULT_GRACE) -> None:
    """Stop ``processes`` together: SIGTERM to all, SIGKILL to what is left after ``grace``.

    Processes that already exited (or whose pid now belongs to someone else) are skipped.
    """
    processes = list(processes)
    containers = [p for p in processes if _container(p)]
    if containers:
        _containers().stop(containers, grace)
        processes = [p for p in processes if not _container(p)]
        if not processes:
            return
    # The groups of the processes that are ours now: what they forked must go with them, even
    # a worker that ignores SIGTERM after its leader obeyed it.
    groups = [p.pid for p in processes if alive(p) and _leads_group(p.pid)]
    for p in processes:
        signal_group(p, signal.SIGTERM)

    def all_gone() -> bool:
        for p in processes:
            _reap(p.pid)
        if any(alive(p) for p in processes):
            return False
        return not any(group_members(g) for g in groups)

    try:
        wait_until(
            all_gone,
            deadline=grace,
            interval=0.02,
            describe="the processes exiting",
        )
    except TimeoutError:
        for p in processes:
            signal_group(p, signal.SIGKILL)
        for g in groups:
            if group_members(g):
                _signal_group(g, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_until(
                all_gone,
                deadline=KILL_WAIT,
                interval=0.01,
                describe="the killed processes disappearing",
            )
    for p in processes:
        proc = _CHILDREN.pop(p.pid, None)
        if proc is not None:
            proc.poll()


def _leads_group(pid: int) -> bool:
    """True when ``pid`` still leads its own process group (it did not leave its session)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours that no Popen here tracks (one started
    by an earlier LocalBackend in this process), so it does not linger as a zombie."""
    if pid in _CHILDREN:
        return  # alive() polls it through its Popen
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------------------------
# Logs and locks


def log_tail(path: str | os.PathLike[str], lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, read from its end ('' when it cannot be read).

    ``docker:NAME`` (:data:`CONTAINER_LOG_PREFIX`) is the output of container NAME instead.
    """
    if str(path).startswith(CONTAINER_LOG_PREFIX):
        return _containers().log_tail(str(path)[len(CONTAINER_LOG_PREFIX) :], lines)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def name_lock(directory: Path, name: str):  # noqa: ANN201 - a filelock lock object
    """The lock that serializes starting and stopping the processes called ``name``.

    The lock file sits beside (not inside) the directory of those processes, so a stop can
    remove that directory while holding it.
    """
    return exclusive(directory / f".{name}.lock")
