"""The file:// snapshot store: digest, atomicity, dedup, verification, traversal, progress."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from blake3 import blake3

from kfp_serve.artifacts import Snapshot, SnapshotError, SnapshotStore
from kfp_serve.artifacts.snapshots import base, cache, copy, progress
from kfp_serve.artifacts.snapshots.digest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    tree_digest,
)


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "model.joblib").write_bytes(b"weights" * 1000)
    (root / "sub" / "a.txt").write_text("a")
    (root / "sub" / "deeper" / "b.bin").write_bytes(os.urandom(3000))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("../model.joblib", root / "sub" / "link")
    return root


def snapshot_dirs(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "snapshots").iterdir() if p.name.startswith("blake3-"))


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("nothing", True),
        ("touch", True),  # mtime is not content
        ("content", False),
        ("rename", False),
        ("chmod-x", False),
        ("chmod-r", True),  # only the executable bit counts (like git)
        ("new-empty-dir", False),
        ("link-target", False),
    ],
)
def test_digest_covers_names_modes_contents(tmp_path, change, same):
    tree = make_tree(tmp_path / "t")
    before, size = tree_digest(tree)
    assert before.startswith("blake3:") and size == 7000 + 1 + 3000 + 10
    match change:
        case "touch":
            os.utime(tree / "model.joblib", (1, 1))
        case "content":
            (tree / "sub" / "a.txt").write_text("b")
        case "rename":
            (tree / "sub" / "a.txt").rename(tree / "sub" / "c.txt")
        case "chmod-x":
            (tree / "run.sh").chmod(0o644)
        case "chmod-r":
            (tree / "model.joblib").chmod(0o600)
        case "new-empty-dir":
            (tree / "new").mkdir()
        case "link-target":
            (tree / "sub" / "link").unlink()
            os.symlink("a.txt", tree / "sub" / "link")
    assert (tree_digest(tree)[0] == before) is same


def test_snapshot_restore_open_roundtrip(home, tmp_path):
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore()
    snap = store.snapshot(tree)
    digest, size = tree_digest(tree)
    assert snap == Snapshot(f"file://{home}/snapshots/blake3-{digest[7:]}", digest, size)
    opened = store.open(snap.uri)
    assert (opened / "model.joblib").read_bytes() == (tree / "model.joblib").read_bytes()
    restored = store.restore(snap.uri, tmp_path / "restored")
    assert tree_digest(restored)[0] == digest
    assert os.readlink(restored / "sub" / "link") == "../model.joblib"
    assert os.access(restored / "run.sh", os.X_OK)
    assert not (restored / MANIFEST_NAME).exists()
    assert store.verify(snap.uri) == snap
    with pytest.raises(SnapshotError, match="not an empty directory"):
        store.restore(snap.uri, restored)


def test_unchanged_tree_is_deduplicated_without_copy(home, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore()
    first = store.snapshot(tree)
    stored = home / "snapshots" / first.uri.rsplit("/", 1)[1]
    inode = (stored / "model.joblib").stat().st_ino
    # A copy goes through copy_tree: make any copy fail loudly.
    import kfp_serve.artifacts.snapshots.file as file_backend

    real = file_backend.copy_tree

    def no_copy(*args, **kwargs):
        raise AssertionError("an unchanged tree must not be copied again")

    monkeypatch.setattr(file_backend, "copy_tree", no_copy)
    assert store.snapshot(tree) == first
    assert (stored / "model.joblib").stat().st_ino == inode
    assert snapshot_dirs(home) == [stored.name]
    # Also without the digest cache (a digest pass, still no copy).
    for cached in (home / "cache" / "tree-digest").iterdir():
        cached.write_text("{}")
    assert store.snapshot(tree) == first
    # A change is a new snapshot; the old one stays as it was (immutable).
    monkeypatch.setattr(file_backend, "copy_tree", real)
    (tree / "sub" / "a.txt").write_text("changed")
    second = store.snapshot(tree)
    assert second.digest != first.digest and len(snapshot_dirs(home)) == 2
    store.verify(first.uri)


def test_identical_content_elsewhere_gets_the_same_snapshot(home, tmp_path):
    a = make_tree(tmp_path / "a")
    b = tmp_path / "b"
    SnapshotStore().restore(SnapshotStore().snapshot(a).uri, b)
    assert SnapshotStore().snapshot(b).uri == SnapshotStore().snapshot(a).uri
    assert len(snapshot_dirs(home)) == 1


@pytest.mark.parametrize(
    "tamper",
    ["edit", "append", "delete", "add", "chmod-x", "manifest"],
)
def test_tampered_snapshot_is_refused(home, tmp_path, tamper):
    tree = make_tree(tmp_path / "t")
    store = SnapshotStore()
    snap = store.snapshot(tree)
    stored = store.open(snap.uri)
    target = stored / "sub" / "a.txt"
    target.chmod(0o644)
    match tamper:
        case "edit":
            target.write_text("x")
        case "append":
            with open(stored / "model.joblib", "ab") as f:
                f.write(b"!")
        case "delete":
            target.unlink()
        case "add":
            (stored / "evil.py").write_text("import os")
        case "chmod-x":
            target.chmod(0o755)
        case "manifest":
            # Rewriting the manifest to match the edit does not help: the digest is in the URI.
            target.write_text("x")
            (stored / MANIFEST_NAME).write_text(Manifest.parse("").text)
    for action in (store.open, store.verify, lambda u: store.restore(u, tmp_path / "r")):
        with pytest.raises(SnapshotError, match="failed verification.*refusing"):
            action(snap.uri)
    assert not (tmp_path / "r").exists()


def test_error_names_the_changed_file(home, tmp_path):
    snap = SnapshotStore().snapshot(make_tree(tmp_path / "t"))
    stored = SnapshotStore().open(snap.uri)
    (stored / "sub" / "a.txt").chmod(0o644)
    (stored / "sub" / "a.txt").write_text("x")
    with pytest.raises(SnapshotError, match="'sub/a.txt' content changed"):
        SnapshotStore().open(snap.uri)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("../../outside", "points outside the tree"),
        ("../..", "points outside the tree"),
        ("/etc/passwd", "is absolute"),
        ("deeper/../../../x", "points outside the tree"),
    ],
)
def test_symlinks_leaving_the_tree_are_refused(home, tmp_path, target, match):
    tree = make_tree(tmp_path / "t")
    os.symlink(target, tree / "sub" / "bad")
    with pytest.raises(SnapshotError, match=match):
        SnapshotStore().snapshot(tree)
    assert not (home / "snapshots").exists() or snapshot_dirs(home) == []


def test_special_files_are_refused(home, tmp_path):
    tree = make_tree(tmp_path / "t")
    os.mkfifo(tree / "pipe")
    with pytest.raises(SnapshotError, match="not a regular file"):
        SnapshotStore().snapshot(tree)


@pytest.mark.parametrize(
    "line",
    [
        '["f","../escape",420,1,"00",""]',
        '["f","/etc/passwd",420,1,"00",""]',
        '["f","a/../../b",420,1,"00",""]',
        '["l","a",0,0,"","../../x"]',
        '["x","a",0,0,"",""]',
        "not json",
    ],
)
def test_manifest_path_traversal_is_refused(line):
    with pytest.raises(SnapshotError):
        Manifest.parse(line + "\n")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///tmp/x/blake3-../../etc",
        "file:///tmp/x/../blake3-abc",
        "file:///tmp/x",
        "blake3-" + "0" * 64,
    ],
)
def test_uris_that_are_not_snapshots_are_refused(home, uri):
    with pytest.raises(SnapshotError, match="is not a snapshot URI"):
        SnapshotStore().open(uri)


def test_missing_snapshot_is_reported(home):
    uri = f"file://{home}/snapshots/blake3-{'0' * 64}"
    with pytest.raises(SnapshotError, match="does not exist"):
        SnapshotStore().open(uri)


def test_backend_by_scheme(home, tmp_path, monkeypatch):
    with pytest.raises(SnapshotError, match="no snapshot backend for scheme 'gs'.*file://"):
        SnapshotStore("gs://bucket/x")
    assert SnapshotStore(str(tmp_path / "plain")).root == f"file://{tmp_path / 'plain'}"
    monkeypatch.setenv("KFP_SERVE_SNAPSHOT_STORE", f"file://{tmp_path}/env")
    assert SnapshotStore().root == f"file://{tmp_path}/env"

    class Memory:
        scheme = "mem"

        def __init__(self, root: str) -> None:
            self.root = root

    base.register_backend("mem", Memory)
    try:
        assert isinstance(SnapshotStore("mem://x").backend, Memory)
    finally:
        base.BACKENDS.unregister("mem")


def test_progress_is_shown_for_large_snapshots(home, tmp_path, monkeypatch, capfd):
    tree = make_tree(tmp_path / "t")
    SnapshotStore().snapshot(tree)
    assert capfd.readouterr().err == ""  # small and fast: silent
    monkeypatch.setattr(progress, "LARGE_BYTES", 1)
    (tree / "model.joblib").write_bytes(b"new")
    SnapshotStore().snapshot(tree)
    assert "Snapshotting t" in capfd.readouterr().err


KILLED_WORKER = textwrap.dedent(
    """
    import sys
    from kfp_serve.artifacts import SnapshotStore
    print("start", flush=True)
    SnapshotStore().snapshot(sys.argv[1], progress=False)
    print("done", flush=True)
    """
)


def test_sigkill_midway_leaves_no_visible_snapshot(home, tmp_path):
    tree = tmp_path / "big"
    tree.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(120):  # 120 MiB: long enough to be caught mid-copy
        (tree / f"part-{i:03d}.bin").write_bytes(chunk[i:] + chunk[:i])
    script = tmp_path / "worker.py"
    script.write_text(KILLED_WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(tree)], stdout=subprocess.PIPE)
    tmp_root = home / "snapshots" / ".tmp"
    deadline = time.monotonic() + 60
    # Kill as soon as the work directory holds some copied data.
    while time.monotonic() < deadline:
        work = list(tmp_root.glob("*/part-*")) if tmp_root.is_dir() else []
        if len(work) >= 3:
            break
        assert proc.poll() is None, "the snapshot finished before it could be killed"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert b"done" not in proc.stdout.read()
    assert snapshot_dirs(home) == []  # nothing visible
    assert list(tmp_root.iterdir())  # the partial work is only in .tmp

    # The next snapshot sweeps the dead process's work directory and completes.
    snap = SnapshotStore().snapshot(tree, progress=False)
    assert list(tmp_root.iterdir()) == []
    assert SnapshotStore().verify(snap.uri).size == 120 << 20
    assert snap.digest == tree_digest(tree)[0]


def test_digest_is_blake3_of_manifest(tmp_path):
    tree = make_tree(tmp_path / "t")
    from kfp_serve.artifacts.snapshots.digest import build_manifest

    m = build_manifest(tree)
    assert m.digest == "blake3:" + blake3(m.text.encode()).hexdigest()
    assert Manifest.parse(m.text) == m


@pytest.mark.parametrize(
    "size", [0, 1000, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17, 2 * copy.COPY_CHUNK + 5]
)
def test_copied_bytes_and_digest_do_not_depend_on_the_copy_path(home, tmp_path, size):
    # Files from 1 MiB up are copied by the calling thread and hashed chunk by chunk by the
    # other one; smaller ones are copied and hashed in one go. Both must store the same bytes
    # and digest as hashing the source does.
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(size)
    (src / "model.bin").write_bytes(data)
    (src / "small.txt").write_text("x")
    store = SnapshotStore()
    snap = store.snapshot(src)
    assert snap.digest == tree_digest(src)[0]
    restored = store.restore(snap.uri, tmp_path / "out")
    assert (restored / "model.bin").read_bytes() == data
    assert (store.open(snap.uri) / "model.bin").read_bytes() == data


def test_unchanged_tree_costs_one_scan_and_reads_nothing(home, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "t")
    monkeypatch.setattr(cache, "SAFETY_NS", 0)  # the tree counts as settled at once
    store = SnapshotStore()
    first = store.snapshot(tree)
    import kfp_serve.artifacts.snapshots.digest as digest
    import kfp_serve.artifacts.snapshots.file as file_backend

    def no_read(*args, **kwargs):
        raise AssertionError("an unchanged tree must not be read again")

    monkeypatch.setattr(file_backend, "copy_tree", no_read)
    monkeypatch.setattr(file_backend, "build_manifest", no_read)
    monkeypatch.setattr(digest, "open_source", no_read)
    assert store.snapshot(tree) == first
    # Rewritten with the same size: the tree record no longer matches, so it is hashed again.
    monkeypatch.undo()
    (tree / "sub" / "a.txt").write_text("b")
    second = store.snapshot(tree)
    assert second.digest == tree_digest(tree)[0] != first.digest
    (tree / "sub" / "a.txt").write_text("a")  # back to the first content: the first snapshot
    assert store.snapshot(tree) == first


def test_snapshot_from_another_filesystem_copies_without_the_kernel(home, tmp_path):
    # copy_file_range refuses to cross filesystems (EXDEV): files are read and written instead.
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    src = Path(tempfile.mkdtemp(dir=shm, prefix="kfp-serve-test-"))
    try:
        make_tree(src / "t")
        big = os.urandom(3 * (1 << 20) + 5)
        (src / "t" / "big.bin").write_bytes(big)
        snap = SnapshotStore().snapshot(src / "t")
        assert snap.digest == tree_digest(src / "t")[0]
        opened = SnapshotStore().open(snap.uri)
        assert (opened / "big.bin").read_bytes() == big
    finally:
        shutil.rmtree(src)


def test_kernel_copy_refused_midway_falls_back_where_it_stopped(home, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 * (1 << 20) + 17)
    (src / "model.bin").write_bytes(data)
    real = os.copy_file_range
    calls = []

    def refuse_after_first(fd_in, fd_out, count, *args):
        calls.append(count)
        if len(calls) == 1:
            return real(fd_in, fd_out, min(count, 4096))  # a short first copy...
        raise OSError(errno.EXDEV, "Invalid cross-device link")  # ...then a refusal

    monkeypatch.setattr(os, "copy_file_range", refuse_after_first)
    snap = SnapshotStore().snapshot(src)
    assert len(calls) == 2
    assert snap.digest == tree_digest(src)[0]
    assert (SnapshotStore().open(snap.uri) / "model.bin").read_bytes() == data


@pytest.mark.parametrize("size", [1000, 3 << 20])
def test_source_written_during_the_copy_is_refused(home, tmp_path, monkeypatch, size):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(size))
    (src / "other.txt").write_text("x")
    real = os.copy_file_range

    def with_a_concurrent_writer(fd_in, fd_out, count, *args):
        with open(src / "model.bin", "ab") as f:  # another process appends meanwhile
            f.write(b"more")
        return real(fd_in, fd_out, count, *args)

    monkeypatch.setattr(os, "copy_file_range", with_a_concurrent_writer)
    with pytest.raises(SnapshotError, match="model.bin' changed while it was being read"):
        SnapshotStore().snapshot(src)
    assert snapshot_dirs(home) == []
    assert not any((home / "snapshots" / ".tmp").iterdir())


@pytest.mark.parametrize("name", ['quote"d', "back\\slash", "tab\there", "é中😀", "plain"])
def test_manifest_lines_are_compact_json_for_any_name(tmp_path, name):
    (tmp_path / name).write_text("x")
    manifest = Manifest.parse(build_manifest(tmp_path).text)
    (entry,) = manifest.entries
    assert entry.path == name
    fields = [entry.kind, entry.path, entry.mode, entry.size, entry.content_hash, entry.target]
    assert entry.line() == json.dumps(fields, separators=(",", ":"))
