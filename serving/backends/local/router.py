"""The router in front of every local endpoint: a small HTTP/1.1 reverse proxy on 127.0.0.1.

It gives an endpoint one URL that outlives rollouts (the servers behind it change, the router's
port does not) and splits requests between revisions by percentage for canary rollouts, the way
KServe's ingress does on a cluster.

Why it is built like this:

- Requests and responses are relayed as bytes by ``asyncio.Protocol`` callbacks (no stream
  coroutines, no task per request): only the request line and the framing headers
  (Content-Length, Transfer-Encoding, Connection, Expect) are parsed, nothing is re-encoded, and
  an answer that arrives in one piece leaves in one ``send(2)``. A relayed request costs about
  60 us of CPU, half of it the kernel's four loopback sends and receives (measured with
  cProfile and /proc; ``bench/serving.py`` measures the endpoint URL against the server direct).
- Upstream connections are kept alive and pooled per server, so a request does not pay a TCP
  handshake; a pooled connection the server closed while idle is retried once on a new one.
- The upstream set is read from the endpoint's registry file (``endpoint.json``), re-read when
  its inode or mtime changes: the backend switches traffic with an atomic rename and no control
  channel. Requests check the file at most every ``REFRESH_INTERVAL`` (a ``stat`` per request
  was 9 % of the router's CPU); the status request always does, so a rollout that waits for the
  router to report the new generation knows every later request is routed by it.
- ``GET /kfp-serve/router`` reports the registry generation in use, in-flight requests (of the
  router and per upstream), open connections, and the requests it refused, so a rollout can wait
  until the old revision is drained and tests can check that nothing is left hanging.

Junk fails fast and nothing waits forever:

- Bytes that cannot start an HTTP/1.x request (a TLS ClientHello, an HTTP/2 preface, noise) are
  answered 400 (505 for another HTTP version) on their first bytes and the connection is closed;
  they never reach a model server.
- A request head must arrive within ``HEADER_TIMEOUT`` (5 s) of its first byte, and a body must
  keep coming (no ``HEADER_TIMEOUT`` without a byte): a slow client is answered 408 and closed.
  An idle keep-alive connection is closed after ``KEEPALIVE_TIMEOUT``.
- An upstream that does not answer within its component's ``timeout`` (ServeConfig
  ``predictor.timeout`` / ``transformer.timeout``, as KServe applies it per component) is answered
  504; without one, ``KFP_SERVE_ROUTER_TIMEOUT`` or 300 s, Knative's default revision timeout.
- Answers the router writes itself never name an internal address or path; its log does.

Run as ``python -m kfp_serve.serving.backends.local.router --endpoint NAME --registry PATH
(--fd N | --port P)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp_serve.serving.backends.local.mirror import MIRROR_FILE, Mirror
from kfp_serve.serving.backends.local.registry import EndpointRecord, read_record_file
from kfp_serve.serving.constants import (
    LOOPBACK,
    ROUTER_BACKLOG,
    ROUTER_MODULE,
    ROUTER_STATUS_PATH,
)
from kfp_serve.serving.runtime.http1 import json_answer
from kfp_serve.serving.runtime.http2 import PREFACE_LINE
from kfp_serve.serving.runtime.server import unix_address

logger = logging.getLogger("kfp_serve.router")

STATUS_PATH = ROUTER_STATUS_PATH.encode()
MAX_BODY_ENV = "KFP_SERVE_ROUTER_MAX_BODY"
UPSTREAM_TIMEOUT_ENV = "KFP_SERVE_ROUTER_TIMEOUT"
DEFAULT_MAX_BODY = 256 * 1024 * 1024
#: Seconds an upstream may take to answer when its component sets no ``timeout``.
DEFAULT_UPSTREAM_TIMEOUT = 300.0
#: Seconds from a request's first byte to the end of its head (and between body bytes).
HEADER_TIMEOUT = 5.0
#: Seconds an idle keep-alive client connection stays open (nginx's default).
KEEPALIVE_TIMEOUT = 75.0
CONNECT_TIMEOUT = 5.0
#: Seconds a closing connection keeps reading (and dropping) what its client still sends, so
#: that the last answer is not lost to a reset (see ``_ClientConnection._linger``).
LINGER_TIMEOUT = 2.0
#: Seconds a request may be routed by a registry read before it (see the module docstring).
REFRESH_INTERVAL = 0.005
#: How often deadlines are checked (so they are enforced up to this much late).
SWEEP_INTERVAL = 0.1
#: The sweep's pause before it expires anyone, so that the I/O already received is read first.
LATE_RECHECK = 0.001
MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE_PER_UPSTREAM = 64
#: How long a new router waits for its endpoint's registry (the longest apply timeout).
STARTUP_GRACE = 3600.0
_NO_BODY_STATUS = {204, 304}


@dataclass
class Upstream:
    """One server that receives a share of the endpoint's requests."""

    host: str
    port: int
    revision: int
    role: str
    log: str
    weight: int
    #: Seconds this server may take to answer (its component's ServeConfig ``timeout``).
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    #: Its OIP gRPC port (0: it serves no gRPC); see grpc_relay.py.
    grpc_port: int = 0
    #: The unix socket it also listens on (``@name``: abstract), used instead of TCP when set.
    unix_socket: str = ""
    inflight: int = 0
    #: Requests relayed to it so far.
    requests: int = 0
    idle: list[_UpstreamConnection] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"


