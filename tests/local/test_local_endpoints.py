"""The local backend and Endpoint against real server processes over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from kfp_serve.serving.backends.local import LocalBackend
from kfp_serve.serving.backends.local.registry import read_record, registry_path
from kfp_serve.serving.backends.local.supervisor import start_time
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError
from tests.local.conftest import make_manifest
from tests.processes import processes_mentioning

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if start_time(pid) is None:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def v1_endpoint(model_dir: Any) -> Any:
    """One v1 endpoint shared by the tests below (each server start costs seconds)."""
    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(make_manifest("iris-v1", model_dir[0]), timeout=90)
    yield status
    backend.delete("iris-v1")


def test_v1_predict_equals_in_process(
    backend: LocalBackend, v1_endpoint: Any, model_dir: Any, iris: Any
) -> None:
    _, est = model_dir
    status = v1_endpoint
    assert status.ready, status.message
    assert status.url and status.url.startswith("http://127.0.0.1:")
    X, _ = iris
    with Endpoint("iris-v1", backend=backend) as ep:
        assert ep.protocol == "v1"
        assert ep.ready()
        expected = est.predict(X[:20]).tolist()
        assert ep.predict(X[:20])["predictions"] == expected  # numpy
        assert ep.predictions(X[:20].tolist()) == expected  # lists
        frame = pd.DataFrame(X[:20], columns=["a", "b", "c", "d"])
        assert ep.predictions(frame) == expected  # DataFrame (as records)
        with pytest.raises(ServingError, match=r"rejected the predict request \(HTTP 400\)"):
            ep.predict([1.0, 2.0])  # 1-D: the server's message comes through
        assert ep.metadata()["name"] == "iris-v1"
        explained = ep.explain(ROWS)
        assert isinstance(explained, dict) and explained


def test_v2_through_transformer_equals_in_process(
    backend: LocalBackend, scaled_pair: Any, iris: Any
) -> None:
    t_dir, m_dir, in_process = scaled_pair
    manifest = make_manifest("iris-v2", m_dir, protocol="v2", transformer=t_dir,
                             env=[{"name": "SECRET_TOKEN", "valueFrom": {"secretKeyRef": {
                                 "name": "creds", "key": "token"}}}])
    status = backend.apply(manifest, timeout=90)
    assert status.ready, status.message
    assert set(status.components) >= {"router", "predictor", "transformer"}
    X, _ = iris
    ep = Endpoint("iris-v2", backend=backend)
    assert ep.protocol == "v2"
    response = ep.predict(np.asarray(X[:30]))
    assert response["outputs"][0]["datatype"] in ("INT64", "INT32")
    assert ep.predictions(X[:30]) == in_process(X[:30]).tolist()
    # The cluster args (--model_dir=/mnt/models, --http_host=0.0.0.0) never reach a local server.
    record = read_record("iris-v2")
    assert record is not None and record.latest.transformer is not None
    cmdline = Path(f"/proc/{record.latest.transformer.pid}/cmdline").read_bytes().split(b"\0")
    assert b"0.0.0.0" not in b" ".join(cmdline) and b"/mnt/models" not in b" ".join(cmdline)
    assert b"SECRET_TOKEN" not in Path(record.latest.transformer.log).read_bytes()


def test_endpoint_survives_the_process_that_started_it(
    backend: LocalBackend, model_dir: Any
) -> None:
    directory, est = model_dir
    manifest = make_manifest("iris-bg", directory)
    script = (
        "import json, sys\n"
        "from kfp_serve.serving.backends.local import LocalBackend\n"
        "status = LocalBackend().apply(json.loads(sys.stdin.read()), timeout=90)\n"
        "print(status.url)\n"
    )
    # Pipes on purpose: a starter whose servers held its pipes open would never finish here.
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(manifest),
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    assert "ready" in result.stderr  # progress went to stderr
    url = result.stdout.strip()

    listed = {s.name: s for s in backend.list()}
    assert listed["iris-bg"].ready and listed["iris-bg"].url == url
    status = backend.get("iris-bg")
    assert status.ready and status.url == url
    assert Endpoint("iris-bg").predictions(ROWS) == est.predict(ROWS).tolist()
    registry = json.loads(registry_path("iris-bg").read_text())
    assert registry["url"] == url and registry["model_ids"] == {"model": "7"}
    assert registry["protocol"] == "v1" and registry["revision"] == 1

    pids = [registry["router"]["pid"], *registry["pids"].values()]
    backend.delete("iris-bg")
    assert all(_wait_gone(pid) for pid in pids)
    assert not registry_path("iris-bg").parent.exists()
    assert "iris-bg" not in {s.name for s in backend.list()}
    with pytest.raises(ServingError, match="no local endpoint named 'iris-bg'"):
        backend.get("iris-bg")
    with pytest.raises(ServingError, match="no local endpoint named 'iris-bg'"):
        Endpoint("iris-bg", backend=backend)


def test_failed_rollout_keeps_the_old_revision_serving(
    backend: LocalBackend, v1_endpoint: Any, model_dir: Any, corrupt_model_dir: Path
) -> None:
    _, est = model_dir
    ep = Endpoint("iris-v1", backend=backend)
    before = read_record("iris-v1")
    assert before is not None
    serving_rev = before.latest.revision

    with pytest.raises(ServingError) as err:
        backend.apply(make_manifest("iris-v1", corrupt_model_dir), timeout=90)
    message = str(err.value)
    assert f"revision {serving_rev + 1}" in message and "exited" in message
    assert "model.joblib" in message  # the tail of the new server's log says why
    assert "keeps serving" in message and before.url in message
    after = read_record("iris-v1")
    assert after is not None and after.traffic == {str(serving_rev): 100}
    assert [r.revision for r in after.revisions] == [serving_rev]
    assert ep.predictions(ROWS) == est.predict(ROWS).tolist()
    assert backend.get("iris-v1").ready
    # Nothing of the failed revision is left running.
    assert not processes_mentioning(str(corrupt_model_dir))


def test_rollout_and_canary_split(
    backend: LocalBackend, model_dir: Any, shifted_model_dir: Any
) -> None:
    a_dir, _ = model_dir
    b_dir, _ = shifted_model_dir
    first = backend.apply(make_manifest("iris-canary", a_dir), timeout=90)
    ep = Endpoint("iris-canary", backend=backend)

    # Requests keep flowing during the rollout: none may fail.
    errors: list[BaseException] = []
    answers: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=first.url, timeout=10, trust_env=False) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/models/iris-canary:predict", json={"instances": ROWS[:1]})
                    r.raise_for_status()
                    answers.append(r.json()["predictions"][0])
                except Exception as e:  # noqa: BLE001 - every failure counts
                    errors.append(e)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        canary = backend.apply(make_manifest("iris-canary", b_dir, canary=25), timeout=90)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert answers
    assert canary.url == first.url and "previous-predictor" in canary.components
    record = read_record("iris-canary")
    assert record is not None and record.traffic == {"1": 75, "2": 25}

    n = 400
    new = sum(1 for _ in range(n) if ep.predictions(ROWS[:1])[0] >= 10)
    # Binomial(400, 0.25): mean 100, sd 8.7; +-4.5 sd fails by chance about once in 150,000 runs.
    assert 61 <= new <= 139, new

    # Promote: only the percentage changes, so no new servers start; the old revision stops.
    pids_b = record.latest.predictor.pid
    old_pid = record.revision(1).predictor.pid
    promoted = backend.apply(make_manifest("iris-canary", b_dir), timeout=90)
    assert promoted.ready
    record = read_record("iris-canary")
    assert record is not None and record.traffic == {"2": 100}
    assert record.latest.predictor.pid == pids_b
    assert _wait_gone(old_pid)
    assert all(p >= 10 for p in (ep.predictions(ROWS[:1])[0] for _ in range(40)))
    backend.delete("iris-canary")


def _other_addresses() -> list[str]:
    """IPv4 addresses of this machine other than loopback."""
    found: set[str] = set()
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5)
        found.update(a for a in out.stdout.split() if ":" not in a)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found.update(
            info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        )
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def test_servers_listen_on_loopback_only(backend: LocalBackend, v1_endpoint: Any) -> None:
    status = v1_endpoint
    record = read_record("iris-v1")
    assert record is not None
    ports = [record.router.port, record.latest.predictor.port]
    # Every listening socket of every server process is bound to 127.0.0.1.
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    bound = {
        int(line.split()[1].split(":")[1], 16): line.split()[1].split(":")[0]
        for line in listening if line.split()[3] == "0A"
    }
    for port in ports:
        assert bound.get(port) == "0100007F", (port, bound.get(port))
    addresses = _other_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to connect through")
    for address in addresses:
        for port in ports:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    assert httpx.get(f"{status.url}/v1/models/iris-v1", trust_env=False).status_code == 200


def test_dead_predictor_is_reported_and_serving_again_recovers(
    backend: LocalBackend, v1_endpoint: Any, model_dir: Any
) -> None:
    directory, est = model_dir
    manifest = make_manifest("iris-v1", directory)
    first = v1_endpoint
    ep = Endpoint("iris-v1", backend=backend, retry_window=2.0)
    assert ep.predictions(ROWS) == est.predict(ROWS).tolist()

    record = read_record("iris-v1")
    assert record is not None
    os.kill(record.latest.predictor.pid, signal.SIGKILL)
    assert _wait_gone(record.latest.predictor.pid)

    started = time.monotonic()
    status = backend.get("iris-v1")
    assert time.monotonic() - started < 2  # a dead server is reported, not waited for
    assert not status.ready and status.reason == "ProcessExited"
    assert record.latest.predictor.log in (status.message or "")
    with pytest.raises(ServingError, match="'iris-v1' is not running: the predictor") as err:
        ep.predict(ROWS)
    assert "log" in str(err.value)
    assert time.monotonic() - started < 5
    dead = {s.name: s for s in backend.list()}["iris-v1"]
    assert not dead.ready and dead.reason == "ProcessExited"

    again = backend.apply(manifest, timeout=90)
    assert again.ready and again.url == first.url  # the router kept the URL
    assert ep.predictions(ROWS) == est.predict(ROWS).tolist()
