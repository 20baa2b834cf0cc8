"""Fast checks of the local backend's parts: manifests, the registry, payloads, names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kfp_serve.artifacts.errors import InvalidNameError
from kfp_serve.serving.backends.local import (
    LocalBackend,
    plan_manifest,
    resolve_storage,
    supervisor,
)
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
    read_record,
    registry_path,
    write_record,
)
from kfp_serve.serving.backends.local.supervisor import log_tail
from kfp_serve.serving.endpoint import response_predictions, v1_request, v2_request
from kfp_serve.serving.errors import ServingError
from tests.local.conftest import make_manifest


def test_plan_reads_the_builders_manifest(tmp_path: Path) -> None:
    manifest = make_manifest(
        "iris", tmp_path, protocol="v2", transformer=tmp_path, canary=20,
        env=[{"name": "PREDICT_PROBA", "value": "true"},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    )
    plan = plan_manifest(manifest)
    assert plan.name == "iris" and plan.protocol == "v2" and plan.canary_percent == 20
    assert plan.predictor.storage_uri == f"file://{tmp_path}"
    # The secret is not resolved; the runtime the manifest names reaches the server.
    assert plan.predictor.env == {
        "PREDICT_PROBA": "true",
        "KFP_SERVE_DATAPLANE": '{"serving_runtime": "kserve-sklearnserver"}',
    }
    assert plan.transformer is not None
    assert plan.transformer.storage_uri == f"file://{tmp_path}"
    assert plan.transformer.model_name == "iris"
    assert plan.transformer.predictor_protocol == "v2"
    assert "STORAGE_URI" not in plan.transformer.env
    assert plan.model_ids == {"model": "7", "transformer": "8"}


def test_canary_percentage_does_not_change_the_revision_identity(tmp_path: Path) -> None:
    a = plan_manifest(make_manifest("iris", tmp_path, canary=20))
    b = plan_manifest(make_manifest("iris", tmp_path))
    c = plan_manifest(make_manifest("iris", tmp_path, protocol="v2"))
    assert a.spec_hash == b.spec_hash != c.spec_hash


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({"kind": "Deployment"}, "InferenceService manifests"),
        ({"metadata": {"name": "iris"}, "spec": {}}, "no spec.predictor"),
        ({"metadata": {"name": "iris"}, "spec": {"predictor": {"containers": [{"image": "x"}]}}},
         "custom predictor images"),
        ({"metadata": {"name": "iris"}, "spec": {"predictor": {
            "canaryTrafficPercent": 150, "model": {"storageUri": "/m"}}}}, "0 to 100"),
        ({"metadata": {"name": "iris"}, "spec": {"predictor": {
            "model": {"storageUri": "/m", "protocolVersion": "grpc-v2"}}}}, "'v1' or 'v2'"),
    ],
    ids=["not-isvc", "no-predictor", "custom-image", "bad-canary", "bad-protocol"],
)
def test_plan_refuses_what_cannot_run_locally(manifest: dict[str, Any], match: str) -> None:
    with pytest.raises(ServingError, match=match):
        plan_manifest(manifest)


@pytest.mark.parametrize("name", ["../etc", "a;b", "a\nb", "UPPER", "", "x" * 64])
def test_names_are_validated_before_touching_the_filesystem(name: str) -> None:
    backend = LocalBackend(progress=False)
    with pytest.raises(InvalidNameError):
        backend.get(name)
    with pytest.raises(InvalidNameError):
        backend.delete(name)
    with pytest.raises(InvalidNameError):
        plan_manifest({"metadata": {"name": name}, "spec": {"predictor": {}}})


def test_storage_resolution(tmp_path: Path) -> None:
    assert resolve_storage(str(tmp_path)) == tmp_path.resolve()
    assert resolve_storage(f"file://{tmp_path}") == tmp_path.resolve()
    with pytest.raises(ServingError, match="does not exist|not a directory"):
        resolve_storage(f"file://{tmp_path}/missing")
    with pytest.raises(ServingError, match="gs://"):
        resolve_storage("gs://bucket/model")


def test_a_reused_pid_is_not_our_process() -> None:
    me = os.getpid()
    start = supervisor.start_time(me)
    assert start is not None
    assert ProcessRecord("predictor", me, start, 1, "").alive()
    impostor = ProcessRecord("predictor", me, start + 1, 1, "")
    assert not impostor.alive()
    supervisor.stop([impostor], grace=0.1)  # must not signal this (live, but other) process
    assert supervisor.start_time(me) == start
    assert supervisor.start_time(2**22 + 12345) is None


def _record(name: str) -> EndpointRecord:
    proc = ProcessRecord("predictor", 2**22 + 1, 1, 4242, "/tmp/p.log", name)
    rev = RevisionRecord(revision=1, created="t", manifest={"metadata": {"name": name}},
                         spec_hash="h", protocol="v1", model_name=name, predictor=proc,
                         model_ids={"model": "3"})
    return EndpointRecord(name=name, created="t", updated="t",
                          router=ProcessRecord("router", 2**22 + 2, 1, 4343, "/tmp/r.log"),
                          revisions=[rev], traffic={"1": 100})


def test_registry_round_trip_and_summary() -> None:
    record = _record("reg-test")
    write_record(record)
    data = json.loads(registry_path("reg-test").read_text())
    assert data["url"] == "http://127.0.0.1:4343"
    assert data["ports"] == {"router": 4343, "predictor-1": 4242}
    assert data["pids"] == {"router": 2**22 + 2, "predictor-1": 2**22 + 1}
    assert data["model_ids"] == {"model": "3"} and data["revision"] == 1
    again = read_record("reg-test")
    assert again is not None and again.to_dict() == record.to_dict()
    assert not list(registry_path("reg-test").parent.glob(".endpoint-*"))  # no temp leftovers


def test_dead_endpoint_is_reported_not_waited_for() -> None:
    write_record(_record("dead-test"))
    backend = LocalBackend(progress=False)
    status = backend.get("dead-test")
    assert not status.ready and status.reason == "ProcessExited"
    assert "dead-test" in (status.message or "") and "kfp-serve stop dead-test" in status.message
    assert "dead-test" in {s.name for s in backend.list()}
    backend.delete("dead-test")
    assert read_record("dead-test") is None
    with pytest.raises(ServingError, match="no local endpoint named 'dead-test'"):
        backend.delete("dead-test")


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, lines=2) == "line 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


def test_v1_and_v2_payloads() -> None:
    rows = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert v1_request(rows) == {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    assert v1_request(pd.DataFrame(rows, columns=["a", "b"])) == {
        "instances": [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]}
    body = v2_request(rows.astype(np.float32))
    assert body["inputs"][0] == {"name": "input-0", "shape": [2, 2], "datatype": "FP32",
                                 "data": [1.0, 2.0, 3.0, 4.0]}
    assert v2_request([[1, 2]])["inputs"][0]["datatype"] == "INT64"
    frame = v2_request(pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4]}))
    assert frame["parameters"] == {"content_type": "pd"}
    assert [(i["name"], i["datatype"], i["shape"]) for i in frame["inputs"]] == [
        ("a", "FP64", [2]), ("b", "INT64", [2])]


def test_response_predictions() -> None:
    assert response_predictions({"predictions": [1, 2]}) == [1, 2]
    v2 = {"outputs": [{"name": "o", "shape": [2, 3], "datatype": "FP64",
                       "data": [1, 2, 3, 4, 5, 6]}]}
    assert response_predictions(v2) == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ServingError, match="neither"):
        response_predictions({"oops": 1})


def test_snapshots_are_verified_before_serving(tmp_path: Path) -> None:
    from kfp_serve.artifacts.snapshots import SnapshotStore

    source = tmp_path / "model"
    source.mkdir()
    (source / "model.joblib").write_bytes(b"pretend model")
    snap = SnapshotStore().snapshot(source, progress=False)
    opened = resolve_storage(snap.uri)
    assert (opened / "model.joblib").read_bytes() == b"pretend model"

    target = opened / "model.joblib"
    os.chmod(target, 0o600)
    target.write_bytes(b"tampered")
    with pytest.raises(ServingError, match="cannot be served"):
        resolve_storage(snap.uri)
    with pytest.raises(ServingError, match="not a snapshot"):
        resolve_storage("s3://bucket/some/model")


def test_stopping_a_name_that_never_existed_says_where_it_looked_and_leaves_nothing() -> None:
    from kfp_serve.serving.backends.local.registry import endpoints_root

    backend = LocalBackend(progress=False)
    home = os.environ["KFP_SERVE_HOME"]
    with pytest.raises(ServingError, match=f"no local endpoint named 'never-was' to stop in "
                                           f"KFP_SERVE_HOME='{home}"):
        backend.delete("never-was")
    with pytest.raises(ServingError, match=f"KFP_SERVE_HOME='{home}"):
        backend.get("never-was")
    assert not any("never-was" in p.name for p in endpoints_root().iterdir())


def test_delete_all_stops_every_endpoint_and_the_pool() -> None:
    from kfp_serve.serving.runtime import warm_pool

    for name in ("all-a", "all-b"):
        write_record(_record(name))
    assert warm_pool.ensure_started(wait=True, timeout=60) is not None
    backend = LocalBackend(progress=False)
    assert {"all-a", "all-b"} <= set(backend.delete_all())
    assert backend.list() == []
    assert not warm_pool.socket_path().exists()
    assert backend.stop_pool() is False  # nothing left to stop


def test_the_router_reads_routes_through_the_registry() -> None:
    from kfp_serve.serving.backends.local.router import Routes

    record = _record("routes-test")
    canary = RevisionRecord(revision=2, created="t", manifest={}, spec_hash="h2", protocol="v1",
                            model_name="routes-test",
                            predictor=ProcessRecord("predictor", 2**22 + 3, 1, 4545, "/p2.log"),
                            transformer=ProcessRecord("transformer", 2**22 + 4, 1, 4646,
                                                      "/t2.log"))
    record.revisions.append(canary)
    record.traffic = {"1": 70, "2": 30}
    record.generation = 5
    write_record(record)
    routes = Routes("routes-test", str(registry_path("routes-test")))
    routes.refresh()
    assert routes.generation == 5 and routes.router_pid == record.router.pid
    # The transformer is the entry of a revision that has one.
    assert {(u.port, u.weight, u.role) for u in routes.upstreams} == {
        (4242, 70, "predictor"), (4646, 30, "transformer")
    }
    # An unreadable registry keeps the routes it had.
    registry_path("routes-test").write_text("{ half a file")
    routes.refresh()
    assert len(routes.upstreams) == 2
    LocalBackend(progress=False).delete("routes-test")


def test_serving_backends_come_from_one_registry() -> None:
    from kfp_serve.serving.backends import base

    assert isinstance(base.get_backend("local"), LocalBackend)
    with pytest.raises(ServingError, match="unknown serving backend 'nope'.*'kubernetes', 'local'"):
        base.get_backend("nope")

    class Recorder(LocalBackend):
        name = "recorder"

    base.register_backend("recorder", Recorder)
    try:
        assert type(base.get_backend("recorder")) is Recorder
        assert "recorder" in base.backend_names()
    finally:
        base.BACKENDS.unregister("recorder")
