"""A warm pool ("zygote") that forks runtime servers with their heavy imports already done.

Starting a model server costs an interpreter start plus numpy, scikit-learn, kserve.model and
uvicorn imports: about a second of CPU per server, paid twice for a transformer endpoint. The
pool pays it once per ``KFP_SERVE_HOME``: it imports the runtimes' dependencies, then, asked over
a unix socket, forks a child that becomes exactly the server
:func:`kfp_serve.serving.runtime.launch.
start_server` would have started — the same module run as ``__main__`` with the same argv (so the
same parser), its own session, stdin from /dev/null, stdout+stderr appended to the log file, the
caller's environment, working directory, umask, CPU affinity and niceness, bound where its flags
say. The child is a plain process to everyone else: a pid and a ``/proc`` start time for the
local registry, its own process group to signal, and ``/proc/PID/cmdline`` showing the server's
command line.

Files (in ``$KFP_SERVE_HOME/endpoints``): ``.warm-pool.sock`` (mode 0600; peers must also have
this uid), ``.warm-pool.lock`` (held by the live pool: a socket without a locked lock file is
stale), ``.warm-pool.log``.

Lifecycle: started on demand (:func:`spawn`) or early (:func:`ensure_started`, e.g. when a
pipeline starts), detached from whoever started it; exits after ``KFP_SERVE_WARM_POOL_IDLE``
seconds (default 600) without requests, or when its socket file is removed or replaced. It reaps
its children and remembers their exit codes, so a caller's ``poll()`` sees the same code a
``Popen`` would.

Correctness never depends on the pool: when it is disabled (``KFP_SERVE_WARM_POOL=0``), missing,
slow, or refuses a request (another interpreter, working directory or resource limits, or a
difference in an environment variable that is read at import time), :func:`spawn` returns None
and the caller starts the server as a plain subprocess.

Run as ``python -m kfp_serve.serving.runtime.warm_pool --socket PATH --lock-fd N`` (the client does
this).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
MODULES = frozenset(
    {"kfp_serve.serving.runtime.predictor", "kfp_serve.serving.runtime.transformer"}
)
#: What the servers import before they answer (pre-imported by the pool; optional ones may fail).
WARM_IMPORTS = (
    "kfp_serve.serving.runtime.predictor",
    "kfp_serve.serving.runtime.transformer",
    "kfp_serve.serving.runtime.upstream",
    "kfp_serve.serving.runtime.kserve_package",
    "yaml",
    "joblib",
    "orjson",
    "sklearn",
    "sklearn.base",
    "sklearn.utils",
    "sklearn.linear_model",
    "sklearn.preprocessing",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.impute",
    "scipy.special",
    "sklearn.utils.extmath",
    "pandas",
    "xgboost",
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "httptools",
    "uvloop",
    "encodings.idna",
)
#: Environment variables read when the interpreter or a native library starts (Python's own
#: start-up, BLAS/OpenMP thread pools, locale, allocator): a child whose environment differs
#: from the pool's in one of these could not behave like a fresh process, so it is not forked.
#: Variables Python code reads while the pool imports are recorded and compared too.
STARTUP_ENV_PREFIXES = (
    "PYTHON", "LD_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO", "BLIS_", "VECLIB_",
    "NUMEXPR_", "NUMBA_", "XGBOOST", "SKLEARN_", "JOBLIB_", "LOKY_", "LC_", "MALLOC_", "GLIBC_",
)
STARTUP_ENV_NAMES = frozenset({"LANG", "LANGUAGE", "HOME"})
_RLIMITS = ("RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_AS", "RLIMIT_DATA",
            "RLIMIT_NPROC", "RLIMIT_MEMLOCK", "RLIMIT_FSIZE")
#: Room reserved in the pool's own command line and environment, overwritten in each child
#: with the server's (see _show_in_proc).
_CMDLINE_ROOM = 4096
ROOM_ENV = "KFP_SERVE_WARM_POOL_ROOM"
_ENV_ROOM = 16384
#: Return code of a pooled process whose exit status is lost (the pool exited before it).
UNKNOWN_RETURNCODE = 255
_MAX_MESSAGE = 8 * 1024 * 1024
_SUN_PATH_MAX = 100


def enabled() -> bool:
    """False when ``KFP_SERVE_WARM_POOL`` is set to 0/false/no/off."""
    value = os.environ.get(ENABLE_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off", "")


def pool_dir() -> Path:
    """``$KFP_SERVE_HOME/endpoints`` (created), where the pool's files live."""
    from kfp_serve.artifacts.home import state_dir

    path = state_dir() / "endpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def socket_path() -> Path:
    """The pool socket of the current ``KFP_SERVE_HOME``."""
    return pool_dir() / SOCKET_NAME


