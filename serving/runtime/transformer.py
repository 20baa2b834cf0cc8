"""The kfp-serve transformer runtime: apply a Transformer artifact, then ask the predictor.

Run it as ``python -m kfp_serve.serving.runtime.transformer --model_name NAME --model_dir DIR
--predictor_host HOST:PORT --predictor_protocol v1|v2 --http_port P``. Callers may speak v1 or v2
whatever the predictor speaks: the request is decoded and validated against the transformer's
input signature, ``transform()`` is applied, the result is sent to the predictor in
``--predictor_protocol``, and the predictor's answer comes back in the caller's protocol.
``POST /v1/models/NAME:explain`` is forwarded too (attributions then refer to the transformed
features the model sees).
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput, kserve
from kfp_serve.serving.runtime.codec import (
    INPUT_NAME,
    Batch,
    RequestError,
    encode_v2,
    tensor_dict,
    v2_output_array,
)
from kfp_serve.serving.runtime.loader import ServedTransformer, load_transformer
from kfp_serve.serving.runtime.predictor import decode_payload
from kfp_serve.serving.runtime.server import (
    RuntimeApp,
    configure_logging,
    parse_args,
    report_ignored_flags,
    serve,
)

log = logging.getLogger("kfp_serve.runtime.transformer")

SUPPORTED_PROTOCOLS = ("v1", "v2")


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
        self._client = UpstreamClient(
            self.base_url,
            timeout=self.timeout,
            retries=self.retries,
            headers={"content-type": "application/json"},
        )

    async def close(self) -> None:
        """Close the HTTP client."""
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
        try:
            batch = self.preprocess(body, headers)
            if verb is InferenceVerb.EXPLAIN:
                return await self._post(self._explain_path, {"instances": batch.X}, headers), {}
            answer = await self.predict(batch, headers)
            return self.postprocess(answer, headers), {}
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
            answer = await self._post(self._predict_path, {"instances": X}, headers)
            if payload.protocol == "v1":
                return answer
            try:
                predictions = answer["predictions"]
            except (KeyError, TypeError) as e:
                raise RequestError(f"predictor sent a malformed v1 response: {e!r}", 502) from e
            return encode_v2(np.asarray(predictions), self.name, payload.request_id)

        request: dict[str, Any] = {"inputs": [tensor_dict(INPUT_NAME, X)]}
        if payload.request_id is not None:
            request["id"] = payload.request_id
        answer = await self._post(self._predict_path, request, headers)
        if payload.protocol == "v1":
            return {"predictions": v2_output_array(answer).tolist()}
        answer["model_name"] = self.name
        answer["id"] = payload.request_id or answer.get("id") or str(uuid.uuid4())
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
        from kfp_serve.serving.runtime.upstream import UpstreamError, UpstreamTimeout

        if self._client is None:
            await self.start_client()
        content = self._dumps(body, option=self._dump_opts)
        # The caller sees what the predictor said and a status; never its address, which is
        # internal (a pod IP, a loopback port): that detail goes to this server's log.
        where = f"{self.base_url}{path}"
        try:
            r = await self._client.post(path, content, headers or None)
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
        try:
            return self._loads(r.body)
        except ValueError as e:
            log.warning("predictor at %s sent an answer that is not JSON: %s", where, e)
            raise RequestError("the predictor sent an answer that is not JSON", 502) from e

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
    app = RuntimeApp({model.name: model}, on_startup=model.start_client, on_shutdown=model.close)
    serve(
        app,
        args.http_host,
        args.http_port,
        timeout_keep_alive=args.timeout_keep_alive,
        event_loop=args.event_loop,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
