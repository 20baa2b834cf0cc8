"""Data-plane benchmarks: gRPC vs REST, binary vs JSON, batching, /metrics, payload logging,
workers.

Every comparison is taken in one run against the same kind of server, started the way the local
backend starts it (the runtime's own flags). Both sides of a comparison run at once and are
loaded in interleaved rounds (A B, B A, ...): on a shared machine the load from elsewhere moves
by the second, so a figure is the median of the per-round ratios, and each round also records
the server's CPU time per request (from /proc), which moves far less than req/s does and is what
capacity depends on. The load generator is pinned to CPU 1 when the machine has two.

Figures (name: target):
- gRPC vs REST v2, single row, loaded by h2load and wrk (C generators both): >= 1.0x req/s;
  and with Python asyncio clients on both sides (grpc.aio, an asyncio HTTP client): reported.
- binary vs JSON v2, one 64x30 FP32 batch per request (wrk): reported.
- batching, 64 connections of single rows, maxBatchSize 32 vs none, for a random forest (a
  model whose call costs far more than a row): >= 2x req/s, and p99 <= maxLatency + unbatched
  p99.
- /metrics on vs off, payload logging on vs off (wrk): cost <= 5 % req/s each; logging must
  also have sent every event (none dropped).
- --workers 2 vs 1 (wrk): reported (two cores, the generator takes one).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
from sklearn.linear_model import LogisticRegression

from bench.loadgen import run_grpc_load, run_load
from kfp_serve.retry import wait_until
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


#: The payload-event sink, standing for a collector elsewhere: in its own process next to the
#: load generator, so that its cost is not counted against the server. It answers each read's
#: pipelined events in one write: answering each on its own (readuntil, readexactly, write per
#: event) took 9 us per event of the generator's CPU, enough on two cores to leave the
#: generator short and the server waiting (12 % idle) for requests.
_SINK_SCRIPT = """
import asyncio, sys
OK = b"HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\n\\r\\n"
class Sink(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, bytearray()
    def data_received(self, data):
        buf = self.buf
        buf += data
        at = answered = 0
        while (end := buf.find(b"\\r\\n\\r\\n", at)) >= 0:
            head = bytes(buf[at:end]).lower()
            i = head.find(b"content-length:")
            size = int(head[i + 15:].split(b"\\r\\n", 1)[0]) if i >= 0 else 0
            if len(buf) < end + 4 + size:
                break
            at, answered = end + 4 + size, answered + 1
        del buf[:at]
        if answered:
            self.transport.write(OK * answered)
async def main():
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


@contextmanager
def _sink() -> Iterator[str]:
    """A payload-event sink; its URL."""
    port = free_port()
    prefix = ["taskset", "-c", LOAD_CPUS] if LOAD_CPUS else []
    proc = subprocess.Popen([*prefix, sys.executable, "-c", _SINK_SCRIPT, str(port)])
    try:
        wait_until(lambda: _accepts(port), deadline=30, describe="the event sink")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _figure(name: str, value: float, reference: float, target: str, passed: bool | None,
            unit: str = "req/s", spread: str = "", runs: int = 1) -> dict[str, Any]:
    return {"name": name, "value": round(value, 1), "unit": unit,
            "reference": round(reference, 1),
            "ratio": round(value / reference, 3) if reference else None,
            "target": target, "passed": passed, "runs": runs, "spread": spread}


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU of a process and its threads, and of its children (a --workers
    server's workers, a logging server's payload agent)."""
    children = [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _parent(int(p.name)) == pid]
    return _process_cpu(pid), sum(_process_cpu(c) for c in children)


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


#: A load run: () -> (req/s, p99 ms, requests, errors).
_Load = Callable[[], tuple[float, float, int, int]]


@dataclass
class _Round:
    rps: float
    p99_ms: float
    cpu_us: float  # the server's CPU per request: what capacity depends on, steadier than rps
    errors: int = 0
    children_us: float = 0.0  # the part of cpu_us its child processes took
    requests: int = 0


def _measure(pid: int, load: _Load) -> _Round:
    own, children = _cpu_seconds(pid)
    rps, p99, requests, errors = load()
    own_after, children_after = _cpu_seconds(pid)
    per_request = 1e6 / max(requests, 1)
    children_us = (children_after - children) * per_request
    return _Round(rps, p99, (own_after - own) * per_request + children_us, errors, children_us,
                  requests)


def _interleaved(loads: dict[str, tuple[int, _Load]], rounds: int) -> dict[str, list[_Round]]:
    """Run each load once unmeasured, then ``rounds`` times, alternating A B, B A, ... so that
    both sides see the same machine: on a shared box the load from elsewhere changes by the
    second."""
    names = list(loads)
    results: dict[str, list[_Round]] = {n: [] for n in names}
    for _, load in loads.values():
        # A round not counted: the first load after a start pays for what servers and their
        # helpers (a second worker, a payload agent) still do (imports, a first connection).
        load()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            pid, load = loads[name]
            results[name].append(_measure(pid, load))
    return results


def _http_load(url: str, body: bytes, connections: int, duration: float,
               headers: dict[str, str] | None = None, tool: str | None = None) -> _Load:
    def load() -> tuple[float, float, int, int]:
        r = run_load(url, body, connections=connections, duration=duration, cpus=LOAD_CPUS,
                     headers=headers, tool=tool)
        return r.rps, r.p99_ms, r.requests, r.errors

    return load


def _grpc_message_checked(port: int, url: str, row: bytes) -> bytes:
    """The serialized one-row ModelInferRequest h2load sends, after checking that a real gRPC
    client gets it answered OK with the REST route's prediction (h2load sees HTTP statuses
    only)."""
    import grpc
    import httpx
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg

    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4)).tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = pbg.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<i8").tolist()
    rest = httpx.post(f"{url}/v2/models/model/infer", content=row, timeout=30).json()
    if got != rest["outputs"][0]["data"]:
        raise RuntimeError(f"gRPC answered {got}, REST {rest['outputs'][0]['data']}")
    return request.SerializeToString()


def _h2load(port: int, message: bytes, connections: int, duration: float) -> _Load:
    def load() -> tuple[float, float, int, int]:
        r = run_grpc_load(port, "/inference.GRPCInferenceService/ModelInfer", message,
                          connections=connections, duration=duration, cpus=LOAD_CPUS)
        return r.rps, r.p99_ms, r.requests, r.errors

    return load


def _grpc_loader(port: int, connections: int, duration: float) -> _Load:
    def load() -> tuple[float, float, int, int]:
        g = _grpc_load(port, connections, duration)
        return g["rps"], g["p99_ms"], int(g["rps"] * duration), 0

    return load


def _compare(name: str, results: dict[str, list[_Round]], new: str, old: str, target: str,
             passed: Callable[[float, list[_Round], list[_Round]], bool] | None,
             children: str = "") -> dict[str, Any]:
    """A figure: the median req/s of ``new`` against ``old`` over interleaved rounds."""
    a, b = results[new], results[old]
    ratios = [x.rps / y.rps for x, y in zip(a, b, strict=True) if y.rps]
    ratio = statistics.median(ratios) if ratios else 0.0
    capacity = statistics.median(y.cpu_us / x.cpu_us for x, y in zip(a, b, strict=True))
    spread = (
        f"per-round req/s ratio {min(ratios):.2f}-{max(ratios):.2f}; server CPU/request "
        f"{statistics.median(x.cpu_us for x in a):.0f} vs "
        f"{statistics.median(y.cpu_us for y in b):.0f} us (capacity ratio {capacity:.2f}); "
        f"p99 {statistics.median(x.p99_ms for x in a):.2f} vs "
        f"{statistics.median(y.p99_ms for y in b):.2f} ms; errors "
        f"{sum(x.errors for x in a)}/{sum(y.errors for y in b)}"
    )
    if children:  # what the new side's child processes took of its CPU per request
        own = statistics.median(x.cpu_us - x.children_us for x in a)
        spread += (f"; of the {statistics.median(x.cpu_us for x in a):.0f} us, the server "
                   f"process {own:.0f}, {children} "
                   f"{statistics.median(x.children_us for x in a):.0f}")
    value = statistics.median(x.rps for x in a)
    reference = value / ratio if ratio else 0.0
    return _figure(name, value, reference, target,
                   None if passed is None else passed(ratio, a, b),
                   spread=spread, runs=len(a))


def _events_delivered(url: str, at_least: int) -> tuple[int, int]:
    """(dropped, sent) payload events of the server at ``url``, once it has accounted for
    ``at_least`` (its agent reports counts every 0.2 s), or after 30 s: a figure for logging
    that drops events would price a logger that does not log."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def counts() -> tuple[int, int]:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        by = {s.labels.get("outcome"): int(s.value) for f in text_string_to_metric_families(text)
              if f.name == "kfp_serve_payload_log_events" for s in f.samples
              if s.name.endswith("_total")}
        return by.get("dropped", 0), by.get("sent", 0)

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: sum(counts()) >= at_least, deadline=30,
                   describe="the payload agent's counts")
    return counts()


