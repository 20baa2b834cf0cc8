"""gRPC's HTTP/2 transport for unary calls, on the server's own asyncio event loop.

Why not grpcio's server: grpc.aio spent about 500 us of CPU per OIP call here (its C core
hands every call to Python through a completion queue and back), three times what the same
request costs over REST on uvicorn, so gRPC was the slow way in. Every method of
``inference.GRPCInferenceService`` is unary, and a unary call over HTTP/2 is little: one
HEADERS (+ CONTINUATION) and DATA frames in, HEADERS, DATA, HEADERS (trailers) out. This module
speaks exactly that (gRPC's PROTOCOL-HTTP2 over RFC 9113) as an :class:`asyncio.Protocol`; the
messages are still the protobuf classes the kserve package ships, so every gRPC client works
unchanged.

What it does per connection:

- The preface and SETTINGS exchange; PING answered; GOAWAY on shutdown (after the calls in
  flight are answered) and on protocol errors; RST_STREAM cancels a call.
- Flow control both ways: large receive windows topped up as data is read; answers are sent
  within the client's windows and frame size, the rest waits for its WINDOW_UPDATE.
- Request headers are decoded by ``hpack`` (the client's dynamic table is per connection). A
  client sends the same header block for every call once its headers are in that table; a
  block that adds nothing to the table is decoded once and its list reused until a block
  that changes the table arrives (hpack's pure-Python decode was a fifth of a call's CPU).
- Answers carry only static-table and literal-without-indexing fields: no encoder state.
- A message above the size limit is refused with INVALID_ARGUMENT as soon as its 5-byte prefix
  says so; compressed messages with UNIMPLEMENTED (no ``grpc-encoding`` is offered); a wrong
  method or content type with HTTP 405 / 415, as gRPC's spec asks; bytes that are not HTTP/2
  with an HTTP/1.1 400 that says what this port is.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving.runtime import http2
from kfp_serve.serving.runtime.http2 import ErrorCode, Status

log = logging.getLogger("kfp_serve.runtime.grpc")

#: Receive window of each stream and of the connection (topped up once half is used).
RECEIVE_WINDOW = 1 << 24
#: Calls open at once on one connection (more are refused with REFUSED_STREAM; clients queue).
MAX_CONCURRENT_STREAMS = 1024
#: Largest request header list accepted (gRPC's own default is 8 KiB).
MAX_HEADER_LIST = 64 * 1024
#: Header blocks whose decoded lists a connection keeps (blocks with, say, a changing
#: grpc-timeout each make an entry).
DECODED_BLOCKS = 64
#: Seconds a stopping server waits for the calls in flight before closing their connections.
STOP_GRACE = 1.0

_HEAD = struct.Struct(">IBI")  # a frame header: length << 8 | type, flags, stream id
_OK_TRAILERS = http2.status_block(Status.OK)
_NOT_HTTP2 = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class GrpcError(Exception):
    """Ends a call with a gRPC status other than OK."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Method:
    """One unary method: how to read its request and what answers it."""

    request_type: Any  # the protobuf message class (``FromString``)
    handler: Callable[[Any], Awaitable[Any]]  # request -> response message; may raise GrpcError
    #: Tried first: the response message at once, or None to leave the call to ``handler``. A
    #: call answered here costs no asyncio task; may raise GrpcError.
    now: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class _CallHead:
    """What a call's request headers say: its method's path, and why it is refused, if it is
    (an HTTP status, or a gRPC status and message)."""

    path: bytes
    http_status: bytes | None = None
    grpc_error: tuple[Status, str] | None = None

    @classmethod
    def of(cls, headers: list[tuple[str, str]], methods: dict[bytes, Method]) -> _CallHead:
        path = b""
        method = content_type = encoding = ""
        for name, value in headers:
            if name == ":path":
                path = value.encode()
            elif name == ":method":
                method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-encoding":
                encoding = value
        if method != "POST":
            return cls(path, http_status=b"405")
        if not content_type.startswith("application/grpc"):
            return cls(path, http_status=b"415")
        if path not in methods:
            return cls(path, grpc_error=(
                Status.UNIMPLEMENTED,
                f"method {path.decode(errors='replace')} is not served here",
            ))
        if encoding and encoding != "identity":
            return cls(path, grpc_error=(
                Status.UNIMPLEMENTED,
                f"grpc-encoding {encoding!r} is not supported; send uncompressed messages",
            ))
        return cls(path)


