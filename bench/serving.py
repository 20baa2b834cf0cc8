"""Serving benchmark: kfp-serve's runtimes against MLServer 1.7, on loopback, in the same run.

What is measured (issue 4, "Benchmarks"): requests/s and p50/p99 latency of a closed-loop load
(wrk, 16 keep-alive connections) for

- sklearn (LogisticRegression on iris-like data) and XGBoost (a small XGBClassifier),
- batch 1 and batch 64 rows per request,
- our predictor over v1 and v2, each against MLServer's v2 (MLServer speaks only v2),
- the transformer hop: p50 through our transformer minus p50 of the predictor alone, same
  protocol, measured with ONE connection (at 16 connections p50 is mostly queueing, ~16/rate,
  so the difference would measure throughput, not the hop); the 16-connection throughput
  through the transformer is reported beside it;
- the endpoint URL (issue 11): a predictor served by ``serve()`` on the local backend, reached
  through its router, side by side with the same predictor reached directly: req/s and p99 at
  16 connections against MLServer, the router's added p50 at one connection (paired per round,
  like the hop), and the longest single request of that load.

Method: all servers run at once, one worker each, pinned to CPU 0 (the load generator to CPU 1)
so the generator does not steal the server's core; cases are interleaved round by round (every
case once per round), so a slow patch of the machine hits ours and the peer alike. A value is
the median over rounds, spread is min–max, and a ratio is ours/MLServer's medians. Each case is
checked for a correct answer (200, one prediction per row) before it is loaded, and any non-2xx
answer or socket error under load fails the figure. Beside req/s, the spread text gives each
server's CPU time per request (from /proc): on a machine shared with other work it is the
steadiest measure of cost. Every server is stopped at the end, also on error.

Targets: >= 1.5x MLServer's req/s for sklearn at batch 1, >= 1.0x at batch 64 and for XGBoost;
p50 and p99 <= MLServer's; the transformer hop <= 1 ms at p50; through the endpoint URL
(sklearn batch 1, v1 and v2) >= 5x MLServer's req/s at <= its p99, the router's added p50
<= 0.3 ms, and no request waiting over 1 s. The router and its predictor share the one server
CPU, as MLServer's processes do.

Run alone: ``python -m bench.serving [--quick]`` (creates ``.venv-mlserver`` when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import mlserver_env
from bench.loadgen import LoadResult, run_load, wrk_path

CONNECTIONS = 16
HOP_CONNECTIONS = 1
FRAMEWORKS = ("sklearn", "xgboost")
BATCHES = (1, 64)
PROTOCOLS = ("v1", "v2")
N_FEATURES = 4
HOP_TARGET_MS = 1.0
#: Through the endpoint URL: req/s against MLServer's, the router's added p50, longest wait.
ENDPOINT_RPS_TARGET = 5.0
ROUTER_TARGET_MS = 0.3
LONGEST_WAIT_TARGET_MS = 1000.0
#: Model names in the URL paths (both servers use the same ones).
MODEL_NAMES = {"sklearn": "iris-sklearn", "xgboost": "iris-xgboost"}
TRANSFORMER_NAME = "iris-sklearn"  # a transformer serves under its predictor's model name
#: CPU for the servers and CPU for the load generator, when the machine has two.
SERVER_CPUS, LOAD_CPUS = "0", "1"


def _log(message: str) -> None:
    print(f"   serving: {message}", file=sys.stderr, flush=True)


# --- models and request bodies ------------------------------------------------------------


def iris_like(n_rows: int = 150, seed: int = 0) -> tuple[Any, Any]:
    """Three Gaussian classes around iris' class means (4 features, cm, one decimal)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    spread = np.array([0.35, 0.35, 0.3, 0.15])
    y = np.arange(n_rows) % 3
    X = np.round(means[y] + rng.normal(size=(n_rows, N_FEATURES)) * spread, 1)
    return X, y


