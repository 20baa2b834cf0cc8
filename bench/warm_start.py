"""Serve-step start-up: ``LocalBackend.apply`` of a predictor + transformer endpoint until Ready.

Two figures from the same run, each the median of fresh applies (new name each time, so every
apply starts two model servers and a router):

- servers forked from the warm pool (the default; the pool is started and warm beforehand, as a
  pipeline's first step does with ``launch.warm_up``);
- plain starts (``KFP_SERVE_WARM_POOL=0``), the reference: interpreter start plus imports.

Run alone with ``python -m bench.warm_start``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: The pool should cut a serve step to well under half of a plain start (2.5 s -> 0.9 s).
TARGET_RATIO = 0.5


def _artifacts(root: Path) -> tuple[Path, Path]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    t_dir, m_dir = root / "transformer", root / "model"
    t_dir.mkdir()
    m_dir.mkdir()
    joblib.dump(scaler, t_dir / "transformer.joblib")
    joblib.dump(model, m_dir / "model.joblib")
    return t_dir, m_dir


def _applies(prefix: str, runs: int, t_dir: Path, m_dir: Path) -> list[float]:
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.isvc import build_inference_service

    backend = LocalBackend(progress=False, stop_grace=2.0)
    times = []
    for i in range(runs):
        name = f"{prefix}-{i}"
        manifest = build_inference_service(
            name, f"file://{m_dir}", "sklearn", transformer_uri=f"file://{t_dir}"
        )
        started = time.perf_counter()
        status = backend.apply(manifest, timeout=120)
        times.append(time.perf_counter() - started)
        assert status.ready, status.message
        # Another endpoint keeps running meanwhile, so deleting this one does not stop the pool.
        backend.delete(name)
    return times


def run(quick: bool) -> list[dict]:
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.isvc import build_inference_service
    from kfp_serve.serving.runtime import launch, warm_pool

    runs = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        root = Path(tmp)
        old_home = os.environ.get("KFP_SERVE_HOME")
        os.environ["KFP_SERVE_HOME"] = str(root / "home")
        try:
            t_dir, m_dir = _artifacts(root)
            backend = LocalBackend(progress=False, stop_grace=2.0)
            # An endpoint that stays up: deleting the measured ones never stops the pool.
            backend.apply(
                build_inference_service("keeper", f"file://{m_dir}", "sklearn"), timeout=120
            )
            launch.warm_up()
            warm_pool.ensure_started(wait=True, timeout=60)
            _applies("warmup", 1, t_dir, m_dir)  # the pool has finished importing
            warm = _applies("warm", runs, t_dir, m_dir)
            os.environ[warm_pool.ENABLE_ENV] = "0"
            try:
                cold = _applies("cold", runs, t_dir, m_dir)
            finally:
                os.environ.pop(warm_pool.ENABLE_ENV, None)
            backend.delete_all()
        finally:
            if old_home is None:
                os.environ.pop("KFP_SERVE_HOME", None)
            else:
                os.environ["KFP_SERVE_HOME"] = old_home
    w, c = statistics.median(warm), statistics.median(cold)
    return [
        {
            "name": "serve step, predictor + transformer, warm pool (plain start as reference)",
            "value": round(w, 3),
            "unit": "s",
            "reference": round(c, 3),
            "ratio": round(w / c, 3),
            "target": f"<= {TARGET_RATIO} x plain start",
            "passed": w / c <= TARGET_RATIO,
            "runs": runs,
            "spread": f"warm {min(warm):.2f}-{max(warm):.2f} s, plain {min(cold):.2f}-"
            f"{max(cold):.2f} s",
        }
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
