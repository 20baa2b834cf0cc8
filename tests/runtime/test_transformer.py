"""The transformer runtime over real HTTP: caller v1/v2 x predictor v1/v2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from kfp_serve.serving.runtime._kserve import InferenceVerb
from kfp_serve.serving.runtime.codec import RequestError
from kfp_serve.serving.runtime.launch import free_port, start_server, stop_server, wait_ready
from kfp_serve.serving.runtime.transformer import TransformerModel
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


def _scaler_dir(tmp_path: Path, iris) -> Path:
    d = tmp_path / "scaler"
    d.mkdir()
    joblib.dump(StandardScaler().fit(iris[0]), d / "transformer.joblib")
    return d


def test_transformer_answers_502_for_a_dead_predictor_and_logs_its_address(tmp_path, iris):
    port = free_port()  # nothing listens there
    proc = start_server(
        "transformer",
        "model",
        _scaler_dir(tmp_path, iris),
        predictor_host=f"127.0.0.1:{port}",
        log_path=tmp_path / "t.log",
    )
    try:
        wait_ready(proc.url, timeout=120, proc=proc)
        r = httpx.post(
            f"{proc.url}/v1/models/model:predict",
            json={"instances": iris[0][:1].tolist()},
            timeout=30,
        )
        assert r.status_code == 502, r.text
        # The caller is told what failed, not where: the address is internal, the log has it.
        assert r.json()["error"].startswith("the predictor is unreachable"), r.text
        assert str(port) not in r.text
    finally:
        stop_server(proc)
    assert f"predictor at http://127.0.0.1:{port}/v1/models/model:predict" in (
        tmp_path / "t.log"
    ).read_text()


def test_transformer_answers_504_when_the_predictor_hangs(tmp_path, iris):
    async def main() -> RequestError:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            await asyncio.sleep(10)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        model = TransformerModel(
            "model", _scaler_dir(tmp_path, iris), f"127.0.0.1:{port}", "v2", timeout=0.3
        )
        model.load()
        await model.start_client()
        try:
            await model({"instances": iris[0][:1].tolist()}, {}, InferenceVerb.PREDICT)
        except RequestError as e:
            return e
        finally:
            await model.close()
            server.close()
        raise AssertionError("no error")

    err = asyncio.run(main())
    assert err.status == 504
    assert str(err) == "the predictor did not answer within 0.3 s"