def build_artifacts(root: Path) -> dict[str, Path]:
    """Train the two models and a scaler; save them in the kfp-serve layout under ``root``.

    Returns:
        ``{"sklearn": dir, "xgboost": dir, "transformer": dir}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    from kfp_serve.artifacts.model import Model, Transformer

    X, y = iris_like()
    sk = LogisticRegression(max_iter=1000).fit(X, y)
    # Small, as the issue asks: 3 classes x 30 rounds of depth-3 trees.
    xgb = XGBClassifier(n_estimators=30, max_depth=3, learning_rate=0.3).fit(X, y)
    scaler = StandardScaler().fit(X)
    return {
        "sklearn": Model(sk, MODEL_NAMES["sklearn"], input_example=X[:2]).save(root / "sklearn"),
        "xgboost": Model(xgb, MODEL_NAMES["xgboost"], input_example=X[:2]).save(root / "xgboost"),
        "transformer": Transformer("iris-scaler", transformer=scaler).save(root / "scaler"),
    }


def request_rows(batch: int) -> list[list[float]]:
    """``batch`` rows of the iris-like data (cycled), as plain floats."""
    X, _ = iris_like(max(batch, 3), seed=1)
    return [[float(v) for v in row] for row in X[:batch]]


def body_for(protocol: str, batch: int) -> bytes:
    """The request body: v1 ``instances``, or one v2 FP64 tensor ``[batch, 4]`` (flat data)."""
    rows = request_rows(batch)
    if protocol == "v1":
        return json.dumps({"instances": rows}).encode()
    flat = [v for row in rows for v in row]
    tensor = {"name": "input-0", "shape": [batch, N_FEATURES], "datatype": "FP64", "data": flat}
    return json.dumps({"inputs": [tensor]}).encode()


def route(protocol: str, model_name: str) -> str:
    """The predict path of ``protocol``."""
    if protocol == "v1":
        return f"/v1/models/{model_name}:predict"
    return f"/v2/models/{model_name}/infer"


def n_predictions(protocol: str, answer: dict[str, Any]) -> int:
    """Rows answered: ``len(predictions)`` (v1) or the first output's leading dimension (v2)."""
    if protocol == "v1":
        return len(answer["predictions"])
    return int(answer["outputs"][0]["shape"][0])


# --- cases and servers --------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One load configuration: which server, model, batch, protocol and concurrency."""

    server: str  # "mlserver", "ours", "transformer", "endpoint" (router), "endpoint-direct"
    framework: str
    batch: int
    protocol: str
    connections: int

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.server, self.framework, self.batch, self.protocol, self.connections)


@dataclass
class Results:
    """Load results per case, one per round."""

    runs: dict[tuple, list[LoadResult]] = field(default_factory=dict)
    failures: dict[tuple, str] = field(default_factory=dict)
    #: Server CPU microseconds per request, per case and round (transformer: both hops).
    cpu_us: dict[tuple, list[float]] = field(default_factory=dict)

    def add(self, case: Case, result: LoadResult, cpu_s: float) -> None:
        self.runs.setdefault(case.key, []).append(result)
        if result.requests:
            self.cpu_us.setdefault(case.key, []).append(cpu_s / result.requests * 1e6)

    def cpu_per_request(self, key: tuple) -> float | None:
        values = self.cpu_us.get(key, [])
        return statistics.median(values) if values else None

    def median(self, key: tuple, metric: str) -> float | None:
        values = [getattr(r, metric) for r in self.runs.get(key, [])]
        return statistics.median(values) if values else None

    def values(self, key: tuple, metric: str) -> list[float]:
        return [getattr(r, metric) for r in self.runs.get(key, [])]

    def errors(self, key: tuple) -> int:
        return sum(r.errors for r in self.runs.get(key, []))


def all_cases() -> list[Case]:
    """Every case, in the order one round measures them (peer and ours side by side)."""
    cases: list[Case] = []
    for fw in FRAMEWORKS:
        for batch in BATCHES:
            cases.append(Case("mlserver", fw, batch, "v2", CONNECTIONS))
            cases += [Case("ours", fw, batch, p, CONNECTIONS) for p in PROTOCOLS]
    for protocol in PROTOCOLS:
        cases.append(Case("ours", "sklearn", 1, protocol, HOP_CONNECTIONS))
        cases.append(Case("transformer", "sklearn", 1, protocol, HOP_CONNECTIONS))
        cases.append(Case("transformer", "sklearn", 1, protocol, CONNECTIONS))
    for protocol in PROTOCOLS:
        for connections in (CONNECTIONS, HOP_CONNECTIONS):
            cases.append(Case("endpoint", "sklearn", 1, protocol, connections))
            cases.append(Case("endpoint-direct", "sklearn", 1, protocol, connections))
    return cases


