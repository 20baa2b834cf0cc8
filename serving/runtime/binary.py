"""The Open Inference Protocol's binary tensor data extension, both ways.

A request may carry tensors as raw bytes after its JSON header: the header's length is in the
``Inference-Header-Content-Length`` HTTP header, and every binary input says how many bytes it
takes in ``parameters.binary_data_size`` (in input order). Answers carry binary outputs the same
way when the request asks (``outputs[i].parameters.binary_data``, or the request-level
``parameters.binary_data_output``). Numbers are little-endian, row-major; BOOL is one byte per
element; BYTES is each element as a 4-byte little-endian length followed by its bytes.

Plain numpy, no kserve: cheap to import and to test. Every rejection is a
:class:`~kfp_serve.serving.runtime.codec.RequestError` naming the field at fault.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from kfp_serve.serving.runtime.codec import V2_BYTES, V2_NUMERIC_DTYPES, RequestError, is_shape

#: HTTP header holding the JSON header's length when binary tensors follow it.
HEADER_LENGTH_HEADER = "inference-header-content-length"
#: Parameter naming a tensor's byte count in the binary section.
BINARY_SIZE_PARAM = "binary_data_size"
#: Per-output parameter asking for binary data.
BINARY_OUTPUT_PARAM = "binary_data"
#: Request-level parameter asking for every output in binary.
BINARY_ALL_OUTPUTS_PARAM = "binary_data_output"
#: Content type of an answer that carries binary outputs.
BINARY_CONTENT_TYPE = "application/octet-stream"
#: Little-endian numpy types of the numeric datatypes (the wire order).
_WIRE_DTYPES = {name: np.dtype(t).newbyteorder("<") for name, t in V2_NUMERIC_DTYPES.items()}
#: The same in this machine's byte order (what a decoded tensor holds).
_NATIVE_DTYPES = {name: dtype.newbyteorder("=") for name, dtype in _WIRE_DTYPES.items()}
_LENGTH = struct.Struct("<I")


def header_length(value: str, body_size: int) -> int:
    """The JSON header's length from ``Inference-Header-Content-Length``.

    Raises:
        RequestError: Not a non-negative integer, or longer than the body.
    """
    try:
        length = int(value)
    except ValueError:
        raise RequestError(
            f"header {HEADER_LENGTH_HEADER}: {value!r} is not a byte count; send the length of "
            f"the JSON part of the body"
        ) from None
    if length < 0 or length > body_size:
        raise RequestError(
            f"header {HEADER_LENGTH_HEADER}: {length} is past the end of the {body_size}-byte "
            f"body; it must be the length of the JSON part only"
        )
    return length


def attach_inputs(body: Any, binary: memoryview) -> None:
    """Decode the binary section into the inputs that declared ``binary_data_size``.

    Each such input's ``data`` becomes a flat numpy array of its datatype (objects of ``bytes``
    for BYTES); the codec then checks it against the shape like JSON data.

    Raises:
        RequestError: A size that does not fit the shape and datatype, a section shorter or
            longer than the sizes declared, or a malformed BYTES element.
    """
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        if len(binary):
            raise RequestError("the body has a binary section but no 'inputs' list to use it")
        return
    offset = 0
    for i, tensor in enumerate(inputs):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict) or BINARY_SIZE_PARAM not in params:
            continue
        where = f"inputs[{i}].parameters.{BINARY_SIZE_PARAM}"
        size = params[BINARY_SIZE_PARAM]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"{where} must be a non-negative integer, got {size!r}")
        if offset + size > len(binary):
            raise RequestError(
                f"{where} is {size} but only {len(binary) - offset} bytes of the binary section "
                f"are left: the body is truncated or the size is wrong"
            )
        chunk = binary[offset : offset + size]
        offset += size
        if "data" in tensor:
            raise RequestError(f"inputs[{i}] has both 'data' and {BINARY_SIZE_PARAM}; send one")
        tensor["data"] = decode_tensor(tensor.get("datatype"), tensor.get("shape"), chunk, where)
    if offset != len(binary):
        raise RequestError(
            f"the binary section has {len(binary) - offset} bytes beyond the inputs' "
            f"{BINARY_SIZE_PARAM} total ({offset}); every binary input must declare its size"
        )


def decode_tensor(datatype: Any, shape: Any, chunk: bytes | memoryview, where: str) -> np.ndarray:
    """Raw bytes of one tensor -> flat array (a copy: the body buffer is not kept alive).

    Raises:
        RequestError: The size does not match ``shape`` x ``datatype``.
    """
    if not is_shape(shape):
        raise RequestError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if datatype == V2_BYTES:
        return _decode_bytes(chunk, count, where)
    if datatype not in _WIRE_DTYPES:
        raise RequestError(
            f"{where}: unsupported datatype {datatype!r} for binary data; use one of "
            f"{', '.join(sorted(_WIRE_DTYPES))}, {V2_BYTES}"
        )
    wire = _WIRE_DTYPES[datatype]
    if len(chunk) != count * wire.itemsize:
        raise RequestError(
            f"{where} is {len(chunk)} but shape {shape} of {datatype} needs "
            f"{count} x {wire.itemsize} = {count * wire.itemsize} bytes"
        )
    return np.frombuffer(chunk, dtype=wire).astype(_NATIVE_DTYPES[datatype], copy=True)


def _decode_bytes(chunk: memoryview, count: int, where: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    raw = bytes(chunk)
    for k in range(count):
        if pos + 4 > len(raw):
            raise RequestError(
                f"{where}: BYTES element {k} of {count} has no 4-byte length prefix "
                f"(the section ends at byte {len(raw)})"
            )
        (n,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise RequestError(
                f"{where}: BYTES element {k} declares {n} bytes but only {len(raw) - pos} remain"
            )
        out[k] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise RequestError(
            f"{where} is {len(raw)} but the {count} BYTES elements of the shape take {pos} bytes"
        )
    return out


def encode_tensor(data: Any, datatype: str) -> bytes:
    """One output tensor's data (flat, row-major) as raw bytes of ``datatype``.

    Raises:
        RequestError: (500) A datatype this extension cannot carry.
    """
    if datatype == V2_BYTES:
        parts = []
        for v in np.asarray(data, dtype=object).ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if datatype not in _WIRE_DTYPES:
        raise RequestError(f"output datatype {datatype!r} cannot be sent as binary data", 500)
    return np.ascontiguousarray(np.asarray(data, dtype=_WIRE_DTYPES[datatype])).tobytes()


def requested_outputs(body: Any) -> tuple[list[dict[str, Any]] | None, bool]:
    """The outputs a v2 request asks for (None: all) and whether binary is the default.

    Raises:
        RequestError: ``outputs`` or its entries are malformed.
    """
    if not isinstance(body, dict):
        return None, False
    params = body.get("parameters")
    binary_default = bool(isinstance(params, dict) and params.get(BINARY_ALL_OUTPUTS_PARAM))
    outputs = body.get("outputs")
    if outputs is None:
        return None, binary_default
    if not isinstance(outputs, list):
        raise RequestError("'outputs' must be a list of {\"name\": ...} objects")
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise RequestError(f"outputs[{i}] must be an object with a string 'name'")
        p = out.get("parameters")
        if p is not None and not isinstance(p, dict):
            raise RequestError(f"outputs[{i}].parameters must be an object")
    return outputs, binary_default


def select_outputs(
    response: dict[str, Any], requested: list[dict[str, Any]] | None, binary_default: bool
) -> tuple[dict[str, Any], list[bytes]]:
    """Keep the requested outputs (in request order) and move binary ones out of the JSON.

    Args:
        response: A v2 answer (modified in place).
        requested: ``outputs`` of the request, or None for all.
        binary_default: The request's ``binary_data_output``.

    Returns:
        The answer and the binary chunks to append after it, in output order.

    Raises:
        RequestError: A requested output the model does not produce (400, naming the ones it does).
    """
    outputs = response.get("outputs") or []
    if requested is not None:
        by_name = {o["name"]: o for o in outputs}
        unknown = [r["name"] for r in requested if r["name"] not in by_name]
        if unknown:
            raise RequestError(
                f"unknown requested output(s) {unknown}; this model answers {sorted(by_name)}"
            )
        wants = {r["name"]: (r.get("parameters") or {}) for r in requested}
        outputs = [by_name[r["name"]] for r in requested]
    else:
        wants = {}
    chunks: list[bytes] = []
    for out in outputs:
        binary = wants.get(out["name"], {}).get(BINARY_OUTPUT_PARAM, binary_default)
        if not binary:
            continue
        chunk = encode_tensor(out.pop("data"), out["datatype"])
        out["parameters"] = {**(out.get("parameters") or {}), BINARY_SIZE_PARAM: len(chunk)}
        chunks.append(chunk)
    response["outputs"] = outputs
    return response, chunks


def output_array(tensor: dict[str, Any], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One output tensor of an answer (JSON or binary data) as an array of its shape.

    Returns:
        The array and the offset of the next binary chunk.

    Raises:
        RequestError: (502) The chunk does not fit the tensor's declared shape.
    """
    params = tensor.get("parameters") or {}
    if BINARY_SIZE_PARAM in params:
        size = int(params[BINARY_SIZE_PARAM])
        where = f"output {tensor.get('name')!r}"
        try:
            flat = decode_tensor(
                tensor.get("datatype"), tensor.get("shape"), binary[offset : offset + size], where
            )
        except RequestError as e:
            raise RequestError(f"the predictor sent a malformed binary answer: {e}", 502) from e
        return flat.reshape(tensor["shape"]), offset + size
    arr = np.asarray(tensor["data"])
    if tensor.get("datatype") in V2_NUMERIC_DTYPES:
        arr = arr.astype(V2_NUMERIC_DTYPES[tensor["datatype"]], copy=False)
    return arr.reshape(tensor["shape"]), offset
