"""The kfp-serve predictor runtime: a kserve.Model serving sklearn and XGBoost model directories.

Run it as ``python -m kfp_serve.serving.runtime.predictor --model_name NAME --model_dir DIR
--http_port P [--http_host 127.0.0.1]`` (flags:
:func:`kfp_serve.serving.runtime.server.build_parser`).
Env ``PREDICT_PROBA=true`` answers class probabilities instead of labels, like the stock
sklearnserver; a request chooses for itself with ``"predict_proba": true|false`` (a v1 body
field, a v2 ``parameters`` entry). ``--serving_runtime`` (set from the manifest) makes the
answers exactly those of that ServingRuntime (:mod:`kfp_serve.serving.runtime.fidelity`).

- v1: ``POST /v1/models/NAME:predict`` with ``{"instances": [[...], ...]}`` (or rows as
  ``{feature: value}`` objects) -> ``{"predictions": [...]}``.
- v2: ``POST /v2/models/NAME/infer`` with one ``[N, F]`` input tensor (FP32/FP64/INT64, ...), or
  one named input per feature column (several inputs, or ``parameters.content_type: "pd"``)
  -> one output tensor ``output-0``; ``id`` is echoed, or generated when absent.
- explain: ``POST /v1/models/NAME:explain`` (body as v1 predict) -> attributions, see
  :mod:`kfp_serve.serving.runtime.explain`; 501 for models without a built-in explainer.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kfp_serve.serving.constants import PREDICT_PROBA_ENV
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime import fidelity
from kfp_serve.serving.runtime._kserve import InferenceVerb, InferRequest, InvalidInput, kserve
from kfp_serve.serving.runtime.codec import (
    OUTPUT_NAME,
    Batch,
    RequestError,
    decode_matrix,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    v2_datatype,
    v2_input_tensor,
)
from kfp_serve.serving.runtime.loader import ServedModel, env_flag, load_model
from kfp_serve.serving.runtime.server import (
    V2Request,
    configure_logging,
    parse_args,
    report_ignored_flags,
    run_server,
)

log = logging.getLogger("kfp_serve.runtime.predictor")
T = TypeVar("T")


def decode_payload(payload: Any, spec: Any) -> Batch:
    """Any payload a host hands a model (v1 dict, our V2Request, kserve InferRequest) -> Batch.

    Raises:
        RequestError: The payload is not valid for ``spec``.
    """
    if isinstance(payload, V2Request):
        return decode_v2(payload.body, spec)
    if isinstance(payload, InferRequest):
        # Hosted by kserve.ModelServer: reuse the same validation on its REST form.
        rest, _ = payload.to_rest()
        if not isinstance(rest, dict):
            raise RequestError("binary-encoded v2 tensors are not supported; send JSON data")
        return decode_v2(rest, spec)
    return decode_v1(payload, spec)


class PredictorModel(kserve.Model):
    """A kserve.Model that serves one model directory (sklearn joblib, XGBoost json/ubj).

    Args:
        name: Model name in the URL paths.
        model_dir: Directory in the stock layout (see :mod:`kfp_serve.serving.runtime.layout`).
        predict_proba: Answer probabilities; defaults to env ``PREDICT_PROBA``.
    """

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        predict_proba: bool | None = None,
        runtime: str = fidelity.KFP_SERVE,
    ):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.predict_proba = env_flag(PREDICT_PROBA_ENV) if predict_proba is None else predict_proba
        self.runtime = runtime if runtime in fidelity.RUNTIMES else fidelity.KFP_SERVE
        self.served: ServedModel | None = None
        self.version: str | None = None
        #: Latency histograms (:mod:`kfp_serve.serving.runtime.metrics`), None when metrics are off.
        self.timers: Any = None
        #: A :class:`~kfp_serve.serving.runtime.batcher.Batcher`, None when batching is off.
        self.batcher: Any = None
        self._output: dict[str, Any] = {}

    def load(self) -> bool:
        """Load the model directory.

        Raises:
            ServingError: The directory is not servable; the message says why.
        """
        self.served = load_model(
            self.model_dir, predict_proba=self.predict_proba, runtime=self.runtime
        )
        version = self.served.metadata.get("version")
        self.version = str(version) if version is not None else None
        self._output = self._probe_output()
        self.ready = True
        log.info(
            "loaded %s model %s from %s (features=%s, proba=%s, answers as %s)",
            self.served.framework,
            type(self.served.estimator).__name__,
            self.served.path,
            self.served.spec.n_features,
            self.predict_proba,
            self.runtime,
        )
        return True

    def _probe_output(self) -> dict[str, Any]:
        """The output tensor's datatype and shape, from one prediction on a row of zeros."""
        spec = self._model.spec
        shape: list[int] = [-1]
        datatype = "FP32" if self._model.framework == "xgboost" else "FP64"
        if spec.n_features is not None:
            import numpy as np

            X: Any = np.zeros((1, spec.n_features), dtype=spec.dtype)
            if spec.frame_input and spec.feature_names is not None:
                import pandas as pd

                X = pd.DataFrame(X, columns=list(spec.feature_names))
            try:
                out = np.asarray(self._model.predict(X))
            except Exception as e:  # noqa: BLE001 - e.g. a pipeline that refuses zeros
                log.info("could not probe the output signature: %s", e)
            else:
                datatype = v2_datatype(out.dtype)
                shape = [-1, *out.shape[1:]]
        return {"name": OUTPUT_NAME, "datatype": datatype, "shape": shape}

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """kserve's call contract without its per-request metrics and latency log.

        Raises:
            InvalidInput: The request is invalid (HTTP 400 in both kserve and our server).
            NotImplementedError: explain on a model without an explainer (HTTP 501).
        """
        try:
            if verb is InferenceVerb.EXPLAIN:
                start = time.perf_counter()
                answer = self.explain(self.preprocess(body, headers), headers)
                if self.timers is not None:
                    self.timers.explain.observe(time.perf_counter() - start)
                return answer, {}
            return await self.infer(lambda: self.preprocess(body, headers), self.encode), {}
        except RequestError as e:
            raise InvalidInput(str(e)) from e

    async def infer(self, decode: Callable[[], Batch], encode: Callable[[Batch, Any], T]) -> T:
        """One prediction, each phase timed: ``decode()`` validates the request, the model (or
        the batcher) predicts, ``encode(batch, result)`` builds the answer. The REST route and
        gRPC's direct path (:mod:`~kfp_serve.serving.runtime.grpc_server`) differ only in
        ``decode`` and ``encode``.

        Raises:
            RequestError: The request is invalid.
        """
        if self.batcher is None:
            return self.infer_now(decode, encode)
        start = time.perf_counter()
        batch = decode()
        mid = time.perf_counter()
        method = self._model.predictor_for(batch.proba)
        # The batcher runs the default answer; a request asking otherwise runs alone.
        if method is self._model.predict:
            result = await self.batcher.predict(batch.X)
        else:
            result = method(batch.X)
        return self._encode_timed(start, mid, encode, batch, result)

    def infer_now(self, decode: Callable[[], Batch], encode: Callable[[Batch, Any], T]) -> T:
        """:meth:`infer` without waiting for anything: only for a model with no batcher (a
        caller that can answer at once then needs no task of its own).

        Raises:
            RequestError: The request is invalid.
        """
        assert self.batcher is None, "a batched prediction waits for its batch: use infer()"
        start = time.perf_counter()
        batch = decode()
        mid = time.perf_counter()
        result = self._model.predictor_for(batch.proba)(batch.X)
        return self._encode_timed(start, mid, encode, batch, result)

    def _encode_timed(self, start: float, mid: float, encode: Callable[[Batch, Any], T],
                      batch: Batch, result: Any) -> T:
        end = time.perf_counter()
        answer = encode(batch, result)
        if self.timers is not None:
            self.timers.observe_inference(start, mid, end, time.perf_counter())
        return answer

    def matrix_batch(self, X: Any, request_id: str | None) -> Batch:
        """A v2 request that is one input array (gRPC's direct path) as a validated batch.

        Raises:
            RequestError: ``X`` is not a matrix this model accepts.
        """
        return decode_matrix(X, self._model.spec, request_id)

    def predict_rows(self, X: Any) -> Any:
        """The model's output rows for validated input rows ``X`` (what the batcher merges)."""
        return self._model.predict(X)

    def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Batch:  # type: ignore[override]
        """Decode and validate the request (shape, feature count, dtype, NaN/inf)."""
        return decode_payload(payload, self._model.spec)

    def predict(  # type: ignore[override]
        self,
        payload: Batch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Predict and encode in the request's protocol (kserve.ModelServer's entry point)."""
        try:
            method = self._model.predictor_for(payload.proba)
        except RequestError as e:
            raise InvalidInput(str(e)) from e
        return self.encode(payload, method(payload.X))

    def encode(self, payload: Batch, result: Any) -> dict[str, Any]:
        """The answer in the request's protocol."""
        if payload.protocol == "v1":
            return encode_v1(result)
        return encode_v2(result, self.name, payload.request_id, self.version)

    def postprocess(  # type: ignore[override]
        self,
        result: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The answer is already encoded by :meth:`predict`."""
        return result

    def explain(self, payload: Batch, headers: dict[str, str] | None = None) -> dict[str, Any]:  # type: ignore[override]
        """Per-feature attributions (see :mod:`kfp_serve.serving.runtime.explain`).

        Raises:
            NotImplementedError: The model has no built-in explainer (HTTP 501).
        """
        return {"model_name": self.name, **self._model.explain(payload.X)}

    @property
    def _model(self) -> ServedModel:
        if self.served is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self.served

    def get_input_types(self) -> list[dict[str, Any]]:
        """The v2 input tensor this model expects (feature names as its parameters)."""
        return [v2_input_tensor(self._model.spec)]

    def get_output_types(self) -> list[dict[str, Any]]:
        """The v2 output tensor this model answers with (datatype and shape as probed)."""
        return [dict(self._output)]

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/NAME``: v2 model metadata from the artifact's recorded signature."""
        spec = self._model.spec
        platform = fidelity.PLATFORMS.get(self.runtime) or f"kfp-serve-{self._model.framework}"
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": platform,
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
        }
        if spec.feature_names:
            meta["parameters"] = {"feature_names": list(spec.feature_names)}
        return meta


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kfp_serve.serving.runtime.predictor``.

    Returns:
        Process exit code (2 when the model cannot be loaded). With ``--multi_model`` it starts
        with no model and loads them through the model repository extension
        (:mod:`kfp_serve.serving.runtime.repository`).
    """
    args = parse_args("predictor", argv)
    configure_logging(args.log_level)
    report_ignored_flags(args)
    if args.multi_model:
        return _serve_repository(args)
    model = PredictorModel(args.model_name, args.model_dir, runtime=args.serving_runtime)
    try:
        model.load()
    except ServingError as e:
        log.error("cannot serve model %r: %s", args.model_name, e)
        return 2
    return run_server(args, model)


def _serve_repository(args: Any) -> int:
    """A multi-model server: no model at start; the repository extension loads them."""
    from kfp_serve.serving.runtime.repository import ModelRepository
    from kfp_serve.serving.trained_model import memory_bytes

    try:
        limit = memory_bytes(args.memory_limit) if args.memory_limit else None
    except ValueError as e:
        log.error("--memory_limit: %s", e)
        return 2
    repository = ModelRepository(
        framework=args.model_format,
        memory_limit=limit,
        model_dir=args.model_dir,
        runtime=args.serving_runtime,
        metrics=args.enable_metrics,
    )
    log.info(
        "multi-model server for %s models, memory limit %s",
        args.model_format or "any",
        args.memory_limit or "none",
    )
    return run_server(args, None, repository=repository)


if __name__ == "__main__":
    sys.exit(main())
