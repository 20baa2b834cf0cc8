"""The router's hop to a local model server goes over the server's unix socket.

A real router process, a real registry record, and an upstream that answers only on its unix
socket (its recorded TCP port refuses connections): an answer through the router can only have
come over the unix socket. And a real model server started with ``--http_unix_socket`` serves
the same routes there as on its port.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kfp_serve.retry import wait_until
from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
    registry_path,
    write_record,
)
from kfp_serve.serving.constants import ROUTER_MODULE
from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready
from kfp_serve.serving.runtime.server import unix_address


def _unix_get(name: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` from the HTTP server on unix socket ``name`` (``@``: abstract)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(unix_address(name))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class _UnixOnlyServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture()
def unix_only_upstream() -> Iterator[str]:
    """An HTTP server listening on an abstract unix socket and nowhere else; its name."""
    name = f"@kfp-serve-test-{uuid.uuid4().hex}"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            n = int(self.headers.get("content-length", 0))
            body = json.dumps({"echo": json.loads(self.rfile.read(n))}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

    server = _UnixOnlyServer(unix_address(name), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield name
    server.shutdown()
    server.server_close()


def _refusing_port() -> tuple[socket.socket, int]:
    """A port bound and never listening: TCP connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


def test_the_router_reaches_its_model_server_over_the_servers_unix_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unix_only_upstream: str
) -> None:
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    name = "unix-hop"
    holder, dead_port = _refusing_port()
    router_port = free_port()
    log = tmp_path / "router.log"
    with open(log, "ab") as out:
        router = subprocess.Popen(
            [sys.executable, "-m", ROUTER_MODULE, "--endpoint", name,
             "--registry", str(registry_path(name)), "--port", str(router_port)],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
        )
    try:
        predictor = ProcessRecord("predictor", os.getpid(), supervisor.start_time(os.getpid()),
                                  dead_port, "", name, unix_socket=unix_only_upstream)
        revision = RevisionRecord(revision=1, created="t", manifest={"metadata": {"name": name}},
                                  spec_hash="h", protocol="v1", model_name=name,
                                  predictor=predictor)
        start = wait_until(lambda: supervisor.start_time(router.pid), deadline=10,
                           describe="the router's start time")
        write_record(EndpointRecord(
            name=name, created="t", updated="t",
            router=ProcessRecord("router", router.pid, start, router_port, str(log)),
            revisions=[revision], traffic={"1": 100},
        ))
        url = f"http://127.0.0.1:{router_port}/v1/models/{name}:predict"
        wait_until(lambda: _accepts(router_port), deadline=30, describe="the router")
        r = httpx.post(url, json={"instances": [[1, 2]]}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"echo": {"instances": [[1, 2]]}}
    finally:
        router.terminate()
        router.wait(10)
        holder.close()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_a_model_server_serves_the_same_routes_on_its_unix_socket(
    kind: str, tmp_path: Path, model_dir: Any
) -> None:
    name = f"@kfp-serve-test-{uuid.uuid4().hex}" if kind == "abstract" else str(tmp_path / "s")
    proc = start_server("predictor", "m", model_dir[0], log_path=tmp_path / "p.log",
                        extra_args=[f"--http_unix_socket={name}"])
    try:
        wait_ready(proc.url, timeout=120, proc=proc)
        over_tcp = httpx.get(f"{proc.url}/v2/models/m", timeout=10)
        status, body = _unix_get(name, "/v2/models/m")
        assert (status, json.loads(body)) == (200, over_tcp.json())
    finally:
        stop_server(proc)
    if kind == "abstract":
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError):
            sock.connect(unix_address(name))  # gone with its server: nothing left to clean up


def test_a_taken_unix_socket_name_fails_the_server_at_start(
    tmp_path: Path, model_dir: Any, unix_only_upstream: str
) -> None:
    from kfp_serve.serving.errors import ServingError

    proc = start_server("predictor", "m", model_dir[0], log_path=tmp_path / "p.log",
                        extra_args=[f"--http_unix_socket={unix_only_upstream}"])
    try:
        with pytest.raises(ServingError, match="exited with code 3"):
            wait_ready(proc.url, timeout=120, proc=proc)
        assert "cannot bind the unix socket" in (tmp_path / "p.log").read_text()
    finally:
        stop_server(proc)
