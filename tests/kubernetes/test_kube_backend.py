"""KubernetesBackend over real HTTP against the API double (tests/kube_double)."""

from __future__ import annotations

import time

import pytest

from kfp_serve.serving.backends.base import get_backend
from kfp_serve.serving.backends.kubernetes import InferenceServiceNotReadyError, KubernetesBackend
from kfp_serve.serving.errors import ServingError
from tests.kserve_schema import SKIP_REASON, reference_available
from tests.kube_double import ISVC, PVC, VOLUME_SNAPSHOT
from tests.kube_double.manifests import isvc_manifest


def test_create_waits_for_ready(kube_double, backend, progress):
    kube_double.kserve.program(delay=0.3)
    started = time.monotonic()
    status = backend.apply(isvc_manifest(), timeout=10)
    assert time.monotonic() - started >= 0.3
    assert status.ready and status.backend == "kubernetes"
    assert status.namespace == "default"
    assert status.url == "http://iris.default.example.com"
    assert status.components["predictor"] == "http://iris-predictor.default.example.com"
    assert status.components["cluster-local"] == "http://iris.default.svc.cluster.local"
    assert status.manifest["status"]["observedGeneration"] == 1
    verbs = [c.verb for c in kube_double.calls_matching(resource="inferenceservices")]
    assert verbs[:2] == ["get", "create"] and "watch" in verbs
    create = kube_double.calls_matching(verb="create")[0]
    assert create.query["fieldValidation"] == "Strict"
    assert "iris" in progress.getvalue() and "Ready" in progress.getvalue()


def test_apply_without_wait_returns_at_once(kube_double, backend):
    kube_double.kserve.program(delay=5)
    status = backend.apply(isvc_manifest(), wait=False)
    assert not status.ready
    assert not kube_double.calls_matching(verb="watch")


def test_update_waits_for_the_new_generation(kube_double, backend):
    backend.apply(isvc_manifest(), timeout=10)
    # The controller first re-emits Ready=True of generation 1, then takes 0.6 s for generation 2.
    kube_double.kserve.program("iris", delay=0.6, progress=False, stale_ready=True)
    started = time.monotonic()
    status = backend.apply(isvc_manifest(storage_uri="gs://kfp-serve-test/iris-v2"), timeout=10)
    assert time.monotonic() - started >= 0.6
    assert status.ready
    assert status.manifest["metadata"]["generation"] == 2
    assert status.manifest["status"]["observedGeneration"] == 2
    assert len(kube_double.calls_matching(verb="patch")) == 1
    stored = kube_double.get(ISVC, "iris")
    assert stored["spec"]["predictor"]["model"]["storageUri"].endswith("iris-v2")


def test_reapplying_the_same_manifest_writes_nothing(kube_double, backend):
    backend.apply(isvc_manifest(), timeout=10)
    before = kube_double.get(ISVC, "iris")["metadata"]["resourceVersion"]
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.ready
    assert not kube_double.calls_matching(verb="patch")
    assert kube_double.get(ISVC, "iris")["metadata"]["resourceVersion"] == before


def test_update_removes_dropped_fields_and_own_labels_only(kube_double, backend):
    manifest = isvc_manifest(labels={"kfp-serve.kubeflow.org/transformer-id": "7", "team": "a"})
    manifest["spec"]["predictor"]["minReplicas"] = 2
    backend.apply(manifest, timeout=10)
    # Someone else labels it (kubectl, another controller): that label must survive our apply.
    kube_double.store.update(ISVC, "default", "iris", {
        **kube_double.get(ISVC, "iris"),
        "metadata": {**kube_double.get(ISVC, "iris")["metadata"],
                     "labels": {"kfp-serve.kubeflow.org/transformer-id": "7", "team": "a",
                                "owner": "ops"}},
    })
    backend.apply(isvc_manifest(labels={"team": "b"}), timeout=10)
    stored = kube_double.get(ISVC, "iris")
    assert "minReplicas" not in stored["spec"]["predictor"]
    assert stored["metadata"]["labels"] == {"team": "b", "owner": "ops"}


def test_conflict_while_applying_is_recomputed(kube_double, backend):
    backend.apply(isvc_manifest(), timeout=10)
    kube_double.faults.add(verb="patch", status=409, reason="Conflict", times=1)
    status = backend.apply(isvc_manifest(storage_uri="gs://kfp-serve-test/v3"), timeout=10)
    assert status.ready
    assert len(kube_double.calls_matching(verb="patch")) == 2


