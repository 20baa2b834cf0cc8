"""Start kfp-serve runtime servers as detached local processes and wait until they are ready.

Used by tests and by the local serving backend. Cheap to import (no kserve, no numpy).
Servers are forked from a warm pool when possible (:mod:`kfp_serve.serving.runtime.warm_pool`:
the same server, without paying interpreter start and imports again); ``KFP_SERVE_WARM_POOL=0``
turns that off. Either way the process is started, checked and stopped by the one supervisor of
local serving (:mod:`kfp_serve.serving.backends.local.supervisor`).

Example::

    proc = start_server("predictor", "iris", model_dir, log_path=home / "iris.log")
    wait_ready(proc.url, timeout=60, proc=proc)
    ...
    stop_server(proc)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from kfp_serve.retry import wait_until
from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.constants import (
    LOOPBACK,
    PREDICTOR,
    PREDICTOR_MODULE,
    READY_PATH,
    TRANSFORMER,
    TRANSFORMER_MODULE,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime import warm_pool

Kind = Literal["predictor", "transformer"]
MODULES: dict[str, str] = {PREDICTOR: PREDICTOR_MODULE, TRANSFORMER: TRANSFORMER_MODULE}
#: Seconds a stopped server gets after SIGKILL to be reaped.
KILL_WAIT = 5.0


class ServerProcess(subprocess.Popen):
    """A runtime server process; a ``Popen`` that also knows its port, URL and log file."""

    port: int
    host: str
    url: str
    log_path: Path
    kind: str
    model_name: str


class _PooledServerProcess(warm_pool.PooledProcess, ServerProcess):
    """A server forked by the warm pool: same attributes, not a child of this process."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: A server's working directory. Servers import only ``kfp_serve.*`` from the installed
#: distribution; with PYTHONSAFEPATH (below) the working directory is not on sys.path, so a
#: user's own ``serving/`` or ``pipelines/`` folder can never shadow anything in a server.
SERVER_CWD = "/"


def server_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: this process's, plus ``env``, a safe sys.path and
    unbuffered output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONSAFEPATH"] = "1"
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return full_env


def warm_up(python: str | None = None) -> None:
    """Start the warm pool now, without waiting, so later servers start fast (no-op when it
    runs or is disabled; never raises)."""
    warm_pool.ensure_started(
        python=python or sys.executable, env=server_environment(), cwd=SERVER_CWD
    )


