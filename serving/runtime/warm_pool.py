"""A warm pool that forks runtime servers with their heavy imports already done.

Starting a model server costs an interpreter start plus numpy, scikit-learn, kserve.model and
uvicorn imports: about a second of CPU per server, paid twice for a transformer endpoint. The
pool pays it once per ``KFP_SERVE_HOME``.

How: the pool is a small detached process (started through the local supervisor) that listens on
a unix socket. It runs :mod:`multiprocessing`'s fork server with
:mod:`kfp_serve.serving.runtime.warm_imports` as its preload, so the fork server imports what
the servers import, once. Asked to spawn a server, the pool starts a ``multiprocessing``
process from that fork server whose target turns into exactly the server
:func:`kfp_serve.serving.runtime.launch.start_server` would have started: the same module run as
``__main__`` with the same argv (so the same parser), its own session, stdin from /dev/null,
stdout+stderr appended to the log file, the caller's environment, working directory, umask, CPU
affinity and niceness. ``ps`` shows the server's command line (setproctitle). The child is a
plain process to everyone else: a pid and a ``/proc`` start time for the local registry, its own
process group to signal. Its exit code comes back through the fork server, so a caller's
``poll()`` sees the code a ``Popen`` would.

Files (in ``$KFP_SERVE_HOME/endpoints``): ``.warm-pool.sock`` (mode 0600; peers must also have
this uid), ``.warm-pool.lock`` (held by the live pool: a socket without a locked lock file is
stale), ``.warm-pool.log``.

Lifecycle: started on demand (:func:`spawn`) or early (:func:`ensure_started`, e.g. when a
pipeline starts); exits after ``KFP_SERVE_WARM_POOL_IDLE`` seconds (default 600) without
requests, when its socket file is removed or replaced, or when asked (:func:`stop`). Its
servers keep running when it exits.

Correctness never depends on the pool: when it is disabled (``KFP_SERVE_WARM_POOL=0``), missing,
slow, or refuses a request (another interpreter, working directory or resource limits, or a
difference in an environment variable read at start-up), :func:`spawn` returns None and the
caller starts the server as a plain subprocess.

Run as ``python -m kfp_serve.serving.runtime.warm_pool --socket PATH`` (the client does this).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kfp_serve.locks import try_exclusive
from kfp_serve.retry import wait_until
from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.constants import PREDICTOR_MODULE, TRANSFORMER_MODULE

ENABLE_ENV = "KFP_SERVE_WARM_POOL"
IDLE_ENV = "KFP_SERVE_WARM_POOL_IDLE"
TIMEOUT_ENV = "KFP_SERVE_WARM_POOL_TIMEOUT"
SOCKET_NAME = ".warm-pool.sock"
LOCK_NAME = ".warm-pool.lock"
LOG_NAME = ".warm-pool.log"
DEFAULT_IDLE = 600.0
#: Seconds a client waits for a spawn answer (covers a pool that is still importing).
DEFAULT_TIMEOUT = 30.0
#: Modules the pool runs as ``__main__``: the runtime servers, nothing else.
MODULES = frozenset({PREDICTOR_MODULE, TRANSFORMER_MODULE})
#: The fork server's preload (see the module docstring).
PRELOAD = "kfp_serve.serving.runtime.warm_imports"
#: Environment variables read when the interpreter or a native library starts (Python's own
#: start-up, BLAS/OpenMP thread pools, locale, allocator, numpy/pandas options read at import):
#: a child whose environment differs from the pool's in one of these could not behave like a
#: fresh process, so it is not forked. kfp-serve's own modules read their settings when a
#: server is built, never at import, so those may differ.
STARTUP_ENV_PREFIXES = (
    "PYTHON", "LD_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO", "BLIS_", "VECLIB_",
    "NUMEXPR_", "NUMBA_", "NUMPY_", "PANDAS_", "SCIPY_", "XGBOOST", "SKLEARN_", "JOBLIB_",
    "LOKY_", "LC_", "MALLOC_", "GLIBC_",
)
STARTUP_ENV_NAMES = frozenset({"LANG", "LANGUAGE", "HOME"})
_RLIMITS = ("RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_AS", "RLIMIT_DATA",
            "RLIMIT_NPROC", "RLIMIT_MEMLOCK", "RLIMIT_FSIZE")
#: Return code of a pooled process whose exit status is lost (the pool exited before it).
UNKNOWN_RETURNCODE = 255
#: Exit code of the probe child when the fork server's preload went wrong.
_WARM_FAILED = 3
_MAX_MESSAGE = 8 * 1024 * 1024
_SUN_PATH_MAX = 100
#: Exit codes of this many finished servers are remembered for ``status`` requests.
_EXITED_KEPT = 4096


def enabled() -> bool:
    """False when ``KFP_SERVE_WARM_POOL`` is set to 0/false/no/off."""
    value = os.environ.get(ENABLE_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off", "")


def pool_dir() -> Path:
    """``$KFP_SERVE_HOME/endpoints`` (created), where the pool's files live."""
    from kfp_serve.serving.backends.local.registry import endpoints_root

    return endpoints_root()