@dataclass(frozen=True)
class Server:
    """A running server: its base URL and the pid whose CPU time is its cost."""

    url: str
    pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; 0.0 if unreadable.

    CPU time per request is the figure least disturbed by other load on the machine (a busy
    neighbour lowers req/s for both servers, but not the CPU each request costs).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _cpu_affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the block with this process pinned to ``cpus``: children started in it inherit it.

    Why not ``taskset`` around the command: our servers are started by the same launcher the
    local backend uses (``start_server``), which builds its own argv.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def _pinning() -> tuple[str | None, str | None]:
    """(server CPUs, load generator CPUs), or (None, None) below 2 CPUs or without taskset."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        return SERVER_CPUS, LOAD_CPUS
    return None, None


def start_servers(
    stack: contextlib.ExitStack, artifacts: dict[str, Path], workdir: Path, server_cpus: str | None
) -> dict[str, Server]:
    """Start MLServer, our two predictors and two transformers; register their stops on ``stack``.

    Returns:
        The servers by role: ``mlserver``, ``ours-sklearn``, ``ours-xgboost``,
        ``transformer-v1``, ``transformer-v2``.
    """
    from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready

    mlserver_env.ensure_venv(_log)
    logs = workdir / "logs"
    http_port = free_port()
    repo = mlserver_env.write_repository(
        workdir / "mlserver",
        [
            mlserver_env.ModelEntry(MODEL_NAMES["sklearn"], "sklearn",
                                    artifacts["sklearn"] / "model.joblib"),
            mlserver_env.ModelEntry(MODEL_NAMES["xgboost"], "xgboost",
                                    artifacts["xgboost"] / "model.json"),
        ],
        http_port=http_port,
        grpc_port=free_port(),
    )
    peer = mlserver_env.start(repo, logs / "mlserver.log", cpus=server_cpus)
    peer.log_path = logs / "mlserver.log"  # type: ignore[attr-defined]  # for wait_ready's tail
    stack.callback(stop_server, peer)
    servers = {"mlserver": Server(f"http://127.0.0.1:{http_port}", peer.pid)}

    pin = {int(c) for c in server_cpus.split(",")} if server_cpus else None
    started = []
    with _cpu_affinity(pin):
        # All start at once (a transformer needs only its predictor's address, not its
        # readiness), then all are awaited: startup costs the slowest, not the sum.
        for fw in FRAMEWORKS:
            proc = start_server("predictor", MODEL_NAMES[fw], artifacts[fw],
                                log_path=logs / f"predictor-{fw}.log")
            stack.callback(stop_server, proc)
            servers[f"ours-{fw}"] = Server(proc.url, proc.pid)
            started.append(proc)
        predictor_host = servers["ours-sklearn"].url.removeprefix("http://")
        for protocol in PROTOCOLS:
            proc = start_server("transformer", TRANSFORMER_NAME, artifacts["transformer"],
                                log_path=logs / f"transformer-{protocol}.log",
                                predictor_host=predictor_host, predictor_protocol=protocol)
            stack.callback(stop_server, proc)
            servers[f"transformer-{protocol}"] = Server(proc.url, proc.pid)
            started.append(proc)
    for proc in started:
        wait_ready(proc.url, timeout=120, proc=proc)
    # MLServer's model-ready route says when each of its models is in.
    for fw in FRAMEWORKS:
        wait_ready(servers["mlserver"].url, timeout=180, proc=peer,
                   path=f"/v2/models/{MODEL_NAMES[fw]}/ready")
    return servers


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process ``pid`` to ``cpus`` (sched_setaffinity is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def serve_endpoint(
    stack: contextlib.ExitStack, model_dir: Path, server_cpus: str | None
) -> dict[str, Server]:
    """Serve the sklearn model with ``serve()`` on the local backend (router + predictor) in a
    throw-away KFP_SERVE_HOME; pin both to the server CPUs. Stopped when ``stack`` closes.

    Returns:
        ``endpoint-router`` (the endpoint URL) and ``endpoint-predictor`` (the same predictor,
        direct).
    """
    import joblib

    from bench.end_to_end import _isolated_home
    from kfp_serve import artifacts, serving
    from kfp_serve.serving.backends.local.registry import read_record

    stack.enter_context(_isolated_home())  # deletes the endpoint on the way out
    name = MODEL_NAMES["sklearn"]  # the endpoint name is the model name in its URL paths
    estimator = joblib.load(model_dir / "model.joblib")
    model_id = artifacts.Model(model=estimator, name=name, version="1.0.0").submit_artifact()
    endpoint = serving.serve(model_id, name=name, timeout=180)
    endpoint.close()
    record = read_record(name)
    if record is None:
        raise RuntimeError(f"endpoint {name!r} has no registry record after serve()")
    predictor = record.latest.predictor
    if server_cpus:
        pin = {int(c) for c in server_cpus.split(",")}
        for pid in (record.router.pid, predictor.pid):
            _pin(pid, pin)
    return {
        "endpoint-router": Server(endpoint.url, record.router.pid),
        "endpoint-predictor": Server(predictor.url, predictor.pid),
    }


def case_servers(case: Case, servers: dict[str, Server]) -> list[Server]:
    """The servers a case's requests go through, the one the client talks to first."""
    if case.server == "mlserver":
        return [servers["mlserver"]]
    if case.server == "endpoint":
        return [servers["endpoint-router"], servers["endpoint-predictor"]]
    if case.server == "endpoint-direct":
        return [servers["endpoint-predictor"]]
    if case.server == "transformer":
        return [servers[f"transformer-{case.protocol}"], servers[f"ours-{case.framework}"]]
    return [servers[f"ours-{case.framework}"]]


