"""The model servers' HTTP/1.1 protocol (kfp_serve.serving.runtime.http1), over raw sockets.

What a client of any kind may send: pipelined requests, chunked bodies, ``Expect:
100-continue``, HTTP/1.0, HEAD, junk; each against a real predictor process.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import joblib
import pytest

from kfp_serve.serving.runtime.launch import start_server, stop_server, wait_ready

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _post(path: str, body: bytes, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (
        f"POST {path} {version}\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _read_answer(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed answer from ``buf`` + the socket (what follows stays in buf)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before an answer head; got {bytes(buf)!r}")
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode().split("\r\n")
    del buf[: end + 4]
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed inside an answer body")
        buf += data
    body = bytes(buf[:n])
    del buf[:n]
    return status, headers, body


def _closed(sock: socket.socket, within: float = 2.0) -> bool:
    """True when the peer closes the connection within ``within`` s (what it sent is dropped)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _expected(servers) -> list[int]:  # noqa: ANN001
    return [int(v) for v in servers["scaled-lr"].model.predict(ROWS)]


PREDICT = "/v1/models/model:predict"
BODY = json.dumps({"instances": ROWS}).encode()


def test_pipelined_requests_are_answered_in_order_on_one_connection(servers) -> None:  # noqa: ANN001
    url = servers["scaled-lr"].url
    ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\n\r\n"
    with _connect(url) as sock:
        sock.sendall(_post(PREDICT, BODY) + ready + _post(PREDICT, BODY) + ready)
        buf = bytearray()
        answers = [_read_answer(sock, buf) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][2])["predictions"] == _expected(servers)
    assert json.loads(answers[1][2]) == {"ready": True}
    assert answers[2][2] == answers[0][2]


def test_many_pipelined_requests_sent_at_once_are_all_answered_in_order(servers) -> None:  # noqa: ANN001
    # More than one read's worth: reading pauses while answers are due and resumes after.
    bodies = [json.dumps({"instances": [ROWS[i % 2]]}).encode() for i in range(300)]
    expected = _expected(servers)
    with _connect(servers["scaled-lr"].url) as sock:
        sock.sendall(b"".join(_post(PREDICT, body) for body in bodies))
        buf = bytearray()
        answers = [_read_answer(sock, buf) for _ in bodies]
    assert [status for status, _, _ in answers] == [200] * len(bodies)
    assert [json.loads(body)["predictions"] for _, _, body in answers] == [
        [expected[i % 2]] for i in range(len(bodies))
    ]


def test_a_chunked_request_body_is_decoded(servers) -> None:  # noqa: ANN001
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    half = len(BODY) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:half], BODY[half:]))
    with _connect(servers["scaled-lr"].url) as sock:
        sock.sendall(head + chunks + b"0\r\n\r\n")
        status, _, body = _read_answer(sock, bytearray())
    assert status == 200
    assert json.loads(body)["predictions"] == _expected(servers)


def test_expect_100_continue_is_answered_before_the_body_is_sent(servers) -> None:  # noqa: ANN001
    with _connect(servers["scaled-lr"].url) as sock:
        request = _post(PREDICT, BODY, extra="Expect: 100-continue\r\n")
        head_end = request.index(b"\r\n\r\n") + 4
        sock.sendall(request[:head_end])
        buf = bytearray()
        status, _, _ = _read_answer(sock, buf)  # sent before any body byte
        assert status == 100
        sock.sendall(request[head_end:])
        status, _, body = _read_answer(sock, buf)
    assert status == 200
    assert json.loads(body)["predictions"] == _expected(servers)


def test_http_1_0_and_connection_close_get_their_answer_then_the_close(servers) -> None:  # noqa: ANN001
    url = servers["scaled-lr"].url
    for request in (_post(PREDICT, BODY, version="HTTP/1.0"),
                    _post(PREDICT, BODY, extra="Connection: close\r\n")):
        with _connect(url) as sock:
            sock.sendall(request)
            status, headers, body = _read_answer(sock, bytearray())
            assert status == 200
            assert headers["connection"] == "close"
            assert json.loads(body)["predictions"] == _expected(servers)
            assert _closed(sock)