def socket_path() -> Path:
    """The pool socket of the current ``KFP_SERVE_HOME``."""
    return pool_dir() / SOCKET_NAME


# --------------------------------------------------------------------------------------------
# Small helpers shared by client and pool


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@contextlib.contextmanager
def _unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits sun_path (108 bytes), via /proc/self/fd when long."""
    text = os.fspath(path)
    if len(text.encode()) < _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _recv(sock: socket.socket) -> dict[str, Any] | None:
    """One JSON line, or None at end of stream."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > _MAX_MESSAGE:
            raise ValueError("message too large")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("message is not an object")
    return value


def _rlimits() -> dict[str, list[int]]:
    import resource

    return {
        name: list(resource.getrlimit(getattr(resource, name)))
        for name in _RLIMITS
        if hasattr(resource, name)
    }


def _process_attributes() -> dict[str, Any]:
    """What a child inherits from its parent besides env and cwd, as a fresh process would."""
    umask = os.umask(0o022)
    os.umask(umask)
    attrs: dict[str, Any] = {
        "umask": umask,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "rlimits": _rlimits(),
    }
    if hasattr(os, "sched_getaffinity"):
        attrs["affinity"] = sorted(os.sched_getaffinity(0))
    return attrs


# --------------------------------------------------------------------------------------------
# Client


