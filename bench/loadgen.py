"""Closed-loop HTTP load on loopback: wrk (preferred) or a small asyncio client (fallback);
h2load for gRPC.

Both send the same POST body over ``connections`` keep-alive connections for a bounded time and
return a :class:`LoadResult` (requests/s, p50/p99 latency, error counts). wrk is C and uses far
less CPU per request than any Python client, which matters on a 2-core machine where the load
generator shares the box with the server under test. The fallback runs in its own process (so
it can be pinned to another core, and its GIL is not the benchmark's) as
``python -m bench.loadgen URL BODY_FILE --connections N --duration S``, and prints one JSON line.

Only loopback URLs are accepted: a load test here must never leave the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: Marker of the result line both generators print (wrk prints its own report too).
RESULT_MARKER = "LOADGEN-RESULT "

# wrk's Lua hooks: the body comes from a file (JSON with nested arrays holds "]]", which would
# end a Lua long string), and done() prints exact percentiles instead of wrk's rounded report.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_s":%%.6f,"p50_ms":%%.4f,"p99_ms":%%.4f,' ..
    '"mean_ms":%%.4f,"max_ms":%%.4f,"errors_connect":%%d,"errors_read":%%d,' ..
    '"errors_write":%%d,"errors_status":%%d,"errors_timeout":%%d}\\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3, latency.max / 1e3,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class ConnectionStats:
    """What one connection of the asyncio client saw: is every client served, and how soon?"""

    answers: int
    #: Seconds from the start of the run to this connection's first complete answer (None: none).
    first_answer_s: float | None
    #: Longest time this connection went without an answer (the run's start counts as one), ms.
    longest_gap_ms: float


@dataclass
class LoadResult:
    """One bounded load run against one URL."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    #: The longest single request (wrk: its latency max; asyncio: the slowest answer).
    max_ms: float
    errors: int
    tool: str
    #: Per connection, in order (asyncio client only; wrk does not report it).
    connections: list[ConnectionStats] = field(default_factory=list)

    @property
    def rps(self) -> float:
        """Completed requests per second (errors included: wrk counts them as requests)."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def check_loopback(url: str) -> None:
    """Refuse any URL that is not on this machine's loopback.

    Raises:
        ValueError: The host is not 127.0.0.0/8, localhost or [::1].
    """
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host == "::1" or host.startswith("127.")):
        raise ValueError(f"load generation is loopback-only; refusing {url!r}")


def wrk_path() -> str | None:
    """Path of the wrk binary, or None (then :func:`run_load` uses the asyncio client)."""
    return shutil.which("wrk")


def _cpu_prefix(cpus: str | None) -> list[str]:
    # Pinning the generator away from the server keeps the two from trading one core back
    # and forth, which is most of the run-to-run spread on a 2-core machine.
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus]
    return []


def run_load(
    url: str,
    body: bytes,
    *,
    connections: int = 16,
    duration: float = 5.0,
    cpus: str | None = None,
    tool: str | None = None,
    headers: dict[str, str] | None = None,
    expect: bytes | None = None,
) -> LoadResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``duration`` s.

    Args:
        url: Full loopback URL of the predict/infer route.
        body: Request body (JSON).
        connections: Concurrent connections, each with one request in flight.
        duration: Seconds of load (wrk takes whole seconds; at least 1).
        cpus: ``taskset`` CPU list for the generator process, e.g. ``"1"``.
        tool: ``"wrk"`` or ``"asyncio"``; default wrk when installed.
        headers: Extra request headers, e.g. the OIP binary extension's.
        expect: The exact answer body every request must get (asyncio client only): any other
            counts as an error.

    Returns:
        The result; ``errors`` counts non-2xx answers, timeouts and socket errors.

    Raises:
        RuntimeError: The generator failed or printed no result.
    """
    check_loopback(url)
    tool = tool or ("wrk" if wrk_path() else "asyncio")
    if expect is not None and tool != "asyncio":
        raise ValueError("expect= needs the asyncio client (wrk does not compare bodies)")
    with tempfile.TemporaryDirectory(prefix="kfp-serve-load-") as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        if tool == "wrk":
            script = Path(tmp) / "post.lua"
            extra = "".join(
                f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n"
                for k, v in (headers or {}).items()
            )
            script.write_text(  # headers after the script's own, so they override
                _WRK_SCRIPT % {"body": json.dumps(str(body_file)), "marker": RESULT_MARKER}
                + extra
            )
            seconds = max(1, round(duration))
            cmd = [
                *_cpu_prefix(cpus),
                wrk_path() or "wrk",
                "-t1",  # one thread: the generator gets one core, like the server
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
        else:
            cmd = [
                *_cpu_prefix(cpus),
                sys.executable,
                "-m",
                "bench.loadgen",
                url,
                str(body_file),
                f"--connections={connections}",
                f"--duration={duration}",
            ]
            cmd += [f"--header={k}: {v}" for k, v in (headers or {}).items()]
            if expect is not None:
                expect_file = Path(tmp) / "expect.json"
                expect_file.write_bytes(expect)
                cmd.append(f"--expect={expect_file}")
        proc = subprocess.run(  # noqa: S603 - fixed argv, loopback URL checked above
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            cwd=Path(__file__).resolve().parents[1],
            check=False,
        )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            data = json.loads(line[len(RESULT_MARKER) :])
            errors = sum(v for k, v in data.items() if k.startswith("errors"))
            return LoadResult(
                requests=int(data["requests"]),
                duration_s=float(data["duration_s"]),
                p50_ms=float(data["p50_ms"]),
                p99_ms=float(data["p99_ms"]),
                mean_ms=float(data["mean_ms"]),
                max_ms=float(data["max_ms"]),
                errors=int(errors),
                tool=tool,
                connections=[ConnectionStats(**c) for c in data.get("connections", [])],
            )
    raise RuntimeError(
        f"{tool} printed no result (exit {proc.returncode}): "
        f"{(proc.stderr or proc.stdout)[-2000:]}"
    )


def run_grpc_load(
    port: int,
    path: str,
    message: bytes,
    *,
    connections: int = 16,
    duration: float = 5.0,
    cpus: str | None = None,
) -> LoadResult:
    """Unary gRPC calls of ``path`` with the serialized ``message`` to 127.0.0.1:``port``, over
    ``connections`` HTTP/2 connections with one call in flight each, by h2load (nghttp2's C load
    generator: the gRPC counterpart of wrk, so that the two transports are loaded alike).

    h2load reads HTTP statuses, not gRPC's: the caller checks once, with a real gRPC client,
    that the same message is answered OK.

    Raises:
        RuntimeError: h2load is not installed, failed, or printed no result.
    """
    if not shutil.which("h2load"):
        raise RuntimeError("h2load is not installed: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="kfp-serve-load-") as tmp:
        body = Path(tmp) / "message.bin"
        body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)  # gRPC framing
        log = Path(tmp) / "requests.tsv"
        cmd = [
            *_cpu_prefix(cpus), "h2load", "-t1", f"-c{connections}", "-m1",
            f"-D{max(1, round(duration))}", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"--log-file={log}", f"http://127.0.0.1:{port}{path}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                              check=False)  # noqa: S603 - fixed argv on loopback
        rows = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"h2load failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    # Columns: start (us since the epoch), HTTP status, microseconds until the answer ended.
    latencies = sorted(int(r[2]) / 1e3 for r in rows)
    starts = [int(r[0]) for r in rows]
    ends = [s + int(r[2]) for s, r in zip(starts, rows, strict=True)]
    return LoadResult(
        requests=len(rows),
        duration_s=(max(ends) - min(starts)) / 1e6,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[int(0.99 * (len(latencies) - 1))],
        mean_ms=sum(latencies) / len(latencies),
        max_ms=latencies[-1],
        errors=sum(1 for r in rows if r[1] != "200"),
        tool="h2load",
    )


# --- asyncio fallback client --------------------------------------------------------------


async def _worker(
    host: str,
    port: int,
    request: bytes,
    started: float,
    stop_at: float,
    expect: bytes | None,
    latencies: list[float],
    errors: list[int],
) -> dict:
    """One keep-alive connection sending ``request`` back to back; its :class:`ConnectionStats`."""
    answers = 0
    first: float | None = None
    last = started  # the run's start counts as an answer: a client never served has one gap
    longest_gap = 0.0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length) if length else b""
            now = time.perf_counter()
            latencies.append(now - sent)
            longest_gap = max(longest_gap, now - last)
            last = now
            if not 200 <= status < 300 or (expect is not None and answer != expect):
                errors[0] += 1
                continue
            answers += 1
            if first is None:
                first = now - started
    except (OSError, asyncio.IncompleteReadError, ValueError):
        errors[0] += 1
    finally:
        writer.close()
    # A connection still waiting when the run ended waited at least until then.
    longest_gap = max(longest_gap, min(time.perf_counter(), stop_at) - last)
    return {
        "answers": answers,
        "first_answer_s": first,
        "longest_gap_ms": longest_gap * 1e3,
    }


async def _load(
    url: str,
    body: bytes,
    connections: int,
    duration: float,
    expect: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    fields = {"Host": f"{host}:{port}", "Content-Type": "application/json"}
    for key, value in (headers or {}).items():  # extra headers override, as with wrk
        fields = {k: v for k, v in fields.items() if k.lower() != key.lower()}
        fields[key] = value
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    request = (
        f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    stop_at = started + duration
    per_connection = await asyncio.gather(
        *(
            _worker(host, port, request, started, stop_at, expect, latencies, errors)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3

    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": sum(latencies) / len(latencies) * 1e3 if latencies else 0.0,
        "max_ms": latencies[-1] * 1e3 if latencies else 0.0,
        "errors_status": errors[0],
        "connections": per_connection,
    }


# --- a CPU hog ----------------------------------------------------------------------------

_HOG_SCRIPT = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


@contextlib.contextmanager
def cpu_hog(seconds: float, processes: int = 1) -> Iterator[list[int]]:
    """Keep ``processes`` cores busy for at most ``seconds``, the way another job on the machine
    would: each hog is a process spinning in a bounded loop, so it ends even if we are killed.

    Yields:
        The hogs' pids (stopped, if still running, when the block ends).
    """
    hogs = [
        subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-c", _HOG_SCRIPT, str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    try:
        yield [h.pid for h in hogs]
    finally:
        for hog in hogs:
            if hog.poll() is None:
                hog.kill()
            hog.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.loadgen URL BODY_FILE``: the fallback generator's process."""
    parser = argparse.ArgumentParser(description="Closed-loop POST load (wrk fallback).")
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--expect", help="a file with the exact answer body every request must get")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE (repeatable)")
    args = parser.parse_args(argv)
    check_loopback(args.url)
    body = Path(args.body_file).read_bytes()
    expect = Path(args.expect).read_bytes() if args.expect else None
    try:
        import uvloop  # the event loop costs less CPU per request than asyncio's own

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = runner(_load(args.url, body, args.connections, args.duration, expect, headers))
    print(RESULT_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
