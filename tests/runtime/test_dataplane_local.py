"""The data plane through a local endpoint: the manifest's runtime, batcher and logger reach the
server, and binary tensors pass the router (real backend, router and servers on 127.0.0.1)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from tests.runtime.test_dataplane import Sink


@pytest.fixture()
def sink():
    s = Sink()
    yield s
    s.close()


def test_local_endpoint_answers_as_xgbserver_with_batcher_and_logger(tmp_path, iris, sink):
    import tritonclient.http as triton

    from kfp_serve.retry import wait_until
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.isvc import build_inference_service

    X, y = iris
    clf = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(X, y)
    clf.save_model(str(tmp_path / "model.json"))
    manifest = build_inference_service(
        "iris-dp", f"file://{tmp_path}", "xgboost",
        serve_config={"protocol_version": "v2", "predictor": {
            "batcher": {"maxBatchSize": 8, "maxLatency": 20},
            "logger": {"mode": "response", "url": sink.url},
        }},
    )
    assert manifest["spec"]["predictor"]["model"]["runtime"] == "kserve-xgbserver"
    backend = LocalBackend(progress=False, stop_grace=2.0)
    status = backend.apply(manifest, timeout=120)
    try:
        client = triton.InferenceServerClient(status.url.removeprefix("http://"))
        inp = triton.InferInput("input-0", [5, 4], "FP32")
        inp.set_data_from_numpy(X[:5].astype(np.float32))
        got = client.infer("iris-dp", [inp]).as_numpy("output-0")
        client.close()
        # kserve-xgbserver answers the booster's output: probabilities, not labels
        expected = clf.get_booster().predict(xgb.DMatrix(X[:5].astype(np.float32)))
        np.testing.assert_array_equal(got, expected)
        wait_until(lambda: sink.events, deadline=15, describe="the response event")
        headers, _ = sink.events[0]
        assert headers["ce-type"] == "org.kubeflow.serving.inference.response"
        assert headers["ce-inferenceservicename"] == "iris-dp"
        assert not any(h["ce-type"].endswith("request") for h, _ in sink.events)  # mode response
    finally:
        backend.delete("iris-dp")
