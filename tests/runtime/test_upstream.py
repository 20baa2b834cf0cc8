"""kfp_serve.serving.runtime.upstream: the transformer's HTTP/1.1 client, against real sockets.

Each test runs a small asyncio TCP server on 127.0.0.1 that answers with hand-written HTTP, so
framing (Content-Length, chunked, close-delimited), keep-alive reuse, reconnection after the
server dropped an idle connection, timeouts and error messages are checked on the wire.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kfp_serve.serving.runtime.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

Handler = Callable[[bytes, bytes, asyncio.StreamWriter, dict[str, Any]], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


def _answer(status: int, body: bytes, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *extra, "", ""]
    return "\r\n".join(lines).encode() + body


async def _serve(handler: Handler, state: dict[str, Any]) -> asyncio.Server:
    """Start a server; ``handler`` answers one request and says whether to keep the connection."""
    state.setdefault("connections", 0)
    state.setdefault("requests", [])
    state.setdefault("nodelay", [])

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["connections"] += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                state["requests"].append(request)
                if not await handler(*request, writer, state):
                    break
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", 0)


def _url(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _echo(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
    writer.write(_answer(200, b"echo:" + body))
    return True


def test_keep_alive_reuses_one_connection_and_sends_headers():
    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(_echo, state)
        client = UpstreamClient(_url(server), headers={"content-type": "application/json"})
        for i in range(5):
            r = await client.post("/v1/models/m:predict", f"{i}".encode(), {"x-request-id": "r1"})
            assert (r.status, r.body) == (200, f"echo:{i}".encode())
        assert state["connections"] == 1
        head, body = state["requests"][0]
        assert head.startswith(b"POST /v1/models/m:predict HTTP/1.1\r\n")
        lower = head.lower()
        assert b"content-type: application/json\r\n" in lower
        assert b"x-request-id: r1\r\n" in lower
        assert b"content-length: 1\r\n" in lower
        assert b"host: 127.0.0.1:" in lower
        # TCP_NODELAY is on for the pooled connection.
        conn = client._idle[0]
        sock = conn.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_concurrent_requests_open_more_connections_and_keep_max_idle():
    async def slow(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        await asyncio.sleep(0.05)
        writer.write(_answer(200, body))
        return True

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(slow, state)
        client = UpstreamClient(_url(server), max_idle=2)
        answers = await asyncio.gather(*(client.post("/p", f"{i}".encode()) for i in range(4)))
        assert [a.body for a in answers] == [b"0", b"1", b"2", b"3"]
        assert state["connections"] == 4
        assert len(client._idle) == 2
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"hello world",
            id="chunked-with-extension-and-trailer",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc", id="content-length"
        ),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", b"", id="no-content"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"ok",
            id="interim-100-skipped",
        ),
    ],
)
def test_framing_keeps_the_connection_usable(raw: bytes, expected: bytes):
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        writer.write(raw)
        return True

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(handler, state)
        client = UpstreamClient(_url(server))
        for _ in range(3):
            assert (await client.post("/p", b"{}")).body == expected
        assert state["connections"] == 1
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_close_delimited_and_connection_close_answers_are_not_reused():
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        if len(state["requests"]) % 2:
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
        else:
            writer.write(_answer(200, b"closing", "Connection: close"))
        return False

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(handler, state)
        client = UpstreamClient(_url(server))
        assert (await client.get("/a")).body == b"until-close"
        assert (await client.get("/b")).body == b"closing"
        assert (await client.get("/c")).body == b"until-close"
        assert state["connections"] == 3 and not client._idle
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("detected_before_reuse", [True, False])
def test_reconnects_when_the_server_dropped_an_idle_connection(monkeypatch, detected_before_reuse):
    """The server answers keep-alive, then closes (idle timeout): the next request still works.

    Either the client sees the close before reusing the connection, or (a close racing the
    reuse, simulated by hiding it) the write goes out and the read hits EOF: resend once.
    """

    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        writer.write(_answer(200, body))
        await writer.drain()
        return False  # closes without "Connection: close", like an idle timeout

    if not detected_before_reuse:
        monkeypatch.setattr(
            "kfp_serve.serving.runtime.upstream._Connection.usable", lambda self: True
        )

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(handler, state)
        client = UpstreamClient(_url(server))
        for i in range(3):
            assert (await client.post("/p", f"{i}".encode())).body == f"{i}".encode()
            await asyncio.sleep(0.05)  # let the close arrive
        assert state["connections"] == 3
        assert [b for _, b in state["requests"]] == [b"0", b"1", b"2"]
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_timeout_is_an_upstream_timeout_and_the_connection_is_dropped():
    async def hang(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        if body == b"hang":
            await asyncio.sleep(5)
        writer.write(_answer(200, body))
        return True

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(hang, state)
        client = UpstreamClient(_url(server), timeout=0.2)
        with pytest.raises(UpstreamTimeout, match=r"no answer from http://127\.0\.0\.1:\d+"):
            await client.post("/p", b"hang")
        assert not client._idle
        assert (await client.post("/p", b"ok")).body == b"ok"
        await client.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_refused_connection_and_garbage_are_upstream_errors():
    async def garbage(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = UpstreamClient(f"http://127.0.0.1:{port}", retries=1)
        with pytest.raises(UpstreamError, match=f"cannot connect to http://127.0.0.1:{port}"):
            await client.get("/")
        state: dict[str, Any] = {}
        server = await _serve(garbage, state)
        client = UpstreamClient(_url(server))
        with pytest.raises(UpstreamError, match="not an HTTP/1.x answer"):
            await client.get("/")
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_bad_url_is_refused():
    with pytest.raises(ValueError, match="http"):
        UpstreamClient("ftp://example")


def _framed(client: UpstreamClient, bodies: list[bytes]) -> bytes:
    prefix = client.head_prefix("POST", "/events")
    return b"".join(prefix + f"content-length: {len(b)}\r\n\r\n".encode() + b for b in bodies)


@pytest.mark.parametrize("settle", [0.0, 0.01])
def test_pipeline_reads_each_answer_in_order_whatever_their_heads(settle):
    """Pipelined requests each get their own answer, in order: alike heads (parsed once) and
    ones that differ, bodies or none, whether the answers are read at once or after a wait."""

    async def varied(head: bytes, body: bytes, writer: asyncio.StreamWriter, state: dict) -> bool:
        n = int(body)
        # Runs of alike body-less answers (read as one answer repeated), and ones between.
        writer.write(_answer(500 if n % 7 == 3 else 200, b"" if n % 5 < 3 else body))
        return True

    async def main() -> None:
        state: dict[str, Any] = {}
        server = await _serve(varied, state)
        client = UpstreamClient(_url(server), headers={"ce-source": "test"})
        bodies = [str(i).encode() for i in range(50)]
        answers = await client.pipeline(_framed(client, bodies), len(bodies), settle=settle)
        assert [(a.status, a.body) for a in answers] == [
            (500 if i % 7 == 3 else 200, b"" if i % 5 < 3 else str(i).encode()) for i in range(50)
        ]
        assert state["connections"] == 1 and len(state["requests"]) == 50
        assert all(b"ce-source: test\r\n" in head for head, _ in state["requests"])
        await client.aclose()
        server.close()

    asyncio.run(main())


def test_pipeline_answers_missing_after_a_close_are_errors():
    async def close_after_three(head: bytes, body: bytes, writer: asyncio.StreamWriter,
                                state: dict) -> bool:
        writer.write(_answer(200, b"ok"))
        return len(state["requests"]) < 3

    async def main() -> None:
        server = await _serve(close_after_three, {})
        client = UpstreamClient(_url(server))
        answers = await client.pipeline(_framed(client, [b"x"] * 6), 6, settle=0.01)
        assert [a.status for a in answers[:3]] == [200, 200, 200]
        assert all(isinstance(a, UpstreamError) for a in answers[3:]), answers
        await client.aclose()
        server.close()

    asyncio.run(main())