def _forest(root: Path) -> Path:
    """A random forest: a model whose per-call cost dwarfs its per-row cost, what batching
    is for (the logistic regression's call costs a few microseconds: nothing to amortize)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    d = root / "forest"
    d.mkdir()
    joblib.dump(RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0).fit(X, y),
                d / "model.joblib")
    return d


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every data-plane figure (see the module docstring)."""
    # Ten rounds of 2 s: the per-round ratios of two alike servers move by +-15 % on this VM,
    # mostly as the machine's speed drifts over seconds; shorter rounds pair closer in time,
    # and more of them steady the median.
    duration = 2.0
    rounds = 2 if quick else 10
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-dp-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        logs = root / "logs"
        m4, m30 = _model(root, 4), _model(root, 30)
        row = _v2(np.zeros((1, 4)), "FP64")

        # gRPC vs REST v2: the same server, loaded alike on both sides: C generators (h2load,
        # wrk), then Python asyncio clients (grpc.aio, the asyncio HTTP client).
        grpc_port = free_port()
        p = stack.enter_context(_server(m4, logs, "grpc", f"--grpc_port={grpc_port}"))
        url = f"{p.url}/v2/models/model/infer"
        message = _grpc_message_checked(grpc_port, p.url, row)
        res = _interleaved({
            "grpc": (p.pid, _h2load(grpc_port, message, 16, duration)),
            "rest": (p.pid, _http_load(url, row, 16, duration, tool="wrk")),
        }, rounds)
        figures.append(_compare("gRPC vs REST v2 (1 row, 16 conns, h2load vs wrk)", res,
                                "grpc", "rest", ">= 1.0x", lambda r, a, b: r >= 1.0))
        res = _interleaved({
            "grpc": (p.pid, _grpc_loader(grpc_port, 16, duration)),
            "rest": (p.pid, _http_load(url, row, 16, duration, tool="asyncio")),
        }, rounds)
        figures.append(_compare("gRPC vs REST v2 (1 row, 16 conns, python clients)", res,
                                "grpc", "rest", "report", None))

        # Binary vs JSON for a 64x30 FP32 batch: the same server.
        X = np.random.default_rng(1).normal(size=(64, 30)).astype(np.float32)
        body, headers = _binary(X, "FP32")
        p = stack.enter_context(_server(m30, logs, "binary"))
        url = f"{p.url}/v2/models/model/infer"
        res = _interleaved({
            "binary": (p.pid, _http_load(url, body, 8, duration, headers)),
            "json": (p.pid, _http_load(url, _v2(X, "FP32"), 8, duration)),
        }, rounds)
        figures.append(_compare("binary vs JSON v2 (64x30 FP32 per request)", res,
                                "binary", "json", "report", None))

        # Batching: 64 connections of single rows, a forest, batched vs not.
        forest = _forest(root)
        servers = {
            "unbatched": stack.enter_context(_server(forest, logs, "unbatched")),
            "batched": stack.enter_context(_server(
                forest, logs, "batched", "--enable_batcher=true", "--max_batchsize=32",
                f"--max_latency={MAX_LATENCY_MS}")),
        }
        res = _interleaved({n: (s.pid, _http_load(f"{s.url}/v2/models/model/infer", row, 64,
                                                  duration)) for n, s in servers.items()}, rounds)

        def batching_ok(ratio: float, a: list[_Round], b: list[_Round]) -> bool:
            p99 = statistics.median(x.p99_ms for x in a)
            return ratio >= 2 and p99 <= MAX_LATENCY_MS + statistics.median(x.p99_ms for x in b)

        figures.append(_compare(
            "batching 64 clients, maxBatchSize 32 vs none (random forest, 50 trees)", res,
            "batched", "unbatched", ">= 2x and p99 <= maxLatency + unbatched p99", batching_ok))

        # /metrics and payload logging on vs off; workers 2 vs 1.
        sink_url = stack.enter_context(_sink())
        variants = {
            "metrics off": ("--enable_metrics=false",),
            "metrics on": (),
            "logging on": (f"--log_url={sink_url}",),
            "workers 2": ("--workers=2",),
        }
        servers = {name: stack.enter_context(_server(m4, logs, name.replace(" ", "-"), *args))
                   for name, args in variants.items()}
        time.sleep(0.5)

        def pair(a: str, b: str) -> dict[str, list[_Round]]:
            return _interleaved({n: (servers[n].pid, _http_load(
                f"{servers[n].url}/v2/models/model/infer", row, 16, duration)) for n in (a, b)},
                rounds)

        figures.append(_compare("/metrics on vs off", pair("metrics on", "metrics off"),
                                "metrics on", "metrics off", "cost <= 5 %",
                                lambda r, a, b: r >= 0.95))
        logged = pair("logging on", "metrics on")
        delivered = _events_delivered(servers["logging on"].url,
                                      2 * sum(r.requests for r in logged["logging on"]))
        figure = _compare("payload logging (mode all) on vs off", logged, "logging on",
                          "metrics on", "cost <= 5 %, every event sent",
                          lambda r, a, b: r >= 0.95 and delivered[0] == 0,
                          children="its payload agent (KServe's agent sidecar's work)")
        figure["spread"] += f"; events dropped {delivered[0]}, sent {delivered[1]}"
        figures.append(figure)
        figures.append(_compare("--workers 2 vs 1", pair("workers 2", "metrics on"),
                                "workers 2", "metrics on", "report", None))
    return figures


if __name__ == "__main__":
    for f in run(quick="--quick" in sys.argv):
        print(json.dumps(f))