class Routes:
    """The upstream set, reloaded from the registry file whenever that file changes."""

    def __init__(
        self, endpoint: str, registry: str, default_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    ) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.default_timeout = default_timeout
        self.generation = 0
        self.upstreams: list[Upstream] = []
        self._by_key: dict[str, Upstream] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._cumulative: list[tuple[int, Upstream]] = []
        self._total = 0
        self.router_pid: int | None = None
        #: The router's own gRPC address (``host:port``), empty when it has none.
        self.grpc_address = ""
        #: Servers that lost their traffic but may still be answering requests.
        self._retired: dict[str, Upstream] = {}
        self._next_check = 0.0

    def refresh_if_due(self, now: float) -> None:
        """:meth:`refresh`, unless it ran less than ``REFRESH_INTERVAL`` before ``now``."""
        if now >= self._next_check:
            self._next_check = now + REFRESH_INTERVAL
            self.refresh()

    def refresh(self) -> None:
        try:
            st = os.stat(self.registry)
        except FileNotFoundError:
            self._stamp = None
            self.upstreams, self._cumulative, self._total = [], [], 0
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        record = read_record_file(self.registry)
        if record is None:
            return  # keep the previous routes; the next request tries again
        self._stamp = stamp
        self._load(record)

    def _load(self, record: EndpointRecord) -> None:
        upstreams: list[Upstream] = []
        for rev, weight in record.routes():
            entry = rev.entry
            # Keep the pooled connections and in-flight counts of servers that stay.
            old = self._by_key.get(entry.address)
            if old is not None and old.revision == rev.revision:
                old.weight = weight
                upstreams.append(old)
            else:
                upstreams.append(
                    Upstream(
                        host=LOOPBACK,
                        port=entry.port,
                        revision=rev.revision,
                        role=entry.role,
                        log=entry.log,
                        weight=weight,
                    )
                )
            upstreams[-1].timeout = component_timeout(
                rev.manifest, entry.role, self.default_timeout
            )
            upstreams[-1].grpc_port = entry.grpc_port
            upstreams[-1].unix_socket = entry.unix_socket
        kept = {u.key for u in upstreams}
        self._retired = {k: u for k, u in self._retired.items() if u.inflight and k not in kept}
        for key, old in self._by_key.items():
            if key not in kept:
                # Idle connections to a server that no longer gets traffic are closed now;
                # busy ones finish their request and are dropped on release.
                for conn in list(old.idle):
                    conn.close()
                old.idle.clear()
                self._retired[key] = old
        self.upstreams = upstreams
        self._by_key = {u.key: u for u in upstreams}
        self._cumulative = []
        total = 0
        for u in upstreams:
            total += u.weight
            self._cumulative.append((total, u))
        self._total = total
        self.generation = record.generation
        self.router_pid = record.router.pid
        self.grpc_address = record.router.grpc_address

    def pick(self) -> Upstream | None:
        if len(self._cumulative) == 1:
            return self._cumulative[0][1]
        if not self._cumulative:
            return None
        point = random.random() * self._total
        for bound, upstream in self._cumulative:
            if point < bound:
                return upstream
        return self._cumulative[-1][1]

    def serves(self, upstream: Upstream) -> bool:
        """True while ``upstream`` still receives traffic (its connections may be pooled)."""
        return self._by_key.get(upstream.key) is upstream

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "generation": self.generation,
            "upstreams": [
                {
                    "url": f"http://{u.key}",
                    "revision": u.revision,
                    "role": u.role,
                    "weight": u.weight,
                    "inflight": u.inflight,
                    "requests": u.requests,
                    "timeout": u.timeout,
                }
                for u in self.upstreams
            ],
            "retired_inflight": {k: u.inflight for k, u in self._retired.items() if u.inflight},
        }


def component_timeout(manifest: dict[str, Any], role: str, default: float) -> float:
    """The ``timeout`` (seconds) an InferenceService manifest sets for component ``role``.

    KServe applies ``spec.<component>.timeout`` to requests to that component; the router talks
    to the revision's first component (the transformer when there is one), so that one's applies.
    """
    value = ((manifest.get("spec") or {}).get(role) or {}).get("timeout")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if seconds > 0 else default


