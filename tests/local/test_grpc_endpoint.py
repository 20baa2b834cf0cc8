"""A local endpoint's stable addresses with third-party clients: OIP gRPC through the router's
gRPC listener, REST through its URL; rollouts, canary splits and wrong-port clients.

Real servers, a real router, real clients (tritonclient HTTP and gRPC, KServe's
InferenceRESTClient and InferenceGRPCClient) with their default arguments.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kfp_serve.serving.backends.local import LocalBackend
from kfp_serve.serving.backends.local.registry import read_record
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError

GRPC_ON = ["--enable_grpc=true"]


def _manifest(name: str, model: Path, *, transformer: Path | None = None,
              canary: int | None = None, grpc: bool = True) -> dict[str, Any]:
    from kfp_serve.serving.isvc import Provenance, build_inference_service

    cfg: dict[str, Any] = {"protocol_version": "v2", "predictor": {}}
    if grpc:
        cfg["predictor"]["container"] = {"args": GRPC_ON}
    if canary is not None:
        cfg["predictor"]["canary_traffic_percent"] = canary
    manifest = build_inference_service(
        name, f"file://{model}", "sklearn",
        transformer_uri=f"file://{transformer}" if transformer else None,
        serve_config=cfg, provenance=Provenance(model_id=7),
    )
    if transformer is not None and grpc:
        # The transformer answers the endpoint's calls, so it is the one that serves gRPC.
        manifest["spec"]["transformer"]["containers"][0]["args"] += GRPC_ON
    return manifest


def _stub(address: str) -> tuple[Any, Any, Any]:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address)
    return channel, pb, pb_grpc.GRPCInferenceServiceStub(channel)


def _infer_request(pb: Any, name: str, X: np.ndarray) -> Any:
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="input-0", datatype="FP64", shape=list(X.shape))
    req.raw_input_contents.append(np.ascontiguousarray(X, dtype="<f8").tobytes())
    return req


def _answer(pb: Any, response: Any) -> list[int]:
    return np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist()


@pytest.fixture(scope="module")
def grpc_endpoint(model_dir: Any) -> Any:
    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(_manifest("iris-grpc", model_dir[0]), timeout=90)
    yield status
    backend.delete("iris-grpc")


@pytest.fixture(scope="module")
def grpc_transformer_endpoint(scaled_pair: Any) -> Any:
    t_dir, m_dir, _ = scaled_pair
    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(_manifest("iris-grpc-t", m_dir, transformer=t_dir), timeout=90)
    yield status
    backend.delete("iris-grpc-t")


def _expected(which: str, model_dir: Any, scaled_pair: Any, X: np.ndarray) -> list[Any]:
    if which == "iris-grpc":
        return model_dir[1].predict(X).tolist()
    return scaled_pair[2](X).tolist()


@pytest.fixture(params=["iris-grpc", "iris-grpc-t"], ids=["predictor", "transformer"])
def endpoint(request: Any, grpc_endpoint: Any, grpc_transformer_endpoint: Any) -> Any:
    return grpc_endpoint if request.param == "iris-grpc" else grpc_transformer_endpoint


# --------------------------------------------------------------------------------------------
# The stable gRPC address


def test_endpoint_reports_its_grpc_address(grpc_endpoint: Any) -> None:
    status = grpc_endpoint
    assert status.ready, status.message
    record = read_record("iris-grpc")
    assert record is not None
    # The router's listener, not a server's port: it outlives rollouts like the URL does.
    assert status.grpc_address == f"127.0.0.1:{record.router.grpc_port}"
    assert record.router.grpc_port not in (record.latest.predictor.grpc_port, 8081)
    assert record.latest.predictor.grpc_port  # the server's own port, chosen by the kernel


def test_kfp_serve_endpoints_shows_the_grpc_address(grpc_endpoint: Any) -> None:
    from kfp_serve.cli.endpoint_commands import endpoint_rows

    rows = {row["name"]: row for row in endpoint_rows(None)}
    assert rows["iris-grpc"]["grpc"] == grpc_endpoint.grpc_address
    assert rows["iris-grpc"]["url"] == grpc_endpoint.url


def test_endpoint_grpc_protocol_equals_in_process(
    endpoint: Any, model_dir: Any, scaled_pair: Any, iris: Any
) -> None:
    X = iris[0][:25]
    with Endpoint(endpoint.name, protocol="grpc") as ep:
        assert ep.protocol == "grpc"
        assert ep.ready()
        meta = ep.metadata()
        assert meta["name"] == ep.model_name
        assert meta["inputs"][0]["name"] == "input-0" and meta["outputs"]
        response = ep.predict(X)
        assert response["outputs"][0]["shape"] == [25]
        assert ep.predictions(X) == _expected(endpoint.name, model_dir, scaled_pair, X)
        with pytest.raises(ServingError, match="INVALID_ARGUMENT"):
            ep.predict(np.ones((2, 3)))  # the server's message comes through, and it goes on
        assert ep.predictions(X[:3]) == _expected(endpoint.name, model_dir, scaled_pair, X[:3])


TRITON_GRPC_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as tgrpc
address, name, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]))
c = tgrpc.InferenceServerClient(address)
meta = c.get_model_metadata(name, as_json=True)
inp = tgrpc.InferInput("input-0", list(rows.shape), "FP64")
inp.set_data_from_numpy(rows)
out = c.infer(name, [inp]).as_numpy("output-0")
print(json.dumps({"live": c.is_server_live(), "ready": c.is_model_ready(name),
                  "input": meta["inputs"][0]["name"], "out": out.tolist()}))
"""