def test_conflicts_that_never_stop_are_reported_after_five_attempts(kube_double, backend):
    backend.apply(isvc_manifest(), timeout=10)
    kube_double.faults.add(verb="patch", status=409, reason="Conflict", times=None)
    with pytest.raises(ServingError, match=r"kept changing .* \(5 conflicts\): is another client"):
        backend.apply(isvc_manifest(storage_uri="gs://kfp-serve-test/v3"), timeout=10)
    assert len(kube_double.calls_matching(verb="patch")) == 5


def test_403_on_patch_is_reported_and_not_retried(kube_double, backend):
    backend.apply(isvc_manifest(), timeout=10)
    kube_double.faults.add(verb="patch", status=403, times=None)
    with pytest.raises(ServingError) as info:
        backend.apply(isvc_manifest(storage_uri="gs://kfp-serve-test/v2"), timeout=10)
    text = str(info.value)
    assert "403 Forbidden" in text and "cannot patch resource" in text
    assert "rbac.yaml" in text
    assert len(kube_double.calls_matching(verb="patch")) == 1


def test_403_on_create_is_reported(kube_double, backend):
    kube_double.faults.add(verb="create", status=403, times=None)
    with pytest.raises(ServingError, match="cannot create resource"):
        backend.apply(isvc_manifest(), timeout=10)
    assert len(kube_double.calls_matching(verb="create")) == 1


@pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
def test_invalid_manifest_is_422_with_the_server_message(kube_double, backend):
    manifest = isvc_manifest()
    manifest["spec"]["predictor"]["model"]["storageUrl"] = "gs://typo"
    with pytest.raises(ServingError) as info:
        backend.apply(manifest, timeout=10)
    assert "422 Invalid" in str(info.value) and "storageUrl" in str(info.value)
    assert len(kube_double.calls_matching(verb="create")) == 1


def test_terminal_ready_false_fails_fast_with_reason_and_message(kube_double, backend):
    kube_double.kserve.program(outcome="fail", delay=0.1, reason="RevisionFailed",
                               message="Container failed with: No module named 'sklearn'")
    started = time.monotonic()
    with pytest.raises(InferenceServiceNotReadyError) as info:
        backend.apply(isvc_manifest(), timeout=20)
    assert time.monotonic() - started < 5
    err = info.value
    assert not err.timed_out
    assert err.reason == "RevisionFailed"
    assert "No module named 'sklearn'" in err.message
    assert err.url == "http://iris-predictor.default.example.com"
    assert any(c["type"] == "PredictorReady" and c["status"] == "False" for c in err.conditions)
    text = str(err)
    assert "RevisionFailed" in text and "No module named 'sklearn'" in text
    assert "kubectl describe inferenceservice iris -n default" in text
    assert "kubectl logs" in text and "BlockedByFailedLoad" in text


def test_transient_ready_false_times_out_carrying_the_reason(kube_double, backend):
    kube_double.kserve.program(outcome="fail", delay=0.05, terminal=False,
                               reason="MinimumReplicasUnavailable",
                               message="Deployment does not have minimum availability.")
    started = time.monotonic()
    with pytest.raises(InferenceServiceNotReadyError) as info:
        backend.apply(isvc_manifest(), timeout=1.5)
    assert 1.4 <= time.monotonic() - started < 3.0
    assert info.value.timed_out
    assert info.value.reason == "MinimumReplicasUnavailable"
    assert "minimum availability" in str(info.value)


def test_watch_that_never_sees_ready_times_out_within_the_deadline(kube_double, backend):
    kube_double.kserve.program(outcome="never")
    started = time.monotonic()
    with pytest.raises(InferenceServiceNotReadyError, match="did not become Ready within 2s"):
        backend.apply(isvc_manifest(), timeout=2.0)
    assert time.monotonic() - started < 2.8


def test_watches_ended_by_the_server_are_resumed(kube_double, backend):
    kube_double.watch_cap = 0.2
    kube_double.kserve.program(delay=0.9)
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.ready
    assert len(kube_double.calls_matching(verb="watch")) >= 3


def test_watch_gone_410_and_5xx_resync(kube_double, backend):
    kube_double.kserve.program(delay=0.5)
    kube_double.faults.add(verb="watch", status=410, reason="Expired", times=1)
    kube_double.faults.add(verb="watch", status=503, times=1)
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.ready
    # Both failed watches were survived. Whether a third watch or the re-read after the second
    # failure sees Ready first depends on how long the backoff took (a loaded machine), so the
    # number of watches is not part of the contract.
    codes = [c.code for c in kube_double.calls_matching(verb="watch")]
    assert codes[:2] == [410, 503]