def case_url(case: Case, servers: dict[str, Server]) -> str:
    """Full URL of the case's predict route."""
    return case_servers(case, servers)[0].url + route(case.protocol, MODEL_NAMES[case.framework])


def check_and_warm(url: str, case: Case, body: bytes, requests: int) -> None:
    """POST once and check the answer (200, one prediction per row), then warm up.

    Raises:
        RuntimeError: Wrong status or answer; the server's message is included.
    """
    for i in range(max(1, requests)):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback URL
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{url} answered {e.code}: {e.read()[:500]!r}") from e
        if i == 0 and n_predictions(case.protocol, answer) != case.batch:
            raise RuntimeError(f"{url} answered {n_predictions(case.protocol, answer)} rows for "
                               f"{case.batch}: {str(answer)[:300]}")


# --- figures ------------------------------------------------------------------------------


def _spread(values: list[float], unit: str) -> str:
    if not values:
        return "no runs"
    fmt = "{:.0f}" if unit == "req/s" else "{:.2f}"
    return f"{fmt.format(min(values))}–{fmt.format(max(values))} {unit}"


def comparison_figures(results: Results, note: str) -> list[dict]:
    """req/s, p50 and p99 of our predictor (v1, v2) against MLServer v2, per model and batch."""
    figures = []
    for fw in FRAMEWORKS:
        for batch in BATCHES:
            peer = ("mlserver", fw, batch, "v2", CONNECTIONS)
            rps_target = 1.5 if (fw == "sklearn" and batch == 1) else 1.0
            for protocol in PROTOCOLS:
                ours = ("ours", fw, batch, protocol, CONNECTIONS)
                failed = results.failures.get(ours) or results.failures.get(peer)
                errors = results.errors(ours) + results.errors(peer)
                for metric, unit, label in (("rps", "req/s", "req/s"),
                                            ("p50_ms", "ms", "p50 latency"),
                                            ("p99_ms", "ms", "p99 latency")):
                    value = results.median(ours, metric)
                    reference = results.median(peer, metric)
                    ratio = value / reference if value is not None and reference else None
                    if metric == "rps":
                        target = f">= {rps_target}x MLServer"
                        passed = ratio is not None and ratio >= rps_target
                    else:
                        target = "<= MLServer"
                        passed = ratio is not None and ratio <= 1.0
                    spread = (f"{_spread(results.values(ours, metric), unit)}; MLServer "
                              f"{_spread(results.values(peer, metric), unit)}")
                    cpu_ours = results.cpu_per_request(ours)
                    cpu_peer = results.cpu_per_request(peer)
                    if metric == "rps" and cpu_ours and cpu_peer:
                        spread += (f"; server CPU {cpu_ours:.0f} vs MLServer {cpu_peer:.0f} "
                                   "us/request")
                    if errors:
                        spread += f"; {errors} failed requests under load"
                    if failed:
                        spread = f"case failed: {failed}"
                    figures.append({
                        "name": f"{fw} batch {batch} {protocol}: {label} (vs MLServer v2, "
                                f"{CONNECTIONS} conns)",
                        "value": round(value, 3) if value is not None else None,
                        "unit": unit,
                        "reference": round(reference, 3) if reference is not None else None,
                        "ratio": round(ratio, 3) if ratio is not None else None,
                        "target": target,
                        "passed": bool(passed and not errors and not failed),
                        "runs": len(results.runs.get(ours, [])),
                        "spread": spread + note,
                    })
    return figures


