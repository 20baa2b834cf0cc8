"""Benchmarks of the snapshot store and the MLMD layer (issue 3).

Figures (each a ratio taken against its reference in the same run):

- snapshot of a 1 GiB tree of mixed file sizes: throughput relative to ``cp -r`` (target ≥ 0.7);
- re-snapshot of the unchanged tree: how many times faster than ``cp -r`` (target ≥ 10);
- verifying a snapshot on open (what serving does before loading it): seconds per GiB;
- MLMD: per-artifact cost of recording a submission with lineage (execution, events, run and
  experiment contexts, duplicate check, locking) relative to a bare ``put_artifacts`` call per
  artifact on the same kind of SQLite store (target ≤ 3);
- MLMD over gRPC: the same submission through MLMD's gRPC service (MLMD's own store in a server
  process on 127.0.0.1, ``tests/mlmd_grpc``) relative to the SQLite store, batches alternating
  between the two in the same run (target ≤ 2).

The snapshot figures compare the *best* of several alternating runs of each side. On this kind
of machine (a VM whose host reclaims free guest memory, ext4 without a journal) the same
``cp -r`` of the same tree takes 0.39 s or 3.6 s within a minute: filling new page cache pages
sometimes faults on the host, and creating files soon after many deletions walks the inode
table. That noise lands on either side at random, so the median of paired ratios swung from
0.2 to 2.8 between runs of identical code; the minimum of each side is what the work itself
costs (the estimator ``timeit`` recommends for the same reason). The paired ratios' median and
spread are reported next to it.

``quick=True`` uses a 256 MiB tree and 200 artifacts.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _figure(
    name: str,
    ratios: list[float],
    unit: str,
    reference: str,
    target: str,
    ok: bool,
    value: float,
    ratio: float | None = None,
) -> dict[str, Any]:
    """One report row; ``ratio`` defaults to the median of the paired ``ratios``."""
    return {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "reference": reference,
        "ratio": round(statistics.median(ratios) if ratio is None else ratio, 3),
        "target": target,
        "passed": ok,
        "runs": len(ratios),
        "spread": f"{min(ratios):.3g}–{max(ratios):.3g}",
    }


def make_tree(root: Path, total_mib: int) -> int:
    """A tree of mixed file sizes: a few large files, many medium, very many small ones."""
    block = bytearray(os.urandom(MIB))
    scale = total_mib / 1024
    plan = [  # (count, size) for 1 GiB; scaled down for quick runs
        (2, 256 * MIB),
        (12, 16 * MIB),
        (256, MIB),
        (4096, 16 * 1024),
    ]
    written = 0
    n = 0
    for count, size in plan:
        for i in range(max(1, int(count * scale))):
            d = root / f"d{n % 32:02d}" / f"s{size}"
            d.mkdir(parents=True, exist_ok=True)
            with open(d / f"f{i:05d}.bin", "wb") as f:
                left = size
                while left:
                    k = min(left, MIB)
                    block[n % MIB] ^= 0xFF  # every file different: no accidental dedup
                    f.write(block[:k])
                    left -= k
            written += size
            n += 1
    return written


def _time(fn: Any) -> float:
    subprocess.run(["sync"], check=False)  # start each measurement with no dirty pages
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_snapshot(work: Path, quick: bool) -> list[dict[str, Any]]:
    from kfp_serve.artifacts.snapshots import SnapshotStore

    total_mib = 256 if quick else 1024
    src = work / "src"
    size = make_tree(src, total_mib)
    time.sleep(1.2)  # let the files age past the digest cache's safety window
    runs = 2 if quick else 7
    os.environ.setdefault("KFP_SERVE_PROGRESS", "0")  # no progress bars in benchmark output
    cp_times, snap_times, again_times, verify_times = [], [], [], []
    for r in range(runs):
        home = work / f"home{r}"
        os.environ["KFP_SERVE_HOME"] = str(home)
        store = SnapshotStore(f"file://{home}/snapshots")
        dst = work / f"cp{r}"
        made: list[Any] = []

        def cp(dst: Path = dst) -> None:
            subprocess.run(["cp", "-r", str(src), str(dst)], check=True)

        def snap(store: SnapshotStore = store, made: list[Any] = made) -> None:
            made.append(store.snapshot(src, progress=False))

        def verify_open(store: SnapshotStore = store, made: list[Any] = made) -> None:
            store.open(made[0].uri)  # what serving does before loading

        # Alternate the order so neither side always pays the other's writeback.
        if r % 2 == 0:
            cp_times.append(_time(cp))
            snap_times.append(_time(snap))
        else:
            snap_times.append(_time(snap))
            cp_times.append(_time(cp))
        again_times.append(_time(snap))
        verify_times.append(_time(verify_open))
        # Copies are deleted only at the end: on ext4 without a journal, creating files soon
        # after deleting many costs extra kernel time (recently deleted inodes are skipped),
        # which would land on whichever side runs first in the next round.
    gib = size / (1 << 30)
    best_cp = min(cp_times)
    # A throughput ratio is the inverse of the time ratio.
    first = [c / s for c, s in zip(cp_times, snap_times, strict=True)]
    again = [c / a for c, a in zip(cp_times, again_times, strict=True)]
    verify = [c / v for c, v in zip(cp_times, verify_times, strict=True)]
    first_ratio = best_cp / min(snap_times)
    again_ratio = best_cp / min(again_times)
    paired = "median of paired runs {:.2f}"
    return [
        _figure(
            f"snapshot {size // MIB} MiB mixed tree: throughput vs cp -r (best of {runs} each)",
            first,
            "GiB/s",
            f"cp -r {gib / best_cp:.2f} GiB/s; {paired.format(statistics.median(first))}",
            "≥ 0.7×",
            first_ratio >= 0.7,
            gib / min(snap_times),
            first_ratio,
        ),
        _figure(
            f"re-snapshot unchanged tree: speed-up vs cp -r (best of {runs} each)",
            again,
            "ms",
            f"cp -r {best_cp * 1000:.0f} ms; {paired.format(statistics.median(again))}",
            "≥ 10×",
            again_ratio >= 10,
            min(again_times) * 1000,
            again_ratio,
        ),
        _figure(
            "verify on open (full re-hash): time per GiB, ratio = cp -r time / verify time",
            verify,
            "s/GiB",
            "cp -r of the same tree",
            "report only",
            True,
            statistics.median(verify_times) / gib,
        ),
    ]


def bench_mlmd(work: Path, quick: bool) -> list[dict[str, Any]]:
    from kfp_serve.artifacts.mlmd import MODEL_TYPE, open_store
    from kfp_serve.artifacts.records import Submission, record_submission

    batches, per_batch = 5, (40 if quick else 200)
    ours_store = open_store(f"sqlite://{work / 'ours.sqlite'}")
    bare_store = open_store(f"sqlite://{work / 'bare.sqlite'}")
    pb = bare_store.pb
    bare = bare_store.raw  # plain ml_metadata: no lock, no checks, no lineage
    type_id = bare_store.type_id(MODEL_TYPE)
    props = {
        "author": "bench",
        "description": "benchmark artifact",
        "tags": {"stage": "bench"},
        "framework": "sklearn",
        "framework_version": "1.0",
        "signature": {"n_features": 4, "output": "label"},
    }
    ratios, ours_ms, bare_ms = [], [], []
    n = 0
    for b in range(batches):
        t = time.perf_counter()
        for _ in range(per_batch):
            n += 1
            sub = Submission("model", f"m{n}", "1.0.0", props)
            record_submission(sub, lambda _replacing, n=n: f"/bench/m{n}", store=ours_store)
        t_ours = (time.perf_counter() - t) / per_batch
        t = time.perf_counter()
        for i in range(per_batch):
            a = pb.Artifact(type_id=type_id, name=f"b{b}-{i}", uri=f"/bench/b{b}-{i}")
            for k, v in props.items():
                a.properties[k].string_value = str(v)
            bare.put_artifacts([a])
        t_bare = (time.perf_counter() - t) / per_batch
        ratios.append(t_ours / t_bare)
        ours_ms.append(t_ours * 1000)
        bare_ms.append(t_bare * 1000)
    return [
        _figure(
            f"MLMD submit {batches * per_batch} artifacts with lineage: per-artifact cost",
            ratios,
            "ms/artifact",
            f"bare put_artifacts {statistics.median(bare_ms):.1f} ms/artifact",
            "≤ 3×",
            statistics.median(ratios) <= 3,
            statistics.median(ours_ms),
        )
    ]


def _submit_batch(store: Any, prefix: str, count: int, props: dict[str, Any]) -> float:
    """Seconds per artifact to record ``count`` submissions with lineage in ``store``."""
    from kfp_serve.artifacts.records import Submission, record_submission

    t = time.perf_counter()
    for i in range(count):
        sub = Submission("model", f"{prefix}-{i}", "1.0.0", props)
        record_submission(sub, lambda _replacing, i=i: f"/bench/{prefix}/{i}", store=store)
    return (time.perf_counter() - t) / count


def bench_mlmd_grpc(work: Path, quick: bool) -> list[dict[str, Any]]:
    from kfp_serve.artifacts.mlmd import open_store
    from tests.mlmd_grpc.fixtures import MlmdGrpcServer

    batches, per_batch = (3, 40) if quick else (6, 150)
    props = {"author": "bench", "tags": {"stage": "bench"}, "framework": "sklearn"}
    server = MlmdGrpcServer(work / "grpc.sqlite").start()
    try:
        stores = {
            "sqlite": open_store(f"sqlite://{work / 'direct.sqlite'}"),
            "grpc": open_store(server.uri),
        }
        for kind, store in stores.items():  # warm: types, contexts, connection
            _submit_batch(store, f"warm-{kind}", 5, props)
        times: dict[str, list[float]] = {"sqlite": [], "grpc": []}
        for b in range(batches):
            # Alternate which side goes first, so neither always runs on a warmer machine.
            order = ["sqlite", "grpc"] if b % 2 == 0 else ["grpc", "sqlite"]
            for kind in order:
                times[kind].append(_submit_batch(stores[kind], f"b{b}", per_batch, props))
    finally:
        server.stop()
    ratios = [g / q for g, q in zip(times["grpc"], times["sqlite"], strict=True)]
    sqlite_ms = statistics.median(times["sqlite"]) * 1000
    return [
        _figure(
            f"MLMD submit over gRPC vs SQLite ({batches} × {per_batch} artifacts each, "
            "alternating): per-artifact cost",
            ratios,
            "ms/artifact",
            f"SQLite store {sqlite_ms:.2f} ms/artifact",
            "≤ 2×",
            statistics.median(ratios) <= 2,
            statistics.median(times["grpc"]) * 1000,
        )
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Run the snapshot and MLMD benchmarks; returns figures for bench/run.py."""
    saved_home = os.environ.get("KFP_SERVE_HOME")
    # On the same filesystem as the repository work (not tmpfs), like real use.
    base = Path(os.environ.get("KFP_SERVE_BENCH_DIR") or tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-", dir=base) as tmp:
        work = Path(tmp)
        try:
            figures = bench_snapshot(work, quick)
            os.environ["KFP_SERVE_HOME"] = str(work / "mlmd-home")
            figures += bench_mlmd(work, quick)
            figures += bench_mlmd_grpc(work, quick)
        finally:
            if saved_home is None:
                os.environ.pop("KFP_SERVE_HOME", None)
            else:
                os.environ["KFP_SERVE_HOME"] = saved_home
    return figures


if __name__ == "__main__":  # pragma: no cover - manual run
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
