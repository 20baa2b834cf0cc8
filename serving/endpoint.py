"""A client for a served model: ``Endpoint("iris").predict(rows)``.

The endpoint is found through the serving backend (the local registry, or the cluster), so the
same code works on a laptop and in a pipeline pod. The request protocol (KServe v1 or v2) follows
the served manifest's ``protocolVersion``; ``Endpoint(name, protocol="grpc")`` talks OIP gRPC to
the endpoint's gRPC address instead. Only httpx is needed for REST: no KServe import (gRPC loads
grpcio and the protos the kserve package ships, on first use).
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

import httpx

from kfp_serve.artifacts.names import validate_name
from kfp_serve.retry import retrying
from kfp_serve.serving.backends.base import (
    LOCAL,
    REASON_PROCESS_EXITED,
    EndpointStatus,
    ServingBackend,
    get_backend,
)
from kfp_serve.serving.constants import PREDICT_PROBA_ENV, PREDICT_PROBA_PARAM
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.http import tls_context
from kfp_serve.serving.predictions import response_predictions
from kfp_serve.serving.runtime.datatypes import V2_BYTES, V2_NUMERIC_DATATYPES
from kfp_serve.serving.runtime.fidelity import KFP_SERVE as KFP_SERVE_RUNTIME
from kfp_serve.serving.runtime.fidelity import XGB_SERVER

#: What ``protocol=`` accepts.
PROTOCOLS = ("v1", "v2", "grpc")
#: Statuses that right after Ready mean "not routed yet" (kserve/kserve#1658), so retrying helps.
_RETRY_STATUS = {404, 503}
#: The local router's answer when the server behind it is down.
_BAD_GATEWAY = {502}


# numpy dtype (kind, itemsize) -> KServe v2 datatype.
_V2_DATATYPES = {dtype: name for name, dtype in V2_NUMERIC_DATATYPES.items()}


class Endpoint:
    """A served InferenceService, ready to be queried.

    Args:
        name: InferenceService name.
        namespace: Kubernetes namespace (ignored by the local backend).
        backend: A ServingBackend, a backend name ("local", "kubernetes"), or None for the
            default (see ``kfp_serve.serving.backends.base.get_backend``).
        timeout: Seconds to wait for one answer.
        retry_window: Seconds during which 404/503, connection failures and an unavailable
            server are retried with backoff before the error is raised. Right after Ready a
            cluster may still answer 404 (kserve/kserve#1658).
        protocol: ``"v1"``, ``"v2"`` (REST) or ``"grpc"`` (OIP gRPC at the endpoint's gRPC
            address; answers have the v2 shape). Default: the served manifest's
            ``protocolVersion``.

    Raises:
        ServingError: the backend knows no endpoint called ``name``, or ``protocol`` is none of
            the above.
    """

    def __init__(
        self,
        name: str,
        namespace: str | None = None,
        *,
        backend: ServingBackend | str | None = None,
        timeout: float = 30.0,
        retry_window: float = 5.0,
        protocol: str | None = None,
    ) -> None:
        self.name = validate_name(name, "endpoint name")
        if protocol not in (None, *PROTOCOLS):
            raise ServingError(
                f"protocol={protocol!r} is not supported: use one of "
                + ", ".join(repr(p) for p in PROTOCOLS)
            )
        self._protocol = protocol
        self._grpc: Any = None
        self.namespace = namespace
        self._backend = (
            backend
            if backend is not None and not isinstance(backend, str)
            else (get_backend(backend))
        )
        self.timeout = timeout
        self.retry_window = retry_window
        self._client: httpx.Client | None = None
        self._status = self._backend.get(self.name, namespace)
        self._connect(self._status)

    # -- discovery ----------------------------------------------------------------------------

    def _connect(self, status: EndpointStatus) -> None:
        if not status.url:
            raise ServingError(
                f"endpoint {self.name!r} has no URL yet ({status.reason or 'not ready'}: "
                f"{status.message or 'no details'}); wait for serve() to finish or check "
                "`kfp-serve endpoints`"
            )
        if self._client is not None:
            self._client.close()
        host = urlsplit(status.url).hostname or ""
        self._client = httpx.Client(
            base_url=status.url.rstrip("/"),
            headers=dict(status.headers),
            timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)),
            verify=tls_context(),
            # A proxy from the environment must never see loopback traffic.
            trust_env=host not in ("127.0.0.1", "localhost", "::1"),
        )
        self._status = status

    def refresh(self) -> EndpointStatus:
        """Ask the backend again (a rollout may have changed the URL) and return the status."""
        status = self._backend.get(self.name, self.namespace)
        if status.url and (
            status.url != self._status.url or status.headers != self._status.headers
        ):
            self._connect(status)
        else:
            self._status = status
        return status

    @property
    def status(self) -> EndpointStatus:
        """The status the backend reported last."""
        return self._status

    @property
    def url(self) -> str:
        """The base URL requests go to (e.g. ``http://127.0.0.1:40123``)."""
        return str(self._status.url)

    @property
    def protocol(self) -> str:
        """``v1``, ``v2`` or ``grpc``: as given, else the served manifest's
        ``protocolVersion``."""
        if self._protocol is not None:
            return self._protocol
        predictor = (self._status.manifest.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model") or {}
        return str(model.get("protocolVersion") or predictor.get("protocolVersion") or "v1")

    @property
    def serves_probabilities(self) -> bool:
        """True if the predictor answers class probabilities by default: started with
        ``PREDICT_PROBA=true``, or ``kserve-xgbserver`` (the booster's output, always)."""
        predictor = (self._status.manifest.get("spec") or {}).get("predictor") or {}
        if (predictor.get("model") or {}).get("runtime") == XGB_SERVER:
            return True
        containers = [predictor.get("model") or {}, *(predictor.get("containers") or [])]
        return any(
            str(e.get("name")) == PREDICT_PROBA_ENV
            and str(e.get("value", "")).strip().lower() in ("1", "true", "yes")
            for c in containers for e in c.get("env") or []
        )

    @property
    def chooses_per_request(self) -> bool:
        """True if the predictor reads each request's probabilities-or-labels choice: the
        kfp-serve runtime does (named in the manifest, or the local default when none is);
        KServe's stock runtimes read only ``PREDICT_PROBA``, when they start."""
        predictor = (self._status.manifest.get("spec") or {}).get("predictor") or {}
        runtime = (predictor.get("model") or {}).get("runtime")
        if runtime:
            return str(runtime) == KFP_SERVE_RUNTIME
        return self._status.backend == LOCAL

    @property
    def model_name(self) -> str:
        """The model name in request paths: the transformer's ``--model_name`` or the
        InferenceService name (what KServe passes to both servers)."""
        transformer = (self._status.manifest.get("spec") or {}).get("transformer") or {}
        for container in transformer.get("containers") or []:
            args = [str(a) for a in container.get("args") or []]
            for i, arg in enumerate(args):
                if arg.startswith("--model_name="):
                    return arg.split("=", 1)[1]
                if arg == "--model_name" and i + 1 < len(args):
                    return args[i + 1]
        return self.name

    def _single_model(self) -> str:
        """The model name of a single-model endpoint; a multi-model one needs ``model=``."""
        from kfp_serve.serving.trained_model import is_multi_model

        if is_multi_model(self._status.manifest):
            hosted = sorted(m.name for m in self._status.models)
            raise ServingError(
                f"endpoint {self.name!r} hosts several models: pass model= one of "
                f"{hosted or '(none loaded yet)'}"
            )
        return self.model_name

    # -- requests -----------------------------------------------------------------------------

    def predict(
        self,
        x: Any,
        *,
        protocol: str | None = None,
        proba: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Predict ``x`` (rows as a list, numpy array or pandas DataFrame); the response dict.

        Args:
            x: The rows. A DataFrame is sent with its column names (the model's feature names
                when it was trained on a file with named columns), in any column order.
            protocol: Override the endpoint's protocol (``v1``, ``v2`` or ``grpc``).
            proba: Ask for class probabilities (``predict_proba``) instead of the server's
                default answer. The kfp-serve runtime answers this per request; an endpoint
                on a stock KServe runtime must have been served with probabilities on
                (``kfp-serve serve MODEL_ID --proba``: ``PREDICT_PROBA=true``), else this raises.
            model: The hosted model to ask, on a multi-model endpoint (``serve_many``).

        Returns:
            The server's JSON answer: ``{"predictions": [...]}`` for v1, ``{"outputs": [...],
            ...}`` for v2 and gRPC.

        Raises:
            ServingError: the endpoint is down, not ready, or refused the request (the message
                carries the server's explanation).
        """
        if proba and not self.serves_probabilities and not self.chooses_per_request:
            predictor = (self._status.manifest.get("spec") or {}).get("predictor") or {}
            runtime = (predictor.get("model") or {}).get("runtime") or "a stock KServe runtime"
            raise ServingError(
                f"endpoint {self.name!r} runs {runtime}, which answers probabilities only when "
                f"started with {PREDICT_PROBA_ENV}=true: serve it with `kfp-serve serve "
                "MODEL_ID --proba`, or on runtime 'kfp-serve', which answers per request"
            )
        protocol = protocol or self.protocol
        name = model or self._single_model()
        if protocol == "v2":
            body = v2_request(x)
            if proba:
                body.setdefault("parameters", {})[PREDICT_PROBA_PARAM] = True
            return self._post(f"/v2/models/{name}/infer", body, "predict")
        if protocol == "v1":
            body = v1_request(x)
            if proba:
                body[PREDICT_PROBA_PARAM] = True
            return self._post(f"/v1/models/{name}:predict", body, "predict")
        if protocol == "grpc":
            request = v2_request(x)
            if proba:
                request.setdefault("parameters", {})[PREDICT_PROBA_PARAM] = True
            return self._grpc_client().infer(name, request)
        raise ServingError(
            f"protocol {protocol!r} is not supported: use one of "
            + ", ".join(repr(p) for p in PROTOCOLS)
        )

    def predictions(self, x: Any, *, protocol: str | None = None) -> list[Any]:
        """Predict ``x`` and return just the predictions, one per row, as a plain list."""
        return response_predictions(self.predict(x, protocol=protocol))

    def explain(self, x: Any) -> dict[str, Any]:
        """Per-feature attributions of each row of ``x`` (``POST /v1/models/NAME:explain``).

        Raises:
            ServingError: the served model has no explanation (HTTP 501) or the request failed.
        """
        return self._post(f"/v1/models/{self.model_name}:explain", v1_request(x), "explain")

    def ready(self) -> bool:
        """True if the model answers Ready now (one quick probe, no retries, no exception)."""
        if self.protocol == "grpc":
            return self._grpc_client().ready(self.model_name, min(self.timeout, 2.0))
        assert self._client is not None
        path = (
            f"/v2/models/{self.model_name}/ready"
            if self.protocol == "v2"
            else f"/v1/models/{self.model_name}"
        )
        try:
            response = self._client.get(path, timeout=min(self.timeout, 2.0))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def metadata(self) -> dict[str, Any]:
        """The model's metadata: v2 ``GET /v2/models/NAME`` (name, versions, inputs, outputs),
        falling back to v1 ``GET /v1/models/NAME`` where the server has no v2 route (over gRPC:
        ``ModelMetadata``)."""
        if self.protocol == "grpc":
            return self._grpc_client().metadata(self.model_name)
        try:
            return self._request(
                "GET", f"/v2/models/{self.model_name}", None, "metadata", retry=False
            )
        except _NotFound:
            return self._request("GET", f"/v1/models/{self.model_name}", None, "metadata")

    def describe(self) -> dict[str, Any]:
        """What the endpoint serves now (asked again): URLs, backend, every revision with its
        model name/version/id/alias, transformer, traffic percent, ready state and start time,
        the applied ServeConfig and recent rollout events (see ``kfp_serve.serving.describe``).
        """
        from kfp_serve.serving.delivery import known_revisions
        from kfp_serve.serving.describe import describe, recent_events

        status = self.refresh()
        return describe(status, known_revisions(status), recent_events(self._backend, status))

    def close(self) -> None:
        """Close the HTTP (and gRPC) connections."""
        if self._client is not None:
            self._client.close()
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, url={self._status.url!r}, protocol={self.protocol!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def _grpc_client(self) -> Any:
        address = self._status.grpc_address
        if not address:
            self.refresh()  # a rollout may have turned gRPC on
            address = self._status.grpc_address
        if not address:
            raise ServingError(
                f"endpoint {self.name!r} serves no gRPC: serve it with `--enable_grpc=true` in "
                "the predictor's (or transformer's) container args (ServeConfig "
                "predictor.container.args), or use protocol='v1'/'v2'"
            )
        if self._grpc is None or self._grpc.address != address:
            from kfp_serve.serving.grpc_client import GrpcClient

            if self._grpc is not None:
                self._grpc.close()
            self._grpc = GrpcClient(
                self.name, address, self.timeout, self.retry_window,
                authority=self._status.headers.get("Host"),
            )
        return self._grpc

    def _post(self, path: str, payload: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except ValueError:
            # JSON has no NaN: send it as null (servers read null as a missing value). An
            # infinity has no JSON form at all.
            body = json.dumps(_nan_to_null(payload, self.name), allow_nan=False).encode()
        return self._request("POST", path, body, what)

    def _request(
        self, method: str, path: str, body: bytes | None, what: str, *, retry: bool = True
    ) -> dict[str, Any]:
        """One request, retried while the endpoint is not reachable or not routed yet (for
        ``retry_window`` seconds, or never with ``retry=False``)."""
        attempts = (
            retrying(deadline=self.retry_window, on=_NotYet, first_wait=0.05, max_wait=1.0)
            if retry
            else retrying(attempts=1, on=_NotYet)
        )
        try:
            for attempt in attempts:
                with attempt:
                    return self._attempt(method, path, body, what, retry=retry)
        except _NotYet as e:
            raise ServingError(
                f"{e}; gave up after retrying for {self.retry_window:.0f} s. Check "
                "`kfp-serve endpoints`, or serve the model again"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - retrying() re-raises

    def _attempt(
        self, method: str, path: str, body: bytes | None, what: str, *, retry: bool
    ) -> dict[str, Any]:
        """Send once; the answer's JSON, or the error it means.

        Raises:
            _NotYet: a failure worth another attempt (unreachable, 404/503 right after Ready).
            ServingError: any other failure.
        """
        assert self._client is not None
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            response = self._client.request(method, path, content=body, headers=headers)
        except httpx.TimeoutException as e:
            raise ServingError(
                f"endpoint {self.name!r} did not answer {what} within {self.timeout:.0f} s "
                f"({type(e).__name__} at {self.url}{path}); pass a larger timeout= or check "
                "the server's load"
            ) from e
        except httpx.TransportError as e:
            raise _NotYet(self._diagnose(f"cannot connect to {self.url} ({e})")) from None
        code = response.status_code
        if code < 300:
            try:
                return response.json()
            except ValueError as e:
                raise ServingError(
                    f"endpoint {self.name!r} answered {what} with something that is not "
                    f"JSON: {response.text[:200]!r}"
                ) from e
        message = _server_message(response)
        if code in _BAD_GATEWAY:
            raise _NotYet(self._diagnose(f"HTTP {code}: {message}"))
        if code in _RETRY_STATUS:
            failure = (
                f"model {self.model_name!r} of endpoint {self.name!r} is not ready or "
                f"not found (HTTP {code} at {self.url}{path}: {message})"
            )
            if code == 404 and not retry:
                raise _NotFound(failure)
            raise _NotYet(failure)
        if code == 501:
            raise ServingError(
                f"endpoint {self.name!r} does not support {what} (HTTP 501): {message}"
            )
        if 400 <= code < 500:
            raise ServingError(
                f"endpoint {self.name!r} rejected the {what} request (HTTP {code}): {message}"
            )
        raise ServingError(
            f"endpoint {self.name!r} failed on {what} (HTTP {code}): {message}; see "
            "the server log (`kfp-serve endpoints` shows where)"
        )

    def _diagnose(self, failure: str) -> str:
        """Explain a failed connection from the backend's view; raise at once if it is dead."""
        try:
            status = self.refresh()
        except ServingError as e:
            raise ServingError(f"endpoint {self.name!r} is gone: {e}") from None
        if not status.ready and status.reason == REASON_PROCESS_EXITED:
            raise ServingError(
                f"endpoint {self.name!r} is not running: {status.message}. Run `kfp-serve "
                "endpoints` to see it, or serve it again"
            )
        return f"endpoint {self.name!r} is unreachable: {failure}"


class _NotFound(ServingError):
    pass


class _NotYet(ServingError):
    """A failed attempt that another attempt may fix; its message says what failed."""


def _nan_to_null(value: Any, name: str) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ServingError(
                f"cannot send the rows to endpoint {name!r}: they contain an infinite value, "
                "which JSON cannot carry; clip or drop it first"
            )
        return value
    if isinstance(value, list):
        return [_nan_to_null(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v, name) for k, v in value.items()}
    return value


def _server_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                value = data[key]
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(data)[:500]


# --------------------------------------------------------------------------------------------
# Payloads


def _is_dataframe(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "columns") and hasattr(x, "dtypes")


def _rows(x: Any) -> Any:
    """``x`` as JSON-ready nested lists (numpy and pandas converted without copying twice)."""
    if _is_dataframe(x):
        return x.to_numpy().tolist()
    if hasattr(x, "tolist"):  # numpy arrays, pandas Series
        return x.tolist()
    if isinstance(x, tuple):
        return [_rows(v) for v in x]
    if isinstance(x, list):
        return [_rows(v) if hasattr(v, "tolist") or isinstance(v, tuple) else v for v in x]
    return x


def v1_request(x: Any) -> dict[str, Any]:
    """A KServe v1 request body: ``{"instances": rows}``.

    A DataFrame is sent as records (``{column: value}`` per row), so the server matches features
    by name rather than by column order.
    """
    if _is_dataframe(x):
        return {
            "instances": [
                {str(k): v for k, v in row.items()} for row in x.to_dict(orient="records")
            ]
        }
    return {"instances": _rows(x)}


def v2_datatype(dtype: Any) -> str:
    """The KServe v2 datatype of a numpy dtype (strings and objects are BYTES)."""
    kind, size = getattr(dtype, "kind", "O"), getattr(dtype, "itemsize", 0)
    if kind in ("U", "S", "O"):
        return V2_BYTES
    try:
        return _V2_DATATYPES[(kind, size)]
    except KeyError:
        raise ServingError(
            f"dtype {dtype!s} has no KServe v2 datatype; convert it to float64"
        ) from None


def v2_request(x: Any) -> dict[str, Any]:
    """A KServe v2 request body.

    A DataFrame becomes one named input per column with ``content_type: pd`` (the server matches
    columns by name); anything else becomes one tensor ``input-0`` with its shape and datatype.
    """
    import numpy as np

    if _is_dataframe(x):
        inputs = []
        for column in x.columns:
            values = x[column].to_numpy()
            inputs.append(
                {
                    "name": str(column),
                    "shape": [len(values)],
                    "datatype": v2_datatype(values.dtype),
                    "data": values.tolist(),
                }
            )
        return {"inputs": inputs, "parameters": {"content_type": "pd"}}
    array = np.asarray(x)
    datatype = v2_datatype(array.dtype)
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(array.shape),
                "datatype": datatype,
                "data": array.ravel().tolist(),
            }
        ]
    }


__all__ = ["Endpoint", "v1_request", "v2_request", "response_predictions", "v2_datatype"]
