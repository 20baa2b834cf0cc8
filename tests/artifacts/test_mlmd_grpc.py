"""Faults on the way to MLMD's gRPC service: not started yet, killed mid-run (before and after
a commit), hung, answering ABORTED. The service is MLMD's own store in a server process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import MetadataError, Model
from kfp_serve.artifacts.mlmd import (
    MLMD_ENV,
    RETRY_DEADLINE_ENV,
    SUBMIT_EXECUTION,
    TIMEOUT_ENV,
    open_store,
)
from tests.mlmd_grpc.fixtures import MlmdGrpcServer, free_port
from tests.mlmd_grpc.server import CRASH_EXIT


def submit_executions(uri: str) -> list:
    """Every SubmitArtifact execution in the store at ``uri``."""
    return open_store(uri).raw.get_executions_by_type(SUBMIT_EXECUTION)


def test_service_that_starts_late_is_waited_for(home: Path, classifier, monkeypatch) -> None:
    server = MlmdGrpcServer(home / "mlmd.sqlite", port=free_port())
    monkeypatch.setenv(MLMD_ENV, server.uri)
    starter = threading.Timer(1.5, server.start)  # a pod's MLMD service still starting
    starter.start()
    try:
        model_id = Model(model=classifier, name="iris").submit_artifact()
        assert artifacts.get_artifact(model_id).name == "iris"
    finally:
        starter.join()
        server.stop()


def test_service_never_started_fails_naming_the_address_and_the_settings(
    home: Path, classifier, monkeypatch
) -> None:
    port = free_port()
    monkeypatch.setenv("METADATA_GRPC_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("METADATA_GRPC_SERVICE_PORT", str(port))
    monkeypatch.setenv(RETRY_DEADLINE_ENV, "1.5")
    start = time.monotonic()
    with pytest.raises(MetadataError) as err:
        Model(model=classifier, name="iris").submit_artifact()
    message = str(err.value)
    assert f"127.0.0.1:{port} is unreachable" in message
    assert "METADATA_GRPC_SERVICE_HOST/METADATA_GRPC_SERVICE_PORT" in message
    assert f"for 1.5 s ({RETRY_DEADLINE_ENV})" in message
    # The configured deadline was used, not the 60 s default.
    assert time.monotonic() - start < 30


def test_hung_service_fails_within_the_configured_timeout(
    home: Path, classifier, monkeypatch, start_mlmd_grpc: Callable[..., MlmdGrpcServer]
) -> None:
    server = start_mlmd_grpc(db=home / "mlmd.sqlite", faults=["PutExecution:hang"])
    monkeypatch.setenv(MLMD_ENV, server.uri)
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    start = time.monotonic()
    with pytest.raises(
        MetadataError, match=rf"did not answer put_execution within 1 s \({TIMEOUT_ENV}\)"
    ):
        Model(model=classifier, name="iris").submit_artifact()
    assert time.monotonic() - start < 30  # 1 s, not the 30 s default nor forever
    assert artifacts.list_artifacts() == []  # the hung call wrote nothing


def test_aborted_transactions_are_retried_as_mlmds_client_does(
    home: Path, classifier, monkeypatch, start_mlmd_grpc: Callable[..., MlmdGrpcServer]
) -> None:
    server = start_mlmd_grpc(db=home / "mlmd.sqlite", faults=["PutExecution:abort:2"])
    monkeypatch.setenv(MLMD_ENV, server.uri)
    model_id = Model(model=classifier, name="iris").submit_artifact()
    [record] = artifacts.list_artifacts()
    assert record.id == model_id
    assert len(submit_executions(server.uri)) == 1


def test_answer_lost_after_commit_is_recognised_on_retry_not_duplicated(
    home: Path, classifier, monkeypatch, start_mlmd_grpc: Callable[..., MlmdGrpcServer]
) -> None:
    """The service commits the submission and dies before answering; once it is back, the
    client's retry finds its own write (by the execution's unique name)."""
    db = home / "mlmd.sqlite"
    server = start_mlmd_grpc(db=db, faults=["PutExecution:crash:1"])
    monkeypatch.setenv(MLMD_ENV, server.uri)
    result: list = []
    submitter = threading.Thread(
        target=lambda: result.append(Model(model=classifier, name="iris").submit_artifact())
    )
    submitter.start()
    assert server.wait_exited() == CRASH_EXIT
    # While the service is down, the file shows the committed submission: one artifact.
    [committed] = artifacts.list_artifacts(store=open_store(f"sqlite://{db}"))
    server.start(faults=[])
    submitter.join(timeout=120)
    assert result == [committed.id]
    assert [r.id for r in artifacts.list_artifacts()] == [committed.id]
    assert len(submit_executions(server.uri)) == 1
    assert artifacts.lineage(committed.id)["produced_by"]["step"] == "submit_artifact"


KILLED_WORKER = textwrap.dedent(
    """
    import sys
    from sklearn.dummy import DummyClassifier
    from kfp_serve import artifacts
    model = DummyClassifier().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    for i in range(int(sys.argv[1])):
        artifacts.Model(model=model, name=f"m{i}", tags={"i": str(i)}).submit_artifact()
    """
)


def whole_records(store) -> list:
    """The store's models, after checking that each is whole: produced by exactly one submit
    execution (OUTPUT event) attached to its run and experiment, and no execution without one."""
    records = artifacts.list_artifacts(store=store)
    executions = store.raw.get_executions_by_type(SUBMIT_EXECUTION)
    events = store.get_events_by_execution_ids([x.id for x in executions])
    outputs = [e.artifact_id for e in events if e.type == store.pb.Event.OUTPUT]
    assert sorted(outputs) == sorted(r.id for r in records)  # one each, none dangling
    for x in executions:
        assert {c.type for c in store.get_contexts_by_execution(x.id)} == {
            "kfp_serve.Experiment",
            "kfp_serve.PipelineRun",
        }
    return records


def test_service_killed_mid_run_leaves_whole_records_and_no_duplicates(
    home: Path, tmp_path: Path, monkeypatch, start_mlmd_grpc: Callable[..., MlmdGrpcServer]
) -> None:
    count = 100
    db = home / "mlmd.sqlite"
    server = start_mlmd_grpc(db=db)
    monkeypatch.setenv(MLMD_ENV, server.uri)
    script = tmp_path / "worker.py"
    script.write_text(KILLED_WORKER)
    worker = subprocess.Popen(
        [sys.executable, str(script), str(count)], stderr=subprocess.PIPE, text=True
    )
    try:
        store = open_store(server.uri)
        seen = 0
        while seen < count // 3 and worker.poll() is None:
            seen = len(store.get_artifacts("state = LIVE"))
            time.sleep(0.05)
        server.kill()  # SIGKILL mid-run, whatever call is in flight
        # What the file holds at the kill, read while the service is down: whole records only.
        at_kill = whole_records(open_store(f"sqlite://{db}"))
        time.sleep(1.0)  # the worker keeps retrying meanwhile
        server.start()
        _, err = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err[-2000:]
    assert 0 < len(at_kill) < count
    records = whole_records(open_store(server.uri))
    assert sorted(int(r.tags["i"]) for r in records) == list(range(count))


def test_version_recorded_by_another_writer_meanwhile_is_refused_clearly(
    home: Path, monkeypatch, start_mlmd_grpc: Callable[..., MlmdGrpcServer]
) -> None:
    """Writers on two machines share no lock: the service's unique names decide, and the loser
    hears which version it lost, not a raw ALREADY_EXISTS."""
    from kfp_serve.artifacts.records import Submission, record_submission

    server = start_mlmd_grpc(db=home / "mlmd.sqlite")
    monkeypatch.setenv(MLMD_ENV, server.uri)
    rival = open_store(server.uri)  # the other machine's connection

    def place(_replacing: bool) -> str:
        # Between our duplicate check and our write, the rival records the same version.
        record_submission(Submission("model", "iris", "1.0.0", {}), lambda _: "/rival", store=rival)
        return "/ours"

    with pytest.raises(MetadataError, match=r"'iris' version '1.0.0' was just recorded by another"):
        record_submission(Submission("model", "iris", "1.0.0", {}), place)
    [record] = artifacts.list_artifacts()
    assert record.uri == "/rival"
    assert len(submit_executions(server.uri)) == 1
