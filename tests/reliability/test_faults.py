"""Faults: a predictor killed under load, a tampered snapshot, SIGKILL mid-snapshot, 8 MLMD
writer processes at once, and a Kubernetes API that keeps failing intermittently.

Covered elsewhere and not repeated here: a dead predictor found by ``get``/``list`` without load
(tests/local), SIGKILL mid-snapshot followed by a clean re-snapshot (tests/artifacts), tampering
of every kind at the store level (tests/artifacts), 5xx/timeouts that stop after a few requests
and 5xx on every GET (tests/kubernetes).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import SnapshotError, SnapshotStore
from kfp_serve.artifacts.snapshots.digest import tree_digest
from kfp_serve.serving.backends.base import get_backend
from kfp_serve.serving.backends.local.supervisor import start_time as process_start_time
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError
from tests.kube_double import ISVC
from tests.kube_double.fixtures import kube_double, kubeconfig  # noqa: F401
from tests.kube_double.manifests import isvc_manifest
from tests.processes import processes_mentioning
from tests.reliability.conftest import Trained, server_pids

CLI = str(Path(sys.executable).with_name("kfp-serve"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``kfp-serve`` in this environment, wide enough not to fold its tables."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while process_start_time(pid) is not None:
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.02)


# ------------------------------------------------------------------ predictor killed under load

KILL_ENDPOINT = "iris-kill"
LOAD_THREADS = 8


@pytest.fixture
def kill_endpoint(trained: Trained):
    from kfp_serve import serving
    endpoint = serving.serve(
        trained.model_id, trained.transformer_id, name=KILL_ENDPOINT, timeout=120
    )
    yield endpoint
    endpoint.close()
    backend = get_backend()
    if KILL_ENDPOINT in {s.name for s in backend.list()}:
        backend.delete(KILL_ENDPOINT)


def test_predictor_killed_mid_load_is_reported_and_serving_again_recovers(
    trained: Trained, kill_endpoint: Endpoint
) -> None:
    from kfp_serve import serving
    rows = trained.X[::30].tolist()
    expected = trained.expected(rows)
    killed_at: list[float] = []
    outcomes: list[tuple[str, float, str]] = []  # (kind, when, detail) per thread
    answered = [0] * LOAD_THREADS
    #: Seconds from the start of the load to each client's first answer (None: none yet).
    first_answer: list[float | None] = [None] * LOAD_THREADS
    began = time.monotonic()
    stop = began + 40.0  # bounded whatever happens

    def client(i: int) -> None:
        ep = Endpoint(KILL_ENDPOINT, retry_window=2.0, timeout=10.0)
        try:
            while time.monotonic() < stop:
                try:
                    got = ep.predictions(rows)
                except ServingError as e:
                    outcomes.append(("error", time.monotonic(), str(e)))
                    return
                if got != expected:
                    outcomes.append(("wrong", time.monotonic(), repr(got)))
                    return
                if first_answer[i] is None:
                    first_answer[i] = time.monotonic() - began
                answered[i] += 1
            outcomes.append(("still-running", time.monotonic(), ""))
        finally:
            ep.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    # Kill the predictor mid-flight, once EVERY client has had its first answer (a client
    # thread that starts late on a loaded machine must not count as starved) and the load
    # has run a little; bounded, so a client that is never served fails the test.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (
        all(n >= 2 for n in answered) and sum(answered) >= 4 * LOAD_THREADS
    ):
        time.sleep(0.05)
    waits = ", ".join("-" if t is None else f"{t:.2f}" for t in first_answer)
    assert all(answered), (
        f"not every client was served within 15 s: answers {answered}, first answer after "
        f"[{waits}] s"
    )
    predictor = server_pids(KILL_ENDPOINT)["predictor"]
    os.kill(predictor, signal.SIGKILL)
    killed_at.append(time.monotonic())
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)

    # Every client stopped with a clear ServingError soon after the kill, none before it.
    assert len(outcomes) == LOAD_THREADS, outcomes
    for kind, when, detail in outcomes:
        assert kind == "error", (kind, detail)
        assert when > killed_at[0], detail
        assert when - killed_at[0] < 10, f"took {when - killed_at[0]:.1f} s: {detail}"
        assert f"endpoint {KILL_ENDPOINT!r} is not running" in detail, detail
        assert "predictor" in detail and "has exited" in detail, detail
        assert "kfp-serve endpoints" in detail, detail  # says what to do next
    # A new client sees the same, at once.
    started = time.monotonic()
    with pytest.raises(ServingError, match="is not running: the predictor"):
        Endpoint(KILL_ENDPOINT, retry_window=2.0).predict(rows)
    assert time.monotonic() - started < 5

    # `kfp-serve endpoints` shows it dead, with the reason.
    listing = run_cli("endpoints")
    assert listing.returncode == 0, listing.stderr
    row = _row(listing.stdout, KILL_ENDPOINT)
    assert "dead" in row.split() and "predictor" in row and "has exited" in row, listing.stdout

    # Serving again brings it back on the same URL; the old clients' URL works again.
    url = kill_endpoint.url
    again = serving.serve(
        trained.model_id, trained.transformer_id, name=KILL_ENDPOINT, timeout=120
    )
    assert again.url == url
    assert again.predictions(rows) == expected
    assert kill_endpoint.predictions(rows) == expected
    listing = run_cli("endpoints")
    row = _row(listing.stdout, KILL_ENDPOINT)
    assert "ready" in row.split() and "dead" not in row.split(), listing.stdout


def _row(table: str, name: str) -> str:
    """The cells of the table row of endpoint ``name``, wrapped lines joined."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if f" {name} " in line)
    row = [lines[start]]
    for line in lines[start + 1 :]:
        first_cell = line.split("│")[1].strip() if line.count("│") > 2 else "?"
        if first_cell:  # the next row (or the table's bottom border)
            break
        row.append(line)
    return " ".join(cell.strip() for line in row for cell in line.split("│") if cell.strip())