def server_command(
    kind: Kind,
    model_name: str,
    model_dir: str | os.PathLike[str],
    *,
    port: int,
    host: str = LOOPBACK,
    predictor_host: str | None = None,
    predictor_protocol: str = "v1",
    python: str | None = None,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The argv that starts a runtime server (what a container would run, plus --http_host)."""
    if kind not in MODULES:
        raise ServingError(f"unknown runtime kind {kind!r}; use one of {sorted(MODULES)}")
    cmd = [
        python or sys.executable,
        "-m",
        MODULES[kind],
        f"--model_name={model_name}",
        f"--model_dir={os.fspath(model_dir)}",
        f"--http_port={port}",
        f"--http_host={host}",
    ]
    if kind == TRANSFORMER:
        if not predictor_host:
            raise ServingError("a transformer needs predictor_host='HOST:PORT'")
        cmd += [f"--predictor_host={predictor_host}", f"--predictor_protocol={predictor_protocol}"]
    return cmd + list(extra_args or [])


def start_server(
    kind: Kind,
    model_name: str,
    model_dir: str | os.PathLike[str],
    *,
    log_path: str | os.PathLike[str],
    port: int | None = None,
    host: str = LOOPBACK,
    predictor_host: str | None = None,
    predictor_protocol: str = "v1",
    env: dict[str, str] | None = None,
    python: str | None = None,
    extra_args: list[str] | None = None,
    warm: bool | None = None,
) -> ServerProcess:
    """Start a runtime server as a detached process; does not wait for readiness.

    The process gets its own session (it survives the caller, and a signal to the caller's
    group does not reach it), stdin from /dev/null, and stdout+stderr appended to ``log_path``
    (never an inherited pipe: a parent that exits while a child holds its pipe open hangs
    whoever reads that pipe, e.g. a kfp.local step).

    Args:
        kind: ``"predictor"`` or ``"transformer"``.
        model_name: Name in the URL paths.
        model_dir: Artifact directory.
        log_path: File for the server's output (parents are created).
        port: Port to bind; a free one when None.
        host: Address to bind; loopback unless you mean otherwise.
        predictor_host: ``HOST:PORT`` of the predictor (transformer only).
        predictor_protocol: ``"v1"`` or ``"v2"`` (transformer only).
        env: Extra environment variables (e.g. ``{"PREDICT_PROBA": "true"}``).
        python: Interpreter to run; the current one by default.
        extra_args: More command-line flags.
        warm: Fork it from the warm pool (:mod:`kfp_serve.serving.runtime.warm_pool`) when possible;
            default: unless ``KFP_SERVE_WARM_POOL=0``. The result is the same server either way.

    Returns:
        The process, with ``.port``, ``.host``, ``.url``, ``.log_path`` set.
    """
    port = port or free_port(host if host not in ("0.0.0.0", "") else LOOPBACK)
    cmd = server_command(
        kind,
        model_name,
        model_dir,
        port=port,
        host=host,
        predictor_host=predictor_host,
        predictor_protocol=predictor_protocol,
        python=python,
        extra_args=extra_args,
    )
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = server_environment(env)
    proc: ServerProcess | None = None
    if warm if warm is not None else warm_pool.enabled():
        # Forked from the warm pool (imports already done); None means start it plainly.
        proc = warm_pool.spawn(
            MODULES[kind],
            cmd[3:],
            env=full_env,
            cwd=SERVER_CWD,
            log_path=log_path,
            python=cmd[0],
            pool_env=server_environment(),
            cls=_PooledServerProcess,
        )
    if proc is None:
        proc = supervisor.start_detached(
            cmd, log=log_path, env=full_env, cwd=SERVER_CWD, popen=ServerProcess
        )
    else:
        supervisor.adopt(proc)
    proc.port = port
    proc.host = host
    connect_host = LOOPBACK if host in ("0.0.0.0", "", "::") else host
    proc.url = f"http://{connect_host}:{port}"
    proc.log_path = log_path
    proc.kind = kind
    proc.model_name = model_name
    return proc


def wait_ready(
    url: str,
    timeout: float = 60.0,
    *,
    proc: subprocess.Popen | None = None,
    path: str = READY_PATH,
    interval: float = 0.05,
) -> float:
    """Poll ``url + path`` until it answers 200.

    Args:
        url: Base URL of the server (``http://127.0.0.1:PORT``).
        timeout: Seconds before giving up.
        proc: The server process; if it exits first, fail at once with its log tail.
        path: Readiness path.
        interval: Pause between two polls.

    Returns:
        Seconds waited.

    Raises:
        ServingError: Timeout, or the process exited; the message carries the log tail.
    """
    start = time.monotonic()
    target = url.rstrip("/") + path
    last_error = "no answer yet"

    def tail() -> str:
        text = supervisor.log_tail(proc.log_path) if hasattr(proc, "log_path") else ""
        return f"; log tail:\n{text}" if text else ""

    def ready() -> bool:
        nonlocal last_error
        if proc is not None and proc.poll() is not None:
            raise ServingError(
                f"server for {url} exited with code {proc.returncode} before it was ready{tail()}"
            )
        try:
            with urllib.request.urlopen(target, timeout=2.0) as r:  # noqa: S310 - local URL
                if r.status == 200:
                    return True
                last_error = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last_error = str(getattr(e, "reason", e))
        return False

    try:
        wait_until(ready, deadline=timeout, interval=interval, describe=f"{url} ready")
    except TimeoutError:
        raise ServingError(
            f"server at {url} not ready after {timeout:.0f}s ({last_error})"
            + (tail() if proc is not None else "")
        ) from None
    return time.monotonic() - start


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """Stop a server started by :func:`start_server`: SIGTERM its session, then SIGKILL.

    Returns:
        The exit code (None if it could not be reaped).
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        # start_new_session=True made the server its own process-group leader (pgid == pid).
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            return None
