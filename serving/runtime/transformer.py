"""The kfp-serve transformer runtime: apply a Transformer artifact, then ask the predictor.

Run it as ``python -m kfp_serve.serving.runtime.transformer --model_name NAME --model_dir DIR
--predictor_host HOST:PORT --predictor_protocol v1|v2 --http_port P``. Callers may speak v1 or v2
whatever the predictor speaks: the request is decoded and validated against the transformer's
input signature, ``transform()`` is applied, the result is sent to the predictor in
``--predictor_protocol``, and the predictor's answer comes back in the caller's protocol.
``POST /v1/models/NAME:explain`` is forwarded too (attributions then refer to the transformed
features the model sees). To a v2 predictor the rows go as a binary FP64 tensor and come back as
binary outputs (the OIP binary extension: no JSON encoding of numbers on the inner hop). Model
metadata answers the transformer's inputs and the predictor's outputs and version.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfp_serve.serving.constants import PREDICT_PROBA_PARAM
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime import binary
from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput, kserve
from kfp_serve.serving.runtime.codec import (
    INPUT_NAME,
    V2_NUMERIC_DTYPES,
    Batch,
    RequestError,
    encode_v2,
    v2_datatype,
    v2_input_tensor,
)
from kfp_serve.serving.runtime.ids import new_id
from kfp_serve.serving.runtime.loader import ServedTransformer, load_transformer
from kfp_serve.serving.runtime.predictor import decode_payload
from kfp_serve.serving.runtime.server import (
    configure_logging,
    parse_args,
    report_ignored_flags,
    run_server,
)

log = logging.getLogger("kfp_serve.runtime.transformer")

SUPPORTED_PROTOCOLS = ("v1", "v2")
#: How long the transformer keeps asking a predictor that is not up yet for its metadata.
PREDICTOR_METADATA_DEADLINE_S = 120.0
_JSON = {"content-type": "application/json"}


def _dense(X: Any) -> np.ndarray:
    if hasattr(X, "toarray"):  # scipy sparse output (OneHotEncoder, ...)
        X = X.toarray()
    elif hasattr(X, "to_numpy"):  # set_output(transform="pandas")
        X = X.to_numpy()
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise RequestError(f"the transformer produced non-numeric output: {e}", 500) from e
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


class TransformerModel(kserve.Model):
    """A kserve.Model that transforms inputs and forwards them to a predictor over HTTP.

    Args:
        name: Model name (the predictor serves the same name, as in KServe).
        model_dir: Transformer artifact directory (``transformer.joblib``).
        predictor_host: ``HOST[:PORT]`` (or a full ``http(s)://`` URL) of the predictor.
        predictor_protocol: ``"v1"`` or ``"v2"``: what the predictor speaks.
        use_ssl: Talk https to the predictor.
        timeout: Seconds to wait for the predictor.
        retries: Extra attempts to connect to the predictor.
        health_check: Ready only while the predictor is ready too.
    """

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        predictor_host: str,
        predictor_protocol: str = "v1",
        *,
        use_ssl: bool = False,
        timeout: float = 600.0,
        retries: int = 0,
        health_check: bool = False,
    ) -> None:
        super().__init__(name)
        if predictor_protocol not in SUPPORTED_PROTOCOLS:
            raise ServingError(
                f"predictor protocol {predictor_protocol!r} is not supported; use v1 or v2"
            )
        if not predictor_host:
            raise ServingError("a transformer needs --predictor_host HOST[:PORT]")
        self.model_dir = Path(model_dir)
        self.protocol = predictor_protocol
        scheme = "https" if use_ssl else "http"
        self.base_url = (
            predictor_host.rstrip("/")
            if "://" in predictor_host
            else f"{scheme}://{predictor_host}"
        )
        self.timeout = timeout
        self.retries = retries
        self.health_check = health_check
        self.served: ServedTransformer | None = None
        self._client: Any = None
        self._dumps: Any = None
        self._dump_opts = 0
        self._loads: Any = None
        self._predict_path = (
            f"/v1/models/{name}:predict"
            if predictor_protocol == "v1"
            else f"/v2/models/{name}/infer"
        )
        self._explain_path = f"/v1/models/{name}:explain"
        self._metadata_path = f"/v2/models/{name}"
        #: The predictor's v2 metadata once it answered (outputs and version come from it).
        self.predictor_metadata: dict[str, Any] | None = None
        self.version: str | None = None
        self.timers: Any = None
        #: A :class:`~kfp_serve.serving.runtime.batcher.Batcher` of calls to the predictor
        #: (ServeConfig ``transformer.batcher``), None when batching is off.
        self.batcher: Any = None
        self._metadata_task: asyncio.Task[None] | None = None

    def load(self) -> bool:
        """Load the transformer artifact.

        Raises:
            ServingError: The directory is not servable; the message says why.
        """
        self.served = load_transformer(self.model_dir)
        self.ready = True
        log.info(
            "loaded transformer %s from %s; predictor %s (%s)",
            type(self.served.transformer).__name__,
            self.served.path,
            self.base_url,
            self.protocol,
        )
        return True

    async def start_client(self) -> None:
        """Open the keep-alive HTTP client to the predictor (inside the server's event loop)."""
        import orjson

        from kfp_serve.serving.runtime.upstream import UpstreamClient

        self._dumps = orjson.dumps
        self._dump_opts = orjson.OPT_SERIALIZE_NUMPY
        self._loads = orjson.loads
        self._client = UpstreamClient(self.base_url, timeout=self.timeout, retries=self.retries)
        self._metadata_task = asyncio.create_task(self._learn_predictor(), name="predictor-meta")

    async def _learn_predictor(self) -> None:
        """Ask the predictor for its metadata until it answers (it may start after us)."""
        from kfp_serve.retry import retrying_async

        class _NotYet(Exception):
            pass

        try:
            async for attempt in retrying_async(
                deadline=PREDICTOR_METADATA_DEADLINE_S, on=_NotYet, max_wait=2.0
            ):
                with attempt:
                    try:
                        r = await self._client.get(self._metadata_path, timeout=5.0)
                    except Exception as e:  # noqa: BLE001 - not up yet
                        raise _NotYet from e
                    if r.status != 200:
                        raise _NotYet
                    meta = self._loads(r.body)
        except _NotYet:
            log.warning("the predictor at %s never answered its v2 metadata", self.base_url)
            return
        self.predictor_metadata = meta
        versions = meta.get("versions") or []
        self.version = str(versions[0]) if versions else None

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._metadata_task is not None:
            self._metadata_task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def healthy(self) -> bool:
        """Ready when loaded (and, with the health check on, when the predictor is ready)."""
        if not self.ready:
            return False
        if not self.health_check or self._client is None:
            return True
        path = "/v2/health/ready" if self.protocol == "v2" else f"/v1/models/{self.name}"
        try:
            r = await self._client.get(path, timeout=5.0)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        return r.status == 200

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Decode + transform, forward, answer in the caller's protocol.

        Raises:
            InvalidInput: The request is invalid (HTTP 400).
            RequestError: The predictor failed (its 4xx status, else 502/504).
        """
        timers = self.timers
        try:
            start = time.perf_counter()
            batch = self.preprocess(body, headers)
            if verb is InferenceVerb.EXPLAIN:
                answer = await self._post(self._explain_path, {"instances": batch.X}, headers)
                if timers is not None:
                    timers.explain.observe(time.perf_counter() - start)
                return answer, {}
            mid = time.perf_counter()
            # A request that chooses labels or probabilities itself is not merged with others.
            if self.batcher is not None and batch.proba is None:
                answer = self._answer_rows(batch, await self.batcher.predict(batch.X))
            else:
                answer = await self.predict(batch, headers)
            end = time.perf_counter()
            result = self.postprocess(answer, headers)
            if timers is not None:
                timers.observe_inference(start, mid, end, time.perf_counter())
            return result, {}
        except RequestError as e:
            if e.status == 400:
                raise InvalidInput(str(e)) from e
            raise

    def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Batch:  # type: ignore[override]
        """Validate the caller's request against the transformer's input, then transform it."""
        served = self._transformer
        batch = decode_payload(payload, served.spec)
        batch.X = _dense(served.transform(batch.X))
        return batch

    async def predict(  # type: ignore[override]
        self,
        payload: Batch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send the transformed rows to the predictor; answer in the caller's protocol."""
        X = payload.X
        if self.protocol == "v1":
            body: dict[str, Any] = {"instances": X}
            if payload.proba is not None:
                body[PREDICT_PROBA_PARAM] = payload.proba
            answer = await self._post(self._predict_path, body, headers)
            if payload.protocol == "v1":
                return answer
            try:
                predictions = answer["predictions"]
            except (KeyError, TypeError) as e:
                raise RequestError(f"predictor sent a malformed v1 response: {e!r}", 502) from e
            return encode_v2(np.asarray(predictions), self.name, payload.request_id)

        answer = await self._post_binary(X, payload.request_id, payload.proba, headers)
        if payload.protocol == "v1":
            out = answer["outputs"][0]
            return {"predictions": np.asarray(out["data"]).reshape(out["shape"]).tolist()}
        answer["model_name"] = self.name
        answer["id"] = payload.request_id or answer.get("id") or new_id()
        return answer

    async def predict_rows(self, X: np.ndarray) -> np.ndarray:
        """The predictor's output rows for transformed rows ``X`` (what the batcher merges:
        one predictor call for the rows of many concurrent requests)."""
        if self.protocol == "v1":
            answer = await self._post(self._predict_path, {"instances": X}, None)
            try:
                return np.asarray(answer["predictions"])
            except (KeyError, TypeError) as e:
                raise RequestError(f"predictor sent a malformed v1 response: {e!r}", 502) from e
        out = (await self._post_binary(X, None, None, None))["outputs"][0]
        dtype = V2_NUMERIC_DTYPES.get(out["datatype"])
        return np.asarray(out["data"], dtype=dtype).reshape(out["shape"])

    def _answer_rows(self, payload: Batch, rows: np.ndarray) -> dict[str, Any]:
        """A batched request's own rows as an answer in its protocol."""
        if payload.protocol == "v1":
            return {"predictions": rows.tolist()}
        version = (self.predictor_metadata or {}).get("versions") or [None]
        return encode_v2(rows, self.name, payload.request_id, version[0])

    async def _post_binary(
        self,
        X: np.ndarray,
        request_id: str | None,
        proba: bool | None,
        headers: dict[str, str] | None,
    ) -> dict[str, Any]:
        """Send rows to the v2 predictor as one binary FP64 tensor, outputs asked in binary.

        Returns:
            The predictor's answer with every output's ``data`` as a JSON-ready list.
        """
        X = np.ascontiguousarray(X, dtype=np.float64)
        raw = X.tobytes()
        request: dict[str, Any] = {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": list(X.shape),
                    "datatype": v2_datatype(X.dtype),
                    "parameters": {binary.BINARY_SIZE_PARAM: len(raw)},
                }
            ],
            "parameters": {binary.BINARY_ALL_OUTPUTS_PARAM: True},
        }
        if request_id is not None:
            request["id"] = request_id
        if proba is not None:
            request["parameters"][PREDICT_PROBA_PARAM] = proba
        head = self._dumps(request)
        r = await self._request(
            self._predict_path,
            head + raw,
            {
                **(headers or {}),
                "content-type": binary.BINARY_CONTENT_TYPE,
                binary.HEADER_LENGTH_HEADER: str(len(head)),
            },
        )
        n = r.headers.get(binary.HEADER_LENGTH_HEADER)
        view = memoryview(r.body)
        try:
            json_length = int(n) if n is not None else len(r.body)
            answer = self._loads(view[:json_length])
            offset = 0
            for out in answer["outputs"]:
                arr, offset = binary.output_array(out, view[json_length:], offset)
                out["data"] = arr.ravel().tolist()
                params = out.get("parameters") or {}
                params.pop(binary.BINARY_SIZE_PARAM, None)
                if not params:
                    out.pop("parameters", None)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise RequestError(
                f"predictor at {self.base_url}{self._predict_path} sent a malformed v2 answer: "
                f"{e!r}",
                502,
            ) from e
        return answer

    def postprocess(  # type: ignore[override]
        self,
        result: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The answer is already in the caller's protocol."""
        return result

    async def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None
    ) -> dict[str, Any]:
        if self._client is None:
            await self.start_client()
        content = self._dumps(body, option=self._dump_opts)
        r = await self._request(path, content, {**(headers or {}), **_JSON})
        try:
            return self._loads(r.body)
        except ValueError as e:
            log.warning("predictor at %s%s answered with no JSON: %s", self.base_url, path, e)
            raise RequestError("the predictor sent an answer that is not JSON", 502) from e

    async def _request(self, path: str, content: bytes, headers: dict[str, str]) -> Any:
        """POST to the predictor; a non-200 answer becomes a RequestError with its status."""
        from kfp_serve.serving.runtime.upstream import UpstreamError, UpstreamTimeout

        if self._client is None:
            await self.start_client()
        # The caller sees what the predictor said and a status; never its address, which is
        # internal (a pod IP, a loopback port): that detail goes to this server's log.
        where = f"{self.base_url}{path}"
        try:
            r = await self._client.post(path, content, headers)
        except UpstreamTimeout as e:
            log.warning("predictor at %s did not answer: %s", where, e)
            raise RequestError(
                f"the predictor did not answer within {self.timeout:g} s", 504
            ) from e
        except UpstreamError as e:
            log.warning("cannot reach the predictor at %s: %s", where, e)
            raise RequestError(
                "the predictor is unreachable; see the transformer's log", 502
            ) from e
        if r.status != 200:
            try:
                message = self._loads(r.body).get("error") or r.text
            except Exception:  # noqa: BLE001 - not JSON: show the text
                message = r.text
            log.info("predictor at %s answered %s: %.1000s", where, r.status, message)
            if 400 <= r.status < 500 or r.status == 501:
                # The caller's request was at fault: the predictor's own status and words.
                raise RequestError(str(message)[:1000], r.status)
            raise RequestError(
                f"the predictor failed (HTTP {r.status}): {str(message)[:1000]}", 502
            )
        return r

    def get_input_types(self) -> list[dict[str, Any]]:
        """The v2 input the transformer takes (its recorded signature; feature names as
        parameters)."""
        return [v2_input_tensor(self._transformer.spec)]

    async def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/NAME``: the transformer's inputs, the predictor's outputs."""
        if self.predictor_metadata is None and self._client is not None:
            try:  # one quick try; the background task keeps trying on its own
                r = await self._client.get(self._metadata_path, timeout=5.0)
                if r.status == 200:
                    self.predictor_metadata = self._loads(r.body)
                    versions = self.predictor_metadata.get("versions") or []
                    self.version = str(versions[0]) if versions else None
            except Exception:  # noqa: BLE001 - answered without the predictor's part
                log.debug("predictor metadata unavailable", exc_info=True)
        predictor = self.predictor_metadata or {}
        spec = self._transformer.spec
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": predictor.get("versions") or [],
            "platform": predictor.get("platform") or "kfp-serve-transformer",
            "inputs": self.get_input_types(),
            "outputs": predictor.get("outputs")
            or [{"name": "output-0", "datatype": "FP64", "shape": [-1]}],
        }
        if spec.feature_names:
            meta["parameters"] = {"feature_names": list(spec.feature_names)}
        return meta

    @property
    def _transformer(self) -> ServedTransformer:
        if self.served is None:
            raise RuntimeError(f"transformer {self.name!r} is not loaded")
        return self.served


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kfp_serve.serving.runtime.transformer``.

    Returns:
        Process exit code (2 when the transformer cannot be loaded or configured).
    """
    args = parse_args("transformer", argv)
    configure_logging(args.log_level)
    report_ignored_flags(args)
    try:
        model = TransformerModel(
            args.model_name,
            args.model_dir,
            args.predictor_host or "",
            args.predictor_protocol,
            use_ssl=args.predictor_use_ssl,
            timeout=args.predictor_request_timeout_seconds,
            retries=args.predictor_request_retries,
            health_check=args.enable_predictor_health_check,
        )
        model.load()
    except ServingError as e:
        log.error("cannot serve transformer %r: %s", args.model_name, e)
        return 2
    return run_server(args, model, on_startup=model.start_client, on_shutdown=model.close)


if __name__ == "__main__":
    sys.exit(main())