# --------------------------------------------------------------------------------------------
# Small helpers shared by client and pool


def _start_time(pid: int, *, zombie: bool = False) -> int | None:
    """``/proc`` start time of ``pid`` (clock ticks); None when gone (or a zombie, unless
    ``zombie``: an exited process no longer serves)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X") and not zombie:
        return None
    return int(rest[19])


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
    the exit code comes from the pool (which reaps it); :data:`UNKNOWN_RETURNCODE` if the pool
    has gone since. No pipes: the server writes to its log file.
    """

    def __init__(self, args: list[str], pid: int, start_time: int, sock: Path) -> None:
        # Deliberately not Popen.__init__: the process already exists.
        self.args = args
        self.pid = pid
        self.start_time = start_time
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self.text_mode = False
        self.encoding = self.errors = None
        self.universal_newlines = False
        self._child_created = False  # Popen.__del__ has nothing to reap
        self._pool_socket = sock

    def __del__(self) -> None:  # noqa: D105 - nothing to reap: the pool owns the process
        pass

    def _alive(self) -> bool:
        return _start_time(self.pid) == self.start_time

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        if self.returncode is None and not self._alive():
            code = _exit_status(self._pool_socket, self.pid, self.start_time)
            if code is not None:
                self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit.

        Raises:
            subprocess.TimeoutExpired: Still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
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
    with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
        _connect(path, timeout).close()
        return path
    lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            started = False  # a live pool holds the lock (it may still be binding)
        else:
            # No live pool: whatever socket file is left is stale.
            path.unlink(missing_ok=True)
            with open(directory / LOG_NAME, "ab") as log:
                launcher = subprocess.Popen(
                    [python, "-m", __name__, f"--socket={path}", f"--lock-fd={lock_fd}",
                     f"--idle-timeout={_float_env(IDLE_ENV, DEFAULT_IDLE)}",
                     "--cmdline-room", " " * _CMDLINE_ROOM],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, pass_fds=(lock_fd,),
                    env={**(env if env is not None else os.environ), ROOM_ENV: " " * _ENV_ROOM},
                    cwd=cwd,
                )
            # The launcher forks the pool and exits at once: nobody is left to reap.
            launcher.wait(timeout=timeout)
            started = True
    finally:
        os.close(lock_fd)  # the pool keeps its own copy of the locked descriptor
    if not wait and started:
        return path
    deadline = time.monotonic() + timeout
    while True:
        try:
            _connect(path, timeout).close()
            return path
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


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
                if _start_time(pid) == start:
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


class _EnvReads(os._Environ):  # type: ignore[name-defined,misc]
    """``os.environ`` while the pool imports: records every key Python code looks up, and
    which modules copy the whole environment (iterate over it)."""

    keys_read: set[str] = set()
    copied_by: set[str] = set()
    iterating = 0

    def __getitem__(self, key: str) -> str:
        if not _EnvReads.iterating:
            _EnvReads.keys_read.add(key)
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__") in _MAPPING_MODULES:
            frame = frame.f_back
        _EnvReads.copied_by.add(frame.f_globals.get("__name__", "?") if frame else "?")
        _EnvReads.iterating += 1
        try:
            yield from super().__iter__()
        finally:
            _EnvReads.iterating -= 1


_MAPPING_MODULES = frozenset({"os", "_collections_abc", "collections.abc"})


def _refresh_wsgiref() -> None:
    handlers = sys.modules["wsgiref.handlers"]
    handlers.BaseHandler.os_environ = handlers.read_environ()


#: Modules that keep a copy of the whole environment made at import time, and how a child
#: renews it from its own. A copy made by any other module makes every variable count as read.
_ENV_COPIES = {"wsgiref.handlers": _refresh_wsgiref}


