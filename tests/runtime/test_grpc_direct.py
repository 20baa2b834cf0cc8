"""gRPC's direct path for one-matrix requests answers exactly what the generic path answers.

A ``ModelInfer`` call that is one numeric input and nothing more skips the v2 body the REST
route builds (:func:`~kfp_serve.serving.runtime.grpc_server.single_input`). These tests run
the servicer in process over real trained models and compare each answer, byte for byte, and
each refusal, word for word, with what the generic path (request -> v2 body -> model -> v2
answer -> response) makes of the same request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from kfp_serve.serving.runtime import grpc_server as gs
from kfp_serve.serving.runtime import metrics
from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput
from kfp_serve.serving.runtime.codec import RequestError
from kfp_serve.serving.runtime.grpc_transport import GrpcError
from kfp_serve.serving.runtime.http2 import Status
from kfp_serve.serving.runtime.predictor import PredictorModel
from kfp_serve.serving.runtime.server import V2Request
from tests.runtime.conftest import _train

KEYS = ["lr", "rf", "xgbc", "booster", "lr-df", "ridge-pipe"]
pb, _ = gs._pb()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PredictorModel]:
    trained = _train(tmp_path_factory.mktemp("direct"))
    loaded = {}
    for key in KEYS:
        model = PredictorModel(key, trained[key][0])
        model.load()
        loaded[key] = model
    return loaded


def _rows(key: str) -> np.ndarray:
    n_features = 3 if key in ("booster", "ridge-pipe") else 4
    return np.random.default_rng(7).uniform(0.1, 7.0, size=(5, n_features))


def _request(model: str, X: np.ndarray, datatype: str, raw: bool, **fields: Any) -> Any:
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="input-0", datatype=datatype, shape=list(X.shape))
    wire = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "INT8": "i1"}[datatype]
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(X, dtype=wire).tobytes())
    else:
        values = np.asarray(X, dtype=wire).ravel().tolist()
        getattr(tensor.contents, gs.CONTENTS_FIELD[datatype]).extend(values)
    return request


def _servicer(model: PredictorModel) -> Any:
    server = gs.GrpcServer({model.name: model}, host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    return gs._Servicer(server, pb)


def _served(model: PredictorModel, request: Any, at_once: bool = True) -> Any:
    """The servicer's answer (or its GrpcError), as a client gets it: ModelInferNow's when it
    answers (the transport tries it first), else ModelInfer's; only ModelInfer's if not
    ``at_once``."""
    servicer = _servicer(model)
    try:
        if at_once and (answer := servicer.ModelInferNow(request)) is not None:
            return answer
        return asyncio.run(servicer.ModelInfer(request))
    except GrpcError as e:
        return e


def _generic(model: PredictorModel, request: Any) -> Any:
    """What the generic path makes of ``request``: its response, or its refusal's message."""

    async def run() -> Any:
        body, raw = gs.request_to_v2(request)
        answer, _ = await model(V2Request(body), {}, InferenceVerb.PREDICT)
        return gs.v2_to_response(pb, answer, raw)

    try:
        return asyncio.run(run())
    except (RequestError, InvalidInput) as e:
        return str(e)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    ("datatype", "raw"),
    [("FP64", True), ("FP32", True), ("INT64", True), ("FP64", False), ("FP32", False),
     ("INT64", False)],
)
def test_direct_answers_equal_the_generic_path(models, key, datatype, raw):
    X = _rows(key)
    if datatype == "INT64":
        X = np.rint(X)
    request = _request(key, X, datatype, raw, id="req-7")
    assert gs.single_input(request) is not None, "this request should take the direct path"
    got = _served(models[key], request)
    assert not isinstance(got, GrpcError), got
    assert got.SerializeToString(deterministic=True) == _generic(
        models[key], request
    ).SerializeToString(deterministic=True)
    assert got == _served(models[key], request, at_once=False)  # answered at once or not
    assert got.id == "req-7" and got.model_name == key
    assert bool(got.raw_output_contents) == raw


