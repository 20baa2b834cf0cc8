"""Benchmarks of the gated rollout (issue 15): what the gate costs on a real local endpoint.

Figures:

- **mirroring's added p50 on the stable path**: an endpoint with a 20 % canary (the candidate
  answers classes 10..12, so every answer says which revision gave it). One keep-alive client
  sends single-row requests; the p50 latency of the answers the *stable* revision gave is
  measured with a mirror session open (each of those requests is also sent to the candidate)
  and without, in alternating rounds; the figure is the median of the per-round differences
  (target ≤ 0.2 ms);
- **time from canary start to decision, 500-request window**: ``gated_rollout`` with the
  held-out rows replayed as traffic, from the canary taking traffic to the decision applied
  (promote + alias move). The reference is the time the same client needs for 500 requests
  through the endpoint without a rollout, so the ratio is the gate's whole overhead factor
  (mirror session start, polling, promotion) over the traffic itself.

The client is a raw socket with a pre-encoded request (an HTTP library would add more noise
than the figure). Run alone: ``python -m bench.gated_rollout [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WINDOW = 500
MIRROR_TARGET_MS = 0.2
ROW = [5.1, 3.5, 1.4, 0.2]


def _log(message: str) -> None:
    print(f"   gated_rollout: {message}", file=sys.stderr, flush=True)


class _Client:
    """One keep-alive connection sending the same predict request; answers parsed minimally."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = json.dumps({"instances": [ROW]}).encode()
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def predict(self) -> tuple[float, int]:
        """(seconds, predicted class) of one request."""
        started = time.perf_counter()
        self.sock.sendall(self.request)
        data = b""
        while True:
            data += self.sock.recv(65536)
            end = data.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = data[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                              else len(head)])
            while len(data) < end + 4 + length:
                data += self.sock.recv(65536)
            break
        seconds = time.perf_counter() - started
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the endpoint answered {data[:200]!r}")
        return seconds, json.loads(data[end + 4 : end + 4 + length])["predictions"][0]

    def close(self) -> None:
        self.sock.close()


def _stable_p50(client: _Client, n: int) -> float:
    """p50 (ms) of the answers the stable revision (classes < 10) gave among ``n`` requests."""
    stable = [s for s, label in (client.predict() for _ in range(n)) if label < 10]
    return statistics.median(stable) * 1000.0


def _models(root: Path) -> tuple[Path, Path, Any, Any]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    root.mkdir(parents=True, exist_ok=True)
    dirs = []
    for name, labels in (("stable", y), ("shifted", y + 10)):
        d = root / name
        d.mkdir()
        joblib.dump(LogisticRegression(max_iter=500).fit(x, labels), d / "model.joblib")
        dirs.append(d)
    return dirs[0], dirs[1], x, y


def _manifest(name: str, model: Path, canary: int | None = None) -> dict[str, Any]:
    from kfp_serve.serving.isvc import Provenance, build_inference_service

    cfg: dict[str, Any] = {"protocol_version": "v1"}
    if canary is not None:
        cfg["predictor"] = {"canary_traffic_percent": canary}
    return build_inference_service(name, f"file://{model}", "sklearn", serve_config=cfg,
                                   provenance=Provenance(model_id=1))


