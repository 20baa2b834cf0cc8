"""The data plane as third-party clients see it: OIP binary tensors, metadata, versioned routes,
content types, /metrics, payload logging, batching and workers.

Real servers (subprocesses on 127.0.0.1), real HTTP; tritonclient's HTTP client and KServe's
own InferenceRESTClient with their default arguments; prometheus_client's text parser; the
CloudEvents SDK on a real HTTP sink.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.runtime.launch import start_server, stop_server, wait_ready
from kfp_serve.serving.runtime.layout import METADATA_FILE
from tests.runtime.conftest import FEATURES, v2_body, v2_output

VERSION = "1.0.0"


# --------------------------------------------------------------------------------------------
# A real CloudEvents sink


class Sink:
    """An HTTP server on 127.0.0.1 that keeps every request it gets (or answers 503)."""

    def __init__(self, status: int = 200) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(sink.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# Servers


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def versioned_dir(tmp_path_factory: pytest.TempPathFactory, iris) -> tuple[Path, Any]:
    import joblib

    X, y = iris
    lr = LogisticRegression(max_iter=1000).fit(X, y)
    d = tmp_path_factory.mktemp("versioned")
    joblib.dump(lr, d / "model.joblib")
    (d / METADATA_FILE).write_text(yaml.safe_dump({"name": "model", "version": VERSION}))
    return d, lr


@pytest.fixture(scope="module")
def dp(tmp_path_factory, versioned_dir, sink) -> Iterator[dict[str, Any]]:
    """Servers with data-plane options: logging, batching, workers, versioned."""
    logs = tmp_path_factory.mktemp("dataplane-logs")
    d, lr = versioned_dir
    specs = {
        "versioned": ([], {}),
        "logged": ([f"--log_url={sink.url}", "--log_mode=all"], {}),
        "batched": (["--enable_batcher=true", "--max_batchsize=32", "--max_latency=50"], {}),
        "workers": (["--workers=2"], {}),
        "sink-down": ([f"--log_url=http://127.0.0.1:{_closed_port()}/"], {}),
        "no-metrics": (["--enable_metrics=false"], {}),
    }
    procs = {}
    try:
        for key, (args, env) in specs.items():
            procs[key] = start_server(
                "predictor", "model", d, extra_args=args, env=env, log_path=logs / f"{key}.log"
            )
            # One at a time: a port is chosen when a server starts but bound only once its
            # model is loaded, so two servers starting together could be given the same one.
            wait_ready(procs[key].url, timeout=180, proc=procs[key])
        yield {"procs": procs, "model": lr}
    finally:
        for p in procs.values():
            stop_server(p)


#: Bound and never listening: connections are refused, and the kernel hands the port to nobody
#: else while the module runs (a port merely closed could be given to a server started later).
_REFUSING: list[Any] = []


def _closed_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return int(sock.getsockname()[1])


def _binary_request(X: np.ndarray, datatype: str, **params: Any) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(X).astype(X.dtype.newbyteorder("<")).tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(X.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **params,
        }
    )
    return head + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def _split_binary(r: httpx.Response) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers["inference-header-content-length"])
    return orjson.loads(r.content[:n]), r.content[n:]


# --------------------------------------------------------------------------------------------
# Third-party clients with default arguments


@pytest.mark.parametrize("key", ["lr", "xgbc", "transformer-v2", "transformer-v1"])
def test_tritonclient_http_defaults(servers, iris, key):
    """tritonclient sends binary tensors by default and reads binary outputs."""
    import tritonclient.http as triton

    s = servers[key]
    X = iris[0][:7].astype(np.float32)
    client = triton.InferenceServerClient(s.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready("model")
        meta = client.get_model_metadata("model")
        assert meta["inputs"][0]["name"] == "input-0"
        inp = triton.InferInput("input-0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)  # binary_data=True is the default
        result = client.infer("model", [inp], outputs=[triton.InferRequestedOutput("output-0")])
        got = result.as_numpy("output-0")
    finally:
        client.close()
    if key.startswith("transformer"):
        expected = servers["scaled-lr"].model.predict(s.model.transform(X.astype(np.float64)))
    else:
        expected = s.model.predict(X)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("key", ["lr", "transformer-v2"])
def test_kserve_rest_client_defaults(servers, iris, key):
    """KServe's InferenceRESTClient with InferInput.set_data_from_numpy()'s binary default."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    s = servers[key]
    X = iris[0][10:15]

    async def go() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        inp = InferInput("input-0", list(X.shape), "FP64")
        inp.set_data_from_numpy(X)
        try:
            return await client.infer(s.url, InferRequest("model", [inp]), model_name="model")
        finally:
            await client.close()

    response = asyncio.run(go())
    model = servers["scaled-lr"].model if key.startswith("transformer") else s.model
    Xm = s.model.transform(X) if key.startswith("transformer") else X
    np.testing.assert_array_equal(response.outputs[0].as_numpy(), model.predict(Xm))