def test_an_api_failing_throughout_the_wait_ends_in_the_readiness_timeout(
    kube_double, backend, progress
):
    # Watches and re-reads fail from 0.3 s on: the wait keeps re-trying them, and what is
    # reported at the deadline is the InferenceService that is not Ready, not an API error.
    kube_double.watch_cap = 0.2
    kube_double.kserve.program(outcome="never")

    def break_the_api() -> None:
        kube_double.faults.add(verb="watch", resource="inferenceservices", status=503, times=None)
        kube_double.faults.add(verb="get", resource="inferenceservices", status=500, times=None)

    kube_double._scheduler.after(0.3, break_the_api)
    started = time.monotonic()
    with pytest.raises(InferenceServiceNotReadyError, match="did not become Ready within 2s"):
        backend.apply(isvc_manifest(), timeout=2.0)
    assert time.monotonic() - started < 2.8
    assert "re-reading the InferenceService" in progress.getvalue()
    assert any(c.code == 503 for c in kube_double.calls_matching(verb="watch"))

def test_not_found_right_after_ready_is_waited_out(kube_double, backend, monkeypatch):
    # kserve/kserve#1658: Ready, yet the model answers 404 for a moment. Through the ingress
    # (here the double itself, routing by Host header) apply waits until it answers.
    monkeypatch.setenv("KFP_SERVE_INGRESS", f"127.0.0.1:{kube_double.port}")
    kube_double.kserve.program(delay=0.1, not_found_after_ready=3)
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.ready and status.message is None
    assert status.url == f"http://127.0.0.1:{kube_double.port}"
    assert status.headers == {"Host": "iris.default.example.com"}
    codes = [code for _, _, code in kube_double.kserve.data_plane_requests]
    assert codes == [404, 404, 404, 200]