class Pool:
    """The pool's state and request loop (runs in ``python -m
    kfp_serve.serving.runtime.warm_pool``)."""

    def __init__(self, path: Path, lock_fd: int | None, idle_timeout: float) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.idle_timeout = idle_timeout
        self.base_env = dict(os.environ)
        self.cwd = os.getcwd()
        self.attrs = _process_attributes()
        self.import_env: set[str] = set()
        self.import_changes: dict[str, str | None] = {}
        self.env_copies: list[str] = []
        self.warm_error: str | None = None
        self.children: dict[int, int] = {}  # pid -> start time
        self.exited: dict[int, tuple[int, int]] = {}  # pid -> (start time, return code)
        self.listener: socket.socket | None = None
        self.inode = 0
        self.last_request = time.monotonic()

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
        """Import what the servers import; record the environment variables read meanwhile."""
        import importlib

        os.environ.__class__ = _EnvReads
        try:
            for name in WARM_IMPORTS:
                try:
                    importlib.import_module(name)
                except ImportError:
                    pass
                except Exception as e:  # noqa: BLE001 - refuse to fork rather than fork a mess
                    self.warm_error = f"importing {name} failed: {e!r}"
                    break
        finally:
            os.environ.__class__ = os._Environ  # type: ignore[attr-defined]
        self.import_env = set(_EnvReads.keys_read)
        self.env_copies = sorted(_EnvReads.copied_by & _ENV_COPIES.keys())
        unknown = _EnvReads.copied_by - _ENV_COPIES.keys()
        if unknown:
            _log(f"{sorted(unknown)} copied the environment: every variable must match")
            self.import_env |= set(self.base_env)
        # Imports may set variables themselves (sklearn: KMP_DUPLICATE_LIB_OK, joblib:
        # KMP_INIT_AT_FORK): a fresh server's imports would set them too, so children get the
        # same changes on top of their own environment.
        after = dict(os.environ)
        self.import_changes = {
            k: after.get(k) for k in after.keys() | self.base_env.keys()
            if after.get(k) != self.base_env.get(k)
        }
        import threading

        if threading.active_count() != 1:
            self.warm_error = f"{threading.active_count()} threads after importing"
        import gc

        # Objects made so far are shared with every child and never collected there: the
        # children's collections do not touch (and so do not copy) those pages.
        gc.collect()
        gc.freeze()
        _log(f"warm in {time.monotonic() - _STARTED:.2f} s; " + (self.warm_error or "ready"))
        self.last_request = time.monotonic()  # idle time counts from here

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        assert self.listener is not None
        try:
            while True:
                self.reap()
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
        finally:
            if self._still_published():
                self.path.unlink(missing_ok=True)

    def _still_published(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            start = self.children.pop(pid, -1)
            self.exited[pid] = (start, os.waitstatus_to_exitcode(status))
            while len(self.exited) > 4096:
                del self.exited[next(iter(self.exited))]

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
        self.reap()
        pid, start = int(request["pid"]), int(request["start_time"])
        if pid in self.exited and self.exited[pid][0] == start:
            return {"returncode": self.exited[pid][1]}
        if self.children.get(pid) == start:
            return {"running": True}
        return {"unknown": True}

    def refusal(self, request: dict[str, Any]) -> str | None:
        """Why ``request`` cannot be forked faithfully (None: it can)."""
        if self.warm_error:
            return self.warm_error
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
            k for k in changed
            if k in self.import_env or k in STARTUP_ENV_NAMES or k.startswith(STARTUP_ENV_PREFIXES)
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
        old = os.umask(int(request["umask"]))
        try:
            log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as e:
            _send(conn, {"error": f"cannot open the log file: {e}"})
            return
        finally:
            os.umask(old)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns (covered by the launch tests)
            _become_server(
                request,
                self.import_changes,
                self.env_copies,
                log_fd,
                null_fd,
                [conn, self.listener],
            )
        os.close(log_fd)
        os.close(null_fd)
        # Read while the child cannot have been reaped (a zombie still has its start time).
        start = _start_time(pid, zombie=True) or 0
        self.children[pid] = start
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


def _become_server(
    request: dict[str, Any],
    import_changes: dict[str, str | None],
    env_copies: list[str],
    log_fd: int,
    null_fd: int,
    sockets: list[socket.socket | None],
) -> None:
    """In the forked child: turn into ``python -m module args``; never returns."""
    code = 1
    try:
        for sock in sockets:
            if sock is not None:
                sock.close()
        os.setsid()
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        os.umask(int(request["umask"]))
        if "affinity" in request and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, request["affinity"])
        nice = int(request.get("nice", 0))
        if nice != os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in import_changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        time.tzset()
        for module in env_copies:
            _ENV_COPIES[module]()
        if "numpy" in sys.modules:
            # The random module reseeds itself after fork; numpy's global generator does not.
            sys.modules["numpy"].random.seed()
        argv = [request["python"], "-m", request["module"], *request["args"]]
        _show_in_proc(argv, request["env"])
        code = _run_main(request["module"], request["args"])
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    _exit(code)


