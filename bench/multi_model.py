"""Multi-model serving: the memory of one endpoint hosting N small models against N single-model
endpoints, and the time to add one model to a running endpoint.

Both setups serve the same N scikit-learn models (iris, each with its own labels) from verified
snapshots on the local backend, each model answering one request before memory is read. Memory
is the sum over the endpoint processes (routers and model servers; the warm pool they are forked
from is shared infrastructure and left out) of PSS (shared pages split between the processes
sharing them: what the machine really pays) and RSS (every resident page counted in full), read
from ``/proc/PID/smaps_rollup``.

Run alone with ``python -m bench.multi_model``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = 20
#: One endpoint hosting MODELS models should take at most this share of MODELS endpoints' memory.
TARGET_RATIO = 0.25
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                values[key] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


def _endpoint_memory(names: list[str]) -> tuple[int, int, int]:
    """(PSS KiB, RSS KiB, processes) of every process of the endpoints ``names``."""
    from kfp_serve.serving.backends.local.registry import read_record

    pss = rss = count = 0
    for name in names:
        record = read_record(name)
        assert record is not None, name
        for proc in [record.router, *(p for r in record.revisions for p in r.processes)]:
            p, r = _memory_kib(proc.pid)
            pss, rss, count = pss + p, rss + r, count + 1
    return pss, rss, count


def _snapshots(root: Path, n: int) -> list[tuple[str, str]]:
    """(model name, snapshot URI) of ``n`` small models."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kfp_serve.artifacts.snapshots import SnapshotStore

    X, y = load_iris(return_X_y=True)
    store = SnapshotStore()
    out = []
    for i in range(n):
        d = root / f"m{i}"
        d.mkdir()
        joblib.dump(LogisticRegression(max_iter=300).fit(X, y + 10 * i), d / "model.joblib")
        out.append((f"bench-m{i}", store.snapshot(d, progress=False).uri))
    return out


def _ask(url: str, model: str) -> None:
    import httpx

    r = httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": ROWS},
                   timeout=60, trust_env=False)
    r.raise_for_status()


def run(quick: bool) -> list[dict]:
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.isvc import build_inference_service
    from kfp_serve.serving.runtime import warm_pool
    from kfp_serve.serving.trained_model import parent_inference_service, trained_model_manifest

    with tempfile.TemporaryDirectory(prefix="bench-multi-") as tmp:
        root = Path(tmp)
        old_home = os.environ.get("KFP_SERVE_HOME")
        os.environ["KFP_SERVE_HOME"] = str(root / "home")
        backend = LocalBackend(progress=False, stop_grace=2.0)
        try:
            models = _snapshots(root, MODELS)
            warm_pool.ensure_started(wait=True, timeout=120)
            # One endpoint, MODELS TrainedModels, each timed from apply to loaded.
            parent = parent_inference_service(
                "bench-multi", "sklearn", serve_config={"limits": {"memory": "4Gi"}}
            )
            url = backend.apply(parent, timeout=120).url
            loads = []
            for name, uri in models:
                manifest = trained_model_manifest(
                    name, "bench-multi", storage_uri=uri, framework="sklearn", memory="32Mi"
                )
                started = time.perf_counter()
                backend.apply_trained_model(manifest, timeout=120)
                loads.append(time.perf_counter() - started)
                _ask(url, name)
            multi_pss, multi_rss, multi_procs = _endpoint_memory(["bench-multi"])
            # MODELS single-model endpoints of the same models.
            singles = []
            for name, uri in models:
                status = backend.apply(
                    build_inference_service(name, uri, "sklearn"), timeout=120
                )
                _ask(status.url, name)
                singles.append(name)
            single_pss, single_rss, single_procs = _endpoint_memory(singles)
        finally:
            backend.delete_all()
            if old_home is None:
                os.environ.pop("KFP_SERVE_HOME", None)
            else:
                os.environ["KFP_SERVE_HOME"] = old_home
    mib = 1024
    pss_ratio = multi_pss / single_pss
    rss_ratio = multi_rss / single_rss
    load = statistics.median(loads)
    return [
        {
            "name": f"memory (PSS) of 1 endpoint hosting {MODELS} models, {MODELS} single-model "
            "endpoints as reference",
            "value": round(multi_pss / mib, 1),
            "unit": "MiB",
            "reference": round(single_pss / mib, 1),
            "ratio": round(pss_ratio, 3),
            "target": f"<= {TARGET_RATIO} x",
            "passed": pss_ratio <= TARGET_RATIO,
            "runs": 1,
            "spread": f"{multi_procs} vs {single_procs} processes",
        },
        {
            "name": f"memory (RSS) of 1 endpoint hosting {MODELS} models, {MODELS} single-model "
            "endpoints as reference",
            "value": round(multi_rss / mib, 1),
            "unit": "MiB",
            "reference": round(single_rss / mib, 1),
            "ratio": round(rss_ratio, 3),
            "target": f"<= {TARGET_RATIO} x",
            "passed": rss_ratio <= TARGET_RATIO,
            "runs": 1,
            "spread": f"{multi_procs} vs {single_procs} processes",
        },
        {
            "name": "time to add one model to a running multi-model endpoint (apply to loaded)",
            "value": round(load, 3),
            "unit": "s",
            "reference": None,
            "ratio": None,
            "target": "report",
            "passed": True,
            "runs": len(loads),
            "spread": f"{min(loads):.3f}-{max(loads):.3f} s",
        },
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