# -------------------------------------------------------------- tampered snapshot, refused


@pytest.mark.parametrize("which", ["model", "transformer"])
def test_tampered_snapshot_is_refused_before_any_server_starts(
    trained: Trained, which: str, tmp_path: Path
) -> None:
    """A snapshot edited after it was taken is refused by serve(); nothing runs, nothing is
    recorded as deployed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    from kfp_serve import serving
    X = trained.X
    y = trained.expected(X.tolist())
    # Distinct content, so its snapshots are its own (snapshots are deduplicated by content).
    model_id = artifacts.Model(
        model=LogisticRegression(C=0.3, max_iter=300).fit(X, y),
        name=f"iris-tamper-{which}",
        version="1.0.0",
    ).submit_artifact()
    transformer_id = artifacts.Transformer(
        name=f"iris-tamper-{which}-scaler", transformer=MinMaxScaler().fit(X)
    ).submit_artifact()
    victim = model_id if which == "model" else transformer_id
    snap = artifacts.snapshot_artifact(victim)
    stored = SnapshotStore().open(snap.uri)
    target = next(p for p in stored.iterdir() if p.suffix == ".joblib")
    target.chmod(0o644)
    with open(target, "ab") as f:
        f.write(b"\x00evil")

    name = f"tampered-{which}"
    before = set(processes_mentioning(name))
    started = time.monotonic()
    with pytest.raises(ServingError) as info:
        serving.serve(model_id, transformer_id, name=name, timeout=60)
    message = str(info.value)
    assert time.monotonic() - started < 30
    assert snap.uri in message and "failed verification" in message, message
    assert target.name in message and "refusing" in message, message
    # No server was started for it, none is listed, no deployment was recorded.
    assert set(processes_mentioning(name)) == before
    assert name not in {s.name for s in get_backend().list()}
    assert artifacts.lineage(model_id)["deployments"] == []
    listing = run_cli("endpoints")
    assert name not in listing.stdout


# --------------------------------------------------------- SIGKILL during a snapshot: clean store

SNAPSHOT_WORKER = textwrap.dedent(
    """
    import sys
    from kfp_serve.artifacts import SnapshotStore
    SnapshotStore(sys.argv[1]).snapshot(sys.argv[2], progress=False)
    print("done", flush=True)
    """
)


def test_sigkill_during_a_snapshot_leaves_the_store_verifying_clean(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = SnapshotStore(str(root))
    earlier_tree = tmp_path / "earlier"
    earlier_tree.mkdir()
    (earlier_tree / "model.joblib").write_bytes(os.urandom(4096))
    earlier = store.snapshot(earlier_tree, progress=False)

    tree = tmp_path / "big"
    tree.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(120):  # 120 MiB: long enough to be caught mid-copy
        (tree / f"part-{i:03d}.bin").write_bytes(chunk[i:] + chunk[:i])
    digest, size = tree_digest(tree)
    would_be = f"file://{root}/blake3-{digest.removeprefix('blake3:')}"
    script = tmp_path / "worker.py"
    script.write_text(SNAPSHOT_WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(tree)], stdout=subprocess.PIPE
    )
    tmp_root = root / ".tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if tmp_root.is_dir() and len(list(tmp_root.glob("*/part-*"))) >= 3:
            break
        assert proc.poll() is None, "the snapshot finished before it could be killed"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert b"done" not in proc.stdout.read()

    # Only the earlier snapshot is visible, and every visible snapshot verifies.
    visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert visible == [earlier.uri.rsplit("/", 1)[-1]]
    for name in visible:
        store.verify(f"file://{root}/{name}")
    assert store.verify(earlier.uri).digest == earlier.digest
    # A reader of the interrupted snapshot is told it does not exist, not handed half of it.
    assert not store.exists(would_be)
    with pytest.raises(SnapshotError, match="does not exist"):
        store.open(would_be)
    with pytest.raises(SnapshotError, match="does not exist"):
        store.restore(would_be, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    # Taking it again completes, sweeps the dead work directory, and verifies.
    snap = store.snapshot(tree, progress=False)
    assert snap.uri == would_be and store.verify(snap.uri).size == size
    assert list(tmp_root.iterdir()) == []


# ------------------------------------------------------------------ 8 concurrent MLMD writers

WRITERS = 8
PER_WRITER = 12
MLMD_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from sklearn.dummy import DummyClassifier
    from kfp_serve import artifacts
    worker, count, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    model = DummyClassifier().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    artifacts.metadata_store()  # connect before the start signal
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not go.exists():  # start together: the writes really overlap
        assert time.monotonic() < deadline
        time.sleep(0.005)
    for i in range(count):
        model_id = artifacts.Model(
            model=model, name=f"writer{worker}-m{i}", version=f"1.{i}.0",
            tags={"worker": str(worker), "i": str(i)},
        ).submit_artifact()
        artifacts.record_deployment(f"ep-{worker}-{i}", None, model_id, url=f"http://w{worker}/{i}")
    print("ok", flush=True)
    """
)