# --------------------------------------------------------------------------------------------
# Binary extension details


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64", "INT32", "FP16", "UINT8"])
def test_binary_input_datatypes_equal_json(servers, iris, datatype):
    from kfp_serve.serving.runtime.codec import V2_NUMERIC_DTYPES

    s = servers["lr"]
    X = np.round(iris[0][:9]).astype(V2_NUMERIC_DTYPES[datatype])
    content, headers = _binary_request(X, datatype)
    r = s.client.post("/v2/models/model/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    j = s.client.post("/v2/models/model/infer", json=v2_body(X, datatype))
    assert j.status_code == 200, j.text
    np.testing.assert_array_equal(v2_output(r.json()), v2_output(j.json()))


def test_binary_output_per_output_and_request_level(servers, iris):
    s = servers["lr-proba"]
    X = iris[0][:4]
    expected = s.model.predict_proba(X)
    for params in (
        {"outputs": [{"name": "output-0", "parameters": {"binary_data": True}}]},
        {"parameters": {"binary_data_output": True}},
    ):
        r = s.client.post("/v2/models/model/infer", json=v2_body(X, **params))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        head, raw = _split_binary(r)
        out = head["outputs"][0]
        assert "data" not in out and out["parameters"]["binary_data_size"] == len(raw)
        got = np.frombuffer(raw, dtype="<f8").reshape(out["shape"])
        np.testing.assert_array_equal(got, expected)
    # binary_data false on the output wins over the request-level default
    r = s.client.post(
        "/v2/models/model/infer",
        json=v2_body(
            X,
            parameters={"binary_data_output": True},
            outputs=[{"name": "output-0", "parameters": {"binary_data": False}}],
        ),
    )
    assert r.headers["content-type"] == "application/json"
    np.testing.assert_array_equal(v2_output(r.json()), expected)


def test_binary_named_columns_to_a_dataframe_model(servers, iris):
    """Several binary inputs (one per feature column, content_type pd)."""


    s = servers["lr-df"]
    X = iris[0][:5]
    chunks, inputs = [], []
    for i, name in enumerate(FEATURES):
        raw = X[:, i].astype("<f8").tobytes()
        chunks.append(raw)
        inputs.append(
            {"name": name, "shape": [5], "datatype": "FP64",
             "parameters": {"binary_data_size": len(raw)}}
        )
    head = orjson.dumps({"inputs": inputs, "parameters": {"content_type": "pd"}})
    r = s.client.post(
        "/v2/models/model/infer",
        content=head + b"".join(chunks),
        headers={"inference-header-content-length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    import pandas as pd

    expected = s.model.predict(pd.DataFrame(X, columns=FEATURES))
    np.testing.assert_array_equal(v2_output(r.json()), expected)


def _bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


BAD_BINARY = [
    pytest.param(
        lambda c, h: (c[:-5], h), "truncated", id="truncated-section"
    ),
    pytest.param(
        lambda c, h: (c, {**h, "inference-header-content-length": str(len(c) + 10)}),
        "past the end",
        id="header-length-past-body",
    ),
    pytest.param(
        lambda c, h: (c, {**h, "inference-header-content-length": "ten"}),
        "inference-header-content-length",
        id="header-length-not-a-number",
    ),
    pytest.param(
        lambda c, h: (c + b"\0" * 8, h), "beyond", id="extra-bytes"
    ),
]


@pytest.mark.parametrize(("mangle", "fragment"), BAD_BINARY)
def test_bad_binary_is_400_naming_the_field(servers, iris, mangle, fragment):
    s = servers["lr"]
    content, headers = _binary_request(iris[0][:3], "FP64")
    content, headers = mangle(content, headers)
    r = s.client.post("/v2/models/model/infer", content=content, headers=headers)
    assert r.status_code == 400
    assert fragment in r.json()["error"]
    ok = s.client.post("/v2/models/model/infer", json=v2_body(iris[0][:1]))
    assert ok.status_code == 200  # still serving


def test_binary_size_not_matching_shape_names_it(servers, iris):
    s = servers["lr"]
    X = iris[0][:3]
    raw = X.astype("<f8").tobytes()
    head = orjson.dumps(
        {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw)}}]}
    )
    r = s.client.post(
        "/v2/models/model/infer",
        content=head + raw,
        headers={"inference-header-content-length": str(len(head))},
    )
    assert r.status_code == 400
    msg = r.json()["error"]
    assert "inputs[0].parameters.binary_data_size" in msg and "48 bytes" in msg


def test_binary_bytes_tensor_is_refused_for_a_matrix_clearly(servers):
    s = servers["lr"]
    raw = _bytes_tensor([b"a", b"bb", b"c", b"d"])
    head = orjson.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(raw)}}]}
    )
    r = s.client.post(
        "/v2/models/model/infer",
        content=head + raw,
        headers={"inference-header-content-length": str(len(head))},
    )
    assert r.status_code == 400 and "BYTES" in r.json()["error"]
    # a BYTES element whose length prefix runs past the section
    bad = struct.pack("<I", 99) + b"abc"
    head = orjson.dumps(
        {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(bad)}}]}
    )
    r = s.client.post(
        "/v2/models/model/infer",
        content=head + bad,
        headers={"inference-header-content-length": str(len(head))},
    )
    assert r.status_code == 400 and "declares 99 bytes" in r.json()["error"]


# --------------------------------------------------------------------------------------------
# Routes, content types, metadata


