"""The transformer runtime over real HTTP: caller v1/v2 x predictor v1/v2."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.conftest import v2_body, v2_output


@pytest.mark.parametrize("predictor_protocol", ["v1", "v2"])
@pytest.mark.parametrize("caller_protocol", ["v1", "v2"])
def test_transformer_then_predictor_equals_in_process(
    servers, iris, caller_protocol, predictor_protocol
):
    t = servers[f"transformer-{predictor_protocol}"]
    model = servers["scaled-lr"].model
    X = iris[0][::12]
    expected = model.predict(t.model.transform(X))
    if caller_protocol == "v1":
        r = t.client.post("/v1/models/model:predict", json={"instances": X.tolist()})
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["predictions"])
    else:
        r = t.client.post("/v2/models/model/infer", json=v2_body(X, id="t-1"))
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "t-1" and r.json()["model_name"] == "model"
        got = v2_output(r.json())
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("predictor_protocol", ["v1", "v2"])
def test_transformer_rejects_bad_input_with_400(servers, iris, predictor_protocol):
    t = servers[f"transformer-{predictor_protocol}"]
    r = t.client.post("/v1/models/model:predict", json={"instances": [[1, 2, 3]]})
    assert r.status_code == 400 and "expected 4 features" in r.json()["error"]
    r = t.client.post("/v2/models/model/infer", json={"inputs": "nope"})
    assert r.status_code == 400
    ok = t.client.post("/v1/models/model:predict", json={"instances": iris[0][:1].tolist()})
    assert ok.status_code == 200


def test_transformer_forwards_explain(servers, iris):
    t = servers["transformer-v2"]
    X = iris[0][:2]
    r = t.client.post("/v1/models/model:explain", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    model = servers["scaled-lr"].model
    e = r.json()["explanations"][0]
    np.testing.assert_allclose(e["attributions"], t.model.transform(X) * model.coef_[0])
