"""HTTP/1.1 for the model servers: uvicorn's protocol slot, leaner per request than its own.

Why not uvicorn's httptools protocol: it is written for any ASGI app (streamed bodies,
websockets, access logs), and per request it makes an ``asyncio.Event``, copies the app state,
checks every response header against two regexes, arms and cancels a keep-alive timer, and
writes the head and the body with two ``send(2)`` calls. Behind the router, on one core, the
second write also wakes the router twice per answer. kfp-serve's server app
(:class:`~kfp_serve.serving.runtime.server.RuntimeApp`) reads a whole body and answers with one
body message, so this protocol:

- parses with httptools (llhttp, as uvicorn does) and hands the app the complete body in its
  first ``receive()``;
- writes each answer's head and body with one ``write``;
- checks keep-alive idleness with one timer per connection and idle period, not per request;
- answers pipelined requests in order, one at a time.

uvicorn still runs the server around it: sockets, lifespan, signals and graceful shutdown
(``Config(http=Http1Protocol)``; uvicorn calls :meth:`Http1Protocol.shutdown` on every
connection and waits for ``server_state.tasks``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from kfp_serve.serving.runtime import http2

log = logging.getLogger("kfp_serve.runtime.http")

#: Largest request head (request line + headers) accepted; uvicorn's h11 default is 16 KiB.
MAX_HEAD_BYTES = 64 * 1024

_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL_ERROR = {"error": "internal server error"}
_NO_BODY_STATUS = frozenset({204, 304})


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (cached per status)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        _STATUS_LINES[status] = line
    return line


def json_answer(status: int, payload: dict[str, Any], close: bool) -> bytes:
    """A whole JSON answer, for what the protocol (or the router) answers itself; errors take
    the app's shape, ``{"error": message}``."""
    body = json.dumps(payload).encode()
    connection = b"connection: close\r\n" if close else b""
    return b"%scontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        status_line(status), connection, len(body), body
    )


class _Request:
    """One parsed request waiting for (or in) the app."""

    __slots__ = ("scope", "body", "keep", "head_only", "too_large")

    def __init__(self, scope: dict[str, Any], body: bytes, keep: bool, too_large: bool) -> None:
        self.scope = scope
        self.body = body
        self.keep = keep
        self.head_only = scope["method"] == "HEAD"
        self.too_large = too_large  # its body passed the limit and was dropped as it came