def mirror_overhead(root: Path, rounds: int, n: int) -> dict[str, Any]:
    from kfp_serve.retry import wait_until
    from kfp_serve.serving.backends.local import LocalBackend, mirror, registry
    from kfp_serve.serving.gated_rollout import LocalMirrorSource

    stable_dir, shifted_dir, _, _ = _models(root)
    backend = LocalBackend(progress=False)
    name = "bench-mirror"
    backend.apply(_manifest(name, stable_dir), timeout=300)
    backend.apply(_manifest(name, shifted_dir, canary=20), timeout=300)
    source = LocalMirrorSource(name)
    record = registry.read_record(name)
    client = _Client(record.url, f"/v1/models/{name}:predict")
    try:
        _stable_p50(client, n)  # warm both revisions and the pooled connections
        added, off_p50, on_p50, dropped = [], [], [], 0
        for i in range(rounds * 2):
            # Blocks of n requests, mirrored or not, in the order off-on, on-off, ...: a slow
            # patch of the shared machine hits both sides of a pair alike.
            pair = {}
            for mirrored in ((False, True) if i % 2 == 0 else (True, False)):
                if mirrored:
                    source.start()
                pair[mirrored] = _stable_p50(client, n)
                if mirrored:
                    dropped += source.window()[1]["dropped"]
                    source.stop()
                    wait_until(lambda: source.status()["session"] is None, deadline=10,
                               describe="the mirror session closing")
            off_p50.append(pair[False])
            on_p50.append(pair[True])
            added.append(pair[True] - pair[False])
        _log(f"stable p50 off {statistics.median(off_p50):.3f} ms, on "
             f"{statistics.median(on_p50):.3f} ms, dropped {dropped}")
    finally:
        client.close()
        mirror.close_session(registry.endpoint_dir(name))
        backend.delete(name)
    value = statistics.median(added)
    return {
        "name": "mirroring: added p50 on the stable path (1 connection, 20 % canary)",
        "value": round(value, 4), "unit": "ms", "reference": round(statistics.median(off_p50), 4),
        "ratio": round(statistics.median(on_p50) / statistics.median(off_p50), 3),
        "target": f"≤ {MIRROR_TARGET_MS:g} ms", "passed": value <= MIRROR_TARGET_MS,
        "runs": len(added),
        "spread": f"{min(added):.3f}–{max(added):.3f} ms; mirrored dropped: {dropped}",
    }


def decision_time(root: Path) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts
    from kfp_serve.serving import gated_rollout as gr
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.deploy import serve

    _, _, x, y = _models(root / "decision")
    for version, c in (("1.0.0", 1.0), ("1.1.0", 2.0)):
        artifacts.Model(model=LogisticRegression(C=c, max_iter=1000).fit(x, y),
                        name="bench-gated", version=version).submit_artifact()
    name = "bench-gated"
    serve("bench-gated:1.0.0", name=name, timeout=300, backend="local")
    try:
        # The reference: the replay client's own time for WINDOW requests, no rollout.
        replay = gr.Replay(name, x.tolist())
        with replay:
            started = time.monotonic()
            while replay.sent < WINDOW:
                time.sleep(0.005)
            traffic_s = time.monotonic() - started
        gate = {"offline": {"accuracy": {"min": 0.9, "max_change": 0.02}}, "canary": 20,
                "live": {"window_requests": WINDOW, "window_seconds": 300,
                         "max_p99_ratio": 50, "min_agreement": 0.9}}
        report = gr.gated_rollout(name, "bench-gated:1.1.0", gate, x, y, progress=False,
                                  replay=x.tolist())
        if report.decision != gr.PROMOTED:
            raise RuntimeError(f"the benchmark's candidate was not promoted:\n"
                               f"{report.to_markdown()}")
        _log(f"decision after {report.decision_seconds:.2f} s; {WINDOW} requests alone take "
             f"{traffic_s:.2f} s; window {report.window}")
    finally:
        LocalBackend(progress=False).delete(name)
    return {
        "name": f"gated rollout: canary start to decision, {WINDOW}-request window",
        "value": round(report.decision_seconds, 3), "unit": "s",
        "reference": round(traffic_s, 3),
        "ratio": round(report.decision_seconds / traffic_s, 3),
        "target": "report", "passed": True, "runs": 1,
        "spread": f"reference: {WINDOW} replayed requests without a rollout",
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    rounds, n = (3, 200) if quick else (7, 500)
    with tempfile.TemporaryDirectory() as home:
        old = os.environ.get("KFP_SERVE_HOME")
        os.environ["KFP_SERVE_HOME"] = home
        os.environ.pop("KFP_SERVE_MLMD", None)
        try:
            figures = [mirror_overhead(Path(home) / "mirror", rounds, n)]
            figures.append(decision_time(Path(home)))
        finally:
            from kfp_serve.serving.runtime import warm_pool

            warm_pool.stop()
            if old is None:
                os.environ.pop("KFP_SERVE_HOME", None)
            else:
                os.environ["KFP_SERVE_HOME"] = old
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    for figure in run(quick=parser.parse_args().quick):
        print(figure)
