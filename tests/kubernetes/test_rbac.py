"""serving/rbac.yaml grants exactly the API calls the backend and the pvc snapshots make."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kfp_serve.artifacts.snapshots import SnapshotStore
from kfp_serve.artifacts.snapshots import pvc as pvc_mod
from kfp_serve.kale_steps import steps as kale_step_helpers
from kfp_serve.serving.backends import kubernetes as kb
from tests.kube_double import PVC
from tests.kube_double.manifests import isvc_manifest, multi_isvc_manifest, tm_manifest
from tests.kube_double.store import POD

RBAC = Path(__file__).resolve().parents[2] / "serving" / "rbac.yaml"


def _role() -> dict:
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    return role


def test_role_covers_exactly_the_calls_made(kube_double, kubeconfig, tmp_path, monkeypatch):
    role = _role()
    kube_double.rbac_rules = role["rules"]  # anything else is answered 403
    monkeypatch.setenv("KFP_SERVE_PVC_MOUNT", str(tmp_path / "mount"))
    (tmp_path / "mount").mkdir()
    kube_double.seed(PVC, {"metadata": {"name": "artifacts"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    kube_double.snapshots.behavior.delay = 0.2

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"model")
    store = SnapshotStore("pvc://artifacts/models")
    snap = store.snapshot(model)
    store.snapshot(model)  # again: the existing VolumeSnapshot is reused

    backend = kb.KubernetesBackend(kubeconfig=kubeconfig, progress=False)
    manifest = isvc_manifest(
        storage_uri=pvc_mod.serving_storage_uri(snap.uri),
        annotations={"kfp-serve.kubeflow.org/model-snapshot": snap.uri},
    )
    backend.apply(manifest, timeout=10)
    manifest["spec"]["predictor"]["minReplicas"] = 2
    backend.apply(manifest, timeout=10)
    backend.list()
    backend.get("iris")
    assert [e["action"] for e in backend.events("iris") if e["source"] == "kfp-serve"] == [
        "serve", "serve"]
    backend.delete("iris")
    # A multi-model endpoint: parent, a model applied then updated, listed, removed, all deleted.
    backend.apply(multi_isvc_manifest(), timeout=10)
    backend.apply_trained_model(tm_manifest("north"), timeout=10)
    backend.apply_trained_model(tm_manifest("north", storage_uri="gs://b/north-2"), timeout=10)
    backend.apply_trained_model(tm_manifest("south"), timeout=10)
    assert [m.name for m in backend.get("fleet").models] == ["north", "south"]
    backend.delete_trained_model("south")
    backend.delete("fleet")
    kube_double.seed(POD, {"metadata": {"name": "step", "labels": {"pipeline/runid": "r1"}}})
    labels = kale_step_helpers._read_pod_labels("step", "default", kube_double.api_client())
    assert labels["pipeline/runid"] == "r1"

    refused = [c for c in kube_double.calls if c.code == 403]
    assert not refused, f"rbac.yaml misses: {refused}"
    used = {(c.group, c.resource, c.verb) for c in kube_double.calls}
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert used == granted, f"unused grants: {granted - used}; missing: {used - granted}"


@pytest.mark.parametrize("verb", ["update", "deletecollection", "*"])
def test_role_grants_nothing_broad(verb):
    for rule in _role()["rules"]:
        assert verb not in rule["verbs"]
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
