"""The shared loopback client: one pooled connection per server, and a forked child never
writes to its parent's sockets (a real HTTP server on 127.0.0.1 counts the connections)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kfp_serve.serving.http import loopback_client


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.peers: set[tuple[str, int]] = set()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the model servers answer
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:
            self.server.peers.add(self.client_address)
        body = b"ready"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_probes_reuse_one_connection_across_calls_and_threads(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/ready"
    for _ in range(5):
        assert loopback_client().get(url).status_code == 200
    seen = []
    thread = threading.Thread(target=lambda: seen.append(loopback_client().get(url)))
    thread.start()
    thread.join()
    assert seen[0].status_code == 200
    assert len(server.peers) == 1, f"one pooled connection expected, saw {server.peers}"


def test_a_forked_child_opens_its_own_connection_and_the_parents_keeps_working(
    server: _Server,
) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/ready"
    parent = loopback_client()
    assert parent.get(url).status_code == 200
    parents = set(server.peers)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it got, and leave without running pytest's teardown
        try:
            child = loopback_client()
            answer = child.get(url).text if child is not parent else "the parent's client"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == "ready", answer
    assert len(server.peers - parents) == 1, "the child must open a connection of its own"
    assert parent.get(url).status_code == 200  # and the parent's client still answers
