"""The gRPC address of a local endpoint: a second listener of the router that relays HTTP/2.

An endpoint whose servers run OIP gRPC (``--enable_grpc=true`` or ``--grpc_port=N`` in the
manifest's args) gets one stable gRPC address, the way its HTTP URL is stable: the router listens
on a second port and relays each gRPC connection, bytes as they arrive, to the gRPC port of a
server that receives the endpoint's traffic.

Why a byte relay per connection, not a proxy per call:

- HTTP/2 is relayed untouched (the frame headers are read, never rewritten; no HPACK, no grpc
  import in the router), so a relayed call costs two loopback hops and a little bookkeeping, and
  every gRPC feature (deadlines, metadata, raw contents, streaming) passes as it is.
- A connection is bound to the server picked when it opens, by the same weights as HTTP
  requests: a canary split holds across connections (each channel sticks to one revision, as a
  channel does to one pod behind a cluster's L4 balancer).
- Rollouts: a new connection goes to the revision that serves now. A connection to a server
  that lost its traffic is drained by the relay before that server stops: the relay reads the
  9-byte frame headers going by (never the payloads or HPACK) to know the calls in flight, tells
  the client GOAWAY with the last stream id 2^31-1 and a PING (RFC 9113 6.8's graceful
  shutdown: open no more calls here; the PING's answer proves every call sent before it was
  seen), and closes the connection once those calls are answered. The client's channel
  reconnects through the router and lands on the new revision; the rollout waits for the
  drain. No call is cut short. (Leaving it to the retired server's own GOAWAY was not enough:
  grpc-core cancels a call that arrived but was not yet picked up by the server when it stops,
  about one rollout in twenty under load here.)

Nothing hangs:

- Bytes that do not start with the HTTP/2 client preface are refused by closing at once.
- When no revision serves gRPC (the manifest does not turn it on) or none is running, the
  relay answers each call itself with a gRPC status (UNIMPLEMENTED / UNAVAILABLE) and a message
  saying what to change, then sends GOAWAY.
- A gRPC client pointed at the endpoint's HTTP port gets UNAVAILABLE naming the gRPC address
  (:func:`answer_http2_on_http_port`), not a hang and not an HTTP/1.1 answer it cannot read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kfp_serve.serving.runtime import http2
from kfp_serve.serving.runtime.http2 import PREFACE, Status, error_answer

logger = logging.getLogger("kfp_serve.router.grpc")

#: Seconds a refused connection stays open so the client reads the answer (then it is closed).
LINGER = 2.0
#: Seconds a refused HTTP/2 connection may stay open without opening a call (a real gRPC client
#: sends its first call with the preface; anything else is junk, closed well within 1 s).
NO_CALL_TIMEOUT = 0.5
#: Bytes buffered towards one side before reading from the other pauses.
HIGH_WATER = 1 << 20
#: Seconds a draining connection waits for the PING that follows its GOAWAY to be answered
#: (then the calls it knows of are all there are), and at most for its calls to finish.
PING_WAIT = 1.0
DRAIN_TIMEOUT = 30.0
#: Opaque data of the relay's own PING (its answer is relayed on: servers ignore unknown acks).
_DRAIN_PING = b"kfpdrain"


class _Frames:
    """Finds the frame headers in one direction of a relayed connection, however the bytes are
    cut; payloads are skipped, except the 8 bytes of a PING when they arrive with its header."""

    __slots__ = ("head", "skip")

    def __init__(self, skip: int = 0) -> None:
        self.head = bytearray()  # a frame header cut by the end of a read
        self.skip = skip  # payload bytes (or the client preface) still to pass

    @property
    def at_boundary(self) -> bool:
        return not self.skip and not self.head

    def feed(self, data: bytes, on_frame: Callable[[int, int, int, bytes], None]) -> None:
        """Call ``on_frame(kind, flags, stream, ping_payload)`` for each header in ``data``."""
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            need = 9 - len(self.head)
            self.head += data[i : i + need]
            i += min(need, n - i)
            if len(self.head) < 9:
                return
            head, self.head = self.head, bytearray()
            kind = head[3]
            self.skip = int.from_bytes(head[:3], "big")
            on_frame(kind, head[4], int.from_bytes(head[5:9], "big") & http2.LAST_STREAM,
                     data[i : i + 8] if kind == http2.PING else b"")


class _Refusal(asyncio.Protocol):
    """Answers every call a client opens with one gRPC error, then says GOAWAY and closes.

    Reads just enough of the client's frames (9-byte headers) to learn the stream ids of its
    calls; everything else is skipped.
    """

    def __init__(self, code: int, message: str, loop: asyncio.AbstractEventLoop) -> None:
        self.code = code
        self.message = message
        self.loop = loop
        self.transport: Any = None
        self.buf = bytearray()
        self.preface_seen = False
        self.answered = 0
        self.closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # A client that opens no call (a bare preface, a port scanner) is closed soon, like
        # any other junk at the router.
        self.idle = self.loop.call_later(NO_CALL_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        self.transport.write(http2.goaway(0))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.preface_seen:
            if len(self.buf) < len(PREFACE):
                return
            del self.buf[: len(PREFACE)]
            self.preface_seen = True
            self.transport.write(http2.frame(http2.SETTINGS, 0, 0))
        out = bytearray()
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            del self.buf[: 9 + length]
            if kind == http2.SETTINGS and not flags & http2.ACK:
                out += http2.frame(http2.SETTINGS, http2.ACK, 0)
            elif kind == http2.HEADERS and stream > self.answered:
                self.answered = stream
                out += error_answer(stream, self.code, self.message)
        if out:
            self.transport.write(bytes(out))
        if self.answered and self.closer is None:
            self.idle.cancel()
            self.transport.write(http2.goaway(self.answered))
            # The client closes once it has read the answer; close anyway after a moment.
            self.closer = self.loop.call_later(LINGER, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.cancel()
        if self.closer is not None:
            self.closer.cancel()


def answer_http2_on_http_port(transport: Any, data: bytes, endpoint: str, grpc: str) -> None:
    """Take over an HTTP-port connection that opened with the HTTP/2 preface (a gRPC client
    pointed at the wrong port) and answer its calls with UNAVAILABLE naming the gRPC address."""
    where = f"its gRPC address is {grpc}" if grpc else "it has no gRPC address"
    refusal = _Refusal(
        Status.UNAVAILABLE,
        f"this is the HTTP port of endpoint {endpoint!r}: {where} (`kfp-serve endpoints` "
        "shows both)",
        asyncio.get_running_loop(),
    )
    transport.set_protocol(refusal)
    refusal.connection_made(transport)
    refusal.data_received(data)


# --------------------------------------------------------------------------------------------
# The relay


class GrpcRelay:
    """The router's gRPC listener: one relayed connection per client connection.

    Args:
        endpoint: The endpoint's name (for messages).
        pick: Returns ``(host, port, key)`` of the gRPC server a new connection goes to, or a
            ``(status code, message)`` refusal when there is none.
    """

    def __init__(
        self, endpoint: str, pick: Callable[[], tuple[str, int, str] | tuple[int, str]]
    ) -> None:
        self.endpoint = endpoint
        self.pick = pick
        self.loop = asyncio.get_running_loop()
        #: Open relayed connections per upstream (``host:port`` of its gRPC server).
        self.connections: dict[str, int] = {}
        self.refused = 0
        self.relayed: set[_Downstream] = set()
        self.drained = 0

    def connection(self) -> asyncio.Protocol:
        """The protocol factory of the listening socket."""
        return _Downstream(self)

    def status(self) -> dict[str, Any]:
        return {"connections": dict(self.connections), "refused": self.refused,
                "drained": self.drained}

    def drain_unrouted(self, serving: set[str]) -> None:
        """Drain every connection to a gRPC server whose key is not in ``serving`` (and close
        those whose drain is over); called when the routes may have changed."""
        for down in list(self.relayed):
            if down.key not in serving:
                down.drain()

    def opened(self, key: str) -> None:
        self.connections[key] = self.connections.get(key, 0) + 1

    def closed(self, key: str) -> None:
        left = self.connections.get(key, 0) - 1
        if left > 0:
            self.connections[key] = left
        else:
            self.connections.pop(key, None)


class _Downstream(asyncio.Protocol):
    """A client's connection: checked for the preface, then piped to one upstream."""

    def __init__(self, relay: GrpcRelay) -> None:
        self.relay = relay
        self.transport: Any = None
        self.pending = bytearray()  # bytes that arrived before the upstream connected
        self.upstream: _Upstream | None = None
        self.key = ""
        self.closed = False
        #: Frame headers each way (the client's starts after its preface), and its open calls.
        self.from_client = _Frames(skip=len(PREFACE))
        self.from_server = _Frames()
        self.calls: set[int] = set()
        self.last_call = 0
        #: Drain: asked, GOAWAY written (loop time), its PING answered.
        self.draining = False
        self.goaway_at = 0.0
        self.ping_answered = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.from_client.feed(data, self._client_frame)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
            return
        self.pending += data
        if upstream is not None:
            if len(self.pending) > HIGH_WATER:
                self.transport.pause_reading()
            return
        # Still deciding: the first bytes must be the HTTP/2 preface.
        n = min(len(self.pending), len(PREFACE))
        if self.pending[:n] != PREFACE[:n]:
            logger.info("endpoint %r: refused a gRPC connection that is not HTTP/2",
                        self.relay.endpoint)
            self.relay.refused += 1
            self.transport.close()
            return
        if n < len(PREFACE):
            return
        choice = self.relay.pick()
        if len(choice) == 2:
            code, message = choice  # type: ignore[misc]
            self.relay.refused += 1
            refusal = _Refusal(code, message, self.relay.loop)  # type: ignore[arg-type]
            self.transport.set_protocol(refusal)
            refusal.connection_made(self.transport)
            refusal.data_received(bytes(self.pending))
            return
        host, port, key = choice  # type: ignore[misc]
        self.key = key
        self.upstream = _Upstream(self)
        self.from_client.feed(bytes(self.pending), self._client_frame)
        self.relay.opened(key)
        self.relay.relayed.add(self)
        self.relay.loop.create_task(self._connect(host, port))

    async def _connect(self, host: str, port: int) -> None:
        assert self.upstream is not None
        try:
            await self.relay.loop.create_connection(lambda: self.upstream, host, port)
        except OSError as e:
            logger.warning("endpoint %r: gRPC server %s:%d refused the connection: %s",
                           self.relay.endpoint, host, port, e)
            self.upstream = None
            self.relay.closed(self.key)
            if self.closed:
                return
            refusal = _Refusal(
                Status.UNAVAILABLE,
                f"endpoint {self.relay.endpoint!r}: its server did not accept the gRPC "
                "connection; it may have exited: run `kfp-serve endpoints` to see it",
                self.relay.loop,
            )
            self.transport.set_protocol(refusal)
            refusal.connection_made(self.transport)
            refusal.data_received(bytes(self.pending))

    def upstream_ready(self) -> None:
        if self.closed:
            self.upstream.transport.close()  # type: ignore[union-attr]
            return
        if self.pending:
            self.upstream.transport.write(bytes(self.pending))  # type: ignore[union-attr]
            self.pending.clear()
        self.transport.resume_reading()

    def upstream_lost(self) -> None:
        self.relay.closed(self.key)
        self.relay.relayed.discard(self)
        self.upstream = None
        if not self.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.relayed.discard(self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    # -- calls in flight, and the drain ---------------------------------------------------------

    def _client_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == http2.HEADERS and stream > self.last_call:
            self.last_call = stream
            self.calls.add(stream)
        elif kind == http2.RST_STREAM:
            self._call_over(stream)
        elif kind == http2.PING and flags & http2.ACK and payload == _DRAIN_PING:
            self.ping_answered = True
            self.drain()

    def server_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        ends = kind in (http2.HEADERS, http2.DATA) and flags & http2.END_STREAM
        if kind == http2.RST_STREAM or ends:
            self._call_over(stream)

    def _call_over(self, stream: int) -> None:
        self.calls.discard(stream)
        if self.draining and not self.calls:
            self.drain()

    def drain(self) -> None:
        """Move the client off this connection (see the module docstring); call again to
        advance: GOAWAY + PING at the next frame boundary towards the client, then close once
        the PING is answered (or PING_WAIT passed) and no call is open (or DRAIN_TIMEOUT)."""
        if self.closed:
            return
        self.draining = True
        now = self.relay.loop.time()
        if not self.goaway_at:
            if self.from_server.at_boundary:
                self.transport.write(
                    http2.goaway(http2.LAST_STREAM) + http2.frame(http2.PING, 0, 0, _DRAIN_PING)
                )
                self.goaway_at = now
            return
        settled = self.ping_answered or now - self.goaway_at >= PING_WAIT
        if (settled and not self.calls) or now - self.goaway_at >= DRAIN_TIMEOUT:
            logger.info("endpoint %r: drained a gRPC connection from %s (%d calls left)",
                        self.relay.endpoint, self.key, len(self.calls))
            self.relay.drained += 1
            self.transport.close()  # connection_lost closes the upstream side

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


class _Upstream(asyncio.Protocol):
    """The relayed connection to the picked server's gRPC port."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.downstream.upstream_ready()

    def data_received(self, data: bytes) -> None:
        down = self.downstream
        if down.closed:
            return
        down.transport.write(data)
        down.from_server.feed(data, down.server_frame)
        if down.draining and not down.goaway_at and down.from_server.at_boundary:
            down.drain()  # its GOAWAY waited for the end of a frame

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.downstream.upstream_lost()

    def pause_writing(self) -> None:
        self.downstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.downstream.transport.resume_reading()


def _serving(routes: Any) -> list[Any]:
    """The upstreams that receive traffic and run gRPC."""
    return [u for u in routes.upstreams if u.grpc_port and u.weight > 0]


def serving_keys(routes: Any) -> set[str]:
    """The keys (``host:port``) of the gRPC servers that receive traffic."""
    return {f"{u.host}:{u.grpc_port}" for u in _serving(routes)}


def choose(routes: Any) -> tuple[str, int, str] | tuple[int, str]:
    """Where a new gRPC connection of the endpoint goes: a server that receives traffic and runs
    gRPC, picked by the traffic weights; or why there is none (a status code and message).

    Args:
        routes: The router's :class:`~kfp_serve.serving.backends.local.router.Routes`.
    """
    import random

    routes.refresh()
    serving = _serving(routes)
    if not serving:
        if routes.upstreams:
            return (
                Status.UNIMPLEMENTED,
                f"endpoint {routes.endpoint!r} serves no gRPC: serve it with "
                "`--enable_grpc=true` in the predictor's (or transformer's) container args "
                "(ServeConfig predictor.container.args) to turn OIP gRPC on",
            )
        return (
            Status.UNAVAILABLE,
            f"endpoint {routes.endpoint!r} has no revision to route to (it is being deleted or "
            "was never started): serve it again",
        )
    point = random.random() * sum(u.weight for u in serving)
    for upstream in serving:
        point -= upstream.weight
        if point < 0:
            break
    return upstream.host, upstream.grpc_port, f"{upstream.host}:{upstream.grpc_port}"