def test_unknown_requested_output_is_400(servers, iris):
    for key in ("lr", "transformer-v2"):
        r = servers[key].client.post(
            "/v2/models/model/infer", json=v2_body(iris[0][:1], outputs=[{"name": "nope"}])
        )
        assert r.status_code == 400, key
        assert "nope" in r.json()["error"] and "output-0" in r.json()["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415_naming_accepted(servers, iris, content_type):
    s = servers["lr"]
    body = orjson.dumps(v2_body(iris[0][:1]))
    r = s.client.post(
        "/v2/models/model/infer", content=body, headers={"content-type": content_type}
    )
    assert r.status_code == 415
    assert "application/json" in r.json()["error"]
    assert "application/octet-stream" in r.json()["error"]
    r = s.client.post(
        "/v2/models/model/infer",
        content=body,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_v2_server_lists_binary_extension(servers):
    r = servers["lr"].client.get("/v2")
    assert r.status_code == 200 and "binary_tensor_data" in r.json()["extensions"]


def test_versioned_routes_are_consistent(dp, iris):
    url = dp["procs"]["versioned"].url
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get(f"/v2/models/model/versions/{VERSION}").json()["versions"] == [VERSION]
        assert c.get(f"/v2/models/model/versions/{VERSION}/ready").status_code == 200
        r = c.post(f"/v2/models/model/versions/{VERSION}/infer", json=v2_body(iris[0][:2]))
        assert r.status_code == 200 and r.json()["model_version"] == VERSION
        for path, method in (
            ("/v2/models/model/versions/999", "GET"),
            ("/v2/models/model/versions/999/ready", "GET"),
            ("/v2/models/model/versions/999/infer", "POST"),
        ):
            r = c.request(method, path, json=v2_body(iris[0][:1]) if method == "POST" else None)
            assert r.status_code == 404, path
            assert VERSION in r.json()["error"] and "999" in r.json()["error"]


def test_metadata_predictor_and_transformer(servers):
    for key in ("lr", "xgbc", "xgbc-json", "booster", "lr-df", "transformer-v1", "transformer-v2"):
        meta = servers[key].client.get("/v2/models/model").json()
        assert meta["name"] == "model" and meta["platform"], key
        assert isinstance(meta["versions"], list)
        assert meta["inputs"] and meta["outputs"], key
        for tensor in meta["inputs"] + meta["outputs"]:
            assert tensor["name"] and tensor["datatype"] and tensor["shape"], (key, tensor)
    lr_df = servers["lr-df"].client.get("/v2/models/model").json()
    assert lr_df["inputs"][0]["parameters"]["feature_names"][0] == "sepal_length"
    assert lr_df["inputs"][0]["shape"] == [-1, 4]
    t = servers["transformer-v2"].client.get("/v2/models/model").json()
    p = servers["scaled-lr"].client.get("/v2/models/model").json()
    assert t["outputs"] == p["outputs"] and t["inputs"][0]["shape"] == [-1, 4]
    assert servers["booster"].client.get("/v2/models/model").json()["outputs"][0][
        "datatype"
    ] == "FP32"


# --------------------------------------------------------------------------------------------
# /metrics


def _metrics(url: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], name: str, sample: str, **labels: str) -> float:
    fam = families[name]
    return sum(
        s.value
        for s in fam.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_kserve_names_and_request_counts(servers, iris):
    s = servers["lr"]
    before = _metrics(s.url)
    n0 = _sample(before, "request_predict_seconds", "request_predict_seconds_count",
                 model_name="model")
    for _ in range(3):
        assert s.client.post("/v2/models/model/infer", json=v2_body(iris[0][:2])).status_code == 200
    assert s.client.post("/v2/models/model/infer", json={"bad": 1}).status_code == 400
    after = _metrics(s.url)
    for name in ("request_preprocess_seconds", "request_predict_seconds",
                 "request_postprocess_seconds", "request_explain_seconds"):
        assert after[name].type == "histogram"
    assert _sample(after, "request_predict_seconds", "request_predict_seconds_count",
                   model_name="model") == n0 + 3
    ok = _sample(after, "kfp_serve_requests", "kfp_serve_requests_total",
                 model_name="model", route="v2", status="200")
    bad = _sample(after, "kfp_serve_requests", "kfp_serve_requests_total",
                  model_name="model", route="v2", status="400")
    assert ok >= 3 and bad >= 1
    # the transformer exports the same names
    servers["transformer-v2"].client.post("/v2/models/model/infer", json=v2_body(iris[0][:1]))
    t = _metrics(servers["transformer-v2"].url)
    assert _sample(t, "request_predict_seconds", "request_predict_seconds_count",
                   model_name="model") >= 1


def test_metrics_off(dp):
    r = httpx.get(f"{dp['procs']['no-metrics'].url}/metrics", timeout=10)
    assert r.status_code == 404 and "enable_metrics" in r.json()["error"]


# --------------------------------------------------------------------------------------------
# Payload logging


def _wait_for(condition, timeout: float = 15.0) -> None:
    from kfp_serve.retry import wait_until

    wait_until(condition, deadline=timeout, describe="the payload events")


def test_payload_logging_cloudevents(dp, sink, iris):
    from cloudevents.http import from_http

    url = dp["procs"]["logged"].url
    body = v2_body(iris[0][:2], id="req-42")
    r = httpx.post(f"{url}/v2/models/model/infer", json=body, timeout=30)
    assert r.status_code == 200
    rv1 = httpx.post(f"{url}/v1/models/model:predict", json={"instances": iris[0][:1].tolist()},
                     headers={"x-request-id": "v1-id"}, timeout=30)
    assert rv1.status_code == 200
    _wait_for(lambda: len(sink.events) >= 4)
    events = [from_http(h, b) for h, b in sink.events]
    by = {(e["id"], e["type"]): e for e in events}
    req = by[("req-42", "org.kubeflow.serving.inference.request")]
    res = by[("req-42", "org.kubeflow.serving.inference.response")]
    assert orjson.loads(req.data if isinstance(req.data, bytes) else orjson.dumps(req.data)) == body
    assert req["inferenceservicename"] == "model" and req["component"] == "predictor"
    assert req["endpoint"] == "default" and "namespace" in req.get_attributes()
    res_body = res.data if isinstance(res.data, dict) else orjson.loads(res.data)
    assert res_body["id"] == "req-42" and res_body["outputs"] == r.json()["outputs"]
    assert ("v1-id", "org.kubeflow.serving.inference.response") in by


def test_payload_events_of_a_burst_all_arrive_once_each(dp, sink, iris):
    """Concurrent requests: their events go out pipelined, each its own CloudEvent."""
    from cloudevents.http import from_http

    url = dp["procs"]["logged"].url
    ids = [f"burst-{i}" for i in range(40)]

    async def go() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            rs = await asyncio.gather(*(
                c.post("/v2/models/model/infer", json=v2_body(iris[0][i : i + 1], id=rid))
                for i, rid in enumerate(ids)
            ))
            return [r.status_code for r in rs]

    assert asyncio.run(go()) == [200] * len(ids)

    def burst_events() -> list[Any]:
        return [e for e in (from_http(h, b) for h, b in list(sink.events))
                if str(e["id"]).startswith("burst-")]

    _wait_for(lambda: len(burst_events()) >= 2 * len(ids))
    time.sleep(0.2)  # nothing more may come: each event exactly once
    seen = sorted((e["id"], e["type"]) for e in burst_events())
    assert seen == sorted((rid, kind) for rid in ids for kind in (
        "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"))


def test_an_id_outside_plain_ascii_reaches_the_sink_percent_encoded(dp, sink, iris):
    """CloudEvents' HTTP binding percent-encodes attribute values outside printable ASCII."""
    from urllib.parse import unquote

    from cloudevents.http import from_http

    url = dp["procs"]["logged"].url
    r = httpx.post(f"{url}/v2/models/model/infer", json=v2_body(iris[0][:1], id="caf\u00e9 7"),
                   timeout=30)
    assert r.status_code == 200

    def raw_ids() -> list[str]:
        return [h["ce-id"] for h, _ in list(sink.events) if h["ce-id"].startswith("caf")]

    _wait_for(lambda: len(raw_ids()) >= 2)
    assert raw_ids() == ["caf%C3%A9 7", "caf%C3%A9 7"]  # the request's, then the answer's
    kinds = sorted(e["type"] for e in (from_http(h, b) for h, b in list(sink.events))
                   if unquote(e["id"]) == "caf\u00e9 7")
    assert kinds == ["org.kubeflow.serving.inference.request",
                     "org.kubeflow.serving.inference.response"]


def test_a_refused_inference_logs_its_request_and_no_answer(dp, sink):
    """A request that decodes and is then refused (3 features for a 4-feature model): its
    request event still goes out, under its id; no answer event does."""
    from cloudevents.http import from_http

    url = dp["procs"]["logged"].url
    r = httpx.post(f"{url}/v2/models/model/infer", json=v2_body(np.ones((1, 3)), id="refused-7"),
                   timeout=30)
    assert r.status_code == 400

    def refused() -> list[Any]:
        return [e for e in (from_http(h, b) for h, b in list(sink.events))
                if e["id"] == "refused-7"]

    _wait_for(lambda: len(refused()) >= 1)
    time.sleep(0.2)  # an answer event, were one sent, would have come with it
    assert [e["type"] for e in refused()] == ["org.kubeflow.serving.inference.request"]


@pytest.mark.parametrize("mode", ["request", "response"])
def test_payload_logger_mode_sends_only_the_events_it_names(sink, mode):
    """KServe's logger.mode through the server's logger and a real agent: ``request`` sends
    requests (answered or refused), ``response`` sends answers only."""
    from cloudevents.http import from_http

    from kfp_serve.serving.runtime.payload_log import LoggerSpec, PayloadLogger

    async def log_two() -> None:
        logger = PayloadLogger(LoggerSpec(url=sink.url, mode=mode))
        await logger.start()
        logger.exchange(f"{mode}-answered", b'{"inputs": []}', b"application/json",
                        b'{"outputs": []}', b"application/json")
        logger.exchange(f"{mode}-refused", b'{"inputs": 1}', b"application/json")
        await logger.close()  # the agent sends what it holds before it exits

    asyncio.run(log_two())
    got = sorted((e["id"], e["type"], e.data) for e in (from_http(h, b) for h, b in sink.events)
                 if str(e["id"]).startswith(f"{mode}-"))
    request, response = ("org.kubeflow.serving.inference.request",
                         "org.kubeflow.serving.inference.response")
    assert got == ({"request": [(f"{mode}-answered", request, {"inputs": []}),
                                (f"{mode}-refused", request, {"inputs": 1})],
                    "response": [(f"{mode}-answered", response, {"outputs": []})]}[mode])


def test_payload_sink_down_never_fails_answers_and_is_counted(dp, iris):
    url = dp["procs"]["sink-down"].url
    for _ in range(3):
        r = httpx.post(f"{url}/v2/models/model/infer", json=v2_body(iris[0][:1]), timeout=30)
        assert r.status_code == 200

    def dropped() -> bool:
        fams = _metrics(url)
        return _sample(fams, "kfp_serve_payload_log_events", "kfp_serve_payload_log_events_total",
                       outcome="dropped") >= 6

    _wait_for(dropped, timeout=30)
    fams = _metrics(url)
    assert _sample(fams, "kfp_serve_payload_log_events", "kfp_serve_payload_log_events_total",
                   outcome="retried") >= 6


def _agent_of(server_pid: int) -> int:
    """The pid of the payload agent a server started (its child running the agent module)."""
    from kfp_serve.serving.constants import PAYLOAD_AGENT_MODULE

    def find() -> int | None:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (p / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == server_pid and PAYLOAD_AGENT_MODULE.encode() in cmd:
                return int(p.name)
        return None

    from kfp_serve.retry import wait_until

    return wait_until(find, deadline=30, describe="the payload agent")


def _gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while supervisor.start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture()
def logged_server(versioned_dir, tmp_path: Path) -> Iterator[tuple[Any, Sink]]:
    """A server of its own (the tests stop or break it) logging to a sink of its own."""
    own_sink = Sink()
    d, _ = versioned_dir
    proc = start_server("predictor", "model", d, extra_args=[f"--log_url={own_sink.url}"],
                        log_path=tmp_path / "server.log")
    try:
        wait_ready(proc.url, timeout=180, proc=proc)
        yield proc, own_sink
    finally:
        stop_server(proc)
        own_sink.close()


def test_payload_events_still_queued_when_the_server_stops_reach_the_sink(logged_server, iris):
    proc, own_sink = logged_server

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as c:
            rs = await asyncio.gather(*(
                c.post("/v2/models/model/infer", json=v2_body(iris[0][i : i + 1], id=f"last-{i}"))
                for i in range(40)
            ))
            return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 40
    agent = _agent_of(proc.pid)
    # Stopping signals the server's process group; an agent in it that was still starting
    # (not yet ignoring SIGTERM) died with every event queued: 3 runs in 10 under CPU load.
    assert os.getpgid(agent) != os.getpgid(proc.pid)
    stop_server(proc)  # at once: most events are still on their way
    assert _gone(agent, timeout=30), "the payload agent outlived its server"
    ids = sorted(h["ce-id"] for h, _ in own_sink.events)
    assert ids == sorted(f"last-{i}" for i in range(40) for _ in range(2))


def test_payload_agent_does_not_outlive_a_killed_server(logged_server):
    import signal

    proc, _ = logged_server
    agent = _agent_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _gone(agent, timeout=30), "the payload agent was orphaned"


def test_payload_agent_gone_means_answers_still_served_and_events_counted_dropped(
    logged_server, iris
):
    import signal

    proc, _ = logged_server
    os.kill(_agent_of(proc.pid), signal.SIGKILL)

    def dropped() -> float:
        return _sample(_metrics(proc.url), "kfp_serve_payload_log_events",
                       "kfp_serve_payload_log_events_total", outcome="dropped")

    def all_dropped_after_a_request() -> bool:
        r = httpx.post(f"{proc.url}/v2/models/model/infer", json=v2_body(iris[0][:1]), timeout=30)
        assert r.status_code == 200, r.text
        before = dropped()
        r = httpx.post(f"{proc.url}/v2/models/model/infer", json=v2_body(iris[0][:1]), timeout=30)
        assert r.status_code == 200, r.text
        return dropped() - before == 2

    _wait_for(all_dropped_after_a_request)


def test_payload_events_cut_anywhere_in_the_pipe_arrive_whole():
    from kfp_serve.serving.runtime.payload_log import decode_events, encode_event

    sent = [(0, b"id-1", b"application/json", b'{"inputs": []}'),
            (1, "\u00e9t\u00e9".encode(), b"application/octet-stream", bytes(range(256))),
            (0, b"", b"application/json", b"")]
    stream = b"".join(encode_event(*event) for event in sent)
    for cut in range(len(stream) + 1):
        buf, got = bytearray(), []
        for part in (stream[:cut], stream[cut:]):
            buf += part
            got += decode_events(buf)
        assert got == sent and not buf, cut


# --------------------------------------------------------------------------------------------
# Batching and workers


def test_batching_64_concurrent_clients_get_their_own_rows(dp, iris):
    url = dp["procs"]["batched"].url
    model = dp["model"]
    X = iris[0]
    rows = [X[i % len(X)] for i in range(64 * 3)]

    async def go() -> list[Any]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            async def one(i: int) -> Any:
                if i % 2:
                    r = await c.post("/v1/models/model:predict",
                                     json={"instances": [rows[i].tolist()]})
                    return r.json()["predictions"][0]
                r = await c.post("/v2/models/model/infer", json=v2_body(rows[i][None, :]))
                return v2_output(r.json())[0]

            return await asyncio.gather(*(one(i) for i in range(len(rows))))

    before = _metrics(url)
    got = asyncio.run(go())
    expected = model.predict(np.asarray(rows))
    assert [int(g) for g in got] == expected.tolist()
    after = _metrics(url)
    def delta(name: str) -> float:
        return _sample(after, name, f"{name}_total") - _sample(before, name, f"{name}_total")

    assert delta("kfp_serve_batched_requests") == len(rows)
    assert 0 < delta("kfp_serve_batches") < len(rows)  # requests were merged into model calls


@pytest.fixture(scope="module", params=["v1", "v2"], ids=["predictor-v1", "predictor-v2"])
def batched_transformer(request, tmp_path_factory, servers) -> Iterator[Any]:
    """A transformer with ServeConfig transformer.batcher's flags, in front of each protocol."""
    logs = tmp_path_factory.mktemp("batched-transformer-logs")
    p = start_server(
        "transformer", "model", _scaler_dir(servers["transformer-v2"]),
        predictor_host=f"127.0.0.1:{servers['scaled-lr'].proc.port}",
        predictor_protocol=request.param, log_path=logs / "t.log",
        extra_args=["--enable_batcher=true", "--max_batchsize=32", "--max_latency=50"],
    )
    try:
        wait_ready(p.url, timeout=180, proc=p)
        yield p
    finally:
        stop_server(p)


def test_transformer_batches_64_concurrent_clients_each_gets_its_rows(
    batched_transformer, servers, iris
):
    url = batched_transformer.url
    X = iris[0]
    rows = [X[(7 * i) % len(X)] for i in range(64 * 2)]

    async def go() -> list[Any]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            async def one(i: int) -> Any:
                if i % 2:
                    r = await c.post("/v1/models/model:predict",
                                     json={"instances": [rows[i].tolist()]})
                    assert r.status_code == 200, r.text
                    return r.json()["predictions"][0]
                r = await c.post("/v2/models/model/infer", json=v2_body(rows[i][None, :]))
                assert r.status_code == 200, r.text
                assert r.json()["model_name"] == "model"
                return v2_output(r.json())[0]

            return await asyncio.gather(*(one(i) for i in range(len(rows))))

    before = _metrics(url)
    got = asyncio.run(go())
    scaler, model = servers["transformer-v2"].model, servers["scaled-lr"].model
    assert [int(g) for g in got] == model.predict(scaler.transform(np.asarray(rows))).tolist()
    after = _metrics(url)

    def delta(name: str) -> float:
        return _sample(after, name, f"{name}_total") - _sample(before, name, f"{name}_total")

    assert delta("kfp_serve_batched_requests") == len(rows)
    assert 0 < delta("kfp_serve_batches") < len(rows)  # merged into fewer predictor calls
    # a bad request in a batch fails alone
    async def mixed() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            bodies = [v2_body(X[i : i + 1]) for i in range(6)]
            bodies[2] = v2_body(np.ones((1, 3)))
            rs = await asyncio.gather(*(c.post("/v2/models/model/infer", json=b) for b in bodies))
            return [r.status_code for r in rs]

    codes = asyncio.run(mixed())
    assert codes[2] == 400 and codes.count(200) == 5


def test_batch_with_a_bad_request_fails_only_that_one(dp, iris):
    url = dp["procs"]["batched"].url

    async def go() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            bodies = [v2_body(iris[0][i : i + 1]) for i in range(8)]
            bodies[3] = v2_body(np.ones((1, 3)))  # wrong feature count: refused by the codec
            rs = await asyncio.gather(*(c.post("/v2/models/model/infer", json=b) for b in bodies))
            return [r.status_code for r in rs]

    codes = asyncio.run(go())
    assert codes[3] == 400 and codes.count(200) == 7


def test_workers_share_the_port(dp, iris):
    p = dp["procs"]["workers"]
    assert len(supervisor.group_members(p.pid)) == 2
    model = dp["model"]
    before = _sample(_metrics(p.url), "kfp_serve_requests", "kfp_serve_requests_total",
                     model_name="model", route="v2", status="200")
    for i in range(20):  # fresh connections, spread over both workers by the kernel
        r = httpx.post(f"{p.url}/v2/models/model/infer", json=v2_body(iris[0][i : i + 1]),
                       timeout=30)
        assert r.status_code == 200
        assert v2_output(r.json()).tolist() == model.predict(iris[0][i : i + 1]).tolist()
    # Every scrape, whichever worker answers it (a fresh connection each), counts all 20.
    for _ in range(8):
        counted = _sample(_metrics(p.url), "kfp_serve_requests", "kfp_serve_requests_total",
                          model_name="model", route="v2", status="200")
        assert counted == before + 20
    stop_server(p)
    deadline = time.monotonic() + 10
    while supervisor.group_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert supervisor.group_members(p.pid) == []  # stopping the server stops every worker


def test_bad_batcher_flag_exits_naming_it(tmp_path, versioned_dir):
    p = start_server("predictor", "m", versioned_dir[0], extra_args=["--max_batchsize=0"],
                     log_path=tmp_path / "bad.log", warm=False)
    assert p.wait(timeout=120) == 2
    assert "--max_batchsize" in (tmp_path / "bad.log").read_text()


# --------------------------------------------------------------------------------------------
# gRPC


@pytest.fixture(scope="module")
def grpc_servers(tmp_path_factory, servers, versioned_dir) -> Iterator[dict[str, Any]]:
    """A predictor and a transformer in front of it, each with OIP gRPC on a second port."""
    from kfp_serve.serving.runtime.launch import free_port

    logs = tmp_path_factory.mktemp("grpc-logs")
    d, lr = versioned_dir
    ports = {"predictor": free_port(), "transformer": free_port()}
    procs = {}
    try:
        procs["predictor"] = start_server(
            "predictor", "model", d, log_path=logs / "p.log",
            extra_args=[f"--grpc_port={ports['predictor']}", "--grpc_max_message_bytes=65536"],
        )
        wait_ready(procs["predictor"].url, timeout=180, proc=procs["predictor"])
        scaled = servers["transformer-v2"]
        procs["transformer"] = start_server(
            "transformer", "model", _scaler_dir(scaled),
            predictor_host=f"127.0.0.1:{servers['scaled-lr'].proc.port}",
            predictor_protocol="v2", log_path=logs / "t.log",
            extra_args=["--enable_grpc=true", f"--grpc_port={ports['transformer']}"],
        )
        wait_ready(procs["transformer"].url, timeout=180, proc=procs["transformer"])
        yield {"procs": procs, "ports": ports, "model": lr}
    finally:
        for p in procs.values():
            stop_server(p)


def _scaler_dir(served: Any) -> Path:
    args = [a for a in served.proc.args if isinstance(a, str)]
    return Path(next(a.split("=", 1)[1] for a in args if a.startswith("--model_dir=")))


TRITON_GRPC_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as tgrpc
port, rows = sys.argv[1], np.array(json.loads(sys.argv[2]))
c = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
meta = c.get_model_metadata("model", as_json=True)
inp = tgrpc.InferInput("input-0", list(rows.shape), "FP64")
inp.set_data_from_numpy(rows)  # tritonclient's default: raw_input_contents
out = c.infer("model", [inp]).as_numpy("output-0")
print(json.dumps({"live": c.is_server_live(), "ready": c.is_model_ready("model"),
                  "input": meta["inputs"][0]["name"], "out": out.tolist()}))
"""


def _expected_grpc(role: str, grpc_servers: dict, servers: dict, X: np.ndarray) -> np.ndarray:
    if role == "predictor":
        return grpc_servers["model"].predict(X)
    return servers["scaled-lr"].model.predict(servers["transformer-v2"].model.transform(X))


@pytest.mark.parametrize("role", ["predictor", "transformer"])
def test_grpc_tritonclient_defaults(grpc_servers, servers, iris, role):
    """tritonclient's gRPC client (its own copy of the protos, hence its own process)."""
    import json
    import subprocess
    import sys

    X = iris[0][:6]
    out = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_SCRIPT, str(grpc_servers["ports"][role]),
         json.dumps(X.tolist())],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["live"] and got["ready"] and got["input"] == "input-0"
    np.testing.assert_array_equal(got["out"], _expected_grpc(role, grpc_servers, servers, X))


@pytest.mark.parametrize("role", ["predictor", "transformer"])
@pytest.mark.parametrize("binary_data", [True, False], ids=["raw", "typed"])
def test_grpc_kserve_client(grpc_servers, servers, iris, role, binary_data):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    X = iris[0][20:26]
    port = grpc_servers["ports"][role]

    async def call() -> Any:
        c = InferenceGRPCClient(f"127.0.0.1:{port}")
        inp = InferInput("input-0", list(X.shape), "FP64")
        inp.set_data_from_numpy(X, binary_data=binary_data)
        try:
            return await c.infer(InferRequest("model", [inp], request_id="g-1"))
        finally:
            await c.close()

    response = asyncio.run(call())
    assert response.id == "g-1"
    np.testing.assert_array_equal(
        response.outputs[0].as_numpy(), _expected_grpc(role, grpc_servers, servers, X)
    )


def _stub(port: int) -> tuple[Any, Any, Any]:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb, pb_grpc.GRPCInferenceServiceStub(channel)


def _infer_request(pb: Any, X: np.ndarray, **fields: Any) -> Any:
    req = pb.ModelInferRequest(model_name="model", **fields)
    t = req.inputs.add(name="input-0", datatype="FP64", shape=list(X.shape))
    req.raw_input_contents.append(np.ascontiguousarray(X, dtype="<f8").tobytes())
    return t and req


def test_grpc_metadata_and_health(grpc_servers):
    channel, pb, stub = _stub(grpc_servers["ports"]["predictor"])
    try:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="model", version=VERSION)).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="model"), timeout=10)
        assert list(meta.versions) == [VERSION] and meta.platform
        assert meta.inputs[0].datatype == "FP64" and list(meta.inputs[0].shape) == [-1, 4]
        assert meta.outputs[0].name == "output-0" and meta.outputs[0].datatype
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
        assert server.name == "kfp-serve"
    finally:
        channel.close()


