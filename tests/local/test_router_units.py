"""The router's pure parts: what counts as the start of a request, framing, chunked ends, and
the per-component timeout read from a manifest. The relay itself is tested over real sockets
in tests/reliability/test_router_limits.py."""

from __future__ import annotations

import pytest

from kfp_serve.serving.backends.local.router import (
    DEFAULT_UPSTREAM_TIMEOUT,
    _check_start,
    _Chunks,
    _framing,
    _Reject,
    component_timeout,
)

CHUNKED = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize(
    "start",
    [b"G", b"POST", b"POST /v1/models/m:predict HT", b"GET / HTTP/1.1\r\nHost: x", b"M-SEARCH "],
    ids=["one-letter", "method", "request-line-so-far", "line-and-a-header", "dash-method"],
)
def test_what_may_begin_an_http_1_request_waits_for_more(start: bytes) -> None:
    _check_start(bytearray(start))  # no exception: wait for the rest


@pytest.mark.parametrize(
    ("start", "status"),
    [
        (b"\x16\x03\x01\x00\xc4", 400),
        (b"PRI * HTTP/2.0\r\n", 505),
        (b"get / HTTP/1.1\r\n", 400),
        (b" GET", 400),
        (b"GET / HTTP/1.1 extra\r\n", 400),
        (b"A" * 21, 400),
        (b"\x00\xff\x13", 400),
    ],
    ids=["tls-hello", "http2", "lower-case-method", "leading-space", "four-parts", "long-method",
         "binary"],
)
def test_junk_is_refused_on_its_first_bytes(start: bytes, status: int) -> None:
    with pytest.raises(_Reject) as info:
        _check_start(bytearray(start))
    assert info.value.status == status


def test_framing_headers_are_found_whatever_their_case_and_repeats_are_joined() -> None:
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nCONTENT-Length:  12 \r\nX-Content-Length: 99\r\n"
        b"Transfer-Encoding: gzip\r\ntransfer-encoding: Chunked\r\nConnection: Keep-Alive\r\n\r\n"
    )
    assert _framing(head) == {
        b"content-length": b"12",
        b"transfer-encoding": b"gzip,chunked",
        b"connection": b"keep-alive",
    }


@pytest.mark.parametrize("piece", [1, 2, 3, 7, len(CHUNKED)])
def test_the_end_of_a_chunked_body_is_found_however_it_is_split(piece: int) -> None:
    data = CHUNKED + b"NEXT"
    chunks = _Chunks(limit=1 << 20)
    ends = []
    for start in range(0, len(data), piece):
        end = chunks.feed(data[start : start + piece])
        if end >= 0:
            ends.append(start + end)
            break
    assert ends == [len(CHUNKED)]


def test_a_chunked_body_over_the_limit_is_refused_413() -> None:
    with pytest.raises(_Reject) as info:
        _Chunks(limit=8).feed(CHUNKED)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("manifest", "role", "expected"),
    [
        ({"spec": {"predictor": {"timeout": 7}}}, "predictor", 7.0),
        ({"spec": {"transformer": {"timeout": 3}, "predictor": {"timeout": 9}}}, "transformer", 3),
        ({"spec": {"predictor": {"timeout": 9}}}, "transformer", DEFAULT_UPSTREAM_TIMEOUT),
        ({"spec": {"predictor": {}}}, "predictor", DEFAULT_UPSTREAM_TIMEOUT),
        ({}, "predictor", DEFAULT_UPSTREAM_TIMEOUT),
        ({"spec": {"predictor": {"timeout": "soon"}}}, "predictor", DEFAULT_UPSTREAM_TIMEOUT),
    ],
    ids=["predictor", "transformer-first", "other-component", "unset", "no-spec", "not-a-number"],
)
def test_the_upstream_timeout_is_the_first_components_serve_config_timeout(
    manifest: dict, role: str, expected: float
) -> None:
    assert component_timeout(manifest, role, DEFAULT_UPSTREAM_TIMEOUT) == expected


def test_a_router_that_stalled_reads_what_arrived_before_it_expires_anyone(tmp_path) -> None:
    """The router is descheduled (a loaded machine) in the middle of handling I/O, and a
    client's bytes arrive meanwhile. uvloop runs due timers before it polls for I/O, so the
    deadline sweep must look at what arrived before calling the client slow."""
    import asyncio
    import socket
    import time

    import uvloop

    from kfp_serve.serving.backends.local.router import Router

    class Client:
        def __init__(self, deadline: float) -> None:
            self.deadline = deadline
            self.expired = False

        def expire(self) -> None:
            self.expired = True

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        from types import SimpleNamespace

        # The sweep reads no routes but the (absent) mirror session next to the registry.
        routes = SimpleNamespace(registry=str(tmp_path / "endpoint.json"), upstreams=[])
        router = Router(routes=routes, max_body=1)  # type: ignore[arg-type]
        client = Client(deadline=loop.time() + 0.05)
        router.clients.add(client)
        trigger, trigger_peer = socket.socketpair()
        data, data_peer = socket.socketpair()
        for s in (trigger, data):
            s.setblocking(False)

        def stalled_io() -> None:  # an I/O callback during which the router loses the CPU
            trigger.recv(16)
            data_peer.send(b"the rest of the body")  # the client is on time...
            time.sleep(0.3)  # ...but the router does not run until past the client's deadline

        def client_bytes() -> None:  # what _ClientConnection.data_received does to a deadline
            data.recv(64)
            client.deadline = loop.time() + 5.0

        loop.add_reader(trigger, stalled_io)
        loop.add_reader(data, client_bytes)
        sweep = asyncio.create_task(router.sweep(interval=0.02))
        await asyncio.sleep(0.01)
        trigger_peer.send(b"go")
        await asyncio.sleep(0.5)
        sweep.cancel()
        for s in (trigger, data):
            loop.remove_reader(s)
        for s in (trigger, trigger_peer, data, data_peer):
            s.close()
        return client.expired

    assert uvloop.run(main()) is False


def test_relayed_http2_frame_headers_are_found_however_the_bytes_are_cut() -> None:
    """What the gRPC relay's drain counts calls by: each frame's kind, flags and stream, and a
    PING's payload, from a byte stream cut at any point (a read ends anywhere)."""
    from kfp_serve.serving.backends.local.grpc_relay import _Frames
    from kfp_serve.serving.runtime.http2 import PREFACE
    from kfp_serve.serving.runtime.http2 import frame as _frame

    frames = [(0x4, 0, 0, b""), (0x1, 0x4, 1, b"\x82\x86"), (0x0, 0x1, 1, b"x" * 40),
              (0x6, 0, 0, b"kfpdrain"), (0x3, 0, 3, b"\x00\x00\x00\x08"), (0x1, 0x5, 5, b"")]
    stream = PREFACE + b"".join(_frame(k, f, s, p) for k, f, s, p in frames)
    expected = [(k, f, s, p if k == 0x6 else b"") for k, f, s, p in frames]
    for cut in range(len(stream) + 1):
        scanner, seen = _Frames(skip=len(PREFACE)), []
        for part in (stream[:cut], stream[cut:]):
            scanner.feed(part, lambda *frame, seen=seen: seen.append(frame))
        assert scanner.at_boundary, cut
        assert [f[:3] for f in seen] == [f[:3] for f in expected], cut
        # A PING's payload comes with it unless the cut falls inside that frame (the drain then
        # waits PING_WAIT instead of for the answer to its PING).
        ping_at = stream.index(b"kfpdrain")
        if not ping_at - 9 < cut < ping_at + 8:
            assert seen == expected, cut
