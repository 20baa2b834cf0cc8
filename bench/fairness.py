"""Fairness of a local endpoint under concurrent load: is every client served, and how soon?

Issue 11 asked whether the clients of ``test_predictor_killed_mid_load_...`` were starved (one got
15 answers while another got none) or only counted too early. This measures it, per client:
the time from the start of the load to its first answer and the longest it went without one,
for

- the kill test's own load: 8 threads in one process, each with its own ``Endpoint`` (sync
  httpx under the GIL);
- 64 keep-alive connections from the asyncio client in its own process (``bench.loadgen``),

each through the endpoint URL (router -> transformer -> predictor) and, to find where a wait
comes from, straight to the transformer (no router), with 0, 1 and 2 CPU hogs beside it.

Run alone (not part of ``make bench``): ``python -m bench.fairness [--seconds S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.end_to_end import _isolated_home
from bench.loadgen import ConnectionStats, cpu_hog, run_load

ENDPOINT = "bench-fairness"
THREADS = 8
CONNECTIONS = 64


def _serve() -> Any:
    """An iris scaler + classifier endpoint served through ``serve()``; its Endpoint."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from kfp_serve import artifacts, serving

    X, y = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    model_id = artifacts.Model(model=clf, name="iris", version="1.0.0").submit_artifact()
    transformer_id = artifacts.Transformer(name="iris-scaler", transformer=scaler).submit_artifact()
    return serving.serve(model_id, transformer_id, name=ENDPOINT, timeout=120), X


def threads_load(rows: list[list[float]], seconds: float) -> list[ConnectionStats]:
    """The kill test's load: THREADS threads, one ``Endpoint`` each, back to back."""
    from kfp_serve.serving.endpoint import Endpoint

    stats: list[ConnectionStats | None] = [None] * THREADS
    began = time.perf_counter()
    stop = began + seconds

    def client(i: int) -> None:
        answers, first, last, gap = 0, None, began, 0.0
        with Endpoint(ENDPOINT, retry_window=2.0, timeout=10.0) as ep:
            while time.perf_counter() < stop:
                ep.predictions(rows)
                now = time.perf_counter()
                answers += 1
                first = now - began if first is None else first
                gap, last = max(gap, now - last), now
        stats[i] = ConnectionStats(answers, first, gap * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for s in stats if s is not None]


def _summary(stats: list[ConnectionStats], max_ms: float | None = None) -> dict[str, Any]:
    firsts = [s.first_answer_s for s in stats if s.first_answer_s is not None]
    answers = [s.answers for s in stats]
    out = {
        "clients": len(stats),
        "never_answered": sum(1 for s in stats if s.first_answer_s is None),
        "first_answer_s_max": round(max(firsts), 3) if firsts else None,
        "first_answer_s_median": round(statistics.median(firsts), 3) if firsts else None,
        "longest_gap_ms_max": round(max(s.longest_gap_ms for s in stats), 1),
        "answers_min": min(answers),
        "answers_max": max(answers),
        "answers_total": sum(answers),
    }
    if max_ms is not None:
        out["longest_request_ms"] = round(max_ms, 1)
    return out


def measure(seconds: float, report: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every scenario, with 0, 1 and 2 CPU hogs; one summary dict per run."""
    results = []
    with _isolated_home():
        endpoint, X = _serve()
        rows = X[::30].tolist()
        body = json.dumps({"instances": rows}).encode()
        path = f"/v1/models/{endpoint.model_name}:predict"
        targets = {"router": endpoint.url, "transformer": endpoint.status.components["transformer"]}
        for hogs in (0, 1, 2):
            hog = cpu_hog(seconds * 4 + 30, hogs) if hogs else contextlib.nullcontext([])
            with hog:
                for name, base in targets.items():
                    r = run_load(base + path, body, connections=CONNECTIONS, duration=seconds,
                                 tool="asyncio")
                    row = {"load": f"{CONNECTIONS} asyncio conns", "to": name, "hogs": hogs,
                           "errors": r.errors, "rps": round(r.rps),
                           **_summary(r.connections, r.max_ms)}
                    results.append(row)
                    report(json.dumps(row))
                row = {"load": f"{THREADS} Endpoint threads", "to": "router", "hogs": hogs,
                       **_summary(threads_load(rows, seconds))}
                results.append(row)
                report(json.dumps(row))
        endpoint.close()
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.fairness [--seconds S]``: print one JSON line per scenario."""
    parser = argparse.ArgumentParser(description="Per-client fairness of a local endpoint.")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per scenario")
    args = parser.parse_args(argv)
    measure(args.seconds)


if __name__ == "__main__":
    main()
