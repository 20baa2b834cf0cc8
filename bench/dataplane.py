"""Data-plane benchmarks: gRPC vs REST, binary vs JSON, batching, /metrics, payload logging,
workers.

Every comparison is taken in one run against the same kind of server, started the way the local
backend starts it (the runtime's own flags). The load generator is pinned to CPU 1 when the
machine has two; the servers share whatever is left. On a shared machine the absolute numbers
move; the ratios, taken back to back, are what the targets apply to.

Figures (name: target):
- gRPC vs REST v2, single row, both with Python asyncio clients: >= 1.0x req/s.
- binary vs JSON v2, one 64x30 FP32 batch per request (wrk): reported.
- batching, 64 connections of single rows, maxBatchSize 32 vs none (wrk): >= 2x req/s, and
  p99 <= maxLatency + unbatched p99.
- /metrics on vs off, payload logging on vs off (wrk): cost <= 5 % req/s each.
- --workers 2 vs 1 (wrk): reported (two cores, the generator takes one).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
from sklearn.linear_model import LogisticRegression

from bench.loadgen import run_load
from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready

LOAD_CPUS = "1" if (os.cpu_count() or 1) >= 2 else None
MAX_LATENCY_MS = 5


@contextmanager
def _server(model_dir: Path, logs: Path, name: str, *args: str) -> Iterator[Any]:
    proc = start_server("predictor", "model", model_dir, log_path=logs / f"{name}.log",
                        extra_args=list(args))
    try:
        wait_ready(proc.url, timeout=180, proc=proc)
        yield proc
    finally:
        stop_server(proc)


def _model(root: Path, n_features: int) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, n_features))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    d = root / f"lr{n_features}"
    d.mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), d / "model.joblib")
    return d


def _v2(X: np.ndarray, datatype: str) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input-0", "shape": list(X.shape),
                                     "datatype": datatype, "data": X.ravel().tolist()}]})


def _binary(X: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    raw = X.astype("<f4").tobytes()
    head = orjson.dumps({"inputs": [{"name": "input-0", "shape": list(X.shape),
                                     "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}]})
    return head + raw, {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(head))}


GRPC_LOAD = """
import asyncio, json, sys, time
import numpy as np
from kfp_serve.serving.runtime import _kserve
import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pbg
port, conns, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
req = pb.ModelInferRequest(model_name="model")
req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
req.raw_input_contents.append(np.zeros((1, 4)).tobytes())
lat = []
async def worker(stub, stop):
    while time.perf_counter() < stop:
        t = time.perf_counter(); await stub.ModelInfer(req); lat.append(time.perf_counter() - t)
