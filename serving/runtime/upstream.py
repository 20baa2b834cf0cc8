"""A lean keep-alive HTTP/1.1 client for the transformer -> predictor hop.

Why not httpx: on this hop it cost most of the transformer's CPU (per-request connection-pool
bookkeeping over every connection, an INFO log line per request, headers and body sent as two
writes so the predictor reads twice). The hop only ever talks to one origin, sends small JSON
bodies and reads small JSON answers, so a plain asyncio-streams client does the job:

- a LIFO pool of idle keep-alive connections to the one predictor (new connections are opened
  when all are busy; at most ``max_idle`` are kept);
- ``TCP_NODELAY`` on every socket, and the request head and body in one write;
- responses framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` (or, without
  either, by the server closing the connection); ``Connection: close`` is honoured;
- a request that fails on a *reused* connection before any byte of the answer arrived (the
  predictor closed an idle keep-alive connection) is sent once more on a fresh connection;
- one deadline per request (connect + send + receive).

Errors are :class:`UpstreamError` (cannot connect, connection lost, malformed answer) and its
subclass :class:`UpstreamTimeout`; the transformer turns them into 502 and 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Largest response head (status line + headers) accepted.
MAX_HEAD_BYTES = 64 * 1024
_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"


class UpstreamError(ConnectionError):
    """The upstream server could not be reached or sent something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream server did not answer in time."""


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered (safe to resend)."""


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status code, lower-cased header names, and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class UpstreamClient:
    """Keep-alive HTTP/1.1 client to one origin.

    Args:
        base_url: ``http://host:port`` or ``https://host:port`` (a path part is ignored).
        timeout: Seconds allowed per request, connecting included.
        retries: Extra connection attempts when connecting fails (refused, reset).
        max_idle: Idle connections kept open for reuse.
        headers: Headers sent with every request (lower-case names).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 600.0,
        retries: int = 0,
        max_idle: int = 64,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://HOST[:PORT], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl_module.SSLContext | None = (
            ssl_module.create_default_context() if parts.scheme == "https" else None
        )
        default_port = 443 if parts.scheme == "https" else 80
        host_header = self.host if ":" not in self.host else f"[{self.host}]"
        if self.port != default_port:
            host_header = f"{host_header}:{self.port}"
        self.timeout = timeout
        self.retries = max(0, retries)
        self.max_idle = max_idle
        fixed = {"host": host_header, "user-agent": "kfp-serve-transformer"}
        fixed.update(headers or {})
        self._fixed_head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: deque[_Connection] = deque()
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole answer.

        Args:
            method: ``GET``, ``POST``, ...
            path: Absolute path (``/v1/models/m:predict``).
            body: Request body (sent with ``Content-Length``), or None.
            headers: Extra request headers for this request.
            timeout: Seconds for this request (default: the client's).

        Raises:
            UpstreamTimeout: No complete answer within the timeout.
            UpstreamError: Connecting failed, the connection broke, or the answer is not HTTP.
        """
        if self._closed:
            raise UpstreamError("client is closed")
        head = self._head(method, path, body, headers)
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await self._send(head, body, method)
        except TimeoutError as e:
            raise UpstreamTimeout(f"no answer from {self.base_url} within {limit:g} s") from e

    async def get(self, path: str, timeout: float | None = None) -> Response:
        """``GET path``."""
        return await self.request("GET", path, timeout=timeout)

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """``POST path`` with ``body``."""
        return await self.request("POST", path, body, headers, timeout)

    def head_prefix(self, method: str, path: str) -> bytes:
        """The start of every ``method path`` request head: its request line and the fixed
        headers, for a caller framing many requests itself (:meth:`pipeline`)."""
        return f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._fixed_head

    async def pipeline(
        self, data: bytes, count: int, settle: float = 0.0
    ) -> list[Response | UpstreamError]:
        """Send ``count`` complete requests framed in ``data`` (each a :meth:`head_prefix`, its
        own headers and body) on one connection with one send, and read the answers in order
        (HTTP/1.1 pipelining; each stays its own request). A request whose answer never came
        gets an :class:`UpstreamError` in its place; what was answered before a failure keeps
        its answer.

        One send and one wake-up of the server for a batch, instead of one per request: what
        makes a burst of payload events cheap. With ``settle``, the connection is not read for
        that many seconds after sending: a server that writes each answer on its own would
        otherwise wake this process once per answer, which costs more than the answer (a
        caller in no hurry for them, like the payload agent, then reads most in one go).
        """
        if self._closed:
            raise UpstreamError("client is closed")
        results: list[Response | UpstreamError] = []
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if candidate.usable():
                        conn = candidate
                    else:
                        candidate.close()
                conn = conn or await self._connect()
                conn.writer.write(data)
                await conn.writer.drain()
                if settle:
                    # Not reading meanwhile: a readable socket would wake the process anyway.
                    conn.writer.transport.pause_reading()
                    try:
                        await asyncio.sleep(settle)
                    finally:
                        conn.writer.transport.resume_reading()
                keep_alive = True
                seen: tuple[bytes, tuple[int, dict[str, str], bool]] | None = None
                bodiless: Response | None = None  # the answer ``seen`` is, if it has no body
                for _ in range(count):
                    head = await conn.reader.readuntil(_HEAD_END)
                    # A server answers a run of alike requests with alike heads: parse each
                    # new one once (its headers dict is then shared by those answers), and
                    # one with no body is the same answer each time.
                    if bodiless is not None and head == seen[0]:  # type: ignore[index]
                        results.append(bodiless)
                        continue
                    if seen is None or head != seen[0]:
                        seen, bodiless = (head, _parse_head(head)), None
                    status, headers, keep_alive = seen[1]
                    if (keep_alive and 200 <= status and headers.get("content-length") == "0"
                            and "transfer-encoding" not in headers):
                        bodiless = Response(status, headers, b"")
                        results.append(bodiless)
                        continue
                    while 100 <= status < 200 and status != 101:
                        head = await conn.reader.readuntil(_HEAD_END)
                        status, headers, keep_alive = _parse_head(head)
                    payload, keep_alive = await _read_body(
                        conn.reader, status, headers, "POST", keep_alive
                    )
                    results.append(Response(status, headers, payload))
                    if not keep_alive:
                        break
        except (OSError, EOFError, TimeoutError, asyncio.LimitOverrunError, UpstreamError) as e:
            if conn is not None:
                conn.close()
            conn = None
            error = e if isinstance(e, UpstreamError) else UpstreamError(f"{self.base_url}: {e!r}")
            results += [error] * (count - len(results))
            return results
        if len(results) < count:  # the server closed after an answer
            conn.close()
            error = UpstreamError(f"{self.base_url} closed the connection mid-pipeline")
            return results + [error] * (count - len(results))
        if keep_alive and not self._closed and len(self._idle) < self.max_idle:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()
        return results

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    # ----------------------------------------------------------------------------------------

    def _head(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
    ) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        length = f"content-length: {len(body)}\r\n" if body is not None else ""
        return (
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed_head
            + (extra + length + "\r\n").encode("latin-1")
        )

    async def _send(self, head: bytes, body: bytes | None, method: str) -> Response:
        data = head + body if body else head
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._exchange(conn, data, method)
            except _StaleConnection:
                continue  # the server closed it while idle: try the next one, then a new one
        conn = await self._connect()
        try:
            return await self._exchange(conn, data, method)
        except _StaleConnection as e:
            raise UpstreamError(f"{self.base_url} closed the connection without answering") from e

    async def _connect(self) -> _Connection:
        from kfp_serve.retry import retrying_async  # tenacity only when a connection is made

        try:
            async for attempt in retrying_async(
                attempts=self.retries + 1, on=OSError, first_wait=0.1, max_wait=1.0
            ):
                with attempt:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=self._ssl, limit=MAX_HEAD_BYTES
                    )
        except OSError as e:
            raise UpstreamError(f"cannot connect to {self.base_url}: {e}") from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Head+body go out in one write already; NODELAY keeps a small answer or a
            # pipelined next request from waiting for a delayed ACK.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, data: bytes, method: str) -> Response:
        """One request/response on ``conn``; returns it to the pool when it can be reused."""
        reader, writer = conn.reader, conn.writer
        answered = False  # a byte of the answer arrived: resending is no longer safe
        try:
            writer.write(data)
            await writer.drain()
            try:
                head = await reader.readuntil(_HEAD_END)
            except asyncio.IncompleteReadError as e:
                if conn.reused and not e.partial:
                    raise _StaleConnection from e
                raise UpstreamError(
                    f"{self.base_url} closed the connection in the middle of an answer"
                ) from e
            answered = True
            status, headers, keep_alive = _parse_head(head)
            while 100 <= status < 200 and status != 101:  # interim answers: skip
                head = await reader.readuntil(_HEAD_END)
                status, headers, keep_alive = _parse_head(head)
            payload, keep_alive = await _read_body(reader, status, headers, method, keep_alive)
        except (_StaleConnection, UpstreamError):
            conn.close()
            raise
        except (ConnectionError, BrokenPipeError) as e:
            conn.close()
            if conn.reused and not answered:
                raise _StaleConnection from e
            raise UpstreamError(f"connection to {self.base_url} failed: {e}") from e
        except asyncio.IncompleteReadError as e:
            conn.close()
            raise UpstreamError(
                f"{self.base_url} closed the connection in the middle of an answer"
            ) from e
        except asyncio.LimitOverrunError as e:
            conn.close()
            raise UpstreamError(f"{self.base_url} sent an oversized response head") from e
        except BaseException:
            # Cancelled or timed out mid-exchange: the stream state is unknown, never reuse it.
            conn.close()
            raise
        if keep_alive and not self._closed and len(self._idle) < self.max_idle:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()
        return Response(status, headers, payload)


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """(status, headers, keep-alive) from a response head ending in CRLF CRLF."""
    lines = head[:-4].split(_CRLF)
    status_line = lines[0]
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise UpstreamError(f"not an HTTP/1.x answer: {status_line[:100]!r}")
    try:
        status = int(parts[1])
    except ValueError as e:
        raise UpstreamError(f"bad status line {status_line[:100]!r}") from e
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise UpstreamError(f"bad header line {line[:100]!r}")
        key = name.strip().lower().decode("latin-1")
        val = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    connection = headers.get("connection", "").lower()
    if parts[0] == b"HTTP/1.0":
        keep_alive = "keep-alive" in connection
    else:
        keep_alive = "close" not in connection
    return status, headers, keep_alive


async def _read_body(
    reader: asyncio.StreamReader,
    status: int,
    headers: dict[str, str],
    method: str,
    keep_alive: bool,
) -> tuple[bytes, bool]:
    """The body framed as RFC 9112 section 6.3 says, and whether the connection is reusable."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", keep_alive
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.lower().rsplit(",", 1)[-1].strip() != "chunked":
            return await reader.read(), False  # framed by close
        return await _read_chunked(reader), keep_alive
    length = headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError as e:
            raise UpstreamError(f"bad content-length {length!r}") from e
        if n < 0:
            raise UpstreamError(f"bad content-length {length!r}")
        return (await reader.readexactly(n) if n else b""), keep_alive
    return await reader.read(), False  # no framing: the body ends when the server closes


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        line = await reader.readuntil(_CRLF)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise UpstreamError(f"bad chunk size {size_text[:20]!r}") from e
        if size == 0:
            while (await reader.readuntil(_CRLF)) != _CRLF:  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != _CRLF:
            raise UpstreamError("chunk not terminated by CRLF")
