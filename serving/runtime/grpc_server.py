"""Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) for a runtime server.

The protos are the ones the kserve package ships (``kserve.protocol.grpc``), so KServe's
``InferenceGRPCClient`` and tritonclient's gRPC client talk to it unchanged. It runs in the
HTTP server's event loop on its own port, bound where the HTTP server binds (127.0.0.1
locally), over kfp-serve's own HTTP/2 transport for unary calls
(:mod:`~kfp_serve.serving.runtime.grpc_transport`, which says why not grpcio's server).
Each call is translated into the same v2 request the REST route builds and handed to the same
model, so answers are identical over both transports.

Tensors arrive as typed ``contents`` or as ``raw_input_contents`` (little-endian bytes, the
layout of the REST binary extension); an answer uses ``raw_output_contents`` when the request
used raw inputs, as KServe does. A message larger than the server's limit is refused with
INVALID_ARGUMENT naming the limit, before it is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kfp_serve.serving.runtime import binary
from kfp_serve.serving.runtime.codec import (
    OUTPUT_NAME,
    V2_NUMERIC_DTYPES,
    RequestError,
    is_shape,
    v2_datatype,
)
from kfp_serve.serving.runtime.grpc_transport import GrpcError
from kfp_serve.serving.runtime.http2 import Status
from kfp_serve.serving.runtime.ids import new_id

log = logging.getLogger("kfp_serve.runtime.grpc")

#: KServe's default gRPC port.
GRPC_DEFAULT_PORT = 8081
#: ``InferTensorContents`` field holding each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
#: The type each numeric ``contents`` field holds (INT8 travels in an int32 field, so its values
#: are read as int32 and range-checked by the codec like JSON numbers).
_FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
#: Datatypes whose ``contents`` field holds exactly their values (nothing narrower to check).
_EXACT_CONTENTS = {
    datatype: _FIELD_DTYPES[field]
    for datatype, field in CONTENTS_FIELD.items()
    if field in _FIELD_DTYPES and _FIELD_DTYPES[field] == np.dtype(V2_NUMERIC_DTYPES[datatype])
}


def _pb() -> tuple[Any, Any]:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    from kfp_serve.serving.runtime import _kserve  # noqa: F401 - kserve without its argv parsing

    return pb, pb_grpc


def _param_value(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def request_to_v2(request: Any) -> tuple[dict[str, Any], bool]:
    """A ``ModelInferRequest`` as the v2 body the REST route would build, and whether it used
    raw contents. (Its size was checked by the transport, before it was parsed.)

    Raises:
        RequestError: A tensor that does not fit its shape and datatype.
    """
    raw = request.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(request.inputs):
        raise RequestError(
            f"raw_input_contents has {n_raw} entries but there are {len(request.inputs)} "
            f"inputs; send one per input"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)  # int64s: Python ints already
        datatype = tensor.datatype
        item: dict[str, Any] = {"name": tensor.name, "shape": shape, "datatype": datatype}
        if n_raw:
            item["data"] = binary.decode_tensor(datatype, shape, raw[i], f"raw_input_contents[{i}]")
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise RequestError(
                    f"inputs[{i}] ({tensor.name!r}): unsupported datatype {datatype!r}"
                )
            values = getattr(tensor.contents, field)
            item["data"] = np.asarray(values, dtype=_FIELD_DTYPES.get(field, object))
        if tensor.parameters:  # testing the map first: most calls have none
            item["parameters"] = {k: _param_value(v) for k, v in tensor.parameters.items()}
        inputs.append(item)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = {k: _param_value(v) for k, v in request.parameters.items()}
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return body, n_raw > 0


def v2_to_response(pb: Any, answer: dict[str, Any], raw: bool) -> Any:
    """A v2 answer dict as a ``ModelInferResponse`` (raw contents when ``raw``)."""
    response = _response(pb, answer.get("model_name"), answer.get("model_version"),
                         answer.get("id"))
    for out in answer.get("outputs") or []:
        _add_output(response, out["name"], out["datatype"], out["shape"], out["data"], raw)
    return response


def _response(pb: Any, model_name: Any, version: Any, request_id: Any) -> Any:
    return pb.ModelInferResponse(
        model_name=str(model_name or ""), model_version=str(version or ""),
        id=str(request_id or ""),
    )


def _add_output(response: Any, name: str, datatype: str, shape: Any, data: Any, raw: bool) -> None:
    """One output tensor; ``data`` is flat and row-major (a list, or an array of any shape)."""
    tensor = response.outputs.add(name=name, datatype=datatype, shape=shape)
    if raw:
        response.raw_output_contents.append(binary.encode_tensor(data, datatype))
        return
    if isinstance(data, np.ndarray):
        data = data.ravel().tolist()
    if datatype == "BYTES":
        data = [v if isinstance(v, bytes) else str(v).encode() for v in data]
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(data)


def single_input(request: Any) -> tuple[np.ndarray, bool] | None:
    """The request's one input as an array of its shape and datatype, and whether it came as raw
    contents, when the request is nothing more (no parameters, no outputs named) and is valid
    as far as its encoding goes: what a model taking one matrix can answer without the v2 body
    the REST route builds. None for anything else, including what the generic path
    (:func:`request_to_v2`) refuses: that path words every error.
    """
    if len(request.inputs) != 1 or request.parameters or request.outputs:
        return None
    tensor = request.inputs[0]
    if tensor.parameters:
        return None
    shape = tensor.shape[:]  # a list (list() of the container costs four times as much)
    datatype = tensor.datatype
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1 or datatype not in V2_NUMERIC_DTYPES:
            return None
        try:
            flat = binary.decode_tensor(datatype, shape, raw[0], "raw_input_contents[0]")
        except RequestError:
            return None
    else:
        dtype = _EXACT_CONTENTS.get(datatype)
        if dtype is None or not is_shape(shape):
            return None
        flat = np.asarray(getattr(tensor.contents, CONTENTS_FIELD[datatype]), dtype=dtype)
        if flat.size != math.prod(shape):
            return None
    return flat.reshape(shape), bool(raw)


def array_response(pb: Any, model: Any, request_id: str | None, result: Any, raw: bool) -> Any:
    """The ``ModelInferResponse`` for one model output array: what :func:`v2_to_response`
    makes of the v2 answer (:func:`~kfp_serve.serving.runtime.codec.encode_v2`) for it, without
    the answer's flat lists in between."""
    arr = np.asarray(result)
    response = _response(pb, model.name, model.version,
                         request_id if request_id is not None else new_id())
    _add_output(response, OUTPUT_NAME, v2_datatype(arr.dtype), arr.shape, arr, raw)
    return response