async def main():
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)
        await stub.ModelInfer(req)
        start = time.perf_counter(); stop = start + duration
        await asyncio.gather(*(worker(stub, stop) for _ in range(conns)))
        el = time.perf_counter() - start
    lat.sort()
    print(json.dumps({"rps": len(lat) / el, "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3}))
asyncio.run(main())
"""


def _grpc_load(port: int, connections: int, duration: float) -> dict[str, float]:
    prefix = ["taskset", "-c", LOAD_CPUS] if LOAD_CPUS else []
    out = subprocess.run(
        [*prefix, sys.executable, "-c", GRPC_LOAD, str(port), str(connections), str(duration)],
        capture_output=True, text=True, timeout=duration + 120, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class _Sink(http.server.BaseHTTPRequestHandler):
    # Keep-alive, as a real event sink is: HTTP/1.0 would make every event a new connection.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _figure(name: str, value: float, reference: float, target: str, passed: bool | None,
            unit: str = "req/s", spread: str = "") -> dict[str, Any]:
    return {"name": name, "value": round(value, 1), "unit": unit,
            "reference": round(reference, 1),
            "ratio": round(value / reference, 3) if reference else None,
            "target": target, "passed": passed, "runs": 1, "spread": spread}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every data-plane figure (see the module docstring)."""
    duration = 3.0 if quick else 6.0
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-dp-") as tmp:
        root = Path(tmp)
        logs = root / "logs"
        m4, m30 = _model(root, 4), _model(root, 30)
        row = _v2(np.zeros((1, 4)), "FP64")

        # gRPC vs REST v2: same server, Python asyncio clients on both sides.
        grpc_port = free_port()
        with _server(m4, logs, "grpc", f"--grpc_port={grpc_port}") as p:
            rest = run_load(f"{p.url}/v2/models/model/infer", row, connections=16,
                            duration=duration, cpus=LOAD_CPUS, tool="asyncio")
            grpc_result = _grpc_load(grpc_port, 16, duration)
        figures.append(_figure("gRPC vs REST v2 (1 row, 16 conns, python clients)",
                               grpc_result["rps"], rest.rps, ">= 1.0x",
                               grpc_result["rps"] >= rest.rps,
                               spread=f"p99 {grpc_result['p99_ms']:.2f} vs {rest.p99_ms:.2f} ms"))

        # Binary vs JSON for a 64x30 FP32 batch.
        X = np.random.default_rng(1).normal(size=(64, 30)).astype(np.float32)
        body, headers = _binary(X, "FP32")
        with _server(m30, logs, "binary") as p:
            url = f"{p.url}/v2/models/model/infer"
            js = run_load(url, _v2(X, "FP32"), connections=8, duration=duration, cpus=LOAD_CPUS)
            bi = run_load(url, body, connections=8, duration=duration, cpus=LOAD_CPUS,
                          headers=headers)
        figures.append(_figure("binary vs JSON v2 (64x30 FP32 per request)", bi.rps, js.rps,
                               "report", None,
                               spread=f"p50 {bi.p50_ms:.2f} vs {js.p50_ms:.2f} ms; "
                               f"errors {bi.errors}/{js.errors}"))

        # Batching: 64 connections of single rows.
        loads = {}
        for name, args in (("unbatched", ()), ("batched", (
                "--enable_batcher=true", "--max_batchsize=32", f"--max_latency={MAX_LATENCY_MS}"))):
            with _server(m4, logs, name, *args) as p:
                loads[name] = run_load(f"{p.url}/v2/models/model/infer", row, connections=64,
                                       duration=duration, cpus=LOAD_CPUS)
        b, u = loads["batched"], loads["unbatched"]
        p99_ok = b.p99_ms <= MAX_LATENCY_MS + u.p99_ms
        figures.append(_figure("batching 64 clients, maxBatchSize 32 vs none", b.rps, u.rps,
                               ">= 2x and p99 <= maxLatency + unbatched p99",
                               b.rps >= 2 * u.rps and p99_ok,
                               spread=f"p99 {b.p99_ms:.2f} vs {u.p99_ms:.2f} ms "
                               f"(bound {MAX_LATENCY_MS + u.p99_ms:.2f})"))

        # /metrics and payload logging on vs off; workers 2 vs 1.
        sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        sink_url = f"http://127.0.0.1:{sink.server_address[1]}/"
        variants = {
            "metrics off": ("--enable_metrics=false",),
            "metrics on": (),
            "logging on": (f"--log_url={sink_url}",),
            "workers 1": (),
            "workers 2": ("--workers=2",),
        }
        results = {}
        try:
            for name, args in variants.items():
                with _server(m4, logs, name.replace(" ", "-"), *args) as p:
                    time.sleep(0.5)
                    results[name] = run_load(f"{p.url}/v2/models/model/infer", row,
                                             connections=16, duration=duration, cpus=LOAD_CPUS)
        finally:
            sink.shutdown()
            sink.server_close()
        off, on = results["metrics off"], results["metrics on"]
        figures.append(_figure("/metrics on vs off", on.rps, off.rps, "cost <= 5 %",
                               on.rps >= 0.95 * off.rps))
        logged = results["logging on"]
        figures.append(_figure("payload logging (mode all) on vs off", logged.rps, on.rps,
                               "cost <= 5 %", logged.rps >= 0.95 * on.rps))
        w2, w1 = results["workers 2"], results["workers 1"]
        figures.append(_figure("--workers 2 vs 1", w2.rps, w1.rps, "report", None,
                               spread=f"p99 {w2.p99_ms:.2f} vs {w1.p99_ms:.2f} ms"))
    return figures


if __name__ == "__main__":
    for f in run(quick="--quick" in sys.argv):
        print(json.dumps(f))
