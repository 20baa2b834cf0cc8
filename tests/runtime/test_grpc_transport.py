"""kfp-serve's HTTP/2 transport for unary gRPC, on a real socket: real grpcio clients for what
clients do, and a hand-driven HTTP/2 connection for what they rarely do (tiny windows, junk,
wrong content types)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hpack import Decoder, Encoder

from kfp_serve.serving.runtime import http2
from kfp_serve.serving.runtime.grpc_server import _pb
from kfp_serve.serving.runtime.grpc_transport import (
    GrpcError,
    GrpcListener,
    Method,
    _changes_no_table,
)
from kfp_serve.serving.runtime.http2 import Status

pb, _ = _pb()  # kserve's OIP protos, as the servers import them
LIMIT = 8 << 20


class _Service:
    """Methods whose behaviour a test controls: echo, fail, crash, wait."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = 0

    async def echo(self, request: Any) -> Any:
        answer = pb.ModelInferResponse(id=request.id)
        answer.raw_output_contents.extend(request.raw_input_contents)
        return answer

    async def fail(self, request: Any) -> Any:
        raise GrpcError(Status.NOT_FOUND, f"no {request.id} here: 100% sure, café")

    async def crash(self, request: Any) -> Any:
        raise RuntimeError("the handler broke")

    def echo_now(self, request: Any) -> Any | None:
        """Answers at once, except a call whose id starts with "later" (left to echo)."""
        if request.id.startswith("later"):
            return None
        if request.id == "refuse":
            raise GrpcError(Status.RESOURCE_EXHAUSTED, "refused at once")
        return pb.ModelInferResponse(id=f"{request.id} at once")

    async def wait(self, request: Any) -> Any:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return pb.ModelInferResponse(id="released")


@pytest.fixture()
def served() -> Iterator[tuple[int, _Service, asyncio.AbstractEventLoop, GrpcListener]]:
    loop = asyncio.new_event_loop()
    service = _Service()
    methods = {
        f"/t.S/{name}": Method(pb.ModelInferRequest, getattr(service, name))
        for name in ("echo", "fail", "crash", "wait")
    }
    methods["/t.S/now"] = Method(pb.ModelInferRequest, service.echo, service.echo_now)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = GrpcListener(methods, host="127.0.0.1", port=port, max_message_bytes=LIMIT,
                            limit_name="--the_limit")
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    try:
        yield port, service, loop, listener
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(grace=0.2), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _call(channel: grpc.Channel, name: str, request: Any, timeout: float = 10) -> Any:
    fn = channel.unary_unary(f"/t.S/{name}", request_serializer=pb.ModelInferRequest.
                             SerializeToString, response_deserializer=pb.ModelInferResponse.
                             FromString)
    return fn(request, timeout=timeout)


def _request(size: int, ident: str = "r") -> Any:
    request = pb.ModelInferRequest(id=ident)
    request.raw_input_contents.append(bytes(i % 251 for i in range(size)))
    return request


def test_grpcio_client_round_trips_small_and_multi_frame_messages(served):
    port, *_ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for size in (0, 1, 16_000, 70_000, 3_000_000):  # one frame, several, past the windows
            answer = _call(channel, "echo", _request(size, f"s{size}"))
            assert answer.id == f"s{size}"
            assert answer.raw_output_contents[0] == _request(size).raw_input_contents[0]


def test_many_concurrent_calls_on_one_connection_each_get_their_own_answer(served):
    port, *_ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        fn = channel.unary_unary("/t.S/echo", request_serializer=pb.ModelInferRequest.
                                 SerializeToString, response_deserializer=pb.ModelInferResponse.
                                 FromString)
        futures = [fn.future(_request(i * 997, f"c{i}"), timeout=30) for i in range(200)]
        for i, future in enumerate(futures):
            answer = future.result()
            assert answer.id == f"c{i}" and len(answer.raw_output_contents[0]) == i * 997