def test_tritonclient_grpc_through_the_endpoint(
    endpoint: Any, model_dir: Any, scaled_pair: Any, iris: Any
) -> None:
    """tritonclient's gRPC client has its own copy of the protos, hence its own process."""
    X = iris[0][30:36]
    model = Endpoint(endpoint.name).model_name
    out = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_SCRIPT, endpoint.grpc_address, model,
         json.dumps(X.tolist())],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["live"] and got["ready"] and got["input"] == "input-0"
    assert got["out"] == _expected(endpoint.name, model_dir, scaled_pair, X)


def test_kserve_grpc_client_through_the_endpoint(
    endpoint: Any, model_dir: Any, scaled_pair: Any, iris: Any
) -> None:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    X = iris[0][40:46]
    model = Endpoint(endpoint.name).model_name

    async def call() -> Any:
        client = InferenceGRPCClient(endpoint.grpc_address)
        inp = InferInput("input-0", list(X.shape), "FP64")
        inp.set_data_from_numpy(X)
        try:
            return await client.infer(InferRequest(model, [inp], request_id="e-1"))
        finally:
            await client.close()

    response = asyncio.run(call())
    assert response.id == "e-1"
    assert response.outputs[0].as_numpy().tolist() == _expected(
        endpoint.name, model_dir, scaled_pair, X
    )


