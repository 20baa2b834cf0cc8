"""The pvc:// snapshot backend against the API double, with a tmp dir as the PVC mount."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.snapshots import SnapshotStore
from kfp_serve.artifacts.snapshots.pvc import (
    PvcSnapshotBackend,
    hydrated_pvc_name,
    is_pvc_snapshot_uri,
    parse_snapshot_uri,
    serving_storage_uri,
    volume_snapshot_name,
)
from tests.kube_double import PVC, VOLUME_SNAPSHOT


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.joblib").write_bytes(b"\x80\x04fake-model" * 100)
    (d / "kfp-serve-metadata.yaml").write_text("kind: model\nname: iris\n")
    return d


@pytest.fixture
def store_env(kube_double, kubeconfig, tmp_path, monkeypatch):
    mount = tmp_path / "mount"
    mount.mkdir()
    monkeypatch.setenv("KFP_SERVE_PVC_MOUNT", str(mount))
    monkeypatch.setenv("KFP_SERVE_VOLUME_SNAPSHOT_CLASS", "csi-snapclass")
    kube_double.seed(PVC, {"metadata": {"name": "artifacts"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}})
    return mount


def test_snapshot_copies_freezes_and_dedupes(kube_double, store_env, model_dir):
    kube_double.snapshots.behavior.delay = 0.3  # so that the wait really watches
    store = SnapshotStore("pvc://artifacts/kfp-serve")
    assert isinstance(store.backend, PvcSnapshotBackend)
    started = time.monotonic()
    snap = store.snapshot(model_dir)
    assert time.monotonic() - started >= 0.3
    assert re.fullmatch(r"pvc://artifacts/kfp-serve/blake3-[0-9a-f]{64}", snap.uri)
    assert is_pvc_snapshot_uri(snap.uri)
    hexd = snap.digest.split(":")[1]
    assert (store_env / "kfp-serve" / f"blake3-{hexd}" / "model.joblib").is_file()
    vs = kube_double.get(VOLUME_SNAPSHOT, volume_snapshot_name(snap.uri))
    assert vs["spec"] == {"source": {"persistentVolumeClaimName": "artifacts"},
                          "volumeSnapshotClassName": "csi-snapclass"}
    assert vs["status"]["readyToUse"] and vs["status"]["restoreSize"] == "2Gi"
    assert kube_double.calls_matching(verb="watch", resource="volumesnapshots")
    # Same tree again: same URI, no second VolumeSnapshot.
    again = store.snapshot(model_dir)
    assert again == snap
    assert len(kube_double.store.list(VOLUME_SNAPSHOT, "default")[0]) == 1
    # Read back, verified.
    assert (store.open(snap.uri) / "model.joblib").read_bytes().startswith(b"\x80\x04")
    assert store.verify(snap.uri).digest == snap.digest
    restored = store.restore(snap.uri, model_dir.parent / "restored")
    assert (restored / "model.joblib").is_file()


def test_snapshot_wait_survives_a_gone_watch_and_a_dropped_one(kube_double, store_env, model_dir):
    kube_double.snapshots.behavior.delay = 0.5
    kube_double.faults.add(verb="watch", resource="volumesnapshots", status=410, times=1)
    kube_double.faults.add(verb="watch", resource="volumesnapshots", hang=0.2, times=1)
    snap = SnapshotStore("pvc://artifacts/kfp-serve").snapshot(model_dir)
    assert kube_double.get(VOLUME_SNAPSHOT, volume_snapshot_name(snap.uri))["status"]["readyToUse"]
    # The 410 was followed by a re-read of the object, and the dropped watch by a new watch.
    codes = [c.code for c in kube_double.calls_matching(verb="watch", resource="volumesnapshots")]
    assert codes[:2] == [410, -1]  # -1: the double dropped the connection unanswered
    assert kube_double.calls_matching(verb="get", resource="volumesnapshots")


def test_tampered_snapshot_is_refused(kube_double, store_env, model_dir):
    store = SnapshotStore("pvc://artifacts/kfp-serve")
    snap = store.snapshot(model_dir)
    target = store_env / "kfp-serve" / f"blake3-{snap.digest.split(':')[1]}" / "model.joblib"
    target.chmod(0o644)
    target.write_bytes(b"evil")
    with pytest.raises(SnapshotError, match="failed verification"):
        store.open(snap.uri)


def test_failed_volume_snapshot_is_reported(kube_double, store_env, model_dir):
    kube_double.snapshots.behavior.outcome = "fail"
    with pytest.raises(SnapshotError, match="volume is busy"):
        SnapshotStore("pvc://artifacts/kfp-serve").snapshot(model_dir)


def test_volume_snapshot_timeout(kube_double, store_env, model_dir):
    kube_double.snapshots.behavior.outcome = "never"
    backend = PvcSnapshotBackend("pvc://artifacts/kfp-serve", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SnapshotError, match="not readyToUse within 1s"):
        backend.snapshot(model_dir)
    assert time.monotonic() - started < 3


def test_unmounted_pvc_is_a_clear_error(tmp_path, model_dir):
    backend = PvcSnapshotBackend("pvc://artifacts/x", mount=tmp_path / "absent")
    with pytest.raises(SnapshotError, match="is not mounted at"):
        backend.snapshot(model_dir)


def test_names_and_serving_uri_are_pure_and_valid():
    uri = "pvc://artifacts/a/b/blake3-" + "0f" * 32
    ref = parse_snapshot_uri(uri)
    assert (ref.pvc, ref.prefix, ref.directory) == ("artifacts", "a/b", "a/b/blake3-" + "0f" * 32)
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for name in (volume_snapshot_name(uri), hydrated_pvc_name(uri)):
        assert label.match(name) and len(name) <= 63
    assert serving_storage_uri(uri) == serving_storage_uri(uri)
    assert serving_storage_uri(uri) == f"pvc://{hydrated_pvc_name(uri)}/a/b/blake3-{'0f' * 32}"
    # Same tree on another PVC: other names.
    assert volume_snapshot_name(uri) != volume_snapshot_name(uri.replace("artifacts", "other"))
    assert not is_pvc_snapshot_uri("pvc://artifacts/model")  # a storage URI, not a snapshot
    with pytest.raises(SnapshotError):
        parse_snapshot_uri("file:///tmp/blake3-" + "0f" * 32)
