"""The API double behaves like an API server towards the unmodified kubernetes client."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, watch

from tests.kserve_schema import SKIP_REASON, reference_available, strict, validate_strict
from tests.kube_double import ISVC
from tests.kube_double.manifests import isvc_manifest

G, V, P = "serving.kserve.io", "v1beta1", "inferenceservices"


@pytest.fixture
def api(kube_double):
    kube_double.kserve.program(outcome="manual")
    return client.CustomObjectsApi(kube_double.api_client())


def _status(e: client.ApiException) -> dict:
    return json.loads(e.body)


def test_versions_generation_uid(api):
    created = api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"]
    rv = int(meta["resourceVersion"])
    same = api.patch_namespaced_custom_object(G, V, "default", P, "iris",
                                              {"metadata": {"labels": {"a": "b"}}})
    assert same["metadata"]["generation"] == 1  # metadata only: no new generation
    assert int(same["metadata"]["resourceVersion"]) > rv
    spec = api.patch_namespaced_custom_object(G, V, "default", P, "iris", {
        "spec": {"predictor": {"minReplicas": 2}}, "status": {"url": "ignored"}})
    assert spec["metadata"]["generation"] == 2
    assert "status" not in spec  # the status subresource is not writable through the object


def test_errors_are_status_objects(api):
    with pytest.raises(client.ApiException) as info:
        api.get_namespaced_custom_object(G, V, "default", P, "nope")
    assert info.value.status == 404
    assert _status(info.value)["reason"] == "NotFound"
    assert _status(info.value)["message"] == 'inferenceservices.serving.kserve.io "nope" not found'
    api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    assert (info.value.status, _status(info.value)["reason"]) == (409, "AlreadyExists")


def test_replace_checks_the_resource_version(api):
    obj = api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    obj["spec"]["predictor"]["minReplicas"] = 1
    replaced = api.replace_namespaced_custom_object(G, V, "default", P, "iris", obj)
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(client.ApiException) as info:
        api.replace_namespaced_custom_object(G, V, "default", P, "iris", obj)  # stale version
    assert (info.value.status, _status(info.value)["reason"]) == (409, "Conflict")


def test_watch_replays_from_a_resource_version_and_honours_timeout(kube_double, api):
    obj = api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    kube_double.kserve.set_ready("iris")
    events = list(watch.Watch().stream(
        api.list_namespaced_custom_object, G, V, "default", P,
        resource_version=obj["metadata"]["resourceVersion"], timeout_seconds=1))
    assert [e["type"] for e in events] == ["MODIFIED"]
    assert events[0]["object"]["status"]["conditions"][-1] == {
        **events[0]["object"]["status"]["conditions"][-1], "type": "Ready", "status": "True"}
    # Without a resourceVersion: the current state first, as ADDED.
    events = list(watch.Watch().stream(api.list_namespaced_custom_object, G, V, "default", P,
                                       field_selector="metadata.name=iris", timeout_seconds=1))
    assert [e["type"] for e in events] == ["ADDED"]


def test_watch_from_a_compacted_version_is_gone(kube_double, api):
    obj = api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    kube_double.kserve.set_ready("iris")
    kube_double.store.compact()
    with pytest.raises(client.ApiException) as info:
        list(watch.Watch().stream(api.list_namespaced_custom_object, G, V, "default", P,
                                  resource_version=obj["metadata"]["resourceVersion"],
                                  timeout_seconds=1))
    assert info.value.status == 410


def test_list_selectors_and_discovery(kube_double, api):
    api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest("a", labels={"x": "1"}))
    api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest("b"))
    items = api.list_namespaced_custom_object(G, V, "default", P, label_selector="x=1")["items"]
    assert [i["metadata"]["name"] for i in items] == ["a"]
    groups = client.ApisApi(kube_double.api_client()).get_api_versions()
    assert {g.name for g in groups.groups} >= {"serving.kserve.io", "snapshot.storage.k8s.io"}
    assert client.VersionApi(kube_double.api_client()).get_code().major == "1"


def test_invalid_metadata_is_422(api):
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P,
                                            isvc_manifest(labels={"kfp-serve.kubeflow.org/v": 1}))
    assert info.value.status == 422 and "must be a string" in _status(info.value)["message"]
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest("Bad_Name"))
    assert info.value.status == 422


@pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
def test_strict_schema_rejects_unknown_fields(kube_double, api):
    bad = isvc_manifest()
    bad["spec"]["predictor"]["model"]["resourcez"] = {}
    assert any("resourcez" in e for e in validate_strict(bad))
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object(G, V, "default", P, bad, field_validation="Strict")
    assert info.value.status == 422
    assert "unknown field" in _status(info.value)["message"]
    assert validate_strict(isvc_manifest()) == []
    assert kube_double.calls[-1].query == {"fieldValidation": "Strict"}


def test_strict_closes_objects_with_properties_only():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "m": {"type": "object", "additionalProperties": {"type": "string"}},
        "p": {"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": True},
    }}
    closed = strict(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["m"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in closed["properties"]["p"]
    assert "additionalProperties" not in schema  # the input is not modified


def test_faults_hit_only_what_they_match(kube_double, api):
    kube_double.faults.add(verb="get", resource="inferenceservices", status=500, every=2,
                           times=None)
    api.create_namespaced_custom_object(G, V, "default", P, isvc_manifest())
    codes = []
    for _ in range(4):
        try:
            api.get_namespaced_custom_object(G, V, "default", P, "iris")
            codes.append(200)
        except client.ApiException as e:
            codes.append(e.status)
    assert codes == [500, 200, 500, 200]
    assert kube_double.get(ISVC, "iris")


def test_core_events_create_list_by_involved_object(kube_double):
    """core/v1 Events as an API server serves them: 201, 409 for a taken name, 404 for a
    missing one, 422 when involvedObject's namespace is not the Event's, and list with the
    involvedObject.* field selectors (which other resources refuse with 400)."""
    core = client.CoreV1Api(kube_double.api_client())

    def event(name: str, about: str, namespace: str = "default") -> dict:
        return {"metadata": {"name": name}, "reason": "Promoted", "message": "m", "type": "Normal",
                "involvedObject": {"kind": "InferenceService", "name": about,
                                   "namespace": namespace, "uid": f"uid-{about}"}}

    made = core.create_namespaced_event("default", event("iris.1", "iris"))
    assert made.metadata.uid and made.metadata.resource_version
    core.create_namespaced_event("default", event("iris.2", "iris"))
    core.create_namespaced_event("default", event("churn.1", "churn"))
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_event("default", event("iris.1", "iris"))
    assert (info.value.status, _status(info.value)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(client.ApiException) as info:
        core.read_namespaced_event("iris.9", "default")
    assert (info.value.status, _status(info.value)["message"]) == (404, 'events "iris.9" not found')
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_event("default", event("iris.3", "iris", namespace="other"))
    assert info.value.status == 422
    assert "involvedObject.namespace" in _status(info.value)["message"]

    listed = core.list_namespaced_event(
        "default", field_selector="involvedObject.kind=InferenceService,involvedObject.name=iris")
    assert sorted(e.metadata.name for e in listed.items) == ["iris.1", "iris.2"]
    by_uid = core.list_namespaced_event("default", field_selector="involvedObject.uid=uid-churn")
    assert [e.metadata.name for e in by_uid.items] == ["churn.1"]
    with pytest.raises(client.ApiException) as info:
        client.CustomObjectsApi(kube_double.api_client()).list_namespaced_custom_object(
            G, V, "default", P, field_selector="involvedObject.name=iris")
    assert info.value.status == 400
    assert 'field label not supported: "involvedObject.name"' in _status(info.value)["message"]
