"""pytest fixtures that run the MLMD gRPC test server (``tests/mlmd_grpc/server.py``) as a real
process on 127.0.0.1, so that a test can also kill it, restart it on the same port, or make it
misbehave."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kfp_serve.artifacts.mlmd import MLMD_ENV
from kfp_serve.retry import wait_until

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 60.0


def free_port() -> int:
    """A port nothing listens on right now (for a server that will start later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlmdGrpcServer:
    """One MLMD gRPC server process over the SQLite file ``db``.

    Args:
        db: The SQLite file (created if missing); it survives restarts.
        faults: ``--fault`` specs of the first start (see the server module).
        port: The port to listen on (0: a free one, kept across restarts).
    """

    def __init__(self, db: Path, faults: Sequence[str] = (), port: int = 0) -> None:
        self.db = db
        self.faults = list(faults)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = db.with_name(db.name + ".grpc.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        """What ``KFP_SERVE_MLMD`` is set to for this server."""
        return f"grpc://{self.address}"

    def start(self, faults: Sequence[str] | None = None) -> MlmdGrpcServer:
        """Start (again, on the same port once it has one) and wait until it listens."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        ready = self.db.with_name(f"{self.db.name}.port")
        ready.unlink(missing_ok=True)
        args = [sys.executable, "-m", "tests.mlmd_grpc.server", "--db", str(self.db)]
        args += ["--port", str(self.port), "--ready-file", str(ready)]
        for fault in self.faults if faults is None else faults:
            args += ["--fault", fault]
        self.db.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=log)

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"MLMD gRPC server exited: {self.log.read_text()[-2000:]}")
            return ready.is_file()

        wait_until(listening, deadline=START_DEADLINE, describe="the MLMD gRPC server start")
        self.port = int(ready.read_text())
        return self

    def kill(self) -> None:
        """SIGKILL the server (no cleanup, as a crashed pod) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait_exited()

    def wait_exited(self, timeout: float = 60.0) -> int:
        """Wait for the process to end (it may die on its own: the ``crash`` fault)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def start_mlmd_grpc(tmp_path: Path) -> Iterator[Callable[..., MlmdGrpcServer]]:
    """Start MLMD gRPC servers: ``start_mlmd_grpc(db=None, faults=())``; stopped after the test."""
    servers: list[MlmdGrpcServer] = []

    def start(db: Path | None = None, faults: Sequence[str] = ()) -> MlmdGrpcServer:
        server = MlmdGrpcServer(db or tmp_path / f"mlmd-grpc-{len(servers)}.sqlite", faults)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def mlmd_grpc(
    start_mlmd_grpc: Callable[..., MlmdGrpcServer], monkeypatch: pytest.MonkeyPatch
) -> MlmdGrpcServer:
    """A running MLMD gRPC server that this test's kfp-serve calls use (``KFP_SERVE_MLMD``)."""
    server = start_mlmd_grpc()
    monkeypatch.setenv(MLMD_ENV, server.uri)
    return server
