"""The predictor runtime over real HTTP: predictions, probabilities, errors, explain, binding."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from tests.runtime.conftest import FEATURES, Served, v2_body, v2_output

PREDICTORS = ["lr", "rf", "xgbc", "xgbc-json", "booster", "lr-df"]


def _rows(key: str, iris: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    X, _ = iris
    if key == "booster":
        return np.random.default_rng(1).normal(size=(7, 3))
    return X[::15]


def _expected(served: Served, X: np.ndarray, key: str) -> np.ndarray:
    if key == "booster":
        return served.model.predict(xgb.DMatrix(X))
    if key == "lr-df":
        import pandas as pd

        return served.model.predict(pd.DataFrame(X, columns=FEATURES))
    return served.model.predict(X)


@pytest.mark.parametrize("key", PREDICTORS)
def test_v1_predictions_equal_in_process(servers, iris, key):
    s = servers[key]
    X = _rows(key, iris)
    r = s.client.post("/v1/models/model:predict", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["predictions"]), _expected(s, X, key))


@pytest.mark.parametrize("key", PREDICTORS)
def test_v2_predictions_equal_in_process(servers, iris, key):
    s = servers[key]
    X = _rows(key, iris)
    r = s.client.post("/v2/models/model/infer", json=v2_body(X, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "model"
    np.testing.assert_array_equal(v2_output(body), _expected(s, X, key))


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
def test_v2_datatypes(servers, iris, datatype):
    s = servers["lr"]
    X = np.rint(iris[0][::10]).astype(np.int64) if datatype == "INT64" else iris[0][::10]
    if datatype == "FP32":
        X = X.astype(np.float32)
    r = s.client.post("/v2/models/model/infer", json=v2_body(X, datatype=datatype))
    assert r.status_code == 200, r.text
    expected = s.model.predict(np.asarray(X, dtype=np.float64))
    np.testing.assert_array_equal(v2_output(r.json()), expected)


def test_v2_without_id_gets_one(servers, iris):
    r = servers["lr"].client.post("/v2/models/model/infer", json=v2_body(iris[0][:2]))
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["id"], str) and r.json()["id"]


def test_named_columns_v1_records_and_v2_pd(servers, iris):
    """Column-named data is reordered to the fitted feature order."""
    s = servers["lr-df"]
    X = iris[0][::20]
    expected = _expected(s, X, "lr-df")
    records = [dict(zip(reversed(FEATURES), row[::-1], strict=True)) for row in X]
    r = s.client.post("/v1/models/model:predict", json={"instances": records})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(r.json()["predictions"], expected)

    inputs = [
        {"name": f, "shape": [len(X)], "datatype": "FP64", "data": X[:, i].tolist()}
        for i, f in reversed(list(enumerate(FEATURES)))
    ]
    body = {"inputs": inputs, "parameters": {"content_type": "pd"}}
    r = s.client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(v2_output(r.json()), expected)


def test_named_inputs_without_feature_names_keep_order(servers, iris):
    s = servers["lr"]
    X = iris[0][:3]
    inputs = [
        {"name": f"c{i}", "shape": [3, 1], "datatype": "FP64", "data": X[:, i].tolist()}
        for i in range(4)
    ]
    r = s.client.post("/v2/models/model/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(v2_output(r.json()), s.model.predict(X))


def test_predict_proba(servers, iris):
    s = servers["lr-proba"]
    X = iris[0][::25]
    r = s.client.post("/v1/models/model:predict", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["predictions"]), s.model.predict_proba(X))
    r = s.client.post("/v2/models/model/infer", json=v2_body(X))
    np.testing.assert_array_equal(v2_output(r.json()), s.model.predict_proba(X))


@pytest.mark.parametrize("key", ["lr", "xgbc", "xgbc-json", "transformer-v1", "transformer-v2"])
def test_a_request_asks_for_probabilities_of_a_server_answering_labels(servers, iris, key):
    """PREDICT_PROBA is only the default: ``predict_proba`` in the request (a v1 field, a v2
    parameter) gets probabilities from the same server, through a transformer too."""
    s = servers[key]
    X = iris[0][::25]
    if key.startswith("transformer"):
        model, X_model = servers["scaled-lr"].model, s.model.transform(X)
    else:
        model, X_model = s.model, X
    expected = model.predict_proba(X_model)
    r = s.client.post("/v1/models/model:predict",
                      json={"instances": X.tolist(), "predict_proba": True})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), expected, rtol=1e-5)
    r = s.client.post("/v2/models/model/infer", json=v2_body(X, parameters={"predict_proba": True}))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(v2_output(r.json()), expected, rtol=1e-5)
    # The next request without the option gets the default again.
    r = s.client.post("/v1/models/model:predict", json={"instances": X.tolist()})
    np.testing.assert_array_equal(r.json()["predictions"], model.predict(X_model))


def test_a_request_asks_for_labels_of_a_server_answering_probabilities(servers, iris):
    s = servers["lr-proba"]
    X = iris[0][::25]
    r = s.client.post("/v1/models/model:predict",
                      json={"instances": X.tolist(), "predict_proba": False})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(r.json()["predictions"], s.model.predict(X))


def test_a_grpc_request_asks_for_probabilities_in_its_parameters(servers, iris, tmp_path):
    """The same option over OIP gRPC: a ``predict_proba`` bool parameter of the request."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready

    s = servers["lr"]
    model_dir = next(a.split("=", 1)[1] for a in s.proc.args
                     if isinstance(a, str) and a.startswith("--model_dir="))
    port = free_port()
    proc = start_server("predictor", "model", model_dir, log_path=tmp_path / "grpc.log",
                        extra_args=[f"--grpc_port={port}"])
    X = iris[0][::25]
    try:
        wait_ready(proc.url, timeout=180, proc=proc)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def infer(**parameters: bool) -> np.ndarray:
            request = pb.ModelInferRequest(model_name="model")
            for key, value in parameters.items():
                request.parameters[key].bool_param = value
            request.inputs.add(name="input-0", datatype="FP64", shape=list(X.shape))
            request.raw_input_contents.append(np.ascontiguousarray(X, dtype="<f8").tobytes())
            out = stub.ModelInfer(request, timeout=30)
            dtype = {"FP64": "<f8", "INT64": "<i8"}[out.outputs[0].datatype]
            return np.frombuffer(out.raw_output_contents[0], dtype=dtype).reshape(
                out.outputs[0].shape)

        np.testing.assert_allclose(infer(predict_proba=True), s.model.predict_proba(X),
                                   rtol=1e-9)
        np.testing.assert_array_equal(infer().ravel(), s.model.predict(X))
        channel.close()
    finally:
        stop_server(proc)