class Http1Protocol(asyncio.Protocol):
    """One client connection (the constructor is uvicorn's protocol-class contract)."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.max_body = config.app.max_body  # a RuntimeApp's, read from its environment
        self.idle_timeout = float(config.timeout_keep_alive)
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.stopping = False  # the server shuts down: close after the answer in progress
        self.queue: deque[_Request] = deque()
        self.busy = False  # a request is in the app
        self.write_paused = False
        self.reading_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.disconnected: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.server: Any = None
        self.client: Any = None
        # The request being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.refused = False  # answered by the protocol itself; the rest of the input is dropped
        self.close_after = False  # close once the answers due are written
        self.refusal = b""  # the refusal to write after them

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self.server = transport.get_extra_info("sockname")
        self.client = transport.get_extra_info("peername")
        if not isinstance(self.client, tuple):
            self.client = None  # a unix socket's peer has no (host, port)
        if not isinstance(self.server, tuple):
            self.server = None
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self.refused or self.closed:
            return
        self.idle_since = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp pauses after a request that asks to switch protocols: this server speaks
            # HTTP/1.1 only. The request is still answered; nothing after it can be parsed.
            self.refused = True
            self.close_after = True
            if not (self.busy or self.queue):
                self._close()
        except httptools.HttpParserError as e:
            if data.startswith(http2.PREFACE_LINE):
                self._refuse(400, "this port speaks HTTP/1.1 (HTTP/2 and gRPC have their own port)")
            else:
                self._refuse(400, f"invalid HTTP/1.1 request: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        for future in (self.disconnected, self.drained):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading its next requests meanwhile.
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if not self.queue:
            self._resume_reading()

    def shutdown(self) -> None:
        """The server stops (uvicorn's call): close now if idle, else after the answer."""
        self.stopping = True
        if not self.busy:
            self._close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.body_parts = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing whitespace that RFC 9110 5.5 excludes from the value.
        self.headers.append((name.lower(), value.rstrip(b" \t")))
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        if self.refused or self.busy or self.queue:
            # A pipelined request's 100 would land inside the answers still due before it;
            # its client sends the body after its own wait instead (curl: 1 s).
            return
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                # The client waits for this before sending the body (curl does for > 1 KiB).
                self.transport.write(_CONTINUE)  # type: ignore[union-attr]
                break

    def on_body(self, body: bytes) -> None:
        if self.refused:
            return
        self.body_size += len(body)
        if self.body_size > self.max_body:
            # Read to its end and dropped, then answered 413: the connection stays usable.
            self.body_parts = []
            return
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.refused:
            return
        parser = self.parser
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, f"invalid request target {self.url[:200]!r}")
            return
        raw_path = parsed.path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "state": self.app_state,
        }
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        too_large = self.body_size > self.max_body
        self.queue.append(_Request(scope, body, parser.should_keep_alive(), too_large))
        if self.busy:
            # Pipelined: held until the answers before it are written; stop reading more.
            self._pause_reading()
        else:
            self._next()

    # -- requests -----------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES and not self.refused:
            self._refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def _next(self) -> None:
        request = self.queue.popleft()
        self.busy = True
        task = self.loop.create_task(self._run(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, request: _Request) -> None:
        answer = _Answer(self, request)
        if request.too_large:
            error = {"error": f"request body larger than {self.max_body} bytes"}
            answer.write(json_answer(413, error, close=not request.keep), keep=request.keep)
            return
        try:
            await self.app(request.scope, answer.receive, answer.send)
        except Exception:  # noqa: BLE001 - an app bug: answer 500 and keep the server up
            log.exception("error while answering %s %s", request.scope["method"],
                          request.scope["path"])
        else:
            if answer.done:
                return
            log.error("the app did not finish its answer to %s", request.scope["path"])
        if answer.started:
            self._close()  # part of an answer went out: only the close can end it
        else:
            answer.write(json_answer(500, _INTERNAL_ERROR, close=True), keep=False)

    def answered(self, keep: bool) -> None:
        """The current request's answer is written: start the next one, wait, or close."""
        self.busy = False
        if self.closed:
            return
        if self.queue:
            if keep and not self.stopping:
                self._next()
                return
        elif self.refusal:
            self.transport.write(self.refusal)  # type: ignore[union-attr]
        if not keep or self.stopping or self.close_after:
            self._close()
            return
        if not self.write_paused:
            self._resume_reading()
        self._idle()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the app never sees and close (what follows cannot be framed)."""
        self.refused = True
        log.info("refused a request: %d %s", status, message)
        if self.busy or self.queue:
            # Answers before it are still due, in order: it follows them, then the close.
            self.refusal = json_answer(status, {"error": message}, close=True)
            self.close_after = True
            return
        answer = json_answer(status, {"error": message}, close=True)
        self.transport.write(answer)  # type: ignore[union-attr]
        self._close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    # -- keep-alive idleness ------------------------------------------------------------------

    def _idle(self) -> None:
        """Idle from now: close after ``idle_timeout`` s without a request."""
        self.idle_since = self.loop.time()
        if self.idle_timer is None:
            due = self.idle_since + self.idle_timeout
            self.idle_timer = self.loop.call_at(due, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per idle period, not per request: a busy connection re-arms it here.
        self.idle_timer = None
        if self.closed:
            return
        if self.idle_since and self.loop.time() - self.idle_since >= self.idle_timeout:
            self._close()
            return
        due = (self.idle_since or self.loop.time()) + self.idle_timeout
        self.idle_timer = self.loop.call_at(due, self._check_idle)


class _Answer:
    """The ASGI ``receive``/``send`` pair of one request."""

    __slots__ = ("conn", "request", "received", "started", "done", "head", "sized", "chunked")

    def __init__(self, conn: Http1Protocol, request: _Request) -> None:
        self.conn = conn
        self.request = request
        self.received = False
        self.started = False
        self.done = False
        self.head: list[bytes] = []
        self.sized = False  # the head says where the body ends (a length, or no body at all)
        self.chunked = False

    async def receive(self) -> dict[str, Any]:
        if not self.received:
            self.received = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        # The body was all there is: the next message is the client going away.
        conn = self.conn
        if not conn.closed:
            if conn.disconnected is None:
                conn.disconnected = conn.loop.create_future()
            await conn.disconnected
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.closed or self.done:
            return
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self.started = True
            status = message["status"]
            head = [status_line(status)]
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-length":
                    self.sized = True
                head += (name, b": ", value, b"\r\n")
            if not self.request.keep or conn.stopping:
                head.append(b"connection: close\r\n")
            if status in _NO_BODY_STATUS:
                self.sized = True
            self.head = head
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {message['type']!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.head:
            head = self.head
            self.head = []
            if not self.sized:
                if more:
                    self.chunked = True
                    head.append(b"transfer-encoding: chunked\r\n")
                else:
                    head += (b"content-length: ", str(len(body)).encode(), b"\r\n")
            head.append(b"\r\n")
            if not self.request.head_only:
                head.append(self._framed(body, more))
            out = b"".join(head)
        else:
            out = b"" if self.request.head_only else self._framed(body, more)
        if more:
            if out:
                conn.transport.write(out)  # type: ignore[union-attr]
            if conn.write_paused and not conn.closed:
                conn.drained = conn.loop.create_future()
                await conn.drained
            return
        self.write(out, keep=self.request.keep)

    def _framed(self, body: bytes, more: bool) -> bytes:
        if not self.chunked:
            return body
        data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        return data if more else data + b"0\r\n\r\n"

    def write(self, data: bytes, keep: bool) -> None:
        """The last bytes of the answer: write them and hand the connection on."""
        self.done = True
        conn = self.conn
        if data and not conn.closed:
            conn.transport.write(data)  # type: ignore[union-attr]
        conn.answered(keep)
