"""The router in front of every local endpoint refuses junk fast and leaves nothing hanging.

Against real endpoints (router -> transformer -> predictor processes on 127.0.0.1) over real
sockets: bytes that are not HTTP/1.x are answered and closed at once and never reach a server; a
client that sends its head slowly is closed after the header timeout; a transformer that hangs
(stopped with SIGSTOP) is answered 504 after the ServeConfig's ``transformer.timeout``; a 400
from the predictor reaches the client with the predictor's own status and words, and no answer
names an internal address. After each, the router's in-flight count is back to 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from kfp_serve.serving.backends.local.router import HEADER_TIMEOUT, STATUS_PATH
from tests.reliability.conftest import Served, Trained, server_pids

#: The TLS 1.2 ClientHello a browser sends first to an https:// URL (its fixed first bytes).
TLS_HELLO = bytes.fromhex("16030100c4010000c00303") + bytes(range(32)) + b"\x00\x00\x02\x13\x01"
#: What an HTTP/2 client with prior knowledge sends first (RFC 9113 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NOISE = np.random.default_rng(11).integers(0, 256, 512, dtype=np.uint8).tobytes()


#: HTTP/2 frame types (RFC 9113 6).
SETTINGS, GOAWAY = 0x4, 0x7


def http2_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(type, payload)`` of each whole HTTP/2 frame in ``data``."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def router_status(url: str) -> dict[str, Any]:
    r = httpx.get(url + STATUS_PATH.decode(), trust_env=False, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def forwarded(status: dict[str, Any]) -> int:
    """Requests the router has relayed to any upstream so far."""
    return sum(u["requests"] for u in status["upstreams"])


def exchange(url: str, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; everything received until the router closes it, and
    the seconds that took. Fails if the connection is still open after ``wait`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        sock.settimeout(wait)
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize(
    ("data", "status"),
    [(H2_PREFACE, 505), (TLS_HELLO, 400), (NOISE, 400)],
    ids=["http2-preface", "tls-client-hello", "random-bytes"],
)
def test_junk_is_answered_and_closed_at_once_and_never_forwarded(
    served: Served, data: bytes, status: int
) -> None:
    url = served.urls["router"]
    before = router_status(url)
    received, took = exchange(url, data, wait=1.0)  # recv times out (fails) after 1 s
    if data == H2_PREFACE:
        # Spoken to in HTTP/2, which a gRPC client at the wrong port can read (its calls get
        # UNAVAILABLE naming the gRPC address): SETTINGS, then GOAWAY when it opens no call.
        assert [kind for kind, _ in http2_frames(received)] == [SETTINGS, GOAWAY], received
    else:
        assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:200]
        assert b"connection: close" in received.lower()
        body = json.loads(received.split(b"\r\n\r\n", 1)[1])
        assert "HTTP/1" in body["error"], body
    after = router_status(url)
    assert forwarded(after) == forwarded(before)  # no server saw it
    assert after["inflight"] == 0
    assert after["rejected"][str(status)] == before["rejected"].get(str(status), 0) + 1
    assert took < 1.0


def test_a_client_sending_its_head_slowly_is_closed_after_the_header_timeout(
    served: Served,
) -> None:
    url = served.urls["router"]
    host, port = url.removeprefix("http://").split(":")
    before = router_status(url)
    path = f"/v1/models/{served.endpoint.model_name}:predict"
    started = time.monotonic()
    received = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode())
        # One header byte every half second: always busy, never done (slowloris).
        sock.settimeout(0.5)
        closed = False
        while not closed and time.monotonic() - started < HEADER_TIMEOUT + 5:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"x")
                continue
            received += chunk
            closed = not chunk
    took = time.monotonic() - started
    assert closed, f"still open after {took:.1f} s"
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"header timeout" in received
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + 2, took
    after = router_status(url)
    assert forwarded(after) == forwarded(before)
    assert after["inflight"] == 0


def test_a_connection_that_never_sends_is_closed_after_the_header_timeout(
    served: Served,
) -> None:
    received, took = exchange(served.urls["router"], b"", wait=HEADER_TIMEOUT + 3)
    assert received == b""  # nothing was asked, nothing is answered: just closed
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + 2, took


def test_a_valid_request_after_the_junk_is_served(served: Served) -> None:
    rows = served.trained.X[:3].tolist()
    url = served.urls["router"]
    for data in (H2_PREFACE, TLS_HELLO, NOISE):
        exchange(url, data, wait=1.0)
    r = httpx.post(
        f"{url}/v1/models/{served.endpoint.model_name}:predict",
        json={"instances": rows},
        trust_env=False,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == served.trained.expected(rows)


def _read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` complete answers (status, body) framed by Content-Length, interim ones too."""
    data, answers = b"", []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answers}"
            data += chunk
            continue
        head, rest = data[:end], data[end + 4 :]
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        answers.append((status, rest[:length]))
        data = rest[length:]
    return answers