def hop_figures(results: Results, note: str) -> list[dict]:
    """Transformer hop: p50 through the transformer minus p50 of the predictor alone."""
    figures = []
    for protocol in PROTOCOLS:
        alone = ("ours", "sklearn", 1, protocol, HOP_CONNECTIONS)
        via = ("transformer", "sklearn", 1, protocol, HOP_CONNECTIONS)
        via_loaded = ("transformer", "sklearn", 1, protocol, CONNECTIONS)
        alone_loaded = ("ours", "sklearn", 1, protocol, CONNECTIONS)
        p50_via, p50_alone = results.median(via, "p50_ms"), results.median(alone, "p50_ms")
        # Paired per round: both cases ran back to back, so their difference cancels drift.
        pairs = zip(results.runs.get(via, []), results.runs.get(alone, []), strict=False)
        hops = [t.p50_ms - p.p50_ms for t, p in pairs]
        hop = statistics.median(hops) if hops else None
        failed = next((results.failures[k] for k in (alone, via, via_loaded)
                       if k in results.failures), None)
        errors = sum(results.errors(k) for k in (alone, via, via_loaded))
        rps_via, rps_alone = results.median(via_loaded, "rps"), results.median(alone_loaded, "rps")
        spread = (f"hop {_spread(hops, 'ms')}; p50 via transformer "
                  f"{p50_via if p50_via is None else round(p50_via, 3)} ms, predictor alone "
                  f"{p50_alone if p50_alone is None else round(p50_alone, 3)} ms "
                  f"({HOP_CONNECTIONS} conn); at {CONNECTIONS} conns "
                  f"{rps_via if rps_via is None else round(rps_via)} req/s via transformer vs "
                  f"{rps_alone if rps_alone is None else round(rps_alone)} alone")
        cpu_via = results.cpu_per_request(via_loaded)
        cpu_alone = results.cpu_per_request(alone_loaded)
        if cpu_via and cpu_alone:
            spread += (f"; server CPU {cpu_via:.0f} us/request via transformer (both hops) vs "
                       f"{cpu_alone:.0f} alone")
        if errors:
            spread += f"; {errors} failed requests under load"
        if failed:
            spread = f"case failed: {failed}"
        figures.append({
            "name": f"transformer hop, sklearn batch 1 {protocol}: added p50 latency "
                    f"({HOP_CONNECTIONS} conn)",
            "value": round(hop, 3) if hop is not None else None,
            "unit": "ms",
            # MLServer has no transformer: the reference is our predictor alone.
            "reference": round(p50_alone, 3) if p50_alone is not None else None,
            "ratio": round(p50_via / p50_alone, 3) if p50_via and p50_alone else None,
            "target": f"<= {HOP_TARGET_MS} ms",
            "passed": bool(hop is not None and hop <= HOP_TARGET_MS and not errors and not failed),
            "runs": len(hops),
            "spread": spread + note,
        })
    return figures


