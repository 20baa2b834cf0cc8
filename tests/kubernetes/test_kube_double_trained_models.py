"""The API double serves TrainedModels like a cluster with KServe: the CRD, the webhook, and the
controller's conditions, labels, finalizer and memory accounting."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, watch

from tests.kserve_schema import SKIP_REASON, reference_available
from tests.kube_double import TRAINED_MODEL
from tests.kube_double.manifests import isvc_manifest, multi_isvc_manifest, tm_manifest

G, V, P = "serving.kserve.io", "v1alpha1", "trainedmodels"
ISVC_ARGS = ("serving.kserve.io", "v1beta1", "default", "inferenceservices")


@pytest.fixture
def api(kube_double):
    return client.CustomObjectsApi(kube_double.api_client())


def _status(e: client.ApiException) -> dict:
    return json.loads(e.body)


def _create_tm(api, **kw) -> dict:
    return api.create_namespaced_custom_object(G, V, "default", P, tm_manifest(**kw),
                                               field_validation="Strict")


def _wait(kube_double, name: str, predicate, timeout: float = 10.0) -> dict | None:
    """The TrainedModel once ``predicate`` holds for it (None: it is gone), waiting on events."""
    deadline = time.monotonic() + timeout
    index = 0
    while True:
        try:
            obj = kube_double.get(TRAINED_MODEL, name)
        except Exception:  # noqa: BLE001 - the double's ApiError: not found
            obj = None
        if predicate(obj):
            return obj
        assert time.monotonic() < deadline, f"TrainedModel {name}: still {obj}"
        index = kube_double.store.wait_events(index, min(deadline, time.monotonic() + 0.5))


def _conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def _ready(obj: dict | None) -> bool:
    return obj is not None and _conditions(obj).get("Ready", {}).get("status") == "True"


def _settled(obj: dict | None) -> bool:
    return obj is not None and "Ready" in _conditions(obj)


def test_ready_once_the_parent_is(kube_double, api):
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    _create_tm(api)
    obj = _wait(kube_double, "north", _ready)
    conditions = _conditions(obj)
    assert list(conditions) == ["InferenceServiceReady", "IsMMSPredictor",
                                "MemoryResourceAvailable", "Ready"]
    assert all(c["status"] == "True" for c in conditions.values())
    assert obj["metadata"]["labels"] == {
        "inferenceservice": "fleet", "serving.kserve.io/trainedmodel-allocated": "fleet"}
    assert obj["metadata"]["finalizers"] == ["trainedmodel.finalizer"]
    assert obj["status"]["url"] == "http://fleet.default.example.com/v1/models/north:predict"
    assert obj["status"]["address"]["url"] == (
        "http://fleet.default.svc.cluster.local/v1/models/north:predict")
    assert "observedGeneration" not in obj["status"]  # KServe does not write it for TMs


def test_waits_for_a_parent_that_is_not_ready(kube_double, api):
    kube_double.kserve.program(outcome="manual")
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    _create_tm(api)
    obj = _wait(kube_double, "north", _settled)
    ready = _conditions(obj)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InferenceServiceNotReady")
    assert "url" not in obj["status"]
    kube_double.kserve.set_ready("fleet")
    assert _wait(kube_double, "north", _ready)


def test_memory_over_the_parents_limit_is_refused_until_room_is_made(kube_double, api):
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest(memory_limit="1Gi"))
    _create_tm(api, name="north", memory="600Mi")
    _wait(kube_double, "north", _ready)
    _create_tm(api, name="south", memory="600Mi")
    south = _wait(kube_double, "south", _settled)
    memory = _conditions(south)["MemoryResourceAvailable"]
    assert (memory["status"], memory["reason"]) == ("False", "MemoryResourceNotAvailable")
    assert _conditions(south)["Ready"]["reason"] == "MemoryResourceNotAvailable"
    assert "serving.kserve.io/trainedmodel-allocated" not in south["metadata"]["labels"]
    api.delete_namespaced_custom_object(G, V, "default", P, "north")
    _wait(kube_double, "north", lambda o: o is None)
    assert _wait(kube_double, "south", _ready)


def test_a_parent_without_a_limit_gets_kserves_default(kube_double, api):
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest(memory_limit=None))
    _create_tm(api, name="small", memory="2Gi")
    _wait(kube_double, "small", _ready)
    _create_tm(api, name="more", memory="1Mi")
    assert _conditions(_wait(kube_double, "more", _settled))["Ready"]["status"] == "False"


def test_a_single_model_parent_is_not_multi_model(kube_double, api):
    api.create_namespaced_custom_object(*ISVC_ARGS, isvc_manifest("fleet"))  # has a storageUri
    _create_tm(api)
    obj = _wait(kube_double, "north", lambda o: _settled(o) and _conditions(o)[
        "InferenceServiceReady"]["status"] == "True")
    assert _conditions(obj)["IsMMSPredictor"]["status"] == "False"
    assert _conditions(obj)["Ready"]["reason"] == "IsNotMMSPredictor"


def test_no_parent_means_the_controller_deletes_it(kube_double, api):
    _create_tm(api, parent="nowhere")
    assert _wait(kube_double, "north", lambda o: o is None) is None


def test_delete_goes_through_the_finalizer(kube_double, api):
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    created = _create_tm(api)
    _wait(kube_double, "north", _ready)
    api.delete_namespaced_custom_object(G, V, "default", P, "north")
    assert _wait(kube_double, "north", lambda o: o is None) is None
    events = list(watch.Watch().stream(
        api.list_namespaced_custom_object, G, V, "default", P,
        resource_version=created["metadata"]["resourceVersion"], timeout_seconds=1))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "DELETED"
    # Before DELETED, the object was still there, marked for deletion.
    assert "deletionTimestamp" in events[-2]["object"]["metadata"]


def test_deleting_the_parent_first_leaves_it_terminating(kube_double, api):
    """KServe checks the parent before handling deletion: the finalizer then never goes."""
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    _create_tm(api)
    _wait(kube_double, "north", _ready)
    api.delete_namespaced_custom_object(*ISVC_ARGS, "fleet")
    stuck = _wait(kube_double, "north", lambda o: o and "deletionTimestamp" in o["metadata"])
    assert stuck["metadata"]["finalizers"] == ["trainedmodel.finalizer"]


def test_not_found_and_conflicts(kube_double, api):
    with pytest.raises(client.ApiException) as info:
        api.get_namespaced_custom_object(G, V, "default", P, "nope")
    assert info.value.status == 404
    assert _status(info.value)["message"] == 'trainedmodels.serving.kserve.io "nope" not found'
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    created = _create_tm(api)
    with pytest.raises(client.ApiException) as info:
        _create_tm(api)
    assert (info.value.status, _status(info.value)["reason"]) == (409, "AlreadyExists")
    _wait(kube_double, "north", _ready)  # the controller wrote labels and status since
    created["spec"]["model"]["storageUri"] = "gs://kfp-serve-test/north-v2"
    with pytest.raises(client.ApiException) as info:
        api.replace_namespaced_custom_object(G, V, "default", P, "north", created)
    assert (info.value.status, _status(info.value)["reason"]) == (409, "Conflict")


@pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
def test_strict_schema(api):
    bad = tm_manifest()
    bad["spec"]["model"]["memroy"] = "1Gi"
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P, bad, field_validation="Strict")
    assert info.value.status == 422
    message = _status(info.value)["message"]
    assert message.startswith('TrainedModel.serving.kserve.io "north" is invalid')
    assert "unknown field" in message and "memroy" in message
    missing = tm_manifest()
    del missing["spec"]["model"]["memory"]
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P, missing)
    assert info.value.status == 422 and "'memory' is a required property" in (
        _status(info.value)["message"])


def test_webhook_rules(kube_double, api):
    with pytest.raises(client.ApiException) as info:
        _create_tm(api, name="north.v2")  # a valid object name, not a valid TrainedModel name
    assert info.value.status == 403
    message = _status(info.value)["message"]
    assert message.startswith(
        'admission webhook "trainedmodel.kserve-webhook-server.validator" denied the request')
    assert "tm-name" in message
    with pytest.raises(client.ApiException) as info:
        _create_tm(api, storage_uri="pvc://models/north")
    assert info.value.status == 403 and "spec.model.storageUri" in _status(info.value)["message"]
    api.create_namespaced_custom_object(*ISVC_ARGS, multi_isvc_manifest())
    _create_tm(api)
    with pytest.raises(client.ApiException) as info:
        api.patch_namespaced_custom_object(G, V, "default", P, "north",
                                           {"spec": {"model": {"memory": "512Mi"}}})
    assert info.value.status == 403 and "tm-memory-immutable" in _status(info.value)["message"]
    # The same quantity written another way is no change.
    api.patch_namespaced_custom_object(G, V, "default", P, "north",
                                       {"spec": {"model": {"memory": "0.25Gi"}}})