def test_statuses_reach_the_client_with_their_messages_and_serving_goes_on(served):
    port, *_ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            _call(channel, "fail", _request(1, "abc"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no abc here: 100% sure, café"  # percent-encoded on wire
        with pytest.raises(grpc.RpcError) as e:
            _call(channel, "crash", _request(1))
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "RuntimeError: the handler broke" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            _call(channel, "nope", _request(1))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "/t.S/nope" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            _call(channel, "echo", _request(LIMIT + 1))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit of 8388608 (--the_limit)" in e.value.details()
        assert _call(channel, "echo", _request(10, "after")).id == "after"


def test_a_call_the_client_gives_up_on_is_cancelled_on_the_server(served):
    port, service, loop, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            _call(channel, "wait", _request(1), timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 5
        while service.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.cancelled == 1  # the client's RST_STREAM cancelled the handler
        assert _call(channel, "echo", _request(3, "next")).id == "next"


def test_stopping_answers_the_calls_in_flight_and_takes_no_new_ones(served):
    port, service, loop, listener = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert _call(channel, "echo", _request(1)).id == "r"
        fn = channel.unary_unary("/t.S/wait", request_serializer=pb.ModelInferRequest.
                                 SerializeToString, response_deserializer=pb.ModelInferResponse.
                                 FromString)
        pending = fn.future(_request(1), timeout=10)
        time.sleep(0.2)
        stopping = asyncio.run_coroutine_threadsafe(listener.stop(grace=5), loop)
        time.sleep(0.2)
        loop.call_soon_threadsafe(service.release.set)
        assert pending.result().id == "released"
        stopping.result(10)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------------------------
# A hand-driven connection


class _Raw:
    """A client that writes HTTP/2 frames itself and reads the server's one by one."""

    def __init__(self, port: int, settings: dict[int, int] | None = None,
                 hold: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.encoder, self.decoder = Encoder(), Decoder()
        self.buf = b""
        # ``hold``: what is sent waits for release(), then goes out in one write.
        self.held: list[bytes] | None = [] if hold else None
        payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
        self._send(http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0, payload))

    def _send(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
        else:
            self.sock.sendall(data)

    def release(self) -> None:
        assert self.held is not None
        self.sock.sendall(b"".join(self.held))
        self.held = None

    def call(self, stream: int, path: str, message: bytes, content_type: str = "application/grpc",
             flag: int = 0) -> None:
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"),
                                     (":path", path), (":authority", "x"),
                                     ("content-type", content_type), ("te", "trailers")])
        data = bytes([flag]) + len(message).to_bytes(4, "big") + message
        frames = [http2.frame(http2.HEADERS, http2.END_HEADERS, stream, block)]
        for i in range(0, len(data), 16384):
            last = i + 16384 >= len(data)
            frames.append(http2.frame(http2.DATA, http2.END_STREAM if last else 0, stream,
                                      data[i : i + 16384]))
        self._send(b"".join(frames))

    def frame(self, timeout: float = 5) -> tuple[int, int, int, bytes] | None:
        """The next frame (kind, flags, stream, payload), or None when none came in time."""
        self.sock.settimeout(timeout)
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big")
        payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
        return kind, flags, stream, payload

    def answer(self, stream: int) -> tuple[list[dict[str, str]], bytes]:
        """Header blocks and DATA of ``stream`` until it ends (other frames are skipped)."""
        blocks, data = [], b""
        while True:
            got = self.frame()
            assert got is not None, "the answer stopped"
            kind, flags, sid, payload = got
            if sid != stream:
                continue
            if kind == http2.HEADERS:
                blocks.append(dict(self.decoder.decode(payload)))
            elif kind == http2.DATA:
                data += payload
            if kind in (http2.HEADERS, http2.DATA) and flags & http2.END_STREAM:
                return blocks, data

    def close(self) -> None:
        self.sock.close()


def test_calls_answered_at_once_come_after_the_servers_settings_each_with_its_status(served):
    """The preface, SETTINGS and three calls in one write (as h2load sends them): the server's
    SETTINGS still come first, then each call's own answer: at once, left to the async
    handler, or refused at once."""
    port, *_ = served
    raw = _Raw(port, hold=True)
    try:
        for stream, ident in ((1, "a"), (3, "later-b"), (5, "refuse")):
            raw.call(stream, "/t.S/now", pb.ModelInferRequest(id=ident).SerializeToString())
        raw.release()
        first = raw.frame()
        assert first is not None and first[:3] == (http2.SETTINGS, 0, 0), first
        blocks: dict[int, list[dict[str, str]]] = {1: [], 3: [], 5: []}
        data = dict.fromkeys(blocks, b"")
        ended: set[int] = set()
        while ended != set(blocks):  # the answers, as they come (stream 3's comes last)
            frame = raw.frame()
            assert frame is not None, f"streams {set(blocks) - ended} were not answered"
            kind, flags, stream, payload = frame
            if kind == http2.HEADERS:
                blocks[stream].append(dict(raw.decoder.decode(payload)))
            elif kind == http2.DATA:
                data[stream] += payload
            if kind in (http2.HEADERS, http2.DATA) and flags & http2.END_STREAM:
                ended.add(stream)
        got = {stream: (b[-1]["grpc-status"], b[-1].get("grpc-message"),
                        pb.ModelInferResponse.FromString(data[stream][5:]).id
                        if data[stream] else None)
               for stream, b in blocks.items()}
        assert got == {1: ("0", None, "a at once"), 3: ("0", None, "later-b"),
                       5: (str(Status.RESOURCE_EXHAUSTED.value), "refused at once", None)}
    finally:
        raw.close()


def test_an_answer_waits_for_the_clients_window_and_respects_its_frame_size(served):
    port, *_ = served
    raw = _Raw(port, {http2.SETTINGS_INITIAL_WINDOW_SIZE: 1000})
    try:
        message = _request(50_000).SerializeToString()
        raw.call(1, "/t.S/echo", message)
        data = b""
        while (got := raw.frame(timeout=0.5)) is not None:
            kind, flags, stream, payload = got
            if kind == http2.DATA:
                data += payload
                assert len(payload) <= http2.DEFAULT_MAX_FRAME
        assert len(data) == 1000  # the stream's window, not a byte more
        raw.sock.sendall(struct.pack(">IBII", 4 << 8 | http2.WINDOW_UPDATE, 0, 1, 1 << 20))
        blocks, rest = raw.answer(1)
        assert blocks[-1]["grpc-status"] == "0"
        reply = pb.ModelInferResponse.FromString((data + rest)[5:])
        assert reply.raw_output_contents[0] == _request(50_000).raw_input_contents[0]
    finally:
        raw.close()


def test_wrong_content_type_compression_and_broken_messages_are_answered(served):
    port, *_ = served
    raw = _Raw(port)
    try:
        raw.call(1, "/t.S/echo", b"", content_type="application/json")
        assert raw.answer(1)[0][0][":status"] == "415"
        raw.call(3, "/t.S/echo", b"\x01\x02", flag=1)
        headers = raw.answer(3)[0][0]
        assert headers["grpc-status"] == str(Status.UNIMPLEMENTED)
        assert "uncompressed" in headers["grpc-message"]
        raw.call(5, "/t.S/echo", b"\xff\xff\xff")  # not a protobuf message
        headers = raw.answer(5)[0][0]
        assert headers["grpc-status"] == str(Status.INVALID_ARGUMENT)
        # A length prefix promising more than the stream carries.
        block = raw.encoder.encode([(":method", "POST"), (":path", "/t.S/echo"),
                                    ("content-type", "application/grpc")])
        raw.sock.sendall(http2.frame(http2.HEADERS, http2.END_HEADERS, 9, block)
                         + http2.frame(http2.DATA, http2.END_STREAM, 9, b"\x00\x00\x00\x00\x09ab"))
        headers = raw.answer(9)[0][0]
        assert headers["grpc-status"] == str(Status.INTERNAL)
        assert "one length-prefixed message" in headers["grpc-message"]
        raw.call(11, "/t.S/echo", _request(4, "ok").SerializeToString())
        blocks, data = raw.answer(11)
        assert blocks[-1]["grpc-status"] == "0"
        assert pb.ModelInferResponse.FromString(data[5:]).id == "ok"
    finally:
        raw.close()


def test_a_ping_is_answered_and_a_protocol_error_closes_with_goaway(served):
    port, *_ = served
    raw = _Raw(port)
    try:
        raw.sock.sendall(http2.frame(http2.PING, 0, 0, b"12345678"))
        while (got := raw.frame()) is not None and got[0] != http2.PING:
            pass
        assert got == (http2.PING, http2.ACK, 0, b"12345678")
        raw.sock.sendall(http2.frame(http2.HEADERS, http2.END_HEADERS, 2, b"\x82"))  # even id
        while (got := raw.frame()) is not None and got[0] != http2.GOAWAY:
            pass
        assert got is not None
        assert struct.unpack(">II", got[3][:8])[1] == http2.ErrorCode.PROTOCOL_ERROR
    finally:
        raw.close()


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00"])
def test_bytes_that_are_not_http2_get_an_http_error_and_a_close(served, junk):
    port, *_ = served
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(junk)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"gRPC" in answer


def test_header_blocks_that_change_no_table_are_told_apart():
    encoder = Encoder()
    headers = [(":method", "POST"), (":path", "/a.B/C"), ("x-id", "1")]
    first = encoder.encode(headers)  # literals with incremental indexing: adds entries
    again = encoder.encode(headers)  # now all indexed
    assert not _changes_no_table(first)
    assert _changes_no_table(again)
    from hpack import NeverIndexedHeaderTuple

    assert _changes_no_table(Encoder().encode([NeverIndexedHeaderTuple("x-long", "v" * 300)]))
    assert _changes_no_table(http2.GRPC_RESPONSE_HEAD + http2.status_block(3, "m" * 200))
    encoder.header_table_size = 100  # a dynamic table size update comes first
    assert not _changes_no_table(encoder.encode(headers))
    assert not _changes_no_table(again[:-1] + b"\xff")  # cut short inside an integer