@pytest.mark.parametrize("framing", ["chunked", "expect-100-continue", "pipelined"])
def test_requests_framed_every_http_1_1_way_are_relayed(served: Served, framing: str) -> None:
    url = served.urls["router"]
    host, port = url.removeprefix("http://").split(":")
    rows = served.trained.X[7:10].tolist()
    body = json.dumps({"instances": rows}).encode()
    head = f"POST /v1/models/{served.endpoint.model_name}:predict HTTP/1.1\r\nHost: {host}\r\n"
    if framing == "chunked":
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
        requests, expected = [f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks
                              + b"0\r\n\r\n"], [200]
    elif framing == "expect-100-continue":
        requests = [f"{head}Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
                    + body]
        expected = [100, 200]
    else:  # two requests in one write: answered in order on the same connection
        one = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        requests, expected = [one + one], [200, 200]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        answers = _read_answers(sock, len(expected))
    assert [status for status, _ in answers] == expected, answers
    assert json.loads(answers[-1][1])["predictions"] == served.trained.expected(rows)
    assert router_status(url)["inflight"] == 0


def test_a_request_with_two_framings_is_refused_and_not_forwarded(served: Served) -> None:
    """Content-Length beside Transfer-Encoding is how requests are smuggled past a proxy."""
    url = served.urls["router"]
    before = router_status(url)
    received, _ = exchange(
        url,
        b"POST /v1/models/x:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        wait=1.0,
    )
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert forwarded(router_status(url)) == forwarded(before)


# --------------------------------------------- a predictor that refuses, a transformer that hangs

MISMATCH = "iris-mismatch"
TRANSFORMER_TIMEOUT = 2


@pytest.fixture(scope="module")
def mismatched(trained: Trained) -> Iterator[tuple[Any, Any]]:
    """An endpoint whose transformer sends the predictor 3 features for its 4: every request is
    refused by the predictor (400). Its ServeConfig gives the transformer a 2 s timeout."""
    from sklearn.decomposition import PCA

    from kfp_serve import artifacts, serving
    from kfp_serve.serving.backends.local import LocalBackend

    pca = PCA(n_components=3).fit(trained.X)
    transformer_id = artifacts.Transformer(name="iris-pca3", transformer=pca).submit_artifact()
    endpoint = serving.serve(
        trained.model_id,
        transformer_id,
        serve_config={"transformer": {"timeout": TRANSFORMER_TIMEOUT}},
        name=MISMATCH,
        timeout=120,
    )
    yield endpoint, pca
    endpoint.close()
    LocalBackend(progress=False, stop_grace=2.0).delete(MISMATCH)


def test_a_predictor_400_reaches_the_client_as_the_predictor_said_it(
    mismatched: tuple[Any, Any], trained: Trained
) -> None:
    endpoint, pca = mismatched
    rows = trained.X[:2].tolist()
    path = f"/v1/models/{endpoint.model_name}:predict"
    predictor = endpoint.status.components["predictor"]
    # What the predictor itself answers to what the transformer sends it.
    own = httpx.post(
        predictor + path, json={"instances": pca.transform(rows).tolist()}, trust_env=False
    )
    assert own.status_code == 400, own.text

    r = httpx.post(endpoint.url + path, json={"instances": rows}, trust_env=False, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json() == own.json()
    transformer = endpoint.status.components["transformer"]
    for internal in (predictor, transformer, predictor.rsplit(":", 1)[1]):
        assert internal not in r.text
    # The detail, with the address, is in the transformer's log.
    log = server_log(MISMATCH, "transformer")
    assert f"predictor at {predictor}{path} answered 400" in log, log[-2000:]
    assert router_status(endpoint.url)["inflight"] == 0


def test_a_hanging_transformer_is_answered_504_after_its_serve_config_timeout(
    mismatched: tuple[Any, Any], trained: Trained
) -> None:
    endpoint, _ = mismatched
    path = f"/v1/models/{endpoint.model_name}:predict"
    transformer = server_pids(MISMATCH)["transformer"]
    status = router_status(endpoint.url)
    assert [u["timeout"] for u in status["upstreams"]] == [TRANSFORMER_TIMEOUT]
    os.kill(transformer, signal.SIGSTOP)  # it accepts connections (the kernel does) but is mute
    try:
        started = time.monotonic()
        r = httpx.post(
            endpoint.url + path,
            json={"instances": trained.X[:1].tolist()},
            trust_env=False,
            timeout=TRANSFORMER_TIMEOUT + 10,
        )
        took = time.monotonic() - started
        during = router_status(endpoint.url)
    finally:
        os.kill(transformer, signal.SIGCONT)
    assert r.status_code == 504, r.text
    assert TRANSFORMER_TIMEOUT <= took < TRANSFORMER_TIMEOUT + 2, took
    message = r.json()["error"]
    assert f"did not answer within {TRANSFORMER_TIMEOUT} s" in message, message
    assert "transformer.timeout" in message and "127.0.0.1" not in message, message
    assert during["inflight"] == 0 and during["timeouts"] >= 1, during
    assert all(u["inflight"] == 0 for u in during["upstreams"]), during


def server_log(endpoint: str, role: str) -> str:
    """The log file of the ``role`` server of local endpoint ``endpoint``."""
    from kfp_serve.serving.backends.local.registry import read_record

    record = read_record(endpoint)
    assert record is not None
    proc = next(p for p in record.latest.processes if p.role == role)
    with open(proc.log, encoding="utf-8", errors="replace") as f:
        return f.read()
