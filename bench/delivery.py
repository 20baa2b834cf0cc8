"""Benchmarks of model references and the gate decisions (issue 15).

Figures (ratios taken against a reference in the same run, on a fresh SQLite MLMD):

- ``resolve("iris@champion")`` relative to ``find_artifact("iris", "<version>")``: what naming
  a model by alias costs over naming its exact version (one context read on top; target ≤ 3);
- ``set_alias`` (a move: one put_execution upserting the context, the history execution and its
  event) relative to one bare ``put_execution`` of an execution with one event (target ≤ 3);
- ``decide_live`` on a complete 500-request window: microseconds per decision (target ≤ 100 µs;
  the decision runs once per polling round, so this is its whole overhead on the window).

The ratios are the median of paired, alternating rounds; the spread is their min–max.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any


def _best(fn: Any, n: int) -> float:
    """Seconds per call: the best of three batches of ``n`` calls."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best


def _figure(name: str, ratios: list[float], value: float, unit: str, reference: str,
            target: float) -> dict[str, Any]:
    ratio = statistics.median(ratios)
    return {
        "name": name, "value": round(value, 6), "unit": unit, "reference": reference,
        "ratio": round(ratio, 3), "target": f"≤ {target:g}", "passed": ratio <= target,
        "runs": len(ratios), "spread": f"{min(ratios):.3g}–{max(ratios):.3g}",
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    rounds, n = (3, 20) if quick else (7, 50)
    with tempfile.TemporaryDirectory() as home:
        os.environ["KFP_SERVE_HOME"] = home
        os.environ.pop("KFP_SERVE_MLMD", None)
        from kfp_serve import artifacts
        from kfp_serve.artifacts.metadata import metadata_store
        from kfp_serve.artifacts.mlmd import MODEL_TYPE, SUBMIT_EXECUTION
        from kfp_serve.serving.gate import LiveCriteria, LiveWindow, decide_live

        X, y = load_iris(return_X_y=True)
        clf = LogisticRegression(max_iter=300).fit(X, y)
        for v in ("1.0.0", "2.0.0"):
            artifacts.Model(model=clf, name="iris", version=v).submit_artifact()
        artifacts.set_alias("iris", "champion", "1.0.0")
        store = metadata_store()
        pb = store.pb
        artifact = store.get_artifact_by_type_and_name(MODEL_TYPE, "iris@1.0.0")

        def bare_put() -> None:
            with store.write():
                store.put_execution(
                    pb.Execution(type_id=store.type_id(SUBMIT_EXECUTION)),
                    [(artifact, pb.Event(type=pb.Event.INPUT))], [],
                )

        versions = iter(["2.0.0", "1.0.0"] * 10_000)
        resolve_ratios, move_ratios = [], []
        resolve_s = move_s = 0.0
        for _ in range(rounds):
            exact = _best(lambda: artifacts.find_artifact("iris", "1.0.0", kind="model"), n)
            resolve_s = _best(lambda: artifacts.resolve("iris@champion"), n)
            resolve_ratios.append(resolve_s / exact)
            put = _best(bare_put, n)
            move_s = _best(lambda: artifacts.set_alias("iris", "champion", next(versions)), n)
            move_ratios.append(move_s / put)

        window = LiveWindow(300, 500, 2, 12.0, 10.0, 500, 490)
        criteria = LiveCriteria()
        decide_s = _best(lambda: decide_live(window, criteria), 2000)
    return [
        _figure("resolve name@alias vs name:version", resolve_ratios, resolve_s * 1e3, "ms",
                "find_artifact(name, version)", 3),
        _figure("set_alias (atomic move + history) vs bare put_execution", move_ratios,
                move_s * 1e3, "ms", "put_execution, 1 event", 3),
        {"name": "decide_live, 500-request window", "value": round(decide_s * 1e6, 2),
         "unit": "µs", "reference": None, "ratio": None, "target": "≤ 100 µs",
         "passed": decide_s * 1e6 <= 100, "runs": 3, "spread": ""},
    ]


if __name__ == "__main__":
    for figure in run(quick=True):
        print(figure)