def test_head_gets_the_head_only_and_the_connection_goes_on(servers) -> None:  # noqa: ANN001
    with _connect(servers["scaled-lr"].url) as sock:
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: test\r\n\r\n")
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head = bytes(buf[: buf.index(b"\r\n\r\n")]).decode().lower()
        del buf[: buf.index(b"\r\n\r\n") + 4]
        assert head.startswith("http/1.1 200")
        assert "content-length" in head
        sock.sendall(_post(PREDICT, BODY))
        status, _, body = _read_answer(sock, buf)  # no HEAD body was left before this answer
    assert status == 200
    assert json.loads(body)["predictions"] == _expected(servers)


@pytest.mark.parametrize(
    ("junk", "says"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), "invalid HTTP/1.1"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "speaks HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "larger than"),
    ],
    ids=["tls-hello", "http2-preface", "oversized-head"],
)
def test_junk_is_refused_at_once_and_the_server_keeps_serving(servers, junk, says) -> None:  # noqa: ANN001
    url = servers["scaled-lr"].url
    with _connect(url) as sock:
        started = time.monotonic()
        sock.sendall(junk)
        status, _, body = _read_answer(sock, bytearray())
        assert time.monotonic() - started < 1.0
        assert 400 <= status < 500
        assert says in body.decode()
        assert _closed(sock)
    response = servers["scaled-lr"].client.post(PREDICT, json={"instances": ROWS})
    assert response.status_code == 200


@pytest.fixture(scope="module")
def small_limits_server(servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: ANN001
    """A predictor with a 1000-byte body limit and a 1 s keep-alive timeout."""
    model_dir = tmp_path_factory.mktemp("http1-model")
    joblib.dump(servers["scaled-lr"].model, model_dir / "model.joblib")
    proc = start_server(
        "predictor", "model", model_dir,
        env={"KFP_SERVE_MAX_BODY_BYTES": "1000"},
        extra_args=["--timeout_keep_alive", "1"],
        log_path=tmp_path_factory.mktemp("http1-logs") / "small.log",
    )
    try:
        wait_ready(proc.url, timeout=180, proc=proc)
        yield proc.url
    finally:
        stop_server(proc)


def test_a_body_over_the_limit_is_refused_413_and_the_connection_goes_on(
    small_limits_server, servers  # noqa: ANN001
) -> None:
    big = json.dumps({"instances": ROWS * 100}).encode()
    with _connect(small_limits_server) as sock:
        buf = bytearray()
        sock.sendall(_post(PREDICT, big))
        status, _, body = _read_answer(sock, buf)
        assert status == 413
        assert json.loads(body) == {"error": "request body larger than 1000 bytes"}
        sock.sendall(_post(PREDICT, BODY))
        status, _, body = _read_answer(sock, buf)
    assert status == 200
    assert json.loads(body)["predictions"] == _expected(servers)


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(small_limits_server) -> None:  # noqa: ANN001
    with _connect(small_limits_server) as sock:
        sock.sendall(_post(PREDICT, BODY))
        status, _, _ = _read_answer(sock, bytearray())
        assert status == 200
        # Busy for longer than the timeout: each request restarts the idle period.
        for _ in range(6):
            time.sleep(0.3)
            sock.sendall(_post(PREDICT, BODY))
            assert _read_answer(sock, bytearray())[0] == 200
        started = time.monotonic()
        assert _closed(sock, within=5.0)
        # Not at once: after the idle period (how soon after it is the machine's business).
        assert time.monotonic() - started > 0.5


def test_a_protocol_upgrade_request_is_answered_in_http_1_1_then_closed(servers) -> None:  # noqa: ANN001
    # curl --http2 on an http:// URL asks this way; the answer must still come, in HTTP/1.1.
    with _connect(servers["scaled-lr"].url) as sock:
        sock.sendall(
            b"GET /v2/health/ready HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, HTTP2-Settings"
            b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        status, _, body = _read_answer(sock, bytearray())
        assert status == 200
        assert json.loads(body) == {"ready": True}
        assert _closed(sock)