def test_eight_concurrent_mlmd_writer_processes_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    script = tmp_path / "writer.py"
    script.write_text(MLMD_WORKER)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(w), str(PER_WRITER), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    try:
        for p in procs:  # every writer is up and connected ...
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()  # ... then all write at once
        for p in procs:
            out, err = p.communicate(timeout=150)
            assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    records = artifacts.list_artifacts(kind="model")
    assert len(records) == WRITERS * PER_WRITER
    assert len({r.id for r in records}) == len(records)
    assert {(r.name, r.version) for r in records} == {
        (f"writer{w}-m{i}", f"1.{i}.0") for w in range(WRITERS) for i in range(PER_WRITER)
    }
    for r in records:
        assert r.tags == {"worker": r.name[6], "i": r.version.split(".")[1]}, r
        assert Path(r.uri, "model.joblib").is_file()
        # Each artifact has exactly its own deployment; none was lost or cross-linked.
        (deployment,) = artifacts.lineage(r.id)["deployments"]
        w, i = r.tags["worker"], r.tags["i"]
        assert deployment["endpoint"] == f"ep-{w}-{i}"
        assert deployment["url"] == f"http://w{w}/{i}"


# ----------------------------------------------- Kubernetes API failing intermittently, for good


@pytest.fixture
def kube_backend(kube_double, kubeconfig, monkeypatch):  # noqa: F811
    from kfp_serve.serving.backends import kubernetes as kb

    monkeypatch.delenv("KFP_SERVE_INGRESS", raising=False)
    monkeypatch.delenv("INGRESS_HOST", raising=False)
    monkeypatch.setattr(kb, "running_in_pod", lambda: False)
    return kb.KubernetesBackend(kubeconfig=kubeconfig, progress=io.StringIO(), request_timeout=0.5)


def test_intermittent_500s_and_hangs_on_every_call_are_retried_to_ready(
    kube_double, kube_backend  # noqa: F811
) -> None:
    """Every other read, create and watch fails (500/503, or a hang past the request timeout),
    for the whole apply: it still gets to Ready, within its deadline."""
    kube_double.kserve.program(delay=0.5)
    kube_double.faults.add(verb="watch", hang=1.0, times=1)
    for verb, status in (("get", 500), ("create", 503), ("watch", 500)):
        kube_double.faults.add(verb=verb, status=status, every=2, times=None)
    started = time.monotonic()
    status = kube_backend.apply(isvc_manifest("flaky"), timeout=20)
    elapsed = time.monotonic() - started
    assert status.ready and elapsed < 20
    codes = [c.code for c in kube_double.calls if c.resource == "inferenceservices"]
    assert 500 in codes and 503 in codes and -1 in codes, codes  # all three kinds happened
    assert kube_double.get(ISVC, "flaky")["metadata"]["generation"] == 1


def test_faults_that_never_stop_fail_within_the_deadline_with_a_clear_error(
    kube_double, kube_backend  # noqa: F811
) -> None:
    """The object is created, then every watch fails and every other read hangs or fails, and
    the controller never reports Ready: apply gives up at its deadline and says why."""
    kube_double.kserve.program(outcome="never")
    kube_double.faults.add(verb="watch", status=500, times=None)
    kube_double.faults.add(verb="get", status=503, every=2, times=None)
    kube_double.faults.add(verb="get", hang=1.0, every=2, times=None)
    timeout = 3.0
    started = time.monotonic()
    with pytest.raises(ServingError) as info:
        kube_backend.apply(isvc_manifest("doomed"), timeout=timeout)
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 1.5, elapsed
    message = str(info.value)
    assert "'doomed'" in message and "did not become Ready within 3s" in message, message
    assert "kubectl describe inferenceservice doomed" in message, message
    # It got past the failing reads to create the object, then kept retrying while waiting.
    assert kube_double.get(ISVC, "doomed")["metadata"]["name"] == "doomed"
    assert kube_double.calls_matching(verb="watch")
    gets = kube_double.calls_matching(verb="get")
    assert len(gets) >= 4 and {503, -1} <= {c.code for c in gets}, [c.code for c in gets]