class _Reject(Exception):
    """A request the router answers itself and then closes the connection on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Bytes allowed in a request method: RFC 9110 tokens as servers use them (upper-case letters).
_METHOD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_MAX_METHOD = 20
_FRAMING = (b"content-length", b"transfer-encoding", b"connection", b"expect")


def _check_start(buf: bytearray) -> None:
    """Fail at once on bytes that cannot begin an HTTP/1.x request (TLS, HTTP/2, noise).

    Called while the head is still incomplete, so junk is refused on its first bytes instead of
    after a header timeout.
    """
    for i, byte in enumerate(buf[: _MAX_METHOD + 1]):
        if byte == 0x20 and i > 0:
            break
        if byte not in _METHOD_BYTES:
            raise _Reject(400, "not an HTTP/1.x request (a request line starts with a method)")
    else:
        if len(buf) > _MAX_METHOD:
            raise _Reject(400, "not an HTTP/1.x request (no method in the request line)")
    line_end = buf.find(b"\r\n")
    if line_end >= 0:
        _request_line(bytes(buf[:line_end]))


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise _Reject(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        version = parts[2][:16].decode("latin-1")
        raise _Reject(505, f"only HTTP/1.0 and HTTP/1.1 are served, not {version!r}")
    return parts[0], parts[1], parts[2]


def _framing(head: bytes) -> dict[bytes, bytes]:
    """The framing headers of a head (lower-cased names and values).

    One ``lower()`` and a ``find`` per name, all in C: splitting every header line in Python
    costs more than the rest of the relay. A repeated header keeps its values joined by commas.
    """
    lower = head.lower()
    headers: dict[bytes, bytes] = {}
    for name in _FRAMING:
        key = b"\r\n" + name + b":"
        start = lower.find(key)
        while start >= 0:
            value_start = start + len(key)
            value = lower[value_start : lower.find(b"\r\n", value_start)].strip()
            headers[name] = headers[name] + b"," + value if name in headers else value
            start = lower.find(key, value_start)
    return headers


class _Chunks:
    """Finds the end of a chunked body fed in pieces (the bytes themselves are relayed as-is)."""

    __slots__ = ("line", "remaining", "trailer", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.line = bytearray()  # a size or trailer line being read
        self.remaining = 0  # chunk data (+ its CRLF) still to come
        self.trailer = False  # past the last chunk: reading trailer lines
        self.size = 0
        self.limit = limit

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        """Consume ``data[start:]``; the index just past the body's end, or -1 if not reached."""
        i, n = start, len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                continue
            nl = data.find(b"\n", i)
            if nl < 0:
                self.line += data[i:]
                if len(self.line) > 4096:
                    raise _Reject(400, "malformed chunked body (a size line is too long)")
                return -1
            self.line += data[i : nl + 1]
            i = nl + 1
            line, self.line = bytes(self.line).strip(), bytearray()
            if self.trailer:
                if not line:
                    return i
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise _Reject(400, "malformed chunked body (bad chunk size)") from None
            if size == 0:
                self.trailer = True
                continue
            self.size += size
            if self.size > self.limit:
                raise _Reject(413, f"request body larger than {self.limit} bytes")
            self.remaining = size + 2
        return -1


