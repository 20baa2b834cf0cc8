"""Load: 64 concurrent clients against a local endpoint (router -> transformer -> predictor).

A bounded run (a short warm-up, then DURATION seconds): every answer must be a 200 with the
right predictions, and the resident memory of each server process may grow by less than 10%
between the first and the last third of the run (a leak per request would show as steady growth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from kfp_serve.serving.backends.local.supervisor import start_time as process_start_time
from tests.reliability.conftest import Served

CLIENTS = 64
WARMUP = 1.5  # seconds, not measured: first requests allocate caches and pools
DURATION = 8.0  # seconds, measured
SAMPLE_EVERY = 0.2  # seconds between RSS samples
MAX_GROWTH = 0.10
JSON = {"content-type": "application/json"}


async def _client(
    client: httpx.AsyncClient, path: str, batches: list[tuple[bytes, list[int]]], stop: float,
    seed: int, tally: Counter, answered: list[int],
) -> None:
    """One client: its own keep-alive connection, requests back to back until ``stop``."""
    rng = np.random.default_rng(seed)
    async with client:
        while time.monotonic() < stop:
            body, expected = batches[int(rng.integers(len(batches)))]
            try:
                r = await client.post(path, content=body, headers=JSON)
            except httpx.HTTPError as e:
                tally[f"transport error: {type(e).__name__}"] += 1
                continue
            if r.status_code != 200:
                tally[f"HTTP {r.status_code}: {r.text[:120]}"] += 1
            elif r.json().get("predictions") != expected:
                tally["wrong predictions"] += 1
            else:
                tally["ok"] += 1
                answered[seed] += 1


def _run_clients(url: str, path: str, batches, seconds: float, tally: Counter) -> list[int]:
    """Run CLIENTS concurrent clients for ``seconds``; the number of answers of each."""
    answered = [0] * CLIENTS

    async def main() -> None:
        # Every client exists before the clock starts, and all share one TLS context: httpx
        # builds one per client otherwise (~30 ms of CPU each, under the GIL), and on a busy
        # machine 64 of them used up most of the run before the first request was sent.
        tls = httpx.create_ssl_context()
        clients = [
            httpx.AsyncClient(base_url=url, timeout=30.0, trust_env=False, verify=tls)
            for _ in range(CLIENTS)
        ]
        stop = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _client(client, path, batches, stop, seed, tally, answered)
                for seed, client in enumerate(clients)
            )
        )

    asyncio.run(main())
    return answered


@contextlib.contextmanager
def _rss_sampler(pids: dict[str, int]) -> Iterator[list[tuple[float, dict[str, int]]]]:
    """Samples (monotonic time, role -> RSS KiB) every SAMPLE_EVERY s, from a process of
    its own (see tests/reliability/rss_sampler.py); the list is filled in on exit."""
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "tests.reliability.rss_sampler", str(SAMPLE_EVERY),
         json.dumps(pids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        text=True,
    )
    assert proc.stdout is not None
    samples: list[tuple[float, dict[str, int]]] = [tuple(json.loads(proc.stdout.readline()))]
    try:
        yield samples  # sampling from before the caller's clock starts
    finally:
        out, _ = proc.communicate(timeout=30)  # closing stdin ends the sampler
    samples += [(t, rss) for t, rss in map(json.loads, out.splitlines())]
    assert proc.returncode == 0, f"the RSS sampler failed (exit code {proc.returncode})"


def test_64_concurrent_clients_zero_errors_and_flat_memory(served: Served) -> None:
    X = served.trained.X
    # Batches of 1 to 8 rows, with their in-process predictions.
    batches = []
    for start in range(0, 120, 7):
        rows = X[start : start + 1 + start % 8].tolist()
        batches.append((json.dumps({"instances": rows}).encode(), served.trained.expected(rows)))
    path = f"/v1/models/{served.endpoint.model_name}:predict"
    url = served.urls["router"]

    warm = Counter()
    _run_clients(url, path, batches, WARMUP, warm)
    assert set(warm) == {"ok"}, warm

    tally: Counter = Counter()
    started = time.monotonic()
    with _rss_sampler(served.pids) as samples:
        answered = _run_clients(url, path, batches, DURATION, tally)
    elapsed = time.monotonic() - started

    errors = {k: v for k, v in tally.items() if k != "ok"}
    assert not errors, f"{sum(errors.values())} failed of {sum(tally.values())}: {errors}"
    # The load was real and concurrent: every one of the 64 clients got answers throughout.
    assert min(answered) >= 3, answered

    # Memory: mean RSS of the first third of the run against the mean of the last third.
    end = started + elapsed
    first = [s for t, s in samples if t < started + elapsed / 3]
    last = [s for t, s in samples if t >= end - elapsed / 3]
    assert len(first) >= 5 and len(last) >= 5, len(samples)
    report = {}
    for role in served.pids:
        before = sum(s[role] for s in first) / len(first)
        after = sum(s[role] for s in last) / len(last)
        report[role] = (round(before), round(after), round(after / before - 1, 4))
    grew = {role: r for role, r in report.items() if r[2] >= MAX_GROWTH}
    assert not grew, f"RSS (KiB first third, last third, growth) grew >= 10%: {report}"
    # Every server is still alive and answering after the run.
    ok = httpx.post(
        f"{url}{path}", json={"instances": X[:2].tolist()}, trust_env=False, timeout=10
    )
    assert ok.status_code == 200, ok.text
    print(
        f"load: {tally['ok']} requests in {elapsed:.1f} s "
        f"({tally['ok'] / elapsed:.0f} req/s, {CLIENTS} clients); RSS {report} from "
        f"{len(first)}/{len(last)} samples in the first/last third"
    )


# ------------------------------------------------- everyone served, with a CPU hog beside it

FAIR_CLIENTS = 64
FAIR_SECONDS = 30.0
#: The longest any request may wait, and so the longest any client may go without an answer.
LONGEST_WAIT_MS = 1000.0


def test_64_keep_alive_clients_with_a_cpu_hog_are_each_answered_at_least_once_a_second(
    served: Served,
) -> None:
    """64 keep-alive connections through the endpoint URL for 30 s while another process keeps
    a core busy: no request waits more than 1 s, so no client goes a second without an answer.

    The clients run in their own process (``bench.loadgen``), so what is measured is the
    endpoint's scheduling, not this test process's GIL.
    """
    from bench.loadgen import cpu_hog, run_load

    rows = served.trained.X[40:43].tolist()
    body = json.dumps({"instances": rows}).encode()
    url = served.urls["router"] + f"/v1/models/{served.endpoint.model_name}:predict"
    first = httpx.post(url, content=body, headers=JSON, trust_env=False, timeout=10)
    assert first.status_code == 200, first.text
    assert first.json()["predictions"] == served.trained.expected(rows)

    with cpu_hog(FAIR_SECONDS + 30) as hogs:
        result = run_load(
            url,
            body,
            connections=FAIR_CLIENTS,
            duration=FAIR_SECONDS,
            tool="asyncio",
            expect=first.content,  # every answer must be exactly the right one
        )
        hog_alive = all(process_start_time(pid) is not None for pid in hogs)
    assert hog_alive, "the CPU hog ended before the load did"

    assert result.errors == 0, f"{result.errors} failed or wrong answers of {result.requests}"
    assert len(result.connections) == FAIR_CLIENTS
    firsts = [c.first_answer_s for c in result.connections]
    gaps = [round(c.longest_gap_ms) for c in result.connections]
    assert all(f is not None and f * 1e3 <= LONGEST_WAIT_MS for f in firsts), firsts
    assert max(gaps) <= LONGEST_WAIT_MS, f"longest wait per client (ms): {gaps}"
    assert result.max_ms <= LONGEST_WAIT_MS, result.max_ms
    assert min(c.answers for c in result.connections) >= FAIR_SECONDS, result.connections
    status = httpx.get(served.urls["router"] + "/kfp-serve/router", trust_env=False).json()
    assert status["inflight"] == 0, status
    print(
        f"fairness: {result.requests} answers in {result.duration_s:.1f} s "
        f"({result.rps:.0f}/s, {FAIR_CLIENTS} clients, 1 CPU hog); longest request "
        f"{result.max_ms:.0f} ms, longest gap per client {max(gaps)} ms, p99 {result.p99_ms:.1f} ms"
    )
