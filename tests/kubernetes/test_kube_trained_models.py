"""KubernetesBackend hosts many models behind one endpoint as KServe TrainedModels (API double)."""

from __future__ import annotations

import time

import pytest

from kfp_serve.serving import admission
from kfp_serve.serving.backends.base import REASON_MEMORY_UNAVAILABLE
from kfp_serve.serving.backends.kubernetes import TrainedModelNotReadyError
from kfp_serve.serving.errors import ServeConfigError, ServingError
from kfp_serve.serving.trained_model import parent_inference_service, trained_model_manifest
from tests.kserve_schema import SKIP_REASON, reference_available
from tests.kube_double import ISVC, TRAINED_MODEL

pytestmark = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)


def _parent(name: str = "fleet", memory: str = "1Gi", framework: str = "sklearn") -> dict:
    return parent_inference_service(name, framework, serve_config={"limits": {"memory": memory}})


def _model(name: str, memory: str = "256Mi", parent: str = "fleet", **kw) -> dict:
    kw.setdefault("storage_uri", f"gs://kfp-serve-test/{name}")
    kw.setdefault("framework", "sklearn")
    return trained_model_manifest(name, parent, memory=memory, **kw)


@pytest.fixture
def fleet(backend):
    """A Ready multi-model endpoint "fleet" (1Gi) on the double."""
    backend.apply(_parent(), timeout=10)
    return backend


def test_a_model_is_applied_strictly_and_awaited(kube_double, fleet, progress):
    status = fleet.apply_trained_model(_model("north"), timeout=10)
    assert status.ready and status.reason is None
    assert (status.name, status.parent, status.namespace) == ("north", "fleet", "default")
    assert (status.framework, status.memory) == ("sklearn", "256Mi")
    assert status.storage_uri == "gs://kfp-serve-test/north"
    assert status.url == "http://fleet.default.example.com/v1/models/north:predict"
    calls = kube_double.calls_matching(resource="trainedmodels")
    assert [c.verb for c in calls][:2] == ["get", "create"] and "watch" in [c.verb for c in calls]
    assert kube_double.calls_matching(verb="create", resource="trainedmodels")[0].query[
        "fieldValidation"] == "Strict"
    stored = kube_double.get(TRAINED_MODEL, "north")
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kfp-serve"
    assert "TrainedModel 'north' is Ready on 'fleet'" in progress.getvalue()


def test_waits_for_the_parent_to_become_ready(kube_double, backend):
    kube_double.kserve.program(delay=0.5)
    backend.apply(_parent(), wait=False)
    status = backend.apply_trained_model(_model("north"), timeout=10)
    assert status.ready
    assert kube_double.get(ISVC, "fleet")["status"]["conditions"][-1]["status"] == "True"


def test_reapply_writes_nothing_and_an_update_patches_once(kube_double, fleet):
    fleet.apply_trained_model(_model("north"), timeout=10)
    before = kube_double.get(TRAINED_MODEL, "north")["metadata"]["resourceVersion"]
    assert fleet.apply_trained_model(_model("north"), timeout=10).ready
    assert kube_double.get(TRAINED_MODEL, "north")["metadata"]["resourceVersion"] == before
    assert not kube_double.calls_matching(verb="patch", resource="trainedmodels")
    status = fleet.apply_trained_model(
        _model("north", storage_uri="gs://kfp-serve-test/north-v2"), timeout=10)
    assert status.ready and status.storage_uri.endswith("north-v2")
    assert len(kube_double.calls_matching(verb="patch", resource="trainedmodels")) == 1
    stored = kube_double.get(TRAINED_MODEL, "north")
    assert stored["metadata"]["generation"] == 2
    # The controller's labels and finalizer survive kfp-serve's apply.
    assert stored["metadata"]["labels"]["inferenceservice"] == "fleet"
    assert stored["metadata"]["finalizers"] == ["trainedmodel.finalizer"]


def test_memory_past_the_limit_is_refused_with_the_numbers(fleet):
    fleet.apply_trained_model(_model("north", memory="600Mi"), timeout=10)
    with pytest.raises(TrainedModelNotReadyError) as info:
        fleet.apply_trained_model(_model("south", memory="500Mi"), timeout=10)
    error = info.value
    assert not error.timed_out and error.status.reason == REASON_MEMORY_UNAVAILABLE
    text = str(error)
    assert "declares 500Mi" in text and "memory limit of 1Gi" in text
    assert "already declare 600Mi (north: 600Mi)" in text and "424Mi is free" in text
    # The model that fits keeps serving; the refused one is listed with its reason.
    models = {m.name: m for m in fleet.list_trained_models("fleet")}
    assert models["north"].ready
    assert not models["south"].ready and models["south"].reason == REASON_MEMORY_UNAVAILABLE