def _run_main(module: str, args: list[str]) -> int:
    """Run ``module`` as ``__main__`` with ``args``: what ``python -m module args`` does."""
    import runpy

    # A fresh ``python -m`` process has not imported the module under its own name (only as
    # __main__): forget the pool's copy, so runpy does not warn and imports of it re-run it.
    sys.modules.pop(module, None)
    package, _, leaf = module.rpartition(".")
    if package in sys.modules and leaf in vars(sys.modules[package]):
        delattr(sys.modules[package], leaf)
    sys.argv = ["-m", *args]  # runpy puts the module's file in sys.argv[0], like -m
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code & 0xFF
        with contextlib.suppress(BaseException):
            print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _finalize()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:  # noqa: BLE001
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _finalize() -> None:
    """What interpreter shutdown does before exiting: join threads, run atexit, flush."""
    import atexit
    import threading

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _exit(code: int) -> None:
    _finalize()
    os._exit(code)


def _show_in_proc(argv: list[str], env: dict[str, str]) -> None:
    """Make ``/proc/self/cmdline`` and ``/proc/self/environ`` (what ``ps`` and other tools
    read) show the server's argv and environment instead of the pool's.

    The kernel reads both from fixed memory areas: the strings the pool was started with,
    padded for this purpose (:data:`_CMDLINE_ROOM`, :data:`ROOM_ENV`). Once ``os.environ`` has
    been replaced, the C ``environ`` no longer points into the environment area, so both can
    be overwritten (as setproctitle does). Entries that do not fit are left out.
    """
    try:
        fields = Path("/proc/self/stat").read_bytes()
        rest = fields[fields.rfind(b")") + 2 :].split()
        areas = [
            ((int(rest[45]), int(rest[46])), argv),
            ((int(rest[47]), int(rest[48])), [f"{k}={v}" for k, v in env.items()]),
        ]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            for (start, end), items in areas:
                data = b""
                for item in items:
                    entry = item.encode(errors="surrogateescape") + b"\0"
                    if len(data) + len(entry) > end - start:
                        break
                    data += entry
                mem.seek(start)
                mem.write(data + b"\0" * (end - start - len(data)))
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: the server runs the same either way


_STARTED = time.monotonic()


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp} warm-pool[{os.getpid()}]: {message}\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point: daemonize, listen, import, serve until idle."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--lock-fd", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE)
    parser.add_argument("--cmdline-room", default="", help="Padding; see _show_in_proc.")
    parser.add_argument("--foreground", action="store_true")
    args = parser.parse_args(argv)
    os.environ.pop(ROOM_ENV, None)  # room only: not part of the servers' environment
    if not args.foreground and os.fork() > 0:
        # The launcher exits at once, so whoever started it has nothing to reap, and the pool
        # is re-parented to init like a daemon.
        os._exit(0)
    pool = Pool(Path(args.socket), args.lock_fd, args.idle_timeout)
    if args.lock_fd is not None:
        try:
            fcntl.flock(args.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _log("another pool holds the lock: exiting")
            return 0
    pool.bind()
    _log(f"listening on {pool.path} (python {sys.executable}, cwd {pool.cwd})")
    pool.warm()
    pool.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