class PooledProcess(subprocess.Popen):
    """A process forked by the pool, with the ``Popen`` interface the launcher's callers use.

    It is not a child of the caller: liveness is checked by pid *and* ``/proc`` start time, and
    the exit code comes from the pool; :data:`UNKNOWN_RETURNCODE` if the pool has gone since.
    No pipes: the server writes to its log file.
    """

    def __init__(self, args: list[str], pid: int, start_time: int, sock: Path) -> None:
        # Deliberately not Popen.__init__: the process already exists. These are the
        # attributes Popen's own methods (and __repr__) read.
        self.args = args
        self.pid = pid
        self.start_time = start_time
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self.text_mode = False
        self.encoding = self.errors = None
        self.universal_newlines = False
        self._pool_socket = sock

    def __del__(self) -> None:  # noqa: D105 - Popen's would reap; the pool owns the process
        pass

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        if self.returncode is None and supervisor.start_time(self.pid) != self.start_time:
            code = _exit_status(self._pool_socket, self.pid, self.start_time)
            if code is not None:
                self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit.

        Raises:
            subprocess.TimeoutExpired: Still running after ``timeout`` seconds.
        """
        try:
            wait_until(
                lambda: self.poll() is not None,
                deadline=float("inf") if timeout is None else timeout,
                interval=0.01,
                describe=f"pid {self.pid} exiting",
            )
        except TimeoutError:
            raise subprocess.TimeoutExpired(self.args, timeout) from None  # type: ignore[arg-type]
        return self.returncode  # type: ignore[return-value]

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[None, None]:  # noqa: A002
        """No pipes to read: waits for the process."""
        self.wait(timeout)
        return None, None

    def send_signal(self, sig: int) -> None:
        """Signal the process if it is still the one that was started."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _exit_status(sock_path: Path, pid: int, start_time: int) -> int | None:
    """Exit code of a pooled process that is no longer running (None: still running)."""
    try:
        answer = _request(sock_path, {"op": "status", "pid": pid, "start_time": start_time}, 5.0)
    except (OSError, ValueError):
        return UNKNOWN_RETURNCODE
    if answer is None:
        return UNKNOWN_RETURNCODE
    if answer.get("running"):
        return None
    code = answer.get("returncode")
    return int(code) if isinstance(code, int) else UNKNOWN_RETURNCODE


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with _unix_address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _request(path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    with _connect(path, timeout) as sock:
        _send(sock, message)
        return _recv(sock)


def _accepts(path: Path, timeout: float) -> bool:
    try:
        _connect(path, timeout).close()
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    return True


def ensure_started(
    *, python: str | None = None, env: dict[str, str] | None = None, cwd: str | None = None,
    wait: bool = False, timeout: float = 10.0,
) -> Path | None:
    """Start this ``KFP_SERVE_HOME``'s pool unless one runs; never raises.

    Args:
        python: Interpreter for the pool (and so for the servers it forks).
        env: The pool's environment: what a server would get, minus per-server variables.
        cwd: Working directory of the pool (the servers' working directory).
        wait: Wait until the pool's socket accepts connections (it may still be importing).
        timeout: Seconds to wait for that.

    Returns:
        The socket path, or None when the pool is disabled or could not be started.
    """
    if not enabled():
        return None
    try:
        return _ensure_started(python or sys.executable, env, cwd, wait, timeout)
    except Exception as e:  # noqa: BLE001 - the pool is an optimisation, never a failure
        _debug(f"cannot start the warm pool: {e!r}")
        return None


def _ensure_started(
    python: str, env: dict[str, str] | None, cwd: str | None, wait: bool, timeout: float
) -> Path | None:
    directory = pool_dir()
    path = directory / SOCKET_NAME
    if _accepts(path, timeout):
        return path
    lock = try_exclusive(directory / LOCK_NAME)
    if lock is not None:
        # No live pool holds the lock: whatever socket file is left is stale. Removed while
        # holding the lock, so no pool can have published a new one meanwhile.
        try:
            path.unlink(missing_ok=True)
        finally:
            lock.release()
        # Two clients may both get here: the second pool finds the lock taken and exits.
        launcher = supervisor.start_detached(
            [python, "-m", __name__, f"--socket={path}",
             f"--idle-timeout={_float_env(IDLE_ENV, DEFAULT_IDLE)}"],
            log=directory / LOG_NAME,
            env=env if env is not None else dict(os.environ),
            cwd=cwd or os.getcwd(),
        )
        # The launcher forks the pool and exits at once, so the pool is re-parented to init
        # like a daemon and no caller is left with a child to reap.
        launcher.wait(timeout=timeout)
        supervisor.forget(launcher)
        if not wait:
            return path
    try:
        wait_until(lambda: _accepts(path, timeout), deadline=timeout, interval=0.01,
                   describe="the warm pool listening")
    except TimeoutError:
        return None
    return path


def spawn(
    module: str,
    args: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    log_path: str | os.PathLike[str],
    python: str,
    pool_env: dict[str, str] | None = None,
    cls: type[PooledProcess] = PooledProcess,
    timeout: float | None = None,
) -> PooledProcess | None:
    """Have the pool start ``python -m module *args``; None means "start it yourself".

    Args:
        module: One of :data:`MODULES`.
        args: The server's flags (argv after ``-m module``).
        env: Its complete environment.
        cwd: Its working directory.
        log_path: File its stdout and stderr are appended to.
        python: The interpreter a plain start would use (the pool's must be the same).
        pool_env: Environment for a pool started now (default ``env``): the servers' common
            environment, without per-server variables.
        cls: Class of the returned process object.
        timeout: Seconds to wait for the pool's answer (default ``KFP_SERVE_WARM_POOL_TIMEOUT``
            or 30; a pool that is still importing answers when it is done).
    """
    if not enabled() or module not in MODULES:
        return None
    timeout = _float_env(TIMEOUT_ENV, DEFAULT_TIMEOUT) if timeout is None else timeout
    request = {
        "op": "spawn",
        "module": module,
        "args": list(args),
        "env": dict(env),
        "cwd": os.fspath(cwd),
        "log": os.path.abspath(log_path),
        "python": python,
        **_process_attributes(),
    }
    try:
        path = _ensure_started(python, pool_env or env, os.fspath(cwd), True, timeout)
        if path is None:
            return None
        with _connect(path, timeout) as sock:
            _send(sock, request)
            answer = _recv(sock)
            if answer is None or "pid" not in answer:
                _debug(f"warm pool declined: {(answer or {}).get('error', 'no answer')}")
                return None
            pid, start = int(answer["pid"]), int(answer["start_time"])
            try:
                _send(sock, {"op": "ack"})
            except OSError:
                # The pool kills an unacknowledged child itself; make sure of it.
                if supervisor.start_time(pid) == start:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                return None
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        _debug(f"warm pool unavailable: {e!r}")
        return None
    return cls([python, "-m", module, *args], pid, start, path)


def stop(timeout: float = 5.0) -> bool:
    """Ask this ``KFP_SERVE_HOME``'s pool to exit (its servers keep running). True if one did."""
    path = socket_path()
    try:
        answer = _request(path, {"op": "stop"}, timeout)
    except (OSError, ValueError):
        return False
    return bool(answer and answer.get("ok"))


def _debug(message: str) -> None:
    import logging

    logging.getLogger(__name__).debug(message)


# --------------------------------------------------------------------------------------------
# The pool


class Pool:
    """The pool's state and request loop (runs in ``python -m
    kfp_serve.serving.runtime.warm_pool``)."""

    def __init__(self, path: Path, idle_timeout: float) -> None:
        self.path = path
        self.idle_timeout = idle_timeout
        self.base_env = dict(os.environ)
        self.cwd = os.getcwd()
        self.attrs = _process_attributes()
        self.warm_error: str | None = None
        #: pid -> (start time, the multiprocessing process, which knows its exit code).
        self.children: dict[int, tuple[int, Any]] = {}
        self.listener: socket.socket | None = None
        self.inode = 0
        self.last_request = time.monotonic()
        self._context: Any = None
        #: kfp-serve's code as the fork server imported it, and whether it has changed since
        #: (see _code_stamp).
        self.code = _code_stamp()
        self.stale = False

    # -- set-up -------------------------------------------------------------------------------

    def bind(self) -> None:
        """Listen on the socket (mode 0600), published under its final name only once ready."""
        temp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        temp.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with _unix_address(temp) as address:
                listener.bind(address)
        finally:
            os.umask(old)
        listener.listen(128)
        os.replace(temp, self.path)
        self.inode = os.stat(self.path).st_ino
        self.listener = listener

    def warm(self) -> None:
        """Start the fork server with its preload, and check that the preload went well."""
        import multiprocessing

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([PRELOAD])
        # The first process waits until the fork server has imported everything: a probe, so
        # requests are served warm and a preload that failed is known before any is.
        probe = self._context.Process(target=_report_warm, name="warm-pool-probe")
        probe.start()
        probe.join()
        if probe.exitcode != 0:
            self.warm_error = f"the fork server's preload failed (probe exit {probe.exitcode})"
        _log(f"warm in {time.monotonic() - _STARTED:.2f} s; " + (self.warm_error or "ready"))
        self.last_request = time.monotonic()  # idle time counts from here

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        assert self.listener is not None
        try:
            while True:
                if not self._still_published():
                    _log("socket file removed or replaced: exiting")
                    return
                idle = time.monotonic() - self.last_request
                if idle >= self.idle_timeout:
                    _log(f"idle for {idle:.0f} s: exiting")
                    return
                self.listener.settimeout(min(1.0, self.idle_timeout - idle))
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                self.last_request = time.monotonic()
                with conn:
                    if self.handle(conn) == "stop":
                        _log("asked to stop: exiting")
                        return
                if self.stale:
                    # Its fork server holds the old code: a new pool will import the new.
                    _log("kfp-serve's code changed since the pool started: exiting")
                    return
        finally:
            if self._still_published():
                self.path.unlink(missing_ok=True)

    def _still_published(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def handle(self, conn: socket.socket) -> str | None:
        conn.settimeout(10.0)
        try:
            _pid, uid, _gid = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            )
            if uid != os.getuid():
                _log(f"refused a connection from uid {uid}")
                return None
            request = _recv(conn)
            if request is None:
                return None
            op = request.get("op")
            if op == "spawn":
                self.spawn(conn, request)
            elif op == "status":
                _send(conn, self.status(request))
            elif op == "ping":
                _send(conn, {"ok": True, "pid": os.getpid(), "warm_error": self.warm_error})
            elif op == "stop":
                _send(conn, {"ok": True})
                return "stop"
            else:
                _send(conn, {"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - one bad request must not end the pool
            _log(f"request failed: {e!r}")
            with contextlib.suppress(Exception):
                _send(conn, {"error": repr(e)})
        return None

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        pid, start = int(request["pid"]), int(request["start_time"])
        known = self.children.get(pid)
        if known is None or known[0] != start:
            return {"unknown": True}
        code = known[1].exitcode
        return {"running": True} if code is None else {"returncode": code}

    def refusal(self, request: dict[str, Any]) -> str | None:
        """Why ``request`` cannot be forked faithfully (None: it can)."""
        if self.warm_error:
            return self.warm_error
        if _code_stamp() != self.code:
            self.stale = True
            return "kfp-serve's code changed since the pool started (an upgrade or an edit)"
        if request.get("module") not in MODULES:
            return f"module {request.get('module')!r} is not served by the pool"
        if request.get("python") != sys.executable:
            return f"interpreter {request.get('python')!r} is not the pool's {sys.executable!r}"
        if request.get("cwd") != self.cwd:
            return f"working directory {request.get('cwd')!r} is not the pool's {self.cwd!r}"
        if request.get("rlimits") != self.attrs["rlimits"]:
            return "resource limits differ from the pool's"
        if int(request.get("nice", 0)) < self.attrs["nice"]:
            return "a lower niceness than the pool's"
        env = request.get("env")
        if not isinstance(env, dict) or not isinstance(request.get("args"), list):
            return "malformed request"
        base = self.base_env
        changed = {k for k in env.keys() | base.keys() if env.get(k) != base.get(k)}
        startup = sorted(
            k for k in changed if k in STARTUP_ENV_NAMES or k.startswith(STARTUP_ENV_PREFIXES)
        )
        if startup:
            return f"environment variables read at start-up differ: {startup}"
        return None

    def spawn(self, conn: socket.socket, request: dict[str, Any]) -> None:
        why = self.refusal(request)
        if why is not None:
            _log(f"declined {request.get('module')}: {why}")
            _send(conn, {"error": why})
            return
        try:
            # Opened here first so that a log the server could not open is the caller's error,
            # not a child that dies unseen.
            old = os.umask(int(request["umask"]))
            try:
                os.close(os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
            finally:
                os.umask(old)
        except OSError as e:
            _send(conn, {"error": f"cannot open the log file: {e}"})
            return
        child = self._context.Process(
            target=_become_server, args=(request, self.base_env), name=request["module"]
        )
        child.start()
        pid = int(child.pid)
        # Read while the child cannot have been reaped (a zombie still has its start time).
        start = supervisor.start_time(pid, zombie=True) or 0
        self.children[pid] = (start, child)
        while len(self.children) > _EXITED_KEPT:
            del self.children[next(iter(self.children))]
        acked = False
        try:
            _send(conn, {"pid": pid, "start_time": start})
            answer = _recv(conn)
            acked = bool(answer and answer.get("op") == "ack")
        except (OSError, ValueError):
            pass
        if not acked:
            _log(f"spawn of pid {pid} not acknowledged: killing it")
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        else:
            _log(f"pid {pid}: {request['module']} {' '.join(request['args'])}")


def _code_stamp() -> tuple[int, int]:
    """(number of, sum of the mtimes of) the Python files of the packages the fork server
    preloads: a file added, removed or rewritten changes it.

    A server forked after kfp-serve was upgraded (or edited, in a checkout) would run the code
    the fork server imported before: a server started plainly runs what is installed now.
    About a millisecond per request.
    """
    import kfp_serve
    import kfp_serve.artifacts
    import kfp_serve.serving

    count = total = 0
    stack = [p for pkg in (kfp_serve, kfp_serve.serving, kfp_serve.artifacts) for p in pkg.__path__]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    count += 1
                    total += entry.stat().st_mtime_ns
                elif entry.is_dir() and entry.name != "__pycache__":
                    stack.append(entry.path)
    return count, total


# --------------------------------------------------------------------------------------------
# In the forked child


def _report_warm() -> None:
    """The probe: exits non-zero (with the reason in the pool log) if the preload failed."""
    from kfp_serve.serving.runtime import warm_imports

    if warm_imports.ERROR:
        print(f"warm-pool preload: {warm_imports.ERROR}", file=sys.stderr, flush=True)
        raise SystemExit(_WARM_FAILED)


def _become_server(request: dict[str, Any], pool_env: dict[str, str]) -> None:
    """Target of a forked child: become ``python -m module args`` (what a plain start runs).

    Raises:
        SystemExit: with the server's exit code, which multiprocessing reports as the
            process's exit code.
    """
    os.setsid()
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.umask(int(request["umask"]))
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # Nothing of the pool or the fork server (sockets, pipes) stays open in a server.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if "affinity" in request and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, request["affinity"])
    nice = int(request.get("nice", 0))
    if nice != os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    os.chdir(request["cwd"])
    import setproctitle

    # Before the environment changes: setproctitle finds the memory it rewrites through the
    # process's original environment block, which changing variables moves away from.
    argv = [request["python"], "-m", request["module"], *request["args"]]
    setproctitle.setproctitle(" ".join(argv))
    _take_environment(request["env"], pool_env)
    _run_main(request["module"], request["args"])


def _take_environment(env: dict[str, str], pool_env: dict[str, str]) -> None:
    """Switch to the server's environment, keeping what the preload's imports set themselves.

    Imports may set variables (sklearn: KMP_DUPLICATE_LIB_OK, joblib: KMP_INIT_AT_FORK): a
    fresh server's imports would set them too, so the child keeps those changes on top.
    """
    after_imports = dict(os.environ)
    changes = {
        k: after_imports.get(k)
        for k in after_imports.keys() | pool_env.keys()
        if after_imports.get(k) != pool_env.get(k)
    }
    os.environ.clear()
    os.environ.update(env)
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    time.tzset()
    if "wsgiref.handlers" in sys.modules:
        # It copies the environment when imported (read_environ, its documented way to renew).
        handlers = sys.modules["wsgiref.handlers"]
        handlers.BaseHandler.os_environ = handlers.read_environ()
    if "numpy" in sys.modules:
        # The random module reseeds itself after fork; numpy's global generator does not.
        sys.modules["numpy"].random.seed()


def _run_main(module: str, args: list[str]) -> None:
    """Run ``module`` as ``__main__`` with ``args``: what ``python -m module args`` does."""
    import logging
    import runpy

    # A fresh ``python -m`` process has not imported the module under its own name (only as
    # __main__): forget the preload's copy, so runpy does not warn and imports of it re-run it.
    sys.modules.pop(module, None)
    package, _, leaf = module.rpartition(".")
    if package in sys.modules and leaf in vars(sys.modules[package]):
        delattr(sys.modules[package], leaf)
    sys.argv = ["-m", *args]  # runpy puts the module's file in sys.argv[0], like -m
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - report like the interpreter would
        sys.excepthook(*sys.exc_info())
        raise SystemExit(1) from None
    finally:
        # multiprocessing ends a child without running atexit: flush the logs as exit would.
        logging.shutdown()


# --------------------------------------------------------------------------------------------
# Entry point


_STARTED = time.monotonic()


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp} warm-pool[{os.getpid()}]: {message}\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point: take the lock, listen, warm the fork server, serve until idle."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE)
    parser.add_argument("--foreground", action="store_true", help="Do not fork away first.")
    args = parser.parse_args(argv)
    if not args.foreground and os.fork() > 0:
        return 0  # the launcher (see _ensure_started)
    path = Path(args.socket)
    lock = try_exclusive(path.with_name(LOCK_NAME))
    if lock is None:
        _log("another pool holds the lock: exiting")
        return 0
    # The fork server's socket goes in a directory of our own, removed on exit (the exit below
    # skips multiprocessing's own clean-up, which would wait for every server to end).
    tempfile.tempdir = tempfile.mkdtemp(prefix="kfp-serve-warm-pool-")
    try:
        pool = Pool(path, args.idle_timeout)
        pool.bind()
        _log(f"listening on {pool.path} (python {sys.executable}, cwd {pool.cwd})")
        pool.warm()
        pool.run()
    finally:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)
        lock.release()
    return 0


if __name__ == "__main__":
    # Run from the module under its own name, so what the fork server's children unpickle
    # (the targets below) resolves to kfp_serve.serving.runtime.warm_pool, not to __main__.
    from kfp_serve.serving.runtime import warm_pool

    code = warm_pool.main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: multiprocessing's exit handler would join every server forked here (they
    # are non-daemonic children of the fork server) and so keep the pool alive until the last
    # one ends. The servers outlive the pool by design.
    os._exit(code)