def test_grpc_bad_input_is_invalid_argument_and_server_keeps_serving(grpc_servers, iris):
    import grpc

    channel, pb, stub = _stub(grpc_servers["ports"]["predictor"])
    try:
        cases = [
            (_infer_request(pb, np.zeros((3000, 4))), grpc.StatusCode.INVALID_ARGUMENT,
             "grpc_max_message_bytes"),  # 96 kB > the 64 kB limit
            (_infer_request(pb, np.ones((1, 3))), grpc.StatusCode.INVALID_ARGUMENT,
             "expected 4 features"),
            (_infer_request(pb, np.ones((1, 4)), model_version="999"),
             grpc.StatusCode.NOT_FOUND, VERSION),
        ]
        short = _infer_request(pb, np.ones((2, 4)))
        short.raw_input_contents[0] = short.raw_input_contents[0][:-8]
        cases.append((short, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]"))
        unknown = _infer_request(pb, np.ones((1, 4)))
        unknown.outputs.add(name="nope")
        cases.append((unknown, grpc.StatusCode.INVALID_ARGUMENT, "nope"))
        # Far above the limit: refused from the message's length prefix, before the rest of
        # it is read.
        cases.append((_infer_request(pb, np.zeros((200_000, 4))),
                      grpc.StatusCode.INVALID_ARGUMENT, "limit of 65536"))
        for request, code, fragment in cases:
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(request, timeout=30)
            assert exc.value.code() == code, exc.value.details()
            assert fragment in exc.value.details()
        ok = stub.ModelInfer(_infer_request(pb, iris[0][:2]), timeout=30)
        assert len(ok.raw_output_contents) == 1 and list(ok.outputs[0].shape) == [2]
    finally:
        channel.close()
    # a gRPC client pointed at the HTTP port fails at once instead of hanging
    channel, pb, stub = _stub(grpc_servers["procs"]["predictor"].port)
    try:
        with pytest.raises(grpc.RpcError):
            stub.ServerLive(pb.ServerLiveRequest(), timeout=20)
    finally:
        channel.close()


def test_grpc_listens_on_loopback_only(grpc_servers):
    from tests.runtime.test_predictor import _listen_addresses

    for port in grpc_servers["ports"].values():
        # 127.0.0.1 in /proc's hex: as IPv4, or IPv4-mapped IPv6 (grpc binds that way)
        assert _listen_addresses(port) <= {"0100007F", "0000000000000000FFFF00000100007F"}
        assert _listen_addresses(port)


# --------------------------------------------------------------------------------------------
# ServeConfig / manifest -> local server settings


def test_serve_config_batcher_zero_is_refused_naming_the_field():
    from kfp_serve import ServeConfig
    from kfp_serve.serving.errors import ServeConfigError

    with pytest.raises(ServeConfigError, match=r"predictor\.batcher\.maxBatchSize"):
        ServeConfig(predictor={"batcher": {"maxBatchSize": 0}})


def test_manifest_component_becomes_server_settings():
    from kfp_serve.serving.errors import ServeConfigError
    from kfp_serve.serving.runtime.dataplane import DATAPLANE_ENV, component_env

    component = {
        "batcher": {"maxBatchSize": 16, "maxLatency": 20},
        "logger": {"mode": "request", "url": "http://127.0.0.1:9/"},
        "model": {"runtime": "kserve-xgbserver", "args": ["--workers=2", "--enable_grpc=true"]},
    }
    env = component_env(component, "predictor", "iris")
    settings = orjson.loads(env[DATAPLANE_ENV])
    assert settings == {
        "enable_batcher": True, "max_batchsize": 16, "max_latency": 20.0,
        "log_url": "http://127.0.0.1:9/", "log_mode": "request",
        "inference_service": "iris", "component": "predictor",
        "serving_runtime": "kserve-xgbserver", "workers": "2", "enable_grpc": "true",
    }
    assert component_env({"model": {}}, "predictor", "iris") == {}
    with pytest.raises(ServeConfigError, match=r"predictor\.batcher\.maxBatchSize"):
        component_env({"batcher": {"maxBatchSize": 0}}, "predictor", "iris")
    with pytest.raises(ServeConfigError, match=r"transformer\.logger\.url"):
        component_env({"logger": {"mode": "all"}}, "transformer", "iris")


def test_server_reads_manifest_settings_below_explicit_flags(monkeypatch):
    from kfp_serve.serving.runtime.dataplane import DATAPLANE_ENV
    from kfp_serve.serving.runtime.server import parse_args

    settings = '{"workers": "3", "enable_batcher": true, "max_batchsize": 8}'
    monkeypatch.setenv(DATAPLANE_ENV, settings)
    ns = parse_args("predictor", ["--max_batchsize=4"])
    assert (ns.workers, ns.enable_batcher, ns.max_batchsize) == (3, True, 4)


@pytest.mark.parametrize("allow_nan", [False, True])
def test_finite_values_whose_sum_overflows_are_accepted_and_nan_inf_are_told(allow_nan):
    """The codec's finiteness check: large finite features are data, not infinities."""
    from kfp_serve.serving.runtime.codec import FeatureSpec, RequestError, decode_v2

    spec = FeatureSpec(n_features=4, allow_nan=allow_nan)

    def body(data: list[float], datatype: str = "FP64") -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": data}]}

    for datatype in ("FP64", "FP32"):
        big = 1e308 if datatype == "FP64" else 3e38
        X = decode_v2(body([big, big, -1.0, 2.0], datatype), spec).X
        assert X.dtype == np.float64 and X[0, 0] == np.float64(np.float32(big) if
                                                              datatype == "FP32" else big)
    with pytest.raises(RequestError, match="infinite"):
        decode_v2(body([1.0, float("inf"), 1.0, 1.0]), spec)
    if allow_nan:
        assert np.isnan(decode_v2(body([1.0, float("nan"), 1.0, 1.0]), spec).X[0, 1])
    else:
        with pytest.raises(RequestError, match="NaN"):
            decode_v2(body([1.0, float("nan"), 1.0, 1.0]), spec)


def test_generated_ids_are_uuid_shaped_and_differ_in_a_forked_process():
    """Servers forked from the warm pool's fork server must not hand out the same ids."""
    import os
    import uuid

    from kfp_serve.serving.runtime.ids import new_id

    mine = [new_id() for _ in range(3)]
    assert len(set(mine)) == 3 and all(str(uuid.UUID(i)) == i for i in mine)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its first id, exit at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child[:24] != mine[0][:24]  # its own random prefix
