"""MLMD's own store behind real gRPC: the ``ml_metadata.MetadataStoreService`` on 127.0.0.1.

No MLMD server binary installs here, but the ``ml_metadata`` wheel ships the C++ store the real
server wraps, as a pybind extension whose functions take a store handle and a serialized request
and return ``(serialized response, error message, status code)``. A generic gRPC handler that
forwards every method's bytes to it (MLMD status codes are gRPC status codes) is the server's
logic over the wire, with the same request validation, transactions and error codes.

Run it as ``python -m tests.mlmd_grpc.server --db PATH --port N --ready-file F``; the ready file
gets the port once it listens. Faults for tests (repeatable)::

    --fault PutExecution:abort:2       answer ABORTED to the first 2 PutExecution calls
    --fault PutExecution:crash:1       commit the first PutExecution, then die before answering
    --fault '*:hang'                   never answer any call
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVICE = "ml_metadata.MetadataStoreService"
#: Exit status of a server that died on purpose (the ``crash`` fault).
CRASH_EXIT = 70
FAULT_ACTIONS = ("abort", "crash", "hang")
_STATUS_BY_CODE = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Fault:
    """``action`` on calls of ``method`` ("*": every method), the first ``times`` (None: all)."""

    method: str
    action: str
    times: int | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        method, _, rest = text.partition(":")
        action, _, times = rest.partition(":")
        if action not in FAULT_ACTIONS or not method:
            raise argparse.ArgumentTypeError(
                f"--fault {text!r}: use METHOD:ACTION[:TIMES] with ACTION one of {FAULT_ACTIONS}"
            )
        return cls(method, action, int(times) if times else None)

    def fires(self, method: str) -> bool:
        """True if this call is hit (and counts it)."""
        if self.method not in ("*", method) or self.times == 0:
            return False
        if self.times is not None:
            self.times -= 1
        return True


def _open_store(db: Path):
    from ml_metadata.metadata_store.pywrap.metadata_store_extension import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = str(db)
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    handle = metadata_store.CreateMetadataStore(
        config.SerializeToString(), pb.MigrationOptions().SerializeToString()
    )
    return metadata_store, handle


def build_server(
    db: Path, faults: list[Fault], port: int = 0, stopping: threading.Event | None = None
) -> tuple[grpc.Server, int]:
    """A gRPC server (not started) forwarding every MLMD method to the store over ``db``.

    Calls held by a ``hang`` fault are released when ``stopping`` is set, and then answer
    UNAVAILABLE without touching the store: a hung server never writes late.
    """
    from ml_metadata.proto import metadata_store_service_pb2

    extension, handle = _open_store(db)
    # One store handle, one call at a time: the real server serialises SQLite access too.
    store_lock = threading.Lock()
    faults_lock = threading.Lock()
    stopping = stopping or threading.Event()

    def handler(method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        forward = getattr(extension, method, None)

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            with faults_lock:
                hits = [f.action for f in faults if f.fires(method)]
            if "hang" in hits:
                stopping.wait()
                context.abort(grpc.StatusCode.UNAVAILABLE, "server stopping")
            if "abort" in hits:
                context.abort(grpc.StatusCode.ABORTED, f"{method}: transaction aborted (fault)")
            if forward is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not in this store")
            with store_lock:
                response, error, status = forward(handle, request)
            if "crash" in hits:
                os._exit(CRASH_EXIT)  # committed, never answered: what a kill at that instant does
            if status != 0:
                context.abort(_STATUS_BY_CODE.get(status, grpc.StatusCode.UNKNOWN), error.decode())
            return response

        return call

    service = metadata_store_service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(handler(m.name)) for m in service.methods
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    return server, bound


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the SQLite file of the store")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--ready-file", type=Path, required=True, help="gets the port")
    parser.add_argument("--fault", type=Fault.parse, action="append", default=[])
    args = parser.parse_args(argv)
    stop = threading.Event()
    server, port = build_server(args.db, args.fault, args.port, stop)
    server.start()
    tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, args.ready_file)  # atomic: a reader never sees half a port number
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
