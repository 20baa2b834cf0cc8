"""Bad payloads: every malformed request gets a 4xx with a message, and the next valid one works.

The table is sent to the served endpoint (router -> transformer -> predictor) and to the predictor
directly: wrong shapes and types, NaN/inf where the model cannot take them, a body over the
limit the ServeConfig sets (KFP_SERVE_MAX_BODY_BYTES), invalid JSON, the wrong protocol, wrong
content types, missing keys, an empty body, deep nesting, integer overflow of v2 datatypes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from kfp_serve.serving.errors import ServingError
from tests.reliability.conftest import MAX_BODY, Served

V1, V2, GET_V1, UNKNOWN = "v1", "v2", "get-v1", "unknown-model"


def tensor(data: Any, shape: Any = (1, 4), datatype: str = "FP64", **extra: Any) -> dict:
    """A v2 request with one input tensor."""
    shape = list(shape) if isinstance(shape, tuple) else shape
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data,
                        **extra}]}


ROW = [5.1, 3.5, 1.4, 0.2]
DEEP = "[" * 5000 + "]" * 5000
# Valid JSON, one row of 4 features, but more than MAX_BODY bytes.
HUGE = (b'{"instances": [[1.0, 2.0, 3.0, 4.0]], "pad": "' + b"x" * (MAX_BODY + 10) + b'"}')
HUGE_ROWS = json.dumps({"instances": [ROW] * (MAX_BODY // 16)}).encode()

# (id, route, body: bytes | JSON value, content type, expected status, message fragment)
CASES: list[tuple[str, str, Any, str, int, str]] = [
    # -- not JSON, or not the JSON we need
    ("invalid-json", V1, b"{not json", "application/json", 400, "not valid JSON"),
    ("truncated-json", V1, b'{"instances": [[1,2', "application/json", 400, "not valid JSON"),
    ("trailing-garbage", V1, b'{"instances": [[1,2,3,4]]}x', "application/json", 400,
     "not valid JSON"),
    ("empty-body", V1, b"", "application/json", 400, "empty"),
    ("whitespace-body", V1, b"  \n\t", "application/json", 400, "not valid JSON"),
    ("top-level-list", V1, [[1, 2, 3, 4]], "application/json", 400, "JSON object"),
    ("top-level-string", V1, "instances", "application/json", 400, "JSON object"),
    ("top-level-null", V1, None, "application/json", 400, "JSON object"),
    ("deeply-nested", V1, ('{"instances": ' + DEEP + "}").encode(), "application/json", 400,
     "depth"),
    ("not-utf8", V1, b"\xff\xfe{\x00}", "application/json", 400, "UTF-8"),
    # -- wrong content types carrying something that is not JSON
    # A body that is neither JSON nor the binary extension: 415 naming the accepted types.
    ("form-encoded", V1, b"instances=5.1,3.5,1.4,0.2", "application/x-www-form-urlencoded", 415,
     "unsupported Content-Type"),
    ("octet-stream", V1, b"\x00\x01\x02\xff\x80", "application/octet-stream", 415,
     "unsupported Content-Type"),
    ("text-csv", V1, b"5.1,3.5,1.4,0.2\n", "text/csv", 415, "unsupported Content-Type"),
    ("xml", V1, b"<instances><row>5.1</row></instances>", "application/xml", 415,
     "unsupported Content-Type"),
    # -- v1: missing keys, wrong types, wrong shapes
    ("v1-missing-instances", V1, {"rows": [ROW]}, "application/json", 400,
     "missing key 'instances'"),
    ("v1-instances-null", V1, {"instances": None}, "application/json", 400, "must be a list"),
    ("v1-instances-number", V1, {"instances": 5}, "application/json", 400, "must be a list"),
    ("v1-instances-string", V1, {"instances": "5.1,3.5"}, "application/json", 400,
     "must be a list"),
    ("v1-instances-object", V1, {"instances": {"a": 1}}, "application/json", 400,
     "must be a list"),
    ("v1-instances-empty", V1, {"instances": []}, "application/json", 400, "empty"),
    ("v1-one-dimensional", V1, {"instances": ROW}, "application/json", 400, "2-D"),
    ("v1-three-dimensional", V1, {"instances": [[ROW]]}, "application/json", 400, "2-D"),
    ("v1-too-few-features", V1, {"instances": [ROW[:3]]}, "application/json", 400,
     "expected 4 features"),
    ("v1-too-many-features", V1, {"instances": [ROW + [1.0]]}, "application/json", 400,
     "expected 4 features"),
    ("v1-ragged-rows", V1, {"instances": [ROW, ROW[:2]]}, "application/json", 400,
     "rectangular"),
    ("v1-string-feature", V1, {"instances": [[5.1, "wide", 1.4, 0.2]]}, "application/json", 400,
     "non-numeric"),
    ("v1-object-feature", V1, {"instances": [[{"a": 1}, 3.5, 1.4, 0.2]]}, "application/json",
     400, "non-numeric"),
    ("v1-list-feature", V1, {"instances": [[[5.1], 3.5, 1.4, 0.2]]}, "application/json", 400,
     "rectangular"),
    # -- NaN / infinity: this model cannot take missing values; JSON has no NaN/inf literals
    ("v1-null-feature", V1, {"instances": [[5.1, None, 1.4, 0.2]]}, "application/json", 400,
     "NaN"),
    ("v1-nan-literal", V1, b'{"instances": [[NaN, 3.5, 1.4, 0.2]]}', "application/json", 400,
     "not valid JSON"),
    ("v1-infinity-literal", V1, b'{"instances": [[Infinity, 3.5, 1.4, 0.2]]}',
     "application/json", 400, "not valid JSON"),
    ("v1-overflow-to-inf", V1, b'{"instances": [[1e999, 3.5, 1.4, 0.2]]}', "application/json",
     400, "infinity"),
    ("v1-overflow-to-minus-inf", V1, b'{"instances": [[-1e999, 3.5, 1.4, 0.2]]}',
     "application/json", 400, "infinity"),
    # -- over the configured size limit
    ("huge-padded-body", V1, HUGE, "application/json", 413, f"larger than {MAX_BODY} bytes"),
    ("huge-row-count", V1, HUGE_ROWS, "application/json", 413, f"larger than {MAX_BODY} bytes"),
    # -- the wrong protocol: a v2 body on the v1 route and the other way round, a wrong verb
    ("v2-body-on-v1-route", V1, tensor(ROW), "application/json", 400,
     "POST it to /v2/models/<name>/infer"),
    ("v1-body-on-v2-route", V2, {"instances": [ROW]}, "application/json", 400,
     "POST it to /v1/models/<name>:predict"),
    ("get-on-predict", GET_V1, None, "", 405, "not allowed"),
    ("unknown-model", UNKNOWN, {"instances": [ROW]}, "application/json", 404, "not served here"),
    # -- v2 tensors
    ("v2-inputs-empty", V2, {"inputs": []}, "application/json", 400, "non-empty"),
    ("v2-inputs-string", V2, {"inputs": "x"}, "application/json", 400, "non-empty list"),
    ("v2-input-not-object", V2, {"inputs": [1, 2]}, "application/json", 400, "must be an object"),
    ("v2-missing-shape", V2,
     {"inputs": [{"name": "a", "datatype": "FP64", "data": ROW}]}, "application/json", 400,
     "missing 'shape'"),
    ("v2-missing-datatype", V2, {"inputs": [{"name": "a", "shape": [1, 4], "data": ROW}]},
     "application/json", 400, "missing 'datatype'"),
    ("v2-missing-data", V2, {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP64"}]},
     "application/json", 400, "missing 'data'"),
    ("v2-name-not-string", V2,
     {"inputs": [{"name": 5, "shape": [1, 4], "datatype": "FP64", "data": ROW}]},
     "application/json", 400, "name must be a string"),
    ("v2-unknown-datatype", V2, tensor(ROW, datatype="FP8"), "application/json", 400,
     "unsupported datatype"),
    ("v2-bytes", V2, tensor(["a", "b", "c", "d"], datatype="BYTES"), "application/json", 400,
     "BYTES"),
    ("v2-shape-mismatch", V2, tensor(ROW, shape=(2, 4)), "application/json", 400,
     "needs 8 values"),
    ("v2-huge-shape-small-data", V2, tensor(ROW, shape=(1_000_000_000, 4)), "application/json",
     400, "needs 4000000000 values"),
    ("v2-negative-shape", V2, tensor(ROW, shape=(-1, 4)), "application/json", 400,
     "non-negative integers"),
    ("v2-shape-string", V2, tensor(ROW, shape="1x4"), "application/json", 400,
     "non-negative integers"),
    ("v2-data-string", V2, tensor("5.1,3.5,1.4,0.2"), "application/json", 400,
     "must be a list"),
    ("v2-int-with-floats", V2, tensor([1.5, 2, 3, 4], datatype="INT64"), "application/json", 400,
     "non-integers"),
    ("v2-uint8-overflow", V2, tensor([300, 2, 3, 4], datatype="UINT8"), "application/json", 400,
     "does not fit datatype UINT8"),
    ("v2-uint-negative", V2, tensor([-1, 2, 3, 4], datatype="UINT64"), "application/json", 400,
     "does not fit datatype UINT64"),
    ("v2-int8-overflow", V2, tensor([200, 2, 3, 4], datatype="INT8"), "application/json", 400,
     "does not fit datatype INT8"),
    ("v2-bool-with-numbers", V2, tensor([1, 2, 3, 4], datatype="BOOL"), "application/json", 400,
     "non-booleans"),
    ("v2-too-few-features", V2, tensor(ROW[:3], shape=(1, 3)), "application/json", 400,
     "expected 4 features"),
    ("v2-null-feature", V2, tensor([5.1, None, 1.4, 0.2]), "application/json", 400, "NaN"),
    ("v2-overflow-to-inf", V2,
     b'{"inputs":[{"name":"a","shape":[1,4],"datatype":"FP64","data":[1e999,1,1,1]}]}',
     "application/json", 400, "infinity"),
    ("v2-fp32-overflow", V2, tensor([1e300, 3.5, 1.4, 0.2], datatype="FP32"), "application/json",
     400, "infinite"),
    ("v2-bad-content-type-param", V2, {**tensor(ROW), "parameters": {"content_type": "xml"}},
     "application/json", 400, "content_type"),
    ("v2-parameters-not-object", V2, {**tensor(ROW), "parameters": "fast"}, "application/json",
     400, "'parameters' must be an object"),
    ("v2-ragged-columns", V2,
     {"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                 {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]},
     "application/json", 400, "same length"),
]
assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)

TARGETS = ["endpoint", "predictor"]


def _send(client: httpx.Client, model: str, route: str, body: Any, content_type: str):
    path = {
        V1: f"/v1/models/{model}:predict",
        GET_V1: f"/v1/models/{model}:predict",
        V2: f"/v2/models/{model}/infer",
        UNKNOWN: "/v1/models/no-such-model:predict",
    }[route]
    if route == GET_V1:
        return client.get(path)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"content-type": content_type})


@pytest.fixture(scope="module")
def clients(served: Served):
    made = {
        "endpoint": httpx.Client(base_url=served.urls["router"], timeout=30, trust_env=False),
        "predictor": httpx.Client(base_url=served.urls["predictor"], timeout=30, trust_env=False),
    }
    yield made
    for c in made.values():
        c.close()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("route", "body", "content_type", "status", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_malformed_request_is_4xx_with_message_and_next_request_works(
    served: Served, clients, target, route, body, content_type, status, fragment
) -> None:
    client = clients[target]
    model = served.endpoint.model_name
    r = _send(client, model, route, body, content_type)
    assert r.status_code == status, r.text[:300]
    message = r.json()["error"]
    assert isinstance(message, str) and len(message) >= 10, r.text[:300]
    assert fragment in message, message
    # A bad request never leaks a traceback to the client.
    assert "Traceback" not in message
    # The very next valid request on the same connection is served.
    rows = served.trained.X[:3].tolist()
    ok = client.post(f"/v1/models/{model}:predict", json={"instances": rows})
    assert ok.status_code == 200, ok.text[:300]
    trained = served.trained
    expected = trained.expected if target == "endpoint" else trained.predictor_expected
    assert ok.json()["predictions"] == expected(rows)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[5.1, 3.5, 1.4]], r"rejected the predict request \(HTTP 400\).*expected 4 features"),
        ([[5.1, "x", 1.4, 0.2]], r"HTTP 400.*non-numeric"),
        ([[float("inf"), 3.5, 1.4, 0.2]], "infinite value"),
        ([], r"HTTP 400.*empty"),
    ],
)
def test_endpoint_client_raises_the_servers_explanation(served: Served, rows, match) -> None:
    """What a notebook user sees: a ServingError carrying the server's reason, at once."""
    with pytest.raises(ServingError, match=match):
        served.endpoint.predict(rows)
    rows = served.trained.X[:2].tolist()
    assert served.endpoint.predictions(rows) == served.trained.expected(rows)
