"""Local end-to-end pipeline wall time, by step, against a plain one-process script.

The pipeline (``sklearn-transformer`` under kfp.local) runs each step in its own Python
process and records everything (MLMD, snapshots, a transformer + predictor endpoint, a smoke
test). The reference does the same useful work as one plain script with no bookkeeping: train
a scaler + classifier, save it in the serving layout, start a model server on 127.0.0.1, wait
until it is ready and send the same held-out requests. Both are timed from a fresh process, so
both pay their interpreter start and imports. Target: pipeline ≤ 2× the reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PIPELINE = "sklearn-transformer"
TARGET_RATIO = 2.0
ENDPOINT = "bench-e2e"


@contextlib.contextmanager
def _isolated_home() -> Iterator[Path]:
    """A throw-away KFP_SERVE_HOME with local serving; endpoints stopped afterwards."""
    saved = {k: os.environ.get(k) for k in ("KFP_SERVE_HOME", "KFP_SERVE_BACKEND")}
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-") as home:
        os.environ["KFP_SERVE_HOME"] = home
        os.environ["KFP_SERVE_BACKEND"] = "local"
        try:
            yield Path(home)
        finally:
            with contextlib.suppress(Exception):
                from kfp_serve.serving.backends.base import get_backend

                backend = get_backend("local")
                for status in backend.list():
                    backend.delete(status.name)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def pipeline_run() -> dict:
    """One local pipeline run, timed like the reference: as a fresh process (``kfp-serve run``
    would be one), with its per-step seconds."""
    with _isolated_home():
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", "from bench.end_to_end import pipeline_work; pipeline_work()"],
            cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True, text=True,
        ).stdout
        wall = time.perf_counter() - start
    result = json.loads(out.strip().splitlines()[-1])
    if not result["blessed"]:
        raise RuntimeError(f"pipeline run was not blessed: {result['smoke_verdict']}")
    return {**result, "process_seconds": wall}


def pipeline_work() -> None:
    """Run the pipeline in this process and print its result as the last line of JSON."""
    from kfp_serve.pipelines.local_run import run_local

    result = run_local(PIPELINE, {"endpoint_name": ENDPOINT}, progress=False)
    print(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_script_run() -> float:
    """The reference, timed as ``time python script.py`` would: one fresh process that pays
    its own interpreter start and imports, as every pipeline step pays its own."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from bench.end_to_end import plain_work; plain_work()"],
        cwd=Path(__file__).resolve().parents[1], check=True,
    )
    return time.perf_counter() - start


def plain_work() -> None:
    """The reference's work: train, save, start a model server, predict — in one process."""
    import httpx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from kfp_serve.artifacts import Model

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=42,
                                                   stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Model(model=model, name="plain", version="1.0.0").save(Path(tmp) / "m")
        port = _free_port()
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "kfp_serve.serving.runtime.predictor", "--model_name", "plain",
             "--model_dir", str(model_dir), "--http_port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=5.0) as client:
                deadline = time.monotonic() + 120
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{base}/v2/health/ready").status_code == 200:
                            break
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"model server did not start; see {log.name}")
                    time.sleep(0.1)
                for row in x_test[:10].tolist():
                    answer = client.post(f"{base}/v1/models/plain:predict",
                                         json={"instances": [row]})
                    answer.raise_for_status()
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


def run(quick: bool) -> list[dict]:
    """Figures: pipeline wall time vs the plain script, and the pipeline's time per step."""
    repeats = 1 if quick else 3
    runs = [pipeline_run() for _ in range(repeats)]
    plain = [plain_script_run() for _ in range(repeats)]
    walls = [r["process_seconds"] for r in runs]
    wall, reference = statistics.median(walls), statistics.median(plain)
    ratio = wall / reference
    figures = [{
        "name": f"local pipeline {PIPELINE} wall time",
        "value": round(wall, 2),
        "unit": "s",
        "reference": round(reference, 2),
        "ratio": round(ratio, 2),
        "target": f"≤ {TARGET_RATIO:g}× a one-process script (train, save, serve, predict)",
        "passed": ratio <= TARGET_RATIO,
        "runs": repeats,
        "spread": f"{min(walls):.1f}–{max(walls):.1f} s (script {min(plain):.1f}–"
                  f"{max(plain):.1f} s)",
    }]
    for step in runs[0]["step_seconds"]:
        values = [r["step_seconds"].get(step, 0.0) for r in runs]
        figures.append({
            "name": f"step {step}",
            "value": round(statistics.median(values), 2),
            "unit": "s",
            "reference": None,
            "ratio": round(statistics.median(values) / wall, 3),  # of the process wall time
            "target": "breakdown (share of the pipeline wall time)",
            "passed": True,
            "runs": repeats,
            "spread": f"{min(values):.2f}–{max(values):.2f} s",
        })
    return figures


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
