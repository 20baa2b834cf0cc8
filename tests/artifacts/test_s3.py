"""s3:// snapshots against a real S3-compatible server (moto's) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blake3 import blake3

from kfp_serve.artifacts import SnapshotError, SnapshotStore
from kfp_serve.artifacts.snapshots import cache
from kfp_serve.artifacts.snapshots import s3 as s3_backend
from kfp_serve.artifacts.snapshots.digest import MANIFEST_NAME, tree_digest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

BUCKET = "models"


@pytest.fixture
def s3(home, s3_endpoint, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "model.joblib").write_bytes(os.urandom(200_000))
    (root / "sub" / "a.txt").write_text("a")
    os.symlink("../model.joblib", root / "sub" / "link")
    return root


def _keys(client, prefix: str) -> list[str]:
    return [
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    ]


def test_s3_snapshot_roundtrip_and_dedup(s3, tmp_path):
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore(f"s3://{BUCKET}/snaps")
    snap = store.snapshot(tree)
    digest, size = tree_digest(tree)
    assert snap.uri == f"s3://{BUCKET}/snaps/blake3-{digest[7:]}" and snap.size == size
    name = snap.uri.rsplit("/", 1)[1]
    assert sorted(_keys(s3, f"snaps/{name}/")) == [
        f"snaps/{name}/{MANIFEST_NAME}",
        f"snaps/{name}/model.joblib",
        f"snaps/{name}/sub/a.txt",
    ]
    assert store.snapshot(tree) == snap  # dedup: exists, nothing uploaded again
    opened = store.open(snap.uri)
    assert tree_digest(opened)[0] == digest
    restored = store.restore(snap.uri, tmp_path / "r")
    assert os.readlink(restored / "sub" / "link") == "../model.joblib"
    assert (restored / "empty").is_dir()
    assert store.verify(snap.uri).digest == digest
    # Any store opens a URI of another backend: the URI says where it lives.
    assert SnapshotStore().open(snap.uri) == opened


def test_unchanged_tree_is_found_without_hashing(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SAFETY_NS", 0)  # the tree counts as settled at once
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore(f"s3://{BUCKET}/again")
    snap = store.snapshot(tree)

    def no_hashing(*args, **kwargs):
        raise AssertionError("an unchanged tree must not be hashed again")

    monkeypatch.setattr(s3_backend, "build_manifest", no_hashing)
    assert store.snapshot(tree) == snap
    (tree / "sub" / "a.txt").write_text("b")  # changed: hashed and uploaded again
    monkeypatch.undo()
    assert store.snapshot(tree).digest == tree_digest(tree)[0] != snap.digest


def test_interrupted_upload_is_invisible(s3, tmp_path):
    tree = make_tree(tmp_path / "t")
    digest, _ = tree_digest(tree)
    prefix = f"half/blake3-{digest[7:]}"
    # What a crash before the manifest (uploaded last) leaves behind.
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/model.joblib", Body=b"partial")
    store = SnapshotStore(f"s3://{BUCKET}/half")
    assert not store.exists(f"s3://{BUCKET}/{prefix}")
    with pytest.raises(SnapshotError, match="NoSuchKey|404"):
        store.open(f"s3://{BUCKET}/{prefix}")
    snap = store.snapshot(tree)  # completes over the leftovers
    assert store.verify(snap.uri).digest == digest


@pytest.mark.parametrize("tamper", ["object", "manifest"])
def test_tampered_s3_snapshot_is_refused(s3, tmp_path, home, tamper):
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore(f"s3://{BUCKET}/tamper-{tamper}")
    snap = store.snapshot(tree)
    key = snap.uri[len(f"s3://{BUCKET}/") :]
    if tamper == "object":
        s3.put_object(Bucket=BUCKET, Key=f"{key}/sub/a.txt", Body=b"b")
    else:
        s3.put_object(Bucket=BUCKET, Key=f"{key}/{MANIFEST_NAME}", Body=b"")
    with pytest.raises(SnapshotError, match="refusing"):
        store.open(snap.uri)
    assert not (home / "cache" / "snapshots" / "s3" / key.rsplit("/", 1)[1]).exists()


def test_s3_manifest_with_path_traversal_is_refused(s3, tmp_path):
    evil = '["f","../../outside.txt",420,1,"' + blake3(b"x").hexdigest() + '",""]\n'
    digest = blake3(evil.encode()).hexdigest()
    key = f"evil/blake3-{digest}"
    s3.put_object(Bucket=BUCKET, Key=f"{key}/{MANIFEST_NAME}", Body=evil.encode())
    with pytest.raises(SnapshotError, match="path traversal refused"):
        SnapshotStore(f"s3://{BUCKET}/evil").open(f"s3://{BUCKET}/{key}")
    assert not (tmp_path.parent / "outside.txt").exists()


def test_missing_bucket_and_credentials_are_explained(s3, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "t")
    with pytest.raises(SnapshotError, match="Check the bucket exists"):
        SnapshotStore("s3://no-such-bucket/x").snapshot(tree)
    with pytest.raises(SnapshotError, match="names no bucket"):
        SnapshotStore("s3:///x")