def test_what_the_webhook_refuses_is_refused_before_it_is_sent(kube_double, fleet):
    fleet.apply(_parent("other"), timeout=10)
    with pytest.raises(ServeConfigError) as info:
        fleet.apply_trained_model(_model("south", storage_uri="pvc://models/south"), timeout=10)
    assert "tm-storage-uri" in str(info.value) and "KFP_SERVE_SNAPSHOT_STORE=s3://" in str(
        info.value)
    assert not kube_double.calls_matching(name="south")


def test_other_memory_replaces_the_trained_model(kube_double, fleet, progress):
    """KServe's webhook refuses a memory change; the model is deleted and created anew."""
    fleet.apply_trained_model(_model("north", memory="256Mi"), timeout=10)
    before = kube_double.get(TRAINED_MODEL, "north")["metadata"]["uid"]
    status = fleet.apply_trained_model(_model("north", memory="128Mi"), timeout=10)
    assert status.ready and status.memory == "128Mi"
    after = kube_double.get(TRAINED_MODEL, "north")["metadata"]
    assert after["uid"] != before and after["generation"] == 1
    assert not kube_double.calls_matching(verb="patch", resource="trainedmodels")
    assert "now declares 128Mi instead of 256Mi" in progress.getvalue()
    # The same quantity written another way is no change at all.
    fleet.apply_trained_model(_model("north", memory="0.125Gi"), timeout=10)
    assert kube_double.get(TRAINED_MODEL, "north")["metadata"]["uid"] == after["uid"]


def test_a_webhook_denial_is_surfaced_with_its_message(kube_double, fleet):
    bad = trained_model_manifest("north", "fleet", storage_uri="pvc://models/north",
                                 framework="sklearn", memory="64Mi")
    violation = admission.evaluate(bad, kind=admission.TM_KIND)[0]
    code, reason, message = admission.denial(admission.TM_KIND, violation)
    # A cluster whose webhook refuses what the client-side rules let through.
    kube_double.faults.add(verb="create", resource="trainedmodels", status=code, reason=reason,
                           message=message)
    with pytest.raises(ServingError) as info:
        fleet.apply_trained_model(_model("north"), timeout=10)
    text = str(info.value)
    assert "refused to create TrainedModel 'north'" in text
    assert 'admission webhook "trainedmodel.kserve-webhook-server.validator" denied' in text
    assert "KServe's validating webhook refused the TrainedModel" in text
    assert "RBAC" not in text


def test_the_parent_is_checked_before_anything_is_written(kube_double, backend):
    with pytest.raises(ServingError, match="parent InferenceService 'fleet' does not exist"):
        backend.apply_trained_model(_model("north"), timeout=10)
    backend.apply(parent_inference_service("boosters", "xgboost"), timeout=10)
    with pytest.raises(ServingError, match="FrameworkNotSupported.*runs a xgboost server"):
        backend.apply_trained_model(_model("north", parent="boosters"), timeout=10)
    kube_double.kserve.program(delay=0.01)
    from tests.kube_double.manifests import isvc_manifest

    backend.apply(isvc_manifest("single"), timeout=10)
    with pytest.raises(ServingError, match="'single' serves one model"):
        backend.apply_trained_model(_model("north", parent="single"), timeout=10)
    assert not kube_double.calls_matching(verb="create", resource="trainedmodels")


def test_a_name_another_endpoint_uses_is_not_taken_over(kube_double, fleet):
    fleet.apply(_parent("other"), timeout=10)
    fleet.apply_trained_model(_model("north", parent="other"), timeout=10)
    with pytest.raises(ServingError, match="hosted by InferenceService 'other'"):
        fleet.apply_trained_model(_model("north"), timeout=10)
    assert kube_double.get(TRAINED_MODEL, "north")["spec"]["inferenceService"] == "other"


def test_unknown_fields_are_refused_by_strict_validation(fleet):
    manifest = _model("north")
    manifest["spec"]["model"]["memroy"] = "1Gi"
    with pytest.raises(ServingError, match="422 Invalid.*unknown field.*memroy"):
        fleet.apply_trained_model(manifest, timeout=10)