class _ClientConnection(asyncio.Protocol):
    """One client connection: reads a request, relays it, writes the answer, and so on."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _IDLE
        #: When the current phase must have ended (loop time), and what happens then.
        self.deadline = 0.0
        self.head = b""
        self.method = b""
        self.body_length = 0
        self.chunks: _Chunks | None = None
        self.keep = True
        self.counted = False  # the request in progress counts in the router's in-flight
        self.parsing = False  # inside _advance: an answer written from there must not recurse
        self.exchange: _Exchange | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport  # type: ignore[assignment]
        self.router.clients.add(self)
        # A new connection must send its first request head within the header timeout.
        self.deadline = self.router.loop.time() + self.router.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return  # lingering after the last answer: what the client still sends is dropped
        self.buf += data
        if self.state == _RELAYING:
            # A pipelined request: it waits until the answer in progress is written.
            if len(self.buf) > MAX_HEADER_BYTES + self.router.max_body:
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.router.clients.discard(self)
        if self.exchange is not None:
            self.exchange.abandon()
            self.exchange = None
        self._finish_request()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume()

    # -- request parsing ----------------------------------------------------------------------

    def _advance(self) -> None:
        """Parse and dispatch as many complete requests as the buffer holds."""
        self.parsing = True
        try:
            while self.state in (_IDLE, _HEAD, _BODY):
                if self.state == _IDLE:
                    while self.buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore CRLF before a request
                        del self.buf[:2]
                    if not self.buf:
                        return
                    self.state = _HEAD
                    self.counted = True
                    self.router.inflight += 1
                    self.deadline = self.router.loop.time() + self.router.header_timeout
                if self.state == _HEAD and not self._read_head():
                    return
                if self.state == _BODY:
                    body = self._read_body()
                    if body is None:
                        return
                    self._dispatch(body)
        except _Reject as e:
            self.router.count_rejected(e.status)
            logger.info("refused a request from a client: %s %s", e.status, e)
            self.reply(json_answer(e.status, {"error": str(e)}, close=True), keep=False)
        finally:
            self.parsing = False

    def _read_head(self) -> bool:
        if self.buf.startswith(PREFACE_LINE):
            self._hand_over_http2()
            return False
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            _check_start(self.buf)
            if len(self.buf) > MAX_HEADER_BYTES:
                raise _Reject(431, f"request head larger than {MAX_HEADER_BYTES} bytes")
            return False
        if end + 4 > MAX_HEADER_BYTES:
            raise _Reject(431, f"request head larger than {MAX_HEADER_BYTES} bytes")
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        method, target, version = _request_line(head[: head.find(b"\r\n")])
        hdrs = _framing(head)
        connection = hdrs.get(b"connection", b"")
        self.keep = b"close" not in connection and (
            version == b"HTTP/1.1" or b"keep-alive" in connection
        )
        encoding = hdrs.get(b"transfer-encoding")
        if encoding is not None:
            if b"content-length" in hdrs:
                # Both framings at once is how requests are smuggled past a proxy.
                raise _Reject(400, "both Transfer-Encoding and Content-Length are set")
            if encoding.rsplit(b",", 1)[-1].strip() != b"chunked":
                raise _Reject(400, "a request Transfer-Encoding must end with chunked")
            self.chunks = _Chunks(self.router.max_body)
            self.body_length = 0
        else:
            raw = hdrs.get(b"content-length", b"0")
            if not raw.isdigit():
                raise _Reject(400, "invalid Content-Length")
            self.body_length = int(raw)
            if self.body_length > self.router.max_body:
                raise _Reject(
                    413,
                    f"request body of {self.body_length} bytes is larger than the router's "
                    f"limit of {self.router.max_body} bytes (set {MAX_BODY_ENV} to change it)",
                )
            self.chunks = None
        if hdrs.get(b"expect") == b"100-continue":
            # Answered here (once the head passed every check) and not forwarded: the
            # upstream's own 100 would otherwise have to be filtered out of its answer.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
            head = b"\r\n".join(
                line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:")
            )
        self.head, self.method = head, method
        self.state = _BODY
        if target == STATUS_PATH and method == b"GET":
            self.method = b"STATUS"
        # The body may arrive more slowly than a head, but must keep coming.
        self.deadline = self.router.loop.time() + self.router.header_timeout
        return True

    def _read_body(self) -> bytes | None:
        if self.chunks is not None:
            end = self.chunks.feed(self.buf, self.body_length)
            if end < 0:
                self.body_length = len(self.buf)
                self.deadline = self.router.loop.time() + self.router.header_timeout
                return None
            self.body_length = end
        elif len(self.buf) < self.body_length:
            self.deadline = self.router.loop.time() + self.router.header_timeout
            return None
        body = bytes(self.buf[: self.body_length])
        del self.buf[: self.body_length]
        return body

    def _dispatch(self, body: bytes) -> None:
        router = self.router
        routes = router.routes
        if self.method == b"STATUS":
            routes.refresh()
            router.drain_grpc()  # before a rollout reads the drain's progress in the answer
            self._finish_request()  # the status request does not count itself
            self.reply(json_answer(200, router.status(), close=not self.keep), keep=self.keep)
            return
        routes.refresh_if_due(router.loop.time())
        upstream = routes.pick()
        if upstream is None:
            message = (
                f"endpoint {routes.endpoint!r} has no revision to route to (it is being deleted "
                "or was never started): serve it again"
            )
            self.reply(json_answer(503, {"error": message}, close=not self.keep), keep=self.keep)
            return
        self.state = _RELAYING
        self.deadline = router.loop.time() + upstream.timeout
        self.exchange = _Exchange(self, upstream, self.head + body, self.method == b"HEAD")
        if router.mirror.active:
            router.mirror.begin(self.exchange)
        self.exchange.start()

    def _hand_over_http2(self) -> None:
        """A gRPC client at the HTTP port: answer it in HTTP/2 (it cannot read HTTP/1.1)."""
        from kfp_serve.serving.backends.local import grpc_relay

        self.router.count_rejected(505)
        self._finish_request()
        self.state = _CLOSED
        self.router.clients.discard(self)
        data, self.buf = bytes(self.buf), bytearray()
        grpc_relay.answer_http2_on_http_port(
            self.transport, data, self.router.routes.endpoint, self.router.routes.grpc_address
        )

    # -- answers ------------------------------------------------------------------------------

    def reply(self, data: bytes, keep: bool) -> None:
        """Write a whole answer; then read the next request, or close."""
        if self.state == _CLOSED:
            return
        self.transport.write(data)  # type: ignore[union-attr]
        self.answered(keep)

    def answered(self, keep: bool) -> None:
        """The answer to the current request is written (by the router or the upstream)."""
        self.exchange = None
        self._finish_request()
        if self.state == _CLOSED:
            return
        if not (keep and self.keep):
            self._linger()
            return
        self.state = _IDLE
        self.deadline = self.router.loop.time() + self.router.keepalive_timeout
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buf and not self.parsing:
            self._advance()

    def _linger(self) -> None:
        """Close after an answer without losing it: send our FIN, then read and drop what the
        client still sends until its FIN (asyncio then closes the transport) or
        ``LINGER_TIMEOUT``.

        Closing a socket with unread input makes the kernel send a reset, and a reset makes the
        client's kernel discard the answer it had not read yet: a slow client answered 408 saw
        "connection reset" instead of the 408.
        """
        self.state = _CLOSED
        self.buf.clear()
        transport = self.transport
        if not transport.can_write_eof():  # type: ignore[union-attr]
            transport.close()  # type: ignore[union-attr]
            return
        transport.write_eof()  # type: ignore[union-attr]  # after what was written
        transport.resume_reading()  # type: ignore[union-attr]
        self.deadline = self.router.loop.time() + LINGER_TIMEOUT

    def expire(self) -> None:
        """The current phase ran past its deadline (called by the router's sweep)."""
        if self.state == _CLOSED:
            self.transport.close()  # type: ignore[union-attr]  # lingered long enough
        elif self.state == _IDLE:
            logger.debug("closing an idle client connection")
            self.state = _CLOSED
            self.transport.close()  # type: ignore[union-attr]
        elif self.state in (_HEAD, _BODY):
            self.router.count_rejected(408)
            what = "head" if self.state == _HEAD else "body"
            message = (
                f"the request {what} did not arrive within {self.router.header_timeout:g} s "
                "(the router's header timeout)"
            )
            logger.info("closing a slow client: %s", message)
            self.reply(json_answer(408, {"error": message}, close=True), keep=False)
        elif self.state == _RELAYING and self.exchange is not None:
            self.exchange.time_out()

    def _finish_request(self) -> None:
        if self.counted:
            self.counted = False
            self.router.inflight -= 1


_IDLE, _HEAD, _BODY, _RELAYING, _CLOSED = range(5)


class _UpstreamConnection(asyncio.Protocol):
    """A pooled keep-alive connection to one upstream server."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            # Nothing was asked: a server talking out of turn cannot be trusted with the next
            # request.
            self.close()
            return
        self.exchange.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):
            self.upstream.idle.remove(self)
        if self.exchange is not None:
            self.exchange.upstream_lost(exc)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):
            self.upstream.idle.remove(self)
        if self.transport is not None:
            self.transport.close()


class _Exchange:
    """One request relayed upstream and its answer copied back, bytes as they arrive."""

    __slots__ = (
        "client", "upstream", "request", "head_only", "conn", "reused", "attempt", "head",
        "relayed", "remaining", "chunks", "to_close", "upstream_keep", "connecting", "done",
        "status", "started", "capture",
    )

    def __init__(
        self, client: _ClientConnection, upstream: Upstream, request: bytes, head_only: bool
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.request = request
        self.head_only = head_only
        self.conn: _UpstreamConnection | None = None
        self.reused = False
        self.attempt = 0
        self.head = bytearray()  # the answer's head, until it is complete
        self.relayed = False  # a byte of the answer went to the client
        self.remaining = -1  # body bytes still to come (-1: framed otherwise)
        self.chunks: _Chunks | None = None
        self.to_close = False  # the body ends when the upstream closes
        self.upstream_keep = True
        self.connecting: asyncio.Task[None] | None = None
        self.done = False
        self.status = 0
        #: Set by a mirror session: when the request started, and the answer's bytes.
        self.started = 0.0
        self.capture: list[bytes] | None = None
        upstream.inflight += 1
        upstream.requests += 1

    def start(self) -> None:
        idle = self.upstream.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                self._send(conn, reused=True)
                return
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = self.client.router.loop
        upstream = self.upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if upstream.unix_socket:
                    _, conn = await _connect_unix(
                        loop, lambda: _UpstreamConnection(upstream), upstream.unix_socket
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: _UpstreamConnection(upstream), upstream.host, upstream.port
                    )
        except OSError as e:  # includes TimeoutError
            self.connecting = None
            self._fail(e)
            return
        self.connecting = None
        if self.done:
            conn.close()
            return
        self._send(conn, reused=False)

    def _send(self, conn: _UpstreamConnection, reused: bool) -> None:
        self.conn, self.reused = conn, reused
        conn.exchange = self
        conn.transport.write(self.request)  # type: ignore[union-attr]

    # -- the answer ---------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        client = self.client
        if client.state == _CLOSED:
            return
        if self.capture is not None:
            self.capture.append(data)
        out = client.transport
        if self.remaining > 0:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                out.write(data)  # type: ignore[union-attr]
                return
            extra = len(data) > self.remaining
            out.write(data[: self.remaining] if extra else data)  # type: ignore[union-attr]
            self.remaining = 0
            self._complete(clean=not extra)
            return
        if self.chunks is not None:
            try:
                end = self.chunks.feed(data)
            except _Reject:
                self._broken("a malformed chunked answer")
                return
            out.write(data if end < 0 else data[:end])  # type: ignore[union-attr]
            if end >= 0:
                self._complete(clean=end == len(data))
            return
        if self.to_close:
            out.write(data)  # type: ignore[union-attr]
            return
        self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        if self.head:
            self.head += data
        else:
            self.head = data  # type: ignore[assignment]  # the usual case: no copy
        while True:
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEADER_BYTES:
                    self._broken("an oversized answer head")
                self.head = bytearray(self.head)
                return
            head = bytes(self.head[: end + 4])
            rest = bytes(self.head[end + 4 :])
            line = head[: head.find(b"\r\n")]
            parts = line.split(b" ", 2)
            try:
                if not parts[0].startswith(b"HTTP/1."):
                    raise ValueError(line[:40])
                status = int(parts[1])
            except (IndexError, ValueError):
                self._broken("a malformed status line")
                return
            out = self.client.transport
            if 100 <= status < 200 and status != 101:
                out.write(head)  # type: ignore[union-attr]  # interim answer; the final follows
                self.relayed = True
                self.head = bytearray(rest)
                continue
            break
        hdrs = _framing(head)
        self.head = bytearray()
        self.relayed = True
        self.status = status
        self.upstream_keep = b"close" not in hdrs.get(b"connection", b"") and line.startswith(
            b"HTTP/1.1"
        )
        if self.head_only or status in _NO_BODY_STATUS:
            out.write(head)  # type: ignore[union-attr]
            self._complete(clean=not rest)
            return
        encoding = hdrs.get(b"transfer-encoding")
        if encoding is not None and encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
            self.chunks = _Chunks(1 << 62)
            try:
                end = self.chunks.feed(rest)
            except _Reject:
                self._broken("a malformed chunked answer")
                return
            out.write(head + (rest if end < 0 else rest[:end]))  # type: ignore[union-attr]
            if end >= 0:
                self._complete(clean=end == len(rest))
            return
        length = hdrs.get(b"content-length")
        if encoding is None and length is not None and length.isdigit():
            n = int(length)
            if len(rest) >= n:
                # The usual case: the whole answer in one piece, written with one send(2).
                out.write(head + rest[:n] if n else head)  # type: ignore[union-attr]
                self._complete(clean=len(rest) == n)
                return
            out.write(head + rest)  # type: ignore[union-attr]
            self.remaining = n - len(rest)
            return
        # No framing: the body runs to the end of the connection, and so must the client's.
        self.to_close = True
        self.upstream_keep = False
        out.write(head + rest)  # type: ignore[union-attr]

    def _complete(self, clean: bool) -> None:
        """The whole answer is relayed: pool the connection (if reusable) and free the client."""
        self._end()
        conn = self.conn
        if conn is not None:
            conn.exchange = None
            upstream = self.upstream
            if (
                clean
                and self.upstream_keep
                and not conn.closed
                and len(upstream.idle) < MAX_IDLE_PER_UPSTREAM
                and self.client.router.routes.serves(upstream)
            ):
                upstream.idle.append(conn)
            else:
                conn.close()
        self.client.answered(keep=self.upstream_keep and not self.to_close)
        if self.started:
            self.client.router.mirror.answered(self)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream connection closed while this request was on it."""
        if self.done:
            return
        if self.to_close:
            self._complete(clean=False)
            return
        self.conn = None
        if not self.relayed and self.reused and self.attempt == 0 and not self.head:
            # A pooled keep-alive connection the server closed while idle: the request never
            # reached it, so sending it again on a fresh connection is safe.
            self.attempt = 1
            self.connecting = asyncio.ensure_future(self._connect())
            return
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def abandon(self) -> None:
        """The client went away: stop relaying; the upstream connection's state is unknown."""
        if self.done:
            return
        self._end()
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.exchange = None
            self.conn.close()

    def time_out(self) -> None:
        upstream = self.upstream
        router = self.client.router
        logger.warning(
            "endpoint %r: the %s of revision %s at %s did not answer within %g s",
            router.routes.endpoint, upstream.role, upstream.revision, upstream.key,
            upstream.timeout,
        )
        router.timeouts += 1
        if self.started:
            router.mirror.failed(self)
        self.abandon()
        if self.relayed:
            self.client.answered(keep=False)  # half an answer: closing is all that is left
            return
        message = (
            f"endpoint {router.routes.endpoint!r}: the {upstream.role} did not answer within "
            f"{upstream.timeout:g} s (raise `{upstream.role}.timeout` in the ServeConfig to "
            "wait longer)"
        )
        self.client.reply(json_answer(504, {"error": message}, close=True), keep=False)

    def pause(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.pause_reading()

    def resume(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def _end(self) -> None:
        if not self.done:
            self.done = True
            self.upstream.inflight -= 1

    def _broken(self, what: str) -> None:
        self._fail(ValueError(f"the server sent {what}"))

    def _fail(self, error: BaseException) -> None:
        """Tell the client the upstream failed (502), or close it if half an answer went out."""
        if self.done:
            return
        upstream = self.upstream
        routes = self.client.router.routes
        if self.started:
            self.client.router.mirror.failed(self)
        logger.warning(
            "endpoint %r: the %s of revision %s at %s failed: %s: %s (log: %s)",
            routes.endpoint, upstream.role, upstream.revision, upstream.key,
            type(error).__name__, error, upstream.log or "unknown",
        )
        self.abandon()
        if self.relayed:
            self.client.answered(keep=False)
            return
        what = (
            "refused the connection"
            if isinstance(error, ConnectionRefusedError)
            else "did not answer"
            if isinstance(error, TimeoutError)
            else "failed"
        )
        payload = {
            "error": f"endpoint {routes.endpoint!r}: the {upstream.role} of revision "
            f"{upstream.revision} {what}; it may have exited: run `kfp-serve endpoints` to "
            "see it (its log has the details)",
            "reason": "UpstreamUnavailable",
            "revision": upstream.revision,
        }
        self.client.reply(json_answer(502, payload, close=True), keep=False)


async def _connect_unix(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], name: str
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """A connection to the unix socket ``name`` (``@name``: in the abstract namespace, which
    ``create_unix_connection`` cannot name by path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, unix_address(name))
    except BaseException:
        sock.close()
        raise
    return await loop.create_unix_connection(factory, sock=sock)


class _ShadowClient:
    """Stands in for the client of a mirrored request: the answer goes to the mirror only."""

    state = _IDLE

    def __init__(self, router: Router, done: Callable[[bytes], None]) -> None:
        self.router = router
        self.transport = self  # the exchange writes the answer here
        self.exchange: _Exchange | None = None
        self._done: Callable[[bytes], None] | None = done
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def reply(self, data: bytes, keep: bool) -> None:
        self._parts.append(data)
        self.answered(keep)

    def answered(self, keep: bool) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(b"".join(self._parts))

    def cancel(self) -> None:
        """The mirrored request ran past its upstream's timeout: give up on it."""
        if self._done is not None and self.exchange is not None:
            self.exchange.abandon()
            self._parts = []
            self.answered(keep=False)


class Router:
    """Accepts client connections and relays each request to one upstream.

    Args:
        routes: The upstream set.
        max_body: Largest request body accepted (413 above).
        header_timeout: Seconds a request head (and then each wait for its body) may take.
        keepalive_timeout: Seconds an idle keep-alive client connection is kept open.
    """

    def __init__(
        self,
        routes: Routes,
        max_body: int,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.routes = routes
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self.clients: set[_ClientConnection] = set()
        #: Requests begun (a first byte arrived) and not yet answered, status requests excepted.
        self.inflight = 0
        #: Requests the router answered itself and closed on, by status (junk, slow, too big).
        self.rejected: dict[int, int] = {}
        self.timeouts = 0
        #: The gRPC listener's relay (grpc_relay.py), when the router has one.
        self.grpc: Any = None
        self.mirror = Mirror(
            os.path.join(os.path.dirname(routes.registry), MIRROR_FILE),
            # perf_counter, not the loop's clock: uvloop's ticks in whole milliseconds.
            self._shadow, time.perf_counter, self.loop.call_later,
        )

    def _shadow(self, upstream: Upstream, request: bytes, done: Callable[[bytes], None]):  # noqa: ANN202
        """Relay a mirrored request (see :mod:`.mirror`); returns its cancel function."""
        shadow = _ShadowClient(self, done)
        shadow.exchange = _Exchange(shadow, upstream, request, False)  # type: ignore[arg-type]
        shadow.exchange.start()
        return shadow.cancel

    def connection(self) -> _ClientConnection:
        """The protocol factory of the listening socket."""
        return _ClientConnection(self)

    def drain_grpc(self) -> None:
        """Drain the gRPC connections to servers that lost their traffic (see grpc_relay)."""
        if self.grpc is not None and self.grpc.relayed:
            from kfp_serve.serving.backends.local.grpc_relay import serving_keys

            self.grpc.drain_unrouted(serving_keys(self.routes))

    def count_rejected(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def status(self) -> dict[str, Any]:
        """What ``GET /kfp-serve/router`` answers."""
        return {
            **self.routes.status(),
            "inflight": self.inflight,
            "connections": len(self.clients),
            "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
            "timeouts": self.timeouts,
            "mirror": self.mirror.status(),
            **({"grpc": self.grpc.status()} if self.grpc is not None else {}),
        }

    async def sweep(self, interval: float = SWEEP_INTERVAL) -> None:
        """Enforce every connection's deadline, a few times a second.

        One periodic pass instead of a timer per request: arming and cancelling timers would
        cost more than the rest of a relay, and a deadline a fraction of a second late is fine.
        """
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            late = [c for c in self.clients if c.deadline <= now]
            if late:
                # uvloop runs due timers before it polls for I/O: after the router itself was
                # descheduled (a loaded machine), bytes that move these deadlines may be waiting
                # unread. A pause of one poll reads them before anyone is called slow.
                await asyncio.sleep(LATE_RECHECK)
                for client in late:
                    if client.deadline <= now and client in self.clients:
                        client.expire()
            self.mirror.refresh(self.routes.upstreams)
            self.routes.refresh_if_due(now)  # what a gRPC drain compares with
            self.drain_grpc()


async def _watchdog(routes: Routes, registry: str, interval: float = 2.0) -> None:
    """Exit when the endpoint is gone or another router took over, so none is left orphaned.

    Before the registry first appears, or while it still names a router that has died (the
    servers of a new endpoint or revision are still loading), the router waits up to
    STARTUP_GRACE seconds for it.
    """
    seen = False
    misses = 0
    started = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        routes.refresh()
        exists = os.path.exists(registry)
        seen = seen or exists
        if not exists:
            gone = seen or time.monotonic() - started > STARTUP_GRACE
        else:
            named = routes.router_pid
            # A registry that still names a router which has died is one this router is
            # replacing: the rollout names it once the new servers are ready (minutes, for
            # large models in containers), so that is not a takeover.
            gone = named not in (None, os.getpid()) and (
                _running(named) or time.monotonic() - started > STARTUP_GRACE
            )
        misses = misses + 1 if gone else 0
        if misses >= 3:
            logger.info("registry %s no longer names this router: exiting", registry)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _running(pid: int) -> bool:
    """True if a process ``pid`` exists (this router sees the host's pids)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bound(port: int) -> socket.socket:
    """A socket listening on ``port`` of the loopback address (a router in a container, which
    cannot inherit one from the backend)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(ROUTER_BACKLOG)
    return sock


async def serve(args: argparse.Namespace) -> None:
    routes = Routes(
        args.endpoint,
        args.registry,
        default_timeout=float(os.environ.get(UPSTREAM_TIMEOUT_ENV, DEFAULT_UPSTREAM_TIMEOUT)),
    )
    routes.refresh()
    router = Router(routes, max_body=int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY)))
    sock = socket.socket(fileno=args.fd) if args.fd is not None else _bound(args.port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(router.connection, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    grpc_server = None
    if args.grpc_fd is not None or args.grpc_port is not None:
        from kfp_serve.serving.backends.local import grpc_relay

        router.grpc = grpc_relay.GrpcRelay(routes.endpoint, lambda: grpc_relay.choose(routes))
        grpc_sock = (
            socket.socket(fileno=args.grpc_fd)
            if args.grpc_fd is not None
            else _bound(args.grpc_port)
        )
        grpc_server = await loop.create_server(router.grpc.connection, sock=grpc_sock)
    watchdog = asyncio.create_task(_watchdog(routes, args.registry))
    sweep = asyncio.create_task(router.sweep())
    logger.info("router for %r listening on %s", args.endpoint, sock.getsockname())
    async with server:
        await stop.wait()
    if grpc_server is not None:
        grpc_server.close()
    watchdog.cancel()
    sweep.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {ROUTER_MODULE}", description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--registry", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited listening socket")
    where.add_argument("--port", type=int, help="a port to bind on 127.0.0.1")
    grpc_where = parser.add_mutually_exclusive_group()
    grpc_where.add_argument("--grpc-fd", type=int, help="an inherited listening socket for gRPC")
    grpc_where.add_argument("--grpc-port", type=int, help="a port on 127.0.0.1 for gRPC")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with kserve's uvicorn
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