def test_direct_answer_without_an_id_gets_a_fresh_one(models):
    request = _request("lr", _rows("lr"), "FP64", True)
    first, second = _served(models["lr"], request), _served(models["lr"], request)
    assert first.id and second.id and first.id != second.id
    first.id = second.id = ""
    assert first == second


BAD = {
    # refused by the direct path itself (the matrix checks)
    "too few features": lambda X: _request("lr", X[:, :3], "FP64", True),
    "NaN": lambda X: _request("lr", np.where(X > 3, np.nan, X), "FP64", True),
    "no rows": lambda X: _request("lr", X[:0], "FP64", False),
    "rank 3": lambda X: _request("lr", X.reshape(5, 2, 2), "FP64", True),
    # left to the generic path, which words the refusal
    "raw size off": lambda X: _with(_request("lr", X, "FP64", True),
                                    lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 24)),
    "contents count off": lambda X: _with(_request("lr", X, "FP64", False),
                                          lambda r: r.inputs[0].contents.fp64_contents.append(1.0)),
    "negative dimension": lambda X: _with(_request("lr", X, "FP64", False),
                                          lambda r: r.inputs[0].shape.__setitem__(0, -5)),
    "INT8 out of range": lambda X: _with(_request("lr", np.rint(X), "INT8", False),
                                         lambda r: r.inputs[0].contents.int_contents.__setitem__(
                                             0, 300)),
}


def _with(request: Any, change: Any) -> Any:
    change(request)
    return request


@pytest.mark.parametrize("case", list(BAD))
def test_refusals_equal_the_generic_paths_and_name_the_field(models, case):
    request = BAD[case](_rows("lr"))
    got = _served(models["lr"], request)
    assert isinstance(got, GrpcError), f"{case}: answered {got}"
    assert got.code == Status.INVALID_ARGUMENT
    later = _served(models["lr"], request, at_once=False)
    assert (later.code, later.message) == (got.code, got.message)
    assert got.message == _generic(models["lr"], request)
    assert "inputs[0]" in got.message or "raw_input_contents[0]" in got.message, got.message


def test_direct_calls_are_timed_like_rest_ones(models):
    model = models["lr"]
    model.timers = metrics.timers_for("direct-timed")
    try:
        for _ in range(3):
            _served(model, _request("lr", _rows("lr"), "FP64", True))
        metrics.flush()
        for phase in ("preprocess", "predict", "postprocess"):
            histogram = getattr(model.timers, phase).child
            assert sum(b.get() for b in histogram._buckets) == 3, phase
    finally:
        model.timers = None


def test_only_a_call_that_need_not_wait_is_answered_at_once(models):
    """The transport answers a call in its own callback (no asyncio task) only when nothing
    makes it wait: the direct path, a model without a batcher. A batched model's call waits
    for its batch, and gets the same answer."""
    from kfp_serve.serving.runtime.batcher import Batcher, BatcherSpec

    model = models["lr"]
    direct = _request("lr", _rows("lr")[:1], "FP64", True, id="now-1")
    assert _servicer(model).ModelInferNow(direct) is not None
    generic = _with(_request("lr", _rows("lr")[:1], "FP64", True, id="now-2"),
                    lambda r: r.outputs.add(name="output-0"))
    assert _servicer(model).ModelInferNow(generic) is None
    assert not isinstance(_served(model, generic), GrpcError)
    at_once = _served(model, direct)

    async def batched() -> Any:
        model.batcher = Batcher(model.predict_rows, BatcherSpec(max_batch_size=4,
                                                                max_latency_ms=5))
        try:
            assert _servicer(model).ModelInferNow(direct) is None
            return await _servicer(model).ModelInfer(direct)
        finally:
            model.batcher = None

    assert asyncio.run(batched()) == at_once