def endpoint_figures(results: Results, note: str) -> list[dict]:
    """Through the endpoint URL (router in front) against MLServer and against the same
    predictor reached directly: req/s at <= MLServer's p99, the router's added p50, the longest
    single request."""
    figures = []
    peer = ("mlserver", "sklearn", 1, "v2", CONNECTIONS)
    peer_p99 = results.median(peer, "p99_ms")
    for protocol in PROTOCOLS:
        via = ("endpoint", "sklearn", 1, protocol, CONNECTIONS)
        direct = ("endpoint-direct", "sklearn", 1, protocol, CONNECTIONS)
        via_one = ("endpoint", "sklearn", 1, protocol, HOP_CONNECTIONS)
        direct_one = ("endpoint-direct", "sklearn", 1, protocol, HOP_CONNECTIONS)
        keys = (peer, via, direct, via_one, direct_one)
        failed = next((results.failures[k] for k in keys if k in results.failures), None)
        errors = sum(results.errors(k) for k in keys[1:])
        rps, peer_rps = results.median(via, "rps"), results.median(peer, "rps")
        p99 = results.median(via, "p99_ms")
        ratio = rps / peer_rps if rps and peer_rps else None
        cpu_via, cpu_direct = results.cpu_per_request(via), results.cpu_per_request(direct)
        spread = (
            f"{_spread(results.values(via, 'rps'), 'req/s')}; p99 "
            f"{_spread(results.values(via, 'p99_ms'), 'ms')} vs MLServer "
            f"{_spread(results.values(peer, 'p99_ms'), 'ms')}; the same predictor direct "
            f"{_spread(results.values(direct, 'rps'), 'req/s')}, p99 "
            f"{_spread(results.values(direct, 'p99_ms'), 'ms')}"
        )
        if cpu_via and cpu_direct:
            spread += (f"; server CPU {cpu_via:.0f} us/request through the router (both "
                       f"processes) vs {cpu_direct:.0f} direct")
        figures.append(_figure(
            f"endpoint URL (router), sklearn batch 1 {protocol}: req/s (vs MLServer v2, "
            f"{CONNECTIONS} conns)",
            rps, "req/s", peer_rps, ratio, f">= {ENDPOINT_RPS_TARGET:g}x MLServer at <= its p99",
            ratio is not None and ratio >= ENDPOINT_RPS_TARGET and p99 is not None
            and peer_p99 is not None and p99 <= peer_p99,
            len(results.runs.get(via, [])), spread, note, errors, failed,
        ))
        # Paired per round, like the transformer hop: both ran back to back.
        pairs = zip(results.runs.get(via_one, []), results.runs.get(direct_one, []),
                    strict=False)
        added = [v.p50_ms - d.p50_ms for v, d in pairs]
        hop = statistics.median(added) if added else None
        p50_direct = results.median(direct_one, "p50_ms")
        figures.append(_figure(
            f"endpoint URL (router), sklearn batch 1 {protocol}: router's added p50 latency "
            f"({HOP_CONNECTIONS} conn)",
            hop, "ms", p50_direct, None, f"<= {ROUTER_TARGET_MS} ms",
            hop is not None and hop <= ROUTER_TARGET_MS, len(added),
            f"added {_spread(added, 'ms')}; p50 through the router "
            f"{_spread(results.values(via_one, 'p50_ms'), 'ms')}, direct "
            f"{_spread(results.values(direct_one, 'p50_ms'), 'ms')}", note, errors, failed,
        ))
        longest = results.values(via, "max_ms")
        longest_direct = results.values(direct, "max_ms")
        figures.append(_figure(
            f"endpoint URL (router), sklearn batch 1 {protocol}: longest single request "
            f"({CONNECTIONS} conns)",
            max(longest) if longest else None, "ms",
            max(longest_direct) if longest_direct else None, None,
            f"<= {LONGEST_WAIT_TARGET_MS:g} ms",
            bool(longest) and max(longest) <= LONGEST_WAIT_TARGET_MS, len(longest),
            f"per run {_spread(longest, 'ms')}; direct {_spread(longest_direct, 'ms')}",
            note, errors, failed,
        ))
    return figures


