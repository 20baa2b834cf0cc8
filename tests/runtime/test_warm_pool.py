"""kfp_serve.serving.runtime.warm_pool: servers forked from a warm pool behave like freshly started
ones."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime import launch, warm_pool
from kfp_serve.serving.runtime.launch import start_server, stop_server, wait_ready


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.02)
    return False


def _pool_pid() -> int:
    answer = warm_pool._request(warm_pool.socket_path(), {"op": "ping"}, 30.0)
    assert answer and answer["ok"], answer
    return int(answer["pid"])


def _fd_targets(pid: int) -> set[str]:
    """What the descriptors above stderr of ``pid`` point at."""
    return {
        os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd") if int(fd) > 2
    }


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private KFP_SERVE_HOME (so a private pool), stopped afterwards."""
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(warm_pool.ENABLE_ENV, raising=False)
    yield tmp_path / "home"
    warm_pool.stop()


@pytest.fixture(scope="module")
def model() -> tuple[Path, LogisticRegression, np.ndarray]:
    import tempfile

    X, y = load_iris(return_X_y=True)
    est = LogisticRegression(max_iter=500).fit(X, y)
    directory = Path(tempfile.mkdtemp(prefix="warm-pool-model-"))
    joblib.dump(est, directory / "model.joblib")
    return directory, est, X


def test_forked_server_is_a_detached_faithful_server(home: Path, model, tmp_path: Path):
    model_dir, est, X = model
    log = tmp_path / "logs" / "p.log"
    proc = start_server("predictor", "iris", model_dir, log_path=log,
                        env={"PREDICT_PROBA": "true"}, warm=True)
    try:
        assert isinstance(proc, warm_pool.PooledProcess), "the pool did not fork the server"
        wait_ready(proc.url, timeout=120, proc=proc)
        answer = httpx.post(f"{proc.url}/v1/models/iris:predict",
                            json={"instances": X[:3].tolist()}, timeout=30).json()
        # The per-server env reached it: probabilities, as a fresh server with that env gives.
        np.testing.assert_allclose(answer["predictions"], est.predict_proba(X[:3]), rtol=1e-6)
        pid = proc.pid
        # Its own session and process group, stdin from /dev/null, output to the log file.
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{pid}/fd/1") == str(log)
        assert os.readlink(f"/proc/{pid}/fd/2") == str(log)
        # It holds none of the pool's descriptors (its socket, its lock file).
        pool = _fd_targets(_pool_pid())
        assert any(t.startswith("socket:") for t in pool)
        assert any(t.endswith(warm_pool.LOCK_NAME) for t in pool)
        assert not (_fd_targets(pid) & pool)
        # ps shows the server's command line, as for a plain start (setproctitle).
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
        assert cmdline[:3] == [sys.executable.encode(), b"-m",
                               b"kfp_serve.serving.runtime.predictor"]
        assert b"--model_name=iris" in cmdline and f"--http_port={proc.port}".encode() in cmdline
        assert Path(f"/proc/{pid}/cwd").resolve() == Path(launch.SERVER_CWD)
        assert "serving on" in log.read_text() or "loaded" in log.read_text()
    finally:
        code = stop_server(proc)
    assert code is not None and proc.poll() is not None
    assert _gone(proc.pid), "the pool did not reap its stopped child"
    mode = stat.S_IMODE(os.stat(warm_pool.socket_path()).st_mode)
    assert mode == 0o600


def test_exit_code_of_a_failed_forked_server(home: Path, tmp_path: Path):
    proc = start_server("predictor", "m", tmp_path / "missing", log_path=tmp_path / "p.log",
                        warm=True)
    assert isinstance(proc, warm_pool.PooledProcess)
    with pytest.raises(ServingError, match="exited with code 2"):
        wait_ready(proc.url, timeout=120, proc=proc)
    assert proc.wait(timeout=5) == 2
    assert "does not exist" in (tmp_path / "p.log").read_text()