def _grpc_manifest() -> dict:
    manifest = isvc_manifest()
    model = manifest["spec"]["predictor"]["model"]
    model["protocolVersion"] = "v2"
    model["args"] = ["--enable_grpc=true"]
    model["ports"] = [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    return manifest


def test_grpc_address_follows_the_url_when_the_predictor_declares_h2c(
    kube_double, backend, monkeypatch
):
    assert backend.apply(isvc_manifest(), timeout=10).grpc_address is None  # REST only
    status = backend.apply(_grpc_manifest(), timeout=10)
    assert status.grpc_address == "iris.default.example.com:80"
    # Through an ingress gateway: its address, the service named by the :authority.
    monkeypatch.setenv("KFP_SERVE_INGRESS", f"127.0.0.1:{kube_double.port}")
    status = backend.get("iris")
    assert status.grpc_address == f"127.0.0.1:{kube_double.port}"
    assert status.headers == {"Host": "iris.default.example.com"}


def test_endpoint_that_never_answers_is_reported_not_raised(kube_double, backend, monkeypatch):
    monkeypatch.setenv("INGRESS_HOST", "127.0.0.1")
    monkeypatch.setenv("INGRESS_PORT", str(kube_double.port))
    backend.probe_timeout = 0.5
    kube_double.kserve.program(delay=0.05, not_found_after_ready=1000)
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.ready
    assert "did not answer 200" in status.message


def test_deleted_while_waiting(kube_double, backend):
    kube_double.kserve.program(outcome="never")
    kube_double._scheduler.after(0.3, lambda: kube_double.store.delete(ISVC, "default", "iris"))
    with pytest.raises(ServingError, match="was deleted while waiting"):
        backend.apply(isvc_manifest(), timeout=10)


def test_intermittent_5xx_and_timeouts_are_retried(kube_double, backend):
    backend.request_timeout = 0.4
    kube_double.kserve.program(delay=0.2)
    kube_double.faults.add(verb="get", status=500, times=2)
    kube_double.faults.add(verb="create", hang=1.0, times=1)  # the client times out first
    kube_double.faults.add(verb="create", status=503, times=1)
    status = backend.apply(isvc_manifest(), timeout=15)
    assert status.ready
    creates = kube_double.calls_matching(verb="create", resource="inferenceservices")
    assert [c.code for c in creates] == [-1, 503, 201]
    assert len(kube_double.calls_matching(verb="get")) >= 3


def test_persistent_5xx_gives_a_clear_error_within_the_deadline(kube_double, backend):
    kube_double.faults.add(verb="get", status=500, times=None)
    started = time.monotonic()
    with pytest.raises(ServingError) as info:
        backend.apply(isvc_manifest(), timeout=1.5)
    assert time.monotonic() - started < 2.5
    assert "500 InternalError" in str(info.value) and "attempt" in str(info.value)
    assert len(kube_double.calls_matching(verb="get")) >= 3


def test_namespace_from_the_kubeconfig_context(kube_double, tmp_path, monkeypatch):
    path = kube_double.write_kubeconfig(tmp_path / "config", namespace="team-a")
    backend = KubernetesBackend(kubeconfig=path, progress=False)
    assert backend.namespace == "team-a"
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.namespace == "team-a"
    assert kube_double.get(ISVC, "iris", "team-a")
    # Through $KUBECONFIG too (read when used, not when the client was imported).
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert KubernetesBackend(progress=False).namespace == "team-a"
    # A manifest's own namespace wins; a context without one means "default".
    other = kube_double.write_kubeconfig(tmp_path / "other", namespace=None)
    assert KubernetesBackend(kubeconfig=other, progress=False).namespace == "default"
    status = backend.apply(isvc_manifest(namespace="team-b"), timeout=10)
    assert status.namespace == "team-b"


def test_namespace_and_url_inside_a_pod(kube_double, inside_a_pod):
    inside_a_pod("pipelines")
    backend = KubernetesBackend(api_client=kube_double.api_client(), progress=False,
                                probe_timeout=0)
    assert backend.namespace == "pipelines"
    status = backend.apply(isvc_manifest(), timeout=10)
    assert status.url == "http://iris.pipelines.svc.cluster.local"  # cluster-local, no ingress
    assert status.headers == {}


def test_get_backend_picks_kubernetes(monkeypatch):
    monkeypatch.setenv("KFP_SERVE_BACKEND", "kubernetes")
    assert isinstance(get_backend(), KubernetesBackend)  # no cluster needed until it is used


def test_missing_kubeconfig_is_a_clear_error(tmp_path, monkeypatch):
    backend = KubernetesBackend(kubeconfig=tmp_path / "nope", progress=False)
    with pytest.raises(ServingError, match="KFP_SERVE_BACKEND=local"):
        backend.list()


def test_get_list_delete(kube_double, backend):
    backend.apply(isvc_manifest("iris"), timeout=10)
    backend.apply(isvc_manifest("wine"), wait=False)
    assert [s.name for s in backend.list()] == ["iris", "wine"]
    assert backend.get("iris").ready
    backend.delete("iris")
    assert [s.name for s in backend.list()] == ["wine"]
    with pytest.raises(ServingError, match="no InferenceService 'iris'"):
        backend.get("iris")
    with pytest.raises(ServingError, match="to delete"):
        backend.delete("iris")
    assert backend.list("elsewhere") == []


def test_pvc_snapshots_are_hydrated_before_apply(kube_double, backend):
    from kfp_serve.artifacts.snapshots.pvc import (
        hydrated_pvc_name,
        serving_storage_uri,
        volume_snapshot_name,
    )

    uri = "pvc://artifacts/models/blake3-" + "ab" * 32
    kube_double.seed(PVC, {"metadata": {"name": "artifacts"}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "csi-rbd",
        "resources": {"requests": {"storage": "5Gi"}}}})
    kube_double.seed(VOLUME_SNAPSHOT, {"metadata": {"name": volume_snapshot_name(uri)},
                                       "spec": {"source": {"persistentVolumeClaimName":
                                                           "artifacts"}}})
    time.sleep(0.2)  # the fake snapshotter makes it readyToUse
    manifest = isvc_manifest(storage_uri=serving_storage_uri(uri),
                             annotations={"kfp-serve.kubeflow.org/model-snapshot": uri})
    backend.apply(manifest, timeout=10)
    claim = kube_double.get(PVC, hydrated_pvc_name(uri))
    assert claim["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
        "name": volume_snapshot_name(uri)}
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "csi-rbd"
    assert serving_storage_uri(uri) == f"pvc://{hydrated_pvc_name(uri)}/models/blake3-{'ab' * 32}"
    # Idempotent: applying again finds the PVC (409) and goes on.
    backend.apply(manifest, timeout=10)
    assert len(kube_double.store.list(PVC, "default")[0]) == 2


def test_missing_volume_snapshot_is_a_clear_error(kube_double, backend):
    uri = "pvc://artifacts/models/blake3-" + "cd" * 32
    manifest = isvc_manifest(annotations={"kfp-serve.kubeflow.org/model-snapshot": uri})
    with pytest.raises(ServingError, match="does not exist in namespace 'default'"):
        backend.apply(manifest, timeout=10)
    assert not kube_double.calls_matching(resource="inferenceservices")


def test_wrong_kind_is_refused(backend):
    with pytest.raises(ServingError, match="applies serving.kserve.io/v1beta1"):
        backend.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
