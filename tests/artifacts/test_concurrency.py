"""Concurrent writer processes on one MLMD store (SQLite, and MLMD's gRPC service): nothing
lost, nothing duplicated."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kfp_serve import artifacts

pytestmark = pytest.mark.every_store

PROCESSES = 4
PER_PROCESS = 100

WORKER = textwrap.dedent(
    """
    import sys
    from sklearn.dummy import DummyClassifier
    from kfp_serve import artifacts
    worker, count = int(sys.argv[1]), int(sys.argv[2])
    model = DummyClassifier().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    for i in range(count):
        artifacts.Model(
            model=model, name=f"w{worker}-m{i}", version=f"1.{i}.0",
            author=f"worker-{worker}", tags={"worker": str(worker), "i": str(i)},
        ).submit_artifact()
    """
)


def test_four_processes_submit_400_artifacts(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(w), str(PER_PROCESS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    elapsed = time.monotonic() - start

    records = artifacts.list_artifacts(kind="model")
    assert len(records) == PROCESSES * PER_PROCESS, elapsed
    assert len({r.id for r in records}) == len(records)
    assert len({(r.name, r.version) for r in records}) == len(records)
    runs = set()
    for r in records:
        worker, i = r.tags["worker"], r.tags["i"]
        assert (r.name, r.version, r.author) == (f"w{worker}-m{i}", f"1.{i}.0", f"worker-{worker}")
        assert r.signature["n_features"] == 2 and r.framework == "sklearn"
        assert Path(r.uri).is_dir()
    # Lineage of the first and last record of every writer: produced by a submit execution,
    # in the writer's own run.
    by_worker: dict[str, list] = {}
    for r in records:
        by_worker.setdefault(r.tags["worker"], []).append(r)
    for worker, own in by_worker.items():
        for r in (own[0], own[-1]):
            graph = artifacts.lineage(r.id)
            assert graph["produced_by"]["step"] == "submit_artifact"
            assert graph["experiment"] == "default"
            runs.add((worker, graph["run"]))
    assert len(runs) == PROCESSES  # one run per process, the same for all its records
    assert len({run for _, run in runs}) == PROCESSES