def _set_param(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def v2_to_request(pb: Any, model_name: str, body: dict[str, Any], version: str = "") -> Any:
    """A v2 request body (what the REST route takes) as a ``ModelInferRequest`` with raw
    contents: the client side of :func:`request_to_v2`."""
    request = pb.ModelInferRequest(
        model_name=model_name, model_version=version, id=str(body.get("id") or "")
    )
    for item in body["inputs"]:
        tensor = request.inputs.add(name=item["name"], datatype=item["datatype"])
        tensor.shape.extend(int(d) for d in item["shape"])
        for key, value in (item.get("parameters") or {}).items():
            _set_param(tensor.parameters[key], value)
        request.raw_input_contents.append(binary.encode_tensor(item["data"], item["datatype"]))
    for key, value in (body.get("parameters") or {}).items():
        _set_param(request.parameters[key], value)
    for out in body.get("outputs") or []:
        request.outputs.add(name=out["name"])
    return request


def response_to_v2(response: Any) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the v2 answer dict the REST route returns (flat ``data``
    lists): the client side of :func:`v2_to_response`."""
    raw = list(response.raw_output_contents)
    outputs = []
    for i, tensor in enumerate(response.outputs):
        shape = [int(d) for d in tensor.shape]
        if raw:
            data = binary.decode_tensor(
                tensor.datatype, shape, memoryview(raw[i]), f"raw_output_contents[{i}]"
            ).tolist()
        else:
            data = list(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]))
        if tensor.datatype == "BYTES":
            data = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in data]
        outputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}
        )
    answer: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version or None,
        "outputs": outputs,
    }
    if response.id:
        answer["id"] = response.id
    return answer


#: The OIP gRPC service. Its model repository methods are not offered: a client calling them
#: gets UNIMPLEMENTED.
SERVICE = "inference.GRPCInferenceService"


class GrpcServer:
    """The OIP gRPC service for ``models``, started inside the running event loop.

    Args:
        models: Served models by name (the same objects the REST app serves).
        host: Address to bind.
        port: Port to bind.
        max_message_bytes: Largest request message accepted (INVALID_ARGUMENT above it).
        shared: Other worker processes bind the same port (``--workers``).
    """

    def __init__(self, models: dict[str, Any], *, host: str, port: int, max_message_bytes: int,
                 shared: bool = False) -> None:
        self.models = models
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.shared = shared
        self._listener: Any = None

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            RuntimeError: The port could not be bound.
        """
        from kfp_serve.serving.runtime.grpc_transport import GrpcListener, Method

        pb, _ = _pb()
        service = _Servicer(self, pb)
        methods = {
            f"/{SERVICE}/{name}": Method(getattr(pb, f"{name}Request"), getattr(service, name),
                                         getattr(service, f"{name}Now", None))
            for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                         "ModelMetadata", "ModelInfer")
        }
        listener = GrpcListener(
            methods, host=self.host, port=self.port, max_message_bytes=self.max_message_bytes,
            limit_name="--grpc_max_message_bytes", shared=self.shared,
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            await listener.start()
        except OSError as e:
            raise RuntimeError(f"cannot bind gRPC port {address}: {e.strerror or e}") from e
        self._listener = listener
        log.info("serving OIP gRPC on %s", address)

    async def stop(self) -> None:
        """Stop, letting calls in flight finish for a moment."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None


class _Servicer:
    """``inference.GRPCInferenceService`` over the server's models: request message in,
    response message out, :class:`~kfp_serve.serving.runtime.grpc_transport.GrpcError` for
    any other status."""

    def __init__(self, owner: GrpcServer, pb: Any) -> None:
        from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput
        from kfp_serve.serving.runtime.server import V2Request

        self.owner = owner
        self.pb = pb
        self._predict = InferenceVerb.PREDICT
        # What an inference may be refused with (answered with its status, not INTERNAL).
        self._refused = (RequestError, InvalidInput, ValueError, TypeError)
        self._v2_request = V2Request

    def _model(self, name: str, version: str) -> Any:
        model = self.owner.models.get(name)
        if model is None:
            raise GrpcError(
                Status.NOT_FOUND,
                f"model {name!r} is not served here; served: {sorted(self.owner.models)}",
            )
        served = getattr(model, "version", None)
        if version and version != served:
            offer = f"version {served!r}" if served else "no versions"
            raise GrpcError(
                Status.NOT_FOUND,
                f"model {model.name!r} has no version {version!r}; it serves {offer}",
            )
        return model

    async def ServerLive(self, request: Any) -> Any:  # noqa: N802 - proto names
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:  # noqa: N802
        ready = True
        for m in self.owner.models.values():
            ready = ready and bool(await m.healthy())
        return self.pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: Any) -> Any:  # noqa: N802
        model = self._model(request.name, request.version)
        return self.pb.ModelReadyResponse(ready=bool(await model.healthy()))

    async def ServerMetadata(self, request: Any) -> Any:  # noqa: N802
        from kfp_serve.serving.runtime.server import EXTENSIONS, server_version

        return self.pb.ServerMetadataResponse(
            name="kfp-serve", version=server_version(), extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any) -> Any:  # noqa: N802
        model = self._model(request.name, request.version)
        meta = model.metadata() if hasattr(model, "metadata") else {"name": model.name}
        if hasattr(meta, "__await__"):
            meta = await meta
        response = self.pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta.get("versions") or [],
            platform=meta.get("platform") or "",
        )
        for key, target in (("inputs", response.inputs), ("outputs", response.outputs)):
            for t in meta.get(key) or []:
                target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    def ModelInferNow(self, request: Any) -> Any | None:  # noqa: N802
        """A ``ModelInfer`` answered without waiting, or None: the call then goes to
        :meth:`ModelInfer`. Taken by a call on the direct path to a model with no batcher:
        answered in the transport's callback, it needs no asyncio task (2 of its 17 us)."""
        model = self._model(request.model_name, request.model_version)
        infer_now = getattr(model, "infer_now", None)  # a predictor's (not a transformer's)
        if infer_now is None or model.batcher is not None or not model.ready:
            return None
        direct = single_input(request)
        if direct is None:
            return None
        try:
            return infer_now(*self._direct(model, request, *direct))
        except self._refused as e:
            raise _refusal(e) from e

    async def ModelInfer(self, request: Any) -> Any:  # noqa: N802
        model = self._model(request.model_name, request.model_version)
        if not model.ready:
            raise GrpcError(Status.UNAVAILABLE, f"model {model.name!r} is not ready")
        try:
            direct = single_input(request) if hasattr(model, "matrix_batch") else None
            if direct is not None:
                return await model.infer(*self._direct(model, request, *direct))
            body, raw = request_to_v2(request)
            answer, _ = await model(self._v2_request(body), {}, self._predict)
            if request.outputs:  # the ones asked for, in their order (unknown ones: 400)
                requested, _ = binary.requested_outputs(body)
                answer, _ = binary.select_outputs(answer, requested, False)
            return v2_to_response(self.pb, answer, raw)
        except self._refused as e:
            raise _refusal(e) from e

    def _direct(self, model: Any, request: Any, X: np.ndarray, raw: bool) -> tuple[
        Callable[[], Any], Callable[[Any, Any], Any]
    ]:
        """The direct path's decode and encode for ``PredictorModel.infer``/``infer_now``."""
        return (
            lambda: model.matrix_batch(X, request.id or None),
            lambda batch, result: array_response(self.pb, model, batch.request_id, result, raw),
        )


def _refusal(e: Exception) -> GrpcError:
    """The gRPC status a refused inference ends with (a 4xx-like refusal: INVALID_ARGUMENT)."""
    status = getattr(e, "status", 400)
    code = (
        Status.INVALID_ARGUMENT
        if status < 500
        else Status.UNAVAILABLE
        if status in (502, 503, 504)
        else Status.INTERNAL
    )
    return GrpcError(code, str(e))
