"""Decode v1/v2 inference requests into validated arrays, and encode the answers.

Everything here is plain numpy/pandas (no kserve import), so it is cheap to import and to test.
Every rejection raises :class:`RequestError` (HTTP 400) with a message that names the problem;
nothing a client sends should reach the model unvalidated and turn into a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfp_serve.serving.constants import PREDICT_PROBA_PARAM
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime.datatypes import V2_BYTES, V2_NUMERIC_DATATYPES
from kfp_serve.serving.runtime.ids import new_id

#: v2 tensor datatypes accepted as numeric input, and their numpy types.
V2_NUMERIC_DTYPES: dict[str, type] = {
    name: np.dtype(f"{kind}{size}").type for name, (kind, size) in V2_NUMERIC_DATATYPES.items()
}
#: The same as numpy dtypes, and the value range of the integer ones (tables the per-request
#: checks read instead of building dtypes and ``iinfo`` objects for every tensor).
_NUMERIC_DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in V2_NUMERIC_DTYPES.items()}
_INT_RANGES: dict[str, np.iinfo] = {
    name: np.iinfo(dtype) for name, dtype in _NUMERIC_DTYPES.items() if dtype.kind in "iu"
}
#: The v2 datatype of each numeric numpy dtype (the inverse of ``_NUMERIC_DTYPES``).
_DATATYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in _NUMERIC_DTYPES.items()}
#: The fields every v2 input tensor must have, in the order a missing one is reported.
_TENSOR_KEYS = ("name", "shape", "datatype", "data")
#: What a tensor's ``data`` may be: JSON's list, or the binary extension's decoded array.
_DATA_TYPES = (list, np.ndarray)
#: Name of the single output tensor, as the stock KServe runtimes call it.
OUTPUT_NAME = "output-0"
#: Name given to the single input tensor the transformer forwards to a v2 predictor.
INPUT_NAME = "input-0"


class RequestError(ServingError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FeatureSpec:
    """What a model (or transformer) expects as input.

    Attributes:
        n_features: Number of columns per row, or None when unknown (not checked).
        feature_names: Column names in the order the model was fitted with, or None.
        dtype: numpy dtype the numeric matrix is converted to before predict.
        allow_nan: Whether missing values (NaN, JSON null) may reach the model.
        frame_input: Hand the model a pandas DataFrame with ``feature_names`` as columns
            (it was fitted on a DataFrame, e.g. a ColumnTransformer selecting by name).
    """

    n_features: int | None = None
    feature_names: tuple[str, ...] | None = None
    dtype: np.dtype = np.dtype(np.float64)
    allow_nan: bool = False
    frame_input: bool = False


@dataclass
class Batch:
    """A decoded request: the model input plus what the answer needs to echo back."""

    X: Any
    protocol: str
    request_id: str | None = None
    n_rows: int = 0
    #: The request asked for probabilities (True) or labels (False); None: the server's default.
    proba: bool | None = None


# --------------------------------------------------------------------------------------------
# Entry points


def parse_json(raw: bytes) -> Any:
    """Parse a request body with orjson (the fast path kserve itself uses).

    Args:
        raw: The HTTP body.

    Returns:
        The decoded JSON value.

    Raises:
        RequestError: The body is empty or not JSON.
    """
    import orjson

    if not raw:
        raise RequestError("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RequestError(f"request body is not valid JSON: {e}") from e


def decode_v1(body: Any, spec: FeatureSpec) -> Batch:
    """Decode a v1 body ``{"instances": [...]}`` (rows as lists, or as {name: value} dicts).

    Args:
        body: Parsed JSON body.
        spec: What the model expects.

    Returns:
        The validated batch.

    Raises:
        RequestError: Anything about the body is wrong; the message names it.
    """
    if not isinstance(body, dict):
        raise RequestError(
            f'request body must be a JSON object like {{"instances": [[...]]}}, '
            f"got {_json_type(body)}"
        )
    key = "instances" if "instances" in body else "inputs" if "inputs" in body else None
    if key is None:
        raise RequestError("missing key 'instances': send {\"instances\": [[f1, f2, ...], ...]}")
    instances = body[key]
    if not isinstance(instances, list):
        raise RequestError(f"'{key}' must be a list of rows, got {_json_type(instances)}")
    if not instances:
        raise RequestError(f"'{key}' is empty; send at least one row")
    if key == "inputs" and isinstance(instances[0], dict) and {"datatype", "data"} <= set(
        instances[0]
    ):
        raise RequestError(
            "this is a v2 (Open Inference Protocol) request: POST it to /v2/models/<name>/infer, "
            'or send v1 {"instances": [[f1, f2, ...], ...]}'
        )
    if isinstance(instances[0], dict):
        columns = _columns_from_records(instances, key)
        X = _from_columns(columns, len(instances), spec)
    else:
        X = _matrix(instances, spec, what=f"'{key}'")
    proba = _proba_option(body.get(PREDICT_PROBA_PARAM), PREDICT_PROBA_PARAM)
    return Batch(X=X, protocol="v1", n_rows=len(instances), proba=proba)


def decode_v2(body: Any, spec: FeatureSpec) -> Batch:
    """Decode a v2 (Open Inference Protocol) JSON body.

    One input of shape ``[N, F]`` is a matrix. Several inputs, or ``parameters.content_type``
    ``"pd"``, mean one input per column, named after the feature (shape ``[N]`` or ``[N, 1]``).

    Args:
        body: Parsed JSON body.
        spec: What the model expects.

    Returns:
        The validated batch (``request_id`` is the request's ``id``, if any).

    Raises:
        RequestError: Anything about the body is wrong; the message names it.
    """
    if not isinstance(body, dict):
        raise RequestError(
            f"request body must be a JSON object with an 'inputs' list, got {_json_type(body)}"
        )
    inputs = body.get("inputs")
    if inputs is None and "instances" in body:
        raise RequestError(
            "this is a v1 request ('instances'): POST it to /v1/models/<name>:predict, or send "
            'v2 {"inputs": [{"name": ..., "shape": [N, F], "datatype": "FP64", "data": [...]}]}'
        )
    if inputs is None:
        raise RequestError(
            'missing key \'inputs\': send {"inputs": [{"name": ..., "shape": [N, F], '
            '"datatype": "FP64", "data": [...]}]}'
        )
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        request_id = str(request_id)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"'parameters' must be an object, got {_json_type(params)}")
    content_type = params.get("content_type")
    if content_type not in (None, "np", "pd"):
        raise RequestError(
            f"unsupported parameters.content_type {content_type!r}; use 'np' or 'pd'"
        )

    proba = _proba_option(params.get(PREDICT_PROBA_PARAM), f"parameters.{PREDICT_PROBA_PARAM}")

    if len(inputs) == 1 and content_type != "pd":
        return decode_matrix(_tensor(inputs[0], 0, allow_bytes=False), spec, request_id, proba)

    columns: dict[str, np.ndarray] = {}
    n_rows: int | None = None
    for i, tensor in enumerate(inputs):
        arr = _tensor(tensor, i, allow_bytes=True)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise RequestError(
                f"inputs[{i}] ({tensor['name']!r}): a named (column) input must have shape [N] "
                f"or [N, 1], got {list(arr.shape)}"
            )
        if n_rows is None:
            n_rows = arr.shape[0]
        elif arr.shape[0] != n_rows:
            raise RequestError(
                f"inputs[{i}] ({tensor['name']!r}) has {arr.shape[0]} rows but inputs[0] has "
                f"{n_rows}; every column must have the same length"
            )
        if tensor["name"] in columns:
            raise RequestError(f"inputs[{i}]: duplicate input name {tensor['name']!r}")
        columns[tensor["name"]] = arr
    if not n_rows:
        raise RequestError("inputs have no rows")
    X = _from_columns(columns, n_rows, spec)
    return Batch(X=X, protocol="v2", request_id=request_id, n_rows=n_rows, proba=proba)


def decode_matrix(
    arr: np.ndarray, spec: FeatureSpec, request_id: str | None = None, proba: bool | None = None
) -> Batch:
    """A v2 request's one input tensor, already an array of its shape and datatype, as a batch.

    Raises:
        RequestError: Not a matrix ``spec`` accepts (rank, rows, feature count, NaN/inf).
    """
    X = _check_matrix(arr, spec, what="inputs[0]")
    return Batch(X=X, protocol="v2", request_id=request_id, n_rows=X.shape[0], proba=proba)


def _proba_option(value: Any, where: str) -> bool | None:
    """The request's probabilities-or-labels choice (None when it makes none)."""
    if value is None or isinstance(value, bool):
        return value
    raise RequestError(f"{where!r} must be true or false, got {value!r}")


def encode_v1(result: Any) -> dict[str, Any]:
    """The v1 answer ``{"predictions": [...]}``."""
    if isinstance(result, np.ndarray):
        return {"predictions": result.tolist()}
    return {"predictions": list(result)}


def encode_v2(
    result: Any, model_name: str, request_id: str | None, model_version: str | None = None
) -> dict[str, Any]:
    """The v2 answer with one output tensor named ``output-0`` (like the stock runtimes).

    Args:
        result: Model output (array-like).
        model_name: Echoed as ``model_name``.
        request_id: The request's ``id``; a fresh UUID when the request had none.
        model_version: Echoed as ``model_version`` when known.

    Returns:
        The JSON-ready response dict.
    """
    arr = np.asarray(result)
    response: dict[str, Any] = {
        "model_name": model_name,
        "id": request_id if request_id is not None else new_id(),
        "outputs": [tensor_dict(OUTPUT_NAME, arr)],
    }
    if model_version:
        response["model_version"] = model_version
    return response


def tensor_dict(name: str, arr: np.ndarray) -> dict[str, Any]:
    """A v2 JSON tensor (flattened, row-major data) for ``arr``."""
    return {
        "name": name,
        "shape": list(arr.shape),
        "datatype": v2_datatype(arr.dtype),
        "data": arr.ravel().tolist(),
    }


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name for a numpy dtype (strings and objects are BYTES)."""
    name = _DATATYPE_NAMES.get(dtype)
    if name is not None:
        return name
    # Not a native numeric dtype as such (a byte-swapped or annotated one may still compare
    # equal to one): the lookup by equality decides.
    for name, np_type in V2_NUMERIC_DTYPES.items():
        if dtype == np_type:
            return name
    return V2_BYTES


def v2_input_tensor(spec: FeatureSpec) -> dict[str, Any]:
    """The v2 metadata of the input tensor ``spec`` accepts (feature names as its parameters)."""
    tensor: dict[str, Any] = {
        "name": INPUT_NAME,
        "datatype": v2_datatype(spec.dtype),
        "shape": [-1, spec.n_features if spec.n_features is not None else -1],
    }
    if spec.feature_names:
        tensor["parameters"] = {"feature_names": list(spec.feature_names)}
    return tensor


def v2_output_array(response: Any, source: str = "predictor") -> np.ndarray:
    """The first output tensor of a v2 response, as an array of its declared shape.

    Args:
        response: Parsed v2 response.
        source: Who sent it, for error messages.

    Raises:
        RequestError: (502) The response is not a v2 answer.
    """
    try:
        out = response["outputs"][0]
        arr = np.asarray(out["data"])
        if out.get("datatype") in V2_NUMERIC_DTYPES:
            arr = arr.astype(V2_NUMERIC_DTYPES[out["datatype"]], copy=False)
        return arr.reshape(out["shape"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RequestError(f"{source} sent a malformed v2 response: {e!r}", status=502) from e


# --------------------------------------------------------------------------------------------
# Helpers


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _to_numeric(values: Any, what: str) -> np.ndarray:
    """Nested lists -> numeric array; refuses strings, ragged rows and other non-numbers."""
    try:
        arr = np.asarray(values)
    except ValueError as e:
        # numpy's message for ragged input ("inhomogeneous shape ...") is precise enough.
        raise RequestError(f"{what} is not a rectangular array of numbers: {e}") from e
    if arr.dtype.kind in "fiub":
        return arr
    if arr.dtype.kind == "O":
        # None (JSON null) makes an object array; anything else in there is not a number.
        flat = arr.ravel()
        for v in flat:
            if v is not None and (isinstance(v, (str, list, dict)) or not _is_number(v)):
                raise RequestError(
                    f"{what} contains a non-numeric value {v!r}; every feature must be a number"
                )
        return np.array([math.nan if v is None else v for v in flat], dtype=np.float64).reshape(
            arr.shape
        )
    bad = next((v for v in arr.ravel() if isinstance(v, str)), arr.ravel()[0])
    raise RequestError(f"{what} contains a non-numeric value {str(bad)!r}; send numbers")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number, bool))


def _check_finite(arr: np.ndarray, spec: FeatureSpec, what: str) -> None:
    if arr.dtype.kind != "f":
        return
    if spec.allow_nan:
        if np.isinf(arr).any():
            raise RequestError(f"{what} contains an infinite value; this model accepts only finite")
    elif not np.isfinite(arr).all():
        raise RequestError(
            f"{what} contains NaN/null or infinite values; this model needs every feature set"
        )


def _matrix(values: Any, spec: FeatureSpec, what: str) -> Any:
    return _check_matrix(_to_numeric(values, what), spec, what)


def _check_matrix(arr: np.ndarray, spec: FeatureSpec, what: str) -> Any:
    if arr.ndim != 2:
        hint = " (wrap a single row in a list: [[f1, f2, ...]])" if arr.ndim == 1 else ""
        raise RequestError(
            f"{what} must be 2-D: a list of rows of features, got shape {list(arr.shape)}{hint}"
        )
    if arr.shape[0] == 0:
        raise RequestError(f"{what} has no rows")
    if spec.n_features is not None and arr.shape[1] != spec.n_features:
        raise RequestError(
            f"{what}: expected {spec.n_features} features per row, got {arr.shape[1]}"
        )
    if arr.dtype != spec.dtype:
        arr = arr.astype(spec.dtype)
    _check_finite(arr, spec, what)
    if spec.frame_input and spec.feature_names is not None:
        import pandas as pd

        return pd.DataFrame(arr, columns=list(spec.feature_names), copy=False)
    return arr


def is_shape(value: Any) -> bool:
    """True when ``value`` is a v2 tensor shape: a list of non-negative integers."""
    if not isinstance(value, list):
        return False
    for d in value:
        # bool is an int subclass, but true/false is no dimension.
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            return False
    return True


def _tensor(tensor: Any, i: int, *, allow_bytes: bool) -> np.ndarray:
    """One v2 input tensor -> array of its declared shape and datatype."""
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[{i}] must be an object with name, shape, datatype, data")
    try:
        name, shape, datatype, data = (
            tensor["name"],
            tensor["shape"],
            tensor["datatype"],
            tensor["data"],
        )
    except KeyError:
        missing = next(key for key in _TENSOR_KEYS if key not in tensor)
        raise RequestError(f"inputs[{i}] is missing {missing!r}") from None
    if not isinstance(name, str):
        raise RequestError(f"inputs[{i}].name must be a string")
    where = f"inputs[{i}] ({name!r})"
    if not is_shape(shape):
        raise RequestError(f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    # An ndarray comes from the binary extension (kfp_serve.serving.runtime.binary), already
    # decoded to the datatype; the checks below treat it like JSON data.
    if not isinstance(data, _DATA_TYPES):
        raise RequestError(f"{where}.data must be a list, got {_json_type(data)}")
    if datatype == V2_BYTES:
        if not allow_bytes:
            raise RequestError(
                f"{where}: datatype BYTES is not accepted for a feature matrix; send numbers "
                f"as FP32/FP64/INT64 (strings only as named columns with content_type 'pd')"
            )
        arr = np.asarray(data, dtype=object)
    else:
        target = _NUMERIC_DTYPES.get(datatype)
        if target is None:
            raise RequestError(
                f"{where}: unsupported datatype {datatype!r}; use one of FP32, FP64, INT64 "
                f"(or {', '.join(sorted(V2_NUMERIC_DTYPES))}, BYTES)"
            )
        arr = _to_numeric(data, where)
        info = _INT_RANGES.get(datatype)
        if info is not None:
            if arr.dtype.kind == "f":
                raise RequestError(f"{where}: datatype {datatype} but data holds non-integers")
            # An array cast wraps silently (300 as UINT8 becomes 44): check the range first.
            if arr.size and arr.dtype.kind in "iu" and (
                int(arr.min()) < info.min or int(arr.max()) > info.max
            ):
                raise RequestError(
                    f"{where}: data does not fit datatype {datatype}: values must be within "
                    f"[{info.min}, {info.max}]"
                )
        elif target.kind == "b" and arr.dtype.kind != "b":
            raise RequestError(f"{where}: datatype BOOL but data holds non-booleans")
        if arr.dtype != target:
            try:
                arr = arr.astype(target)
            except (OverflowError, ValueError) as e:
                raise RequestError(f"{where}: data does not fit datatype {datatype}: {e}") from e
    expected = math.prod(shape)
    if arr.size != expected:
        raise RequestError(
            f"{where}: shape {shape} needs {expected} values but data has {arr.size}"
        )
    return arr.reshape(shape)


def _columns_from_records(rows: list[Any], key: str) -> dict[str, np.ndarray]:
    names = list(rows[0].keys())
    wanted = set(names)
    for r, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(f"'{key}'[{r}] must be an object like the first row")
        if row.keys() != wanted:
            missing = sorted(wanted - row.keys())
            extra = sorted(row.keys() - wanted)
            raise RequestError(
                f"'{key}'[{r}] has different keys than the first row "
                f"(missing {missing}, extra {extra})"
            )
    columns = {}
    for name in names:
        values = [row[name] for row in rows]
        try:
            arr = np.asarray(values)
        except ValueError as e:
            raise RequestError(f"feature {name!r} is not a column of scalars: {e}") from e
        if arr.ndim != 1:
            raise RequestError(f"feature {name!r} must hold one scalar per row")
        columns[name] = arr
    return columns


def _from_columns(columns: dict[str, np.ndarray], n_rows: int, spec: FeatureSpec) -> Any:
    """Named columns -> model input, ordered as the model was fitted."""
    if spec.feature_names is not None:
        missing = [f for f in spec.feature_names if f not in columns]
        if missing:
            raise RequestError(f"missing feature(s) {missing}; expected {list(spec.feature_names)}")
        unknown = [c for c in columns if c not in spec.feature_names]
        if unknown:
            raise RequestError(f"unknown feature(s) {unknown}; expected {list(spec.feature_names)}")
        order = list(spec.feature_names)
    else:
        order = list(columns)
        if spec.n_features is not None and len(order) != spec.n_features:
            raise RequestError(f"expected {spec.n_features} features, got {len(order)}: {order}")

    if spec.frame_input:
        import pandas as pd

        data = {}
        for name in order:
            col = columns[name]
            if col.dtype.kind in "fiu" or (col.dtype.kind == "O" and _all_numbers(col)):
                col = _to_numeric(col, f"feature {name!r}").astype(spec.dtype)
                _check_finite(col, spec, f"feature {name!r}")
            data[name] = col
        return pd.DataFrame(data, columns=order)

    cols = []
    for name in order:
        col = columns[name]
        if col.dtype.kind not in "fiub":
            col = _to_numeric(col, f"feature {name!r}")
        cols.append(col.astype(spec.dtype, copy=False))
    X = np.column_stack(cols) if cols else np.empty((n_rows, 0), dtype=spec.dtype)
    _check_finite(X, spec, "features")
    return X


def _all_numbers(col: np.ndarray) -> bool:
    return all(v is None or (_is_number(v) and not isinstance(v, str)) for v in col)