@pytest.mark.parametrize(("body", "fragment"), [
    ({"instances": [[1.0, 2.0, 3.0]], "predict_proba": True}, "has no predict_proba()"),
    ({"instances": [[1.0, 2.0, 3.0]], "predict_proba": "yes"},
     "'predict_proba' must be true or false"),
])
def test_a_bad_probabilities_request_is_a_400_naming_it(servers, body, fragment):
    r = servers["ridge-pipe"].client.post("/v1/models/model:predict", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.text


BAD_REQUESTS = [
    # (id, path suffix, raw body or JSON, message fragment)
    ("non-json", "v1", b"{not json", "not valid JSON"),
    ("empty-body", "v1", b"", "empty"),
    ("not-object", "v1", [1, 2], "JSON object"),
    ("missing-instances", "v1", {"rows": [[1, 2, 3, 4]]}, "missing key 'instances'"),
    ("instances-not-list", "v1", {"instances": 5}, "must be a list"),
    ("empty-instances", "v1", {"instances": []}, "empty"),
    ("one-d", "v1", {"instances": [1.0, 2.0, 3.0, 4.0]}, "2-D"),
    ("feature-count", "v1", {"instances": [[1.0, 2.0, 3.0]]}, "expected 4 features"),
    ("ragged", "v1", {"instances": [[1, 2, 3, 4], [1, 2]]}, "rectangular"),
    ("string-value", "v1", {"instances": [[1, 2, "x", 4]]}, "non-numeric"),
    ("null-value", "v1", {"instances": [[1, 2, None, 4]]}, "NaN"),
    ("v2-missing-inputs", "v2", {"id": "x"}, "missing key 'inputs'"),
    ("v2-inputs-empty", "v2", {"inputs": []}, "non-empty"),
    ("v2-missing-shape", "v2", {"inputs": [{"name": "a", "datatype": "FP64", "data": [1]}]},
     "missing 'shape'"),
    ("v2-bad-datatype", "v2",
     {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP8", "data": [1, 2, 3, 4]}]},
     "unsupported datatype"),
    ("v2-bytes", "v2",
     {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]},
     "BYTES"),
    ("v2-shape-mismatch", "v2",
     {"inputs": [{"name": "a", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
     "needs 8 values"),
    ("v2-int-with-floats", "v2",
     {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "INT64", "data": [1.5, 2, 3, 4]}]},
     "non-integers"),
    ("v2-feature-count", "v2",
     {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
     "expected 4 features"),
    ("v2-null", "v2",
     {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP64", "data": [1, None, 3, 4]}]},
     "NaN"),
    ("v2-bad-content-type", "v2",
     {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
      "parameters": {"content_type": "xml"}}, "content_type"),
    ("v2-ragged-columns", "v2",
     {"inputs": [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                 {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]},
     "same length"),
    ("huge-number", "v1", b'{"instances": [[1e999, 1, 1, 1]]}', "not valid JSON"),
]


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [b[1:] for b in BAD_REQUESTS],
    ids=[b[0] for b in BAD_REQUESTS],
)
def test_bad_requests_are_400_and_server_keeps_serving(servers, iris, route, body, fragment):
    s = servers["lr"]
    path = "/v1/models/model:predict" if route == "v1" else "/v2/models/model/infer"
    if isinstance(body, bytes):
        r = s.client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = s.client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"], r.json()
    ok = s.client.post("/v1/models/model:predict", json={"instances": iris[0][:1].tolist()})
    assert ok.status_code == 200


def test_missing_feature_name_is_400(servers):
    s = servers["lr-df"]
    r = s.client.post(
        "/v1/models/model:predict",
        json={"instances": [{"sepal_length": 1, "sepal_width": 2, "petal_length": 3}]},
    )
    assert r.status_code == 400 and "petal_width" in r.json()["error"]


def test_nan_allowed_for_xgboost(servers):
    r = servers["booster"].client.post(
        "/v1/models/model:predict", json={"instances": [[None, 0.1, 0.2]]}
    )
    assert r.status_code == 200, r.text


def test_unknown_model_and_route(servers):
    c = servers["lr"].client
    assert c.post("/v1/models/nope:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 404
    assert c.get("/v3/whatever").status_code == 404
    assert c.get("/v1/models/model:predict").status_code == 405


def test_health_and_metadata(servers):
    c = servers["lr-df"].client
    assert c.get("/v2/health/ready").json() == {"ready": True}
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v1/models/model").json() == {"name": "model", "ready": True}
    assert c.get("/v2/models/model/ready").status_code == 200
    meta = c.get("/v2/models/model").json()
    assert meta["inputs"][0]["shape"] == [-1, 4]
    assert meta["parameters"]["feature_names"] == FEATURES


# ---------------------------------------------------------------------------------- explain


def _explain(s: Served, X: np.ndarray) -> dict:
    r = s.client.post("/v1/models/model:explain", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    return r.json()


def test_explain_xgboost_classifier_sums_to_margin(servers, iris):
    s = servers["xgbc"]
    X = iris[0][::30]
    body = _explain(s, X)
    assert body["method"] == "xgboost_shap"
    margins = s.model.predict(X, output_margin=True)
    assert len(body["explanations"]) == 3
    for k, e in enumerate(body["explanations"]):
        assert e["output"] == k
        total = np.sum(e["attributions"], axis=1) + e["base_value"]
        np.testing.assert_allclose(total, margins[:, k], rtol=1e-4, atol=1e-4)


def test_explain_booster_binary(servers):
    s = servers["booster"]
    X = np.random.default_rng(2).normal(size=(4, 3))
    body = _explain(s, X)
    (e,) = body["explanations"]
    margin = s.model.predict(xgb.DMatrix(X), output_margin=True)
    np.testing.assert_allclose(
        np.sum(e["attributions"], axis=1) + e["base_value"], margin, rtol=1e-4, atol=1e-4
    )
    assert len(e["feature_names"]) == 3


def test_explain_linear_logistic(servers, iris):
    s = servers["lr"]
    X = iris[0][::40]
    body = _explain(s, X)
    assert body["method"] == "linear"
    lr = s.model
    for k, e in enumerate(body["explanations"]):
        assert e["output"] == lr.classes_[k]
        np.testing.assert_allclose(e["attributions"], X * lr.coef_[k])
        assert e["base_value"] == pytest.approx(lr.intercept_[k])
    decision = lr.decision_function(X)
    got = np.stack(
        [np.sum(e["attributions"], axis=1) + e["base_value"] for e in body["explanations"]],
        axis=1,
    )
    np.testing.assert_allclose(got, decision)


def test_explain_pipeline_applies_preceding_steps(servers, iris):
    s = servers["ridge-pipe"]
    X = iris[0][::40, :3]
    (e,) = _explain(s, X)["explanations"]
    np.testing.assert_allclose(
        np.sum(e["attributions"], axis=1) + e["base_value"], s.model.predict(X)
    )
    scaled = s.model[:-1].transform(X)
    np.testing.assert_allclose(e["attributions"], scaled * s.model[-1].coef_)


def test_explain_random_forest_is_501(servers, iris):
    r = servers["rf"].client.post(
        "/v1/models/model:explain", json={"instances": iris[0][:1].tolist()}
    )
    assert r.status_code == 501
    assert "RandomForestClassifier" in r.json()["error"]


# ---------------------------------------------------------------------------------- binding


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_servers_listen_on_loopback_only(servers):
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/net/tcp")
    for key, s in servers.items():
        addrs = _listen_addresses(s.proc.port)
        # 0100007F is 127.0.0.1 in /proc's little-endian hex.
        assert addrs == {"0100007F"}, (key, addrs)