def test_startup_env_difference_falls_back_to_a_plain_start(
    home: Path, model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model_dir, _, _ = model
    # OpenMP reads OMP_NUM_THREADS when it loads: the pool cannot honour a different value.
    proc = start_server("predictor", "m", model_dir, log_path=tmp_path / "p.log",
                        env={"OMP_NUM_THREADS": "3"}, warm=True)
    try:
        assert not isinstance(proc, warm_pool.PooledProcess)
        wait_ready(proc.url, timeout=120, proc=proc)
    finally:
        stop_server(proc)
    monkeypatch.setenv(warm_pool.ENABLE_ENV, "0")
    proc = start_server("predictor", "m", model_dir, log_path=tmp_path / "q.log")
    try:
        assert not isinstance(proc, warm_pool.PooledProcess)
    finally:
        stop_server(proc)


def test_stale_socket_is_replaced_and_pool_exits_when_its_socket_goes(
    home: Path, monkeypatch: pytest.MonkeyPatch
):
    path = warm_pool.socket_path()
    # A socket file nobody listens on (a pool that died).
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    assert warm_pool.ensure_started(wait=True) == path
    pid = _pool_pid()
    path.unlink()
    assert _gone(pid), "the pool kept running without its socket file"


def test_pool_exits_when_idle(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(warm_pool.IDLE_ENV, "1")
    assert warm_pool.ensure_started(wait=True) is not None
    pid = _pool_pid()
    assert _gone(pid, timeout=15), "the idle pool did not exit"
    assert not warm_pool.socket_path().exists()


def test_stopping_the_pool_leaves_its_servers_running(home: Path, model, tmp_path: Path):
    # The pool ends with os._exit: multiprocessing's own exit would wait for every server it
    # forked. If that ever changes (or the pool stops ending that way), this test hangs or fails.
    model_dir, _, X = model
    proc = start_server("predictor", "iris", model_dir, log_path=tmp_path / "p.log", warm=True)
    try:
        assert isinstance(proc, warm_pool.PooledProcess)
        wait_ready(proc.url, timeout=120, proc=proc)
        pool = _pool_pid()
        assert warm_pool.stop()
        assert _gone(pool), "the pool waited for its servers instead of exiting"
        assert not warm_pool.socket_path().exists()
        answer = httpx.post(f"{proc.url}/v1/models/iris:predict",
                            json={"instances": X[:1].tolist()}, timeout=30)
        assert answer.status_code == 200 and proc.poll() is None
    finally:
        stop_server(proc)
    # Its exit status went with the pool: reported as unknown, never as "still running".
    assert proc.poll() == warm_pool.UNKNOWN_RETURNCODE
    assert _gone(proc.pid)


def test_preload_imports_the_servers_dependencies_in_the_fork_server():
    # The fork server imports warm_imports (multiprocessing's preload): it must not fail, and
    # must leave a single thread, or the pool would refuse every request. A fresh interpreter,
    # as the fork server is: this test process has other tests' threads.
    code = (
        "import sys; from kfp_serve.serving.runtime import warm_imports; "
        "print(warm_imports.ERROR, 'sklearn' in sys.modules and 'uvicorn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["None", "True"], out


def test_only_runtime_modules_are_forked(home: Path):
    assert warm_pool.spawn("os", [], env=dict(os.environ), cwd=os.getcwd(),
                           log_path=home / "x.log", python="python") is None


def _request_like(pool: warm_pool.Pool, **changes) -> dict:
    request = {
        "module": "kfp_serve.serving.runtime.predictor", "args": [], "python": sys.executable,
        "cwd": pool.cwd, "env": dict(pool.base_env), **pool.attrs,
    }
    env_changes = changes.pop("env", {})
    request.update(changes)
    for key, value in env_changes.items():
        if value is None:
            request["env"].pop(key, None)
        else:
            request["env"][key] = value
    return request


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        pytest.param({}, None, id="same-everything"),
        pytest.param({"env": {"PREDICT_PROBA": "true"}}, None, id="runtime-env-var"),
        pytest.param({"env": {"NUMPY_MADVISE_HUGEPAGE": "0"}}, "NUMPY_MADVISE_HUGEPAGE",
                     id="read-at-import"),
        pytest.param({"env": {"OMP_NUM_THREADS": "7"}}, "OMP_NUM_THREADS", id="native-startup"),
        pytest.param({"env": {"KFP_SERVE_MAX_BODY_BYTES": "10"}}, None,
                     id="own-setting-read-when-built"),
        pytest.param({"env": {"PYTHONHASHSEED": "1"}}, "PYTHONHASHSEED", id="python-startup"),
        pytest.param({"env": {"LANG": "C.UTF-8x"}}, "LANG", id="locale"),
        pytest.param({"python": "/usr/bin/python3"}, "interpreter", id="other-python"),
        pytest.param({"cwd": "/"}, "working directory", id="other-cwd"),
        pytest.param({"module": "os"}, "not served", id="other-module"),
        pytest.param({"nice": -5}, "niceness", id="higher-priority"),
        pytest.param({"rlimits": {"RLIMIT_NOFILE": [1, 1]}}, "resource limits", id="rlimits"),
    ],
)
def test_what_the_pool_refuses_to_fork(changes: dict, refused: str | None, tmp_path: Path):
    pool = warm_pool.Pool(tmp_path / "s.sock", 1.0)
    why = pool.refusal(_request_like(pool, **changes))
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


def test_a_pool_older_than_the_code_declines_and_exits(home: Path, model, tmp_path: Path):
    """After an upgrade (or an edit in a checkout) the pool's fork server holds the old code: a
    server is started plainly, with the code installed now, and the pool makes way for a new one."""
    from kfp_serve.serving.runtime import layout

    model_dir, _, _ = model
    first = start_server("predictor", "m", model_dir, log_path=tmp_path / "o.log", warm=True)
    stop_server(first)
    assert isinstance(first, warm_pool.PooledProcess)
    pid = _pool_pid()
    source = Path(layout.__file__)
    before = source.stat()
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    try:
        proc = start_server("predictor", "m", model_dir, log_path=tmp_path / "p.log", warm=True)
        try:
            assert not isinstance(proc, warm_pool.PooledProcess)
            wait_ready(proc.url, timeout=120, proc=proc)
        finally:
            stop_server(proc)
        assert _gone(pid), "the pool kept running on code older than what is installed"
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