def test_remove_waits_until_the_finalizer_ran(kube_double, fleet):
    fleet.apply_trained_model(_model("north"), timeout=10)
    fleet.apply_trained_model(_model("south"), timeout=10)
    kube_double.trained_models.program(delay=0.3)  # the finalizer takes a while
    started = time.monotonic()
    fleet.delete_trained_model("north")
    assert time.monotonic() - started >= 0.3
    assert [m.name for m in fleet.list_trained_models("fleet")] == ["south"]
    with pytest.raises(ServingError, match="no TrainedModel 'north'"):
        fleet.delete_trained_model("north")



def test_server_errors_during_the_removal_wait_do_not_end_it(kube_double, fleet):
    fleet.apply_trained_model(_model("north"), timeout=10)
    fleet.apply_trained_model(_model("south"), timeout=10)
    kube_double.trained_models.program(delay=1.0)  # the finalizer takes a while
    reads = kube_double.faults.add(verb="get", resource="trainedmodels", status=500, times=2)
    watches = kube_double.faults.add(verb="watch", resource="trainedmodels", status=503,
                                     times=2)
    started = time.monotonic()
    fleet.delete_trained_model("north", timeout=10)
    assert time.monotonic() - started >= 1.0
    assert [m.name for m in fleet.list_trained_models("fleet")] == ["south"]
    # Both failed reads were retried, and the wait went on after a failed watch (a second one
    # fails too unless the finalizer ran first on a slow machine).
    assert reads.fired == 2 and watches.fired >= 1

def test_describe_lists_the_hosted_models(fleet):
    fleet.apply_trained_model(_model("north", memory="128Mi"), timeout=10)
    fleet.apply_trained_model(_model("south"), timeout=10)
    status = fleet.get("fleet")
    assert [(m.name, m.memory, m.ready) for m in status.models] == [
        ("north", "128Mi", True), ("south", "256Mi", True)]
    listed = {s.name: s for s in fleet.list()}
    assert [m.name for m in listed["fleet"].models] == ["north", "south"]


def test_deleting_the_endpoint_removes_its_models_first(kube_double, fleet):
    fleet.apply_trained_model(_model("north"), timeout=10)
    fleet.delete("fleet")
    assert not kube_double.store.list(TRAINED_MODEL, "default")[0]
    assert not kube_double.store.list(ISVC, "default")[0]
    deletes = [c.resource for c in kube_double.calls_matching(verb="delete")]
    assert deletes == ["trainedmodels", "inferenceservices"]


def test_a_model_left_without_its_parent_is_explained(kube_double, fleet):
    fleet.apply_trained_model(_model("north"), timeout=10)
    kube_double.store.delete(ISVC, "default", "fleet")  # someone deleted the parent first
    with pytest.raises(ServingError) as info:
        fleet.delete_trained_model("north", timeout=1)
    text = str(info.value)
    assert "still Terminating" in text and "parent InferenceService 'fleet' is gone" in text
    assert "kubectl patch trainedmodel north -n default" in text


def test_a_model_kserve_never_reconciles_times_out(kube_double, fleet):
    kube_double.trained_models.program(outcome="never")
    with pytest.raises(TrainedModelNotReadyError) as info:
        fleet.apply_trained_model(_model("north"), timeout=1)
    assert info.value.timed_out
    assert "did not become Ready within 1s" in str(info.value)
    assert "kubectl describe trainedmodel north -n default" in str(info.value)


def test_cut_watches_and_server_errors_do_not_end_the_wait(kube_double, fleet):
    kube_double.watch_cap = 0.2  # the API server ends every watch after 0.2 s: resumed
    kube_double.trained_models.program(delay=0.8)
    kube_double.faults.add(verb="create", resource="trainedmodels", status=503, times=2)
    status = fleet.apply_trained_model(_model("north"), timeout=20)
    assert status.ready
    creates = kube_double.calls_matching(verb="create", resource="trainedmodels")
    assert [c.code for c in creates] == [503, 503, 201]


def test_through_an_ingress_the_loaded_model_is_asked_for(kube_double, backend, monkeypatch):
    """Ready says the parent can host the model; KServe's agent loads it afterwards, so the
    model's own route answers 404 for a while: apply waits for it (the parent has none)."""
    monkeypatch.setenv("KFP_SERVE_INGRESS", f"127.0.0.1:{kube_double.port}")
    kube_double.kserve.program(delay=0.05, not_found_after_ready=2)
    backend.apply(_parent(), timeout=10)
    assert kube_double.kserve.data_plane_requests == []  # a parent alone has no model to ask
    status = backend.apply_trained_model(_model("north"), timeout=10)
    assert status.ready and status.message is None
    assert kube_double.kserve.data_plane_requests == [
        ("fleet.default.example.com", "/v1/models/north", code) for code in (404, 404, 200)]
