"""The predictions of a KServe v1 or v2 answer, as a plain list (one entry per row).

Kept apart from the client (``endpoint.py``) so the local router can compare two revisions'
answers without importing an HTTP client.
"""

from __future__ import annotations

import math
from typing import Any

from kfp_serve.serving.errors import ServingError


def response_predictions(response: dict[str, Any]) -> list[Any]:
    """The predictions of a v1 or v2 response as a plain list, one entry per row."""
    if "predictions" in response:
        return list(response["predictions"])
    outputs = response.get("outputs")
    if not outputs:
        raise ServingError(f"the response has neither 'predictions' nor 'outputs': {response!r}")
    output = outputs[0]
    data = list(output.get("data", []))
    shape = [int(n) for n in output.get("shape", [len(data)])]
    return _reshape(data, shape)


def _reshape(data: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return data
    step = math.prod(shape[1:])
    return [_reshape(data[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