def _figure(
    name: str, value: float | None, unit: str, reference: float | None, ratio: float | None,
    target: str, met: bool, runs: int, spread: str, note: str, errors: int, failed: str | None,
) -> dict:
    """One figure as ``bench.run`` expects it; failed cases and errors under load fail it."""
    if errors:
        spread += f"; {errors} failed requests under load"
    if failed:
        spread = f"case failed: {failed}"
    return {
        "name": name,
        "value": round(value, 3) if value is not None else None,
        "unit": unit,
        "reference": round(reference, 3) if reference is not None else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": target,
        "passed": bool(met and not errors and not failed),
        "runs": runs,
        "spread": spread + note,
    }


# --- entry points -------------------------------------------------------------------------


def measure(
    servers: dict[str, Server], rounds: int, duration: float, load_cpus: str | None,
    progress: Callable[[str], None] = _log,
) -> Results:
    """Check and warm every case, then run ``rounds`` interleaved rounds of bounded load."""
    results = Results()
    cases = all_cases()
    bodies = {(c.protocol, c.batch): body_for(c.protocol, c.batch) for c in cases}
    for case in cases:
        try:
            check_and_warm(case_url(case, servers), case, bodies[case.protocol, case.batch], 30)
        except Exception as e:  # one broken case must not hide the others' figures
            results.failures[case.key] = f"{type(e).__name__}: {e}"
    for round_no in range(rounds):
        started = time.monotonic()
        for case in cases:
            if case.key in results.failures:
                continue
            pids = [s.pid for s in case_servers(case, servers)]
            try:
                cpu_before = sum(cpu_seconds(pid) for pid in pids)
                result = run_load(case_url(case, servers), bodies[case.protocol, case.batch],
                                  connections=case.connections, duration=duration, cpus=load_cpus)
                cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            except Exception as e:
                results.failures[case.key] = f"{type(e).__name__}: {e}"
                continue
            results.add(case, result, cpu_used)
        progress(f"round {round_no + 1}/{rounds} done in {time.monotonic() - started:.0f} s")
    return results


def run(quick: bool) -> list[dict]:
    """Run the serving benchmark; figures as ``bench.run`` expects them.

    Args:
        quick: 2 rounds of 2 s per case (about 1.5 min) instead of 3 rounds of 4 s (about 4 min).
    """
    rounds, duration = (2, 2.0) if quick else (3, 4.0)
    server_cpus, load_cpus = _pinning()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    tool = "wrk" if wrk_path() else "asyncio client (wrk not installed)"
    note = f"; load: {tool}, {'pinned' if server_cpus else 'unpinned'}"
    if load_avg > 1.0:
        # Another busy process shares the 2 cores: the ratios hold up (interleaved), the
        # absolute numbers less so; say so next to them.
        note += f"; machine load avg {load_avg:.1f} at start"
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-serving-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        _log("training models")
        artifacts = build_artifacts(workdir / "artifacts")
        _log("starting servers (MLServer and ours)")
        phase = time.monotonic()
        servers = start_servers(stack, artifacts, workdir, server_cpus)
        _log("serving the sklearn model through the local backend (router + predictor)")
        servers.update(serve_endpoint(stack, artifacts["sklearn"], server_cpus))
        _log(f"servers ready in {time.monotonic() - phase:.0f} s")
        results = measure(servers, rounds, duration, load_cpus)
    return (
        comparison_figures(results, note)
        + hop_figures(results, note)
        + endpoint_figures(results, note)
    )


def _table(figures: list[dict]) -> str:
    rows = [f"{'figure':<78} {'value':>10} {'ref':>10} {'ratio':>7}  {'target':<18} met"]
    for f in figures:
        def num(v: Any) -> str:
            return "-" if v is None else f"{v:.4g}"
        rows.append(f"{f['name']:<78} {num(f['value']):>10} {num(f['reference']):>10} "
                    f"{num(f['ratio']):>7}  {f['target']:<18} {'yes' if f['passed'] else 'NO'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.serving [--quick] [--json]``: run and print the figures."""
    parser = argparse.ArgumentParser(description="kfp-serve vs MLServer serving benchmark.")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s per case")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures = run(quick=args.quick)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(_table(figures))
        for f in figures:
            print(f"- {f['name']}: {f['spread']}")
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