class _Stream:
    __slots__ = ("id", "path", "refusal", "chunks", "size", "unacked", "send_window",
                 "pending", "answered", "remote_closed", "task")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.path = b""
        self.refusal: bytes | None = None  # frames answering the call before it is read
        self.chunks: list[bytes] = []
        self.size = 0
        self.unacked = 0
        self.send_window = send_window
        self.pending: memoryview | None = None  # answer bytes waiting for window
        self.answered = False
        self.remote_closed = False
        self.task: asyncio.Task[None] | None = None


class GrpcProtocol(asyncio.Protocol):
    """One HTTP/2 connection serving unary gRPC ``methods`` (by ``/package.Service/Method``)."""

    def __init__(self, methods: dict[bytes, Method], max_message_bytes: int, limit_name: str,
                 connections: set[GrpcProtocol]) -> None:
        from hpack import Decoder

        self.methods = methods
        self.max_message_bytes = max_message_bytes
        self.limit_name = limit_name
        self.connections = connections
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.decoded: dict[bytes, _CallHead] = {}  # see _decode
        self.transport: Any = None
        # Bound once (the server makes connections inside its loop): get_running_loop() makes
        # a getpid() system call every time.
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.preface = True  # the client's preface is still to be read
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.headers_of: _Stream | None = None  # a header block continued in CONTINUATION
        self.header_fragments: list[bytes] = []
        self.headers_end_stream = False
        self.peer_window = http2.DEFAULT_WINDOW  # the client's initial stream window
        self.send_window = http2.DEFAULT_WINDOW  # the connection's, towards the client
        self.peer_max_frame = http2.DEFAULT_MAX_FRAME
        self.unacked = 0
        self.blocked: list[_Stream] = []
        self.closing = False
        self.out: list[bytes] = []  # frames not yet written (see _write)
        self.receiving = False  # inside data_received

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()

    def data_received(self, data: bytes) -> None:
        self.receiving = True
        try:
            self._receive(data)
        finally:
            self.receiving = False
            self._flush_out()

    def _receive(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        if self.preface:
            n = min(len(buf), len(http2.PREFACE))
            if buf[:n] != http2.PREFACE[:n]:
                self._not_http2()
                return
            if n < len(http2.PREFACE):
                self.buf = buf
                return
            self.preface = False
            pos = n
            self._send_preface()
        end = len(buf)
        try:
            while end - pos >= 9:
                length_kind, flags, stream_id = _HEAD.unpack_from(buf, pos)
                length = length_kind >> 8
                if length > http2.DEFAULT_MAX_FRAME:  # what this server's SETTINGS allow
                    raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"{length}-byte frame")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                self._frame(length_kind & 0xFF, flags, stream_id & http2.LAST_STREAM,
                            buf[start:pos])
        except _ConnectionError as e:
            log.info("closing a gRPC connection: %s", e)
            self.out.append(http2.goaway(self.last_stream, e.code))
            self._flush_out()
            self.transport.close()
            return
        self.buf = buf[pos:] if pos < end else b""

    # -- frames in ---------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.headers_of is not None and kind != http2.CONTINUATION:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a header block was cut off")
        if kind == http2.DATA:
            self._data(flags, stream_id, payload)
        elif kind == http2.HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == http2.CONTINUATION:
            if self.headers_of is None or stream_id != self.headers_of.id:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.header_fragments.append(payload)
            if flags & http2.END_HEADERS:
                stream, self.headers_of = self.headers_of, None
                self._header_block(stream, b"".join(self.header_fragments),
                                   self.headers_end_stream)
        elif kind == http2.SETTINGS:
            if not flags & http2.ACK:
                self._settings(payload)
                self.out.append(http2.frame(http2.SETTINGS, http2.ACK, 0))
        elif kind == http2.PING:
            if not flags & http2.ACK:
                self.out.append(http2.frame(http2.PING, http2.ACK, 0, payload))
        elif kind == http2.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == http2.RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif kind == http2.GOAWAY:
            self.closing = True  # the client opens no more calls; it closes when done
        elif kind == http2.PUSH_PROMISE:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5).

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & http2.PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if flags & http2.PRIORITY_FLAG:
            payload = payload[5:]
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id % 2 == 0 or stream_id <= self.last_stream:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"stream id {stream_id}")
            self.last_stream = stream_id
            stream = _Stream(stream_id, self.peer_window)
            if len(self.streams) >= MAX_CONCURRENT_STREAMS or self.closing:
                # The block must still be decoded: it may change the HPACK table.
                stream.answered = True
                self.out.append(http2.frame(http2.RST_STREAM, 0, stream_id,
                                            struct.pack(">I", ErrorCode.REFUSED_STREAM)))
            else:
                self.streams[stream_id] = stream
        if flags & http2.END_HEADERS:
            self._header_block(stream, payload, bool(flags & http2.END_STREAM))
        else:
            self.headers_of = stream
            self.header_fragments = [payload]
            self.headers_end_stream = bool(flags & http2.END_STREAM)

    def _header_block(self, stream: _Stream, block: bytes, end_stream: bool) -> None:
        head = self._decode(block)
        if stream.path or stream.answered:  # trailers from the client, or a refused stream
            if end_stream:
                self._remote_end(stream)
            return
        stream.path = head.path
        if head.http_status is not None:
            stream.refusal = _http_error(stream.id, head.http_status)
        elif head.grpc_error is not None:
            stream.refusal = http2.error_answer(stream.id, *head.grpc_error)
        if stream.refusal is not None:
            self._answer(stream, stream.refusal)
        if end_stream:
            self._remote_end(stream)

    def _decode(self, block: bytes) -> _CallHead:
        cached = self.decoded.get(block)
        if cached is not None:
            return cached
        from hpack import HPACKError

        try:
            head = _CallHead.of(self.decoder.decode(block), self.methods)
        except HPACKError as e:
            raise _ConnectionError(ErrorCode.COMPRESSION_ERROR, f"header block: {e}") from e
        if _changes_no_table(block):
            # Decoding it again would give the same headers as long as no other block changes
            # the table: clients send the same block for every call once it is indexed.
            if len(self.decoded) >= DECODED_BLOCKS:
                self.decoded.clear()
            self.decoded[block] = head
        else:
            self.decoded.clear()
        return head

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.unacked += len(payload)
        if self.unacked >= RECEIVE_WINDOW // 2:
            self.out.append(_window_update(0, self.unacked))
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a call already answered and forgotten, or reset
        if flags & http2.PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if not stream.answered:
            stream.chunks.append(payload)
            before, stream.size = stream.size, stream.size + len(payload)
            if before < 5 <= stream.size:  # the message's length prefix is complete
                prefix = stream.chunks[0] if len(stream.chunks[0]) >= 5 else b"".join(
                    stream.chunks)
                declared = int.from_bytes(prefix[1:5], "big")
                if declared > self.max_message_bytes:
                    self._refuse_oversized(stream, declared)
        if not flags & http2.END_STREAM:
            stream.unacked += len(payload)
            if stream.unacked >= RECEIVE_WINDOW // 2:
                self.out.append(_window_update(stream_id, stream.unacked))
                stream.unacked = 0
        else:
            self._remote_end(stream)

    def _refuse_oversized(self, stream: _Stream, size: int) -> None:
        method = self.methods[stream.path]
        stream.chunks = []
        self._answer(stream, http2.error_answer(
            stream.id, Status.INVALID_ARGUMENT,
            f"{method.request_type.DESCRIPTOR.name} is {size} bytes, above this server's limit "
            f"of {self.max_message_bytes} ({self.limit_name}); send smaller batches",
        ))

    def _remote_end(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.answered:
            self._forget(stream)
            return
        body = b"".join(stream.chunks)
        stream.chunks = []
        if len(body) < 5 or body[0] not in (0, 1) or int.from_bytes(body[1:5], "big") != len(
            body
        ) - 5:
            self._answer(stream, http2.error_answer(
                stream.id, Status.INTERNAL,
                "a unary call carries exactly one length-prefixed message",
            ))
            return
        if body[0]:
            self._answer(stream, http2.error_answer(
                stream.id, Status.UNIMPLEMENTED,
                "compressed messages are not supported; send them uncompressed",
            ))
            return
        method = self.methods[stream.path]
        try:
            try:
                request = method.request_type.FromString(body[5:])
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
                raise GrpcError(
                    Status.INVALID_ARGUMENT,
                    f"the message is not a valid {method.request_type.DESCRIPTOR.full_name}",
                ) from e
            answer = method.now(request) if method.now is not None else None
            if answer is not None:
                message = answer.SerializeToString()
        except Exception as e:  # noqa: BLE001 - answered with its status; keep serving
            self._answer_failure(stream, e)
            return
        if answer is not None:
            self._answer_message(stream, message)
        else:
            stream.task = self.loop.create_task(self._call(stream, method, request))

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == http2.SETTINGS_INITIAL_WINDOW_SIZE:
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                self._send_blocked()
            elif key == http2.SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & http2.LAST_STREAM
        if stream_id == 0:
            self.send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._send_blocked()

    # -- calls -------------------------------------------------------------------------------

    async def _call(self, stream: _Stream, method: Method, request: Any) -> None:
        try:
            answer = (await method.handler(request)).SerializeToString()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - answered with its status; keep serving
            self._answer_failure(stream, e)
            return
        finally:
            stream.task = None
        self._answer_message(stream, answer)

    def _answer_failure(self, stream: _Stream, e: Exception) -> None:
        """End the call with ``e``'s status: a GrpcError's own, INTERNAL for anything else."""
        if isinstance(e, GrpcError):
            self._answer(stream, http2.error_answer(stream.id, e.code, e.message))
            return
        log.error("gRPC call %s failed", stream.path.decode(errors="replace"), exc_info=e)
        self._answer(stream, http2.error_answer(
            stream.id, Status.INTERNAL, f"{type(e).__name__}: {e}"
        ))

    # -- frames out --------------------------------------------------------------------------

    def _answer_message(self, stream: _Stream, message: bytes) -> None:
        if self.streams.get(stream.id) is not stream or self.transport.is_closing():
            return  # reset by the client, or the connection is gone
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        n = len(data)
        head = http2.frame(http2.HEADERS, http2.END_HEADERS, stream.id, http2.GRPC_RESPONSE_HEAD)
        if n <= self.send_window and n <= stream.send_window and n <= self.peer_max_frame:
            # The usual answer: all three frames in one write.
            self.send_window -= n
            stream.send_window -= n
            self._answer(stream, b"".join((
                head, _HEAD.pack(n << 8 | http2.DATA, 0, stream.id), data,
                _trailers(stream.id),
            )))
            return
        self._write(head)
        stream.pending = memoryview(data)
        self.blocked.append(stream)
        self._send_blocked()

    def _send_blocked(self) -> None:
        if not self.blocked or self.transport.is_closing():
            return
        waiting = []
        for stream in self.blocked:
            if self.streams.get(stream.id) is not stream:
                continue  # reset meanwhile
            pending = stream.pending
            parts = []
            while pending and self.send_window > 0 and stream.send_window > 0:
                n = min(len(pending), self.send_window, stream.send_window, self.peer_max_frame)
                parts += (_HEAD.pack(n << 8 | http2.DATA, 0, stream.id), pending[:n])
                pending = pending[n:]
                self.send_window -= n
                stream.send_window -= n
            stream.pending = pending
            if parts:
                self._write(b"".join(parts))
            if pending:
                waiting.append(stream)
            else:
                self._answer(stream, _trailers(stream.id))
        self.blocked = waiting

    def _answer(self, stream: _Stream, frames: bytes) -> None:
        """Write the (last) frames of a call's answer: it ends the stream on this side."""
        stream.answered = True
        self._write(frames)
        if stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if self.closing and not self.streams:
            self._flush_out()  # the last answer first
            self.transport.close()

    def _send_preface(self) -> None:
        settings = b"".join(struct.pack(">HI", k, v) for k, v in (
            (http2.SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
            (http2.SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
            (http2.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
        ))
        self.out += (http2.frame(http2.SETTINGS, 0, 0, settings),
                     _window_update(0, RECEIVE_WINDOW - http2.DEFAULT_WINDOW))

    def _write(self, data: bytes) -> None:
        """Send ``data`` after every frame queued before it. While a read is being handled,
        it joins the frames that read's handling sends together at its end (the answers of
        the calls it completed, in one write)."""
        self.out.append(data)
        if not self.receiving:
            self._flush_out()

    def _flush_out(self) -> None:
        if self.out and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out = []

    def _not_http2(self) -> None:
        text = (b"this port serves gRPC (HTTP/2 with prior knowledge); send HTTP/1.1 requests "
                b"to the server's HTTP port\n")
        self.transport.write(_NOT_HTTP2 % (len(text), text))
        self.transport.close()

    def shut_down(self) -> None:
        """Open no more calls (GOAWAY), close once those in flight are answered."""
        if self.transport.is_closing():
            return
        self.closing = True
        self._write(http2.goaway(self.last_stream))
        if not self.streams:
            self._flush_out()
            self.transport.close()


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _changes_no_table(block: bytes) -> bool:
    """True when decoding the HPACK ``block`` leaves the dynamic table as it was: it holds only
    indexed fields and literals without indexing (RFC 7541 6.1, 6.2.2, 6.2.3)."""
    i, n = 0, len(block)
    try:
        while i < n:
            first = block[i]
            if first & 0x80:  # indexed field
                _, i = _hpack_int(block, i, 7)
            elif first & 0xE0:  # literal with incremental indexing, or a table size update
                return False
            else:
                index, i = _hpack_int(block, i, 4)
                if index == 0:  # a literal name precedes the value
                    i = _skip_string(block, i)
                i = _skip_string(block, i)
    except IndexError:
        return False
    return True


def _hpack_int(block: bytes, i: int, prefix_bits: int) -> tuple[int, int]:
    """The HPACK integer at ``block[i]`` and the index after it."""
    mask = (1 << prefix_bits) - 1
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _skip_string(block: bytes, i: int) -> int:
    length, i = _hpack_int(block, i, 7)
    return i + length


def _window_update(stream_id: int, increment: int) -> bytes:
    return http2.frame(http2.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def _trailers(stream_id: int) -> bytes:
    return http2.frame(http2.HEADERS, http2.END_STREAM | http2.END_HEADERS, stream_id,
                       _OK_TRAILERS)


def _http_error(stream_id: int, status: bytes) -> bytes:
    """An HTTP error answer (``:status`` other than 200) ending the stream."""
    block = http2.hpack_literal(b":status", status)
    return http2.frame(http2.HEADERS, http2.END_STREAM | http2.END_HEADERS, stream_id, block)


class GrpcListener:
    """A listening socket serving unary gRPC ``methods`` inside the running event loop.

    Args:
        methods: ``/package.Service/Method`` -> :class:`Method`.
        host: Address to bind.
        port: Port to bind.
        max_message_bytes: Largest request message; above it a call gets INVALID_ARGUMENT.
        limit_name: What sets that limit (named in the refusal).
        shared: Let other processes bind the same port (SO_REUSEPORT, for ``--workers``).
    """

    def __init__(self, methods: dict[str, Method], *, host: str, port: int,
                 max_message_bytes: int, limit_name: str, shared: bool = False) -> None:
        self.methods = {path.encode(): m for path, m in methods.items()}
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.limit_name = limit_name
        self.shared = shared
        self.connections: set[GrpcProtocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and listen.

        Raises:
            OSError: The port could not be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GrpcProtocol(self.methods, self.max_message_bytes, self.limit_name,
                                 self.connections),
            self.host, self.port, reuse_port=self.shared or None, backlog=1024,
        )

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop listening; let the calls in flight finish for up to ``grace`` seconds."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.transport.close()
        self._server = None