def test_tritonclient_http_and_kserve_rest_through_the_endpoint_url(
    endpoint: Any, model_dir: Any, scaled_pair: Any, iris: Any
) -> None:
    """The REST half of the same promise: default (binary) tensors through the router."""
    import tritonclient.http as triton
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    X = iris[0][50:57]
    model = Endpoint(endpoint.name).model_name
    expected = _expected(endpoint.name, model_dir, scaled_pair, X)
    client = triton.InferenceServerClient(endpoint.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready(model)
        inp = triton.InferInput("input-0", list(X.shape), "FP64")
        inp.set_data_from_numpy(X)
        assert client.infer(model, [inp]).as_numpy("output-0").tolist() == expected
    finally:
        client.close()

    async def rest() -> Any:
        c = InferenceRESTClient(RESTConfig(protocol="v2"))
        inp = InferInput("input-0", list(X.shape), "FP64")
        inp.set_data_from_numpy(X)
        try:
            return await c.infer(endpoint.url, InferRequest(model, [inp]), model_name=model)
        finally:
            await c.close()

    assert asyncio.run(rest()).outputs[0].as_numpy().tolist() == expected


# --------------------------------------------------------------------------------------------
# Wrong ports and junk fail at once


def test_grpc_client_at_the_http_port_fails_at_once_naming_the_grpc_address(
    grpc_endpoint: Any,
) -> None:
    import grpc

    channel, pb, stub = _stub(grpc_endpoint.url.removeprefix("http://"))
    started = time.monotonic()
    with channel, pytest.raises(grpc.RpcError) as exc:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
    assert time.monotonic() - started < 5  # an answer, not the deadline
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
    assert grpc_endpoint.grpc_address in exc.value.details()
    # ... and the HTTP port goes on serving HTTP.
    assert httpx.get(f"{grpc_endpoint.url}/v2/health/ready", trust_env=False).status_code == 200


def test_non_http2_bytes_at_the_grpc_port_are_closed_at_once(grpc_endpoint: Any) -> None:
    host, port = grpc_endpoint.grpc_address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed, not left waiting
    with Endpoint("iris-grpc", protocol="grpc") as ep:
        assert ep.ready()


def test_endpoint_without_grpc_says_how_to_turn_it_on(model_dir: Any, iris: Any) -> None:
    import grpc

    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(_manifest("iris-nogrpc", model_dir[0], grpc=False), timeout=90)
    try:
        assert status.ready and status.grpc_address is None
        with pytest.raises(ServingError, match="serves no gRPC.*--enable_grpc=true"):
            Endpoint("iris-nogrpc", protocol="grpc").predict(iris[0][:2])
        # The router's gRPC listener exists anyway (a later revision may turn gRPC on) and
        # answers each call with UNIMPLEMENTED and the fix, at once.
        record = read_record("iris-nogrpc")
        assert record is not None
        channel, pb, stub = _stub(record.router.grpc_address)
        started = time.monotonic()
        with channel, pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(_infer_request(pb, "iris-nogrpc", iris[0][:2]), timeout=30)
        assert time.monotonic() - started < 5
        assert exc.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "--enable_grpc=true" in exc.value.details()
    finally:
        backend.delete("iris-nogrpc")


def test_bad_protocol_names_the_choices(grpc_endpoint: Any) -> None:
    with pytest.raises(ServingError, match="'v1', 'v2', 'grpc'"):
        Endpoint("iris-grpc", protocol="grpc-v2")


# --------------------------------------------------------------------------------------------
# Rollouts and canaries


def test_grpc_address_survives_a_rollout_without_failed_calls(
    model_dir: Any, shifted_model_dir: Any, iris: Any
) -> None:
    """One channel kept open across a rollout: every call answers, old model then new one."""
    X = iris[0][:4]
    old = model_dir[1].predict(X).tolist()
    new = shifted_model_dir[1].predict(X).tolist()
    backend = LocalBackend(progress=False, stop_grace=2.0)
    first = backend.apply(_manifest("iris-grpc-roll", model_dir[0]), timeout=90)
    try:
        channel, pb, stub = _stub(first.grpc_address)
        answers: list[list[int]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def call_forever() -> None:
            import grpc

            while not stop.is_set():
                try:
                    response = stub.ModelInfer(
                        _infer_request(pb, "iris-grpc-roll", X), timeout=30,
                        wait_for_ready=True,
                    )
                    answers.append(_answer(pb, response))
                except grpc.RpcError as e:
                    errors.append(e)
                time.sleep(0.01)

        thread = threading.Thread(target=call_forever)
        thread.start()
        try:
            second = backend.apply(_manifest("iris-grpc-roll", shifted_model_dir[0]), timeout=90)
            assert second.grpc_address == first.grpc_address
            # The old revision is stopped: the channel's next calls land on the new one.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not answers or answers[-1] != new):
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
            channel.close()
        assert not errors, errors[:3]
        assert answers and answers[0] == old and answers[-1] == new
        assert all(a in (old, new) for a in answers)
    finally:
        backend.delete("iris-grpc-roll")


def test_grpc_connections_follow_the_canary_split(
    model_dir: Any, shifted_model_dir: Any, iris: Any
) -> None:
    """A connection sticks to the revision it was given; new connections split by weight."""
    X = iris[0][:1]
    old = model_dir[1].predict(X).tolist()
    new = shifted_model_dir[1].predict(X).tolist()
    backend = LocalBackend(progress=False, stop_grace=2.0)
    backend.apply(_manifest("iris-grpc-canary", model_dir[0]), timeout=90)
    try:
        status = backend.apply(
            _manifest("iris-grpc-canary", shifted_model_dir[0], canary=50), timeout=90
        )
        seen = {"old": 0, "new": 0}
        for _ in range(40):
            channel, pb, stub = _stub(status.grpc_address)
            with channel:
                first = _answer(pb, stub.ModelInfer(_infer_request(pb, "iris-grpc-canary", X)))
                again = _answer(pb, stub.ModelInfer(_infer_request(pb, "iris-grpc-canary", X)))
            assert first == again  # the same connection, the same revision
            seen["old" if first == old else "new"] += 1
            assert first in (old, new)
        # 40 connections at 50 %: both revisions get some (all on one side: p = 2e-12).
        assert seen["old"] and seen["new"], seen
    finally:
        backend.delete("iris-grpc-canary")
