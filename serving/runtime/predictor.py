"""The kfp-serve predictor runtime: a kserve.Model serving sklearn and XGBoost model directories.

Run it as ``python -m kfp_serve.serving.runtime.predictor --model_name NAME --model_dir DIR
--http_port P
[--http_host 127.0.0.1]`` (flags: :func:`kfp_serve.serving.runtime.server.build_parser`). Env
``PREDICT_PROBA=true`` answers class probabilities instead of labels, like the stock
sklearnserver.

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
from pathlib import Path
from typing import Any

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime._kserve import InferenceVerb, InferRequest, InvalidInput, kserve
from kfp_serve.serving.runtime.codec import (
    Batch,
    RequestError,
    decode_v1,
    decode_v2,
    encode_v1,
    encode_v2,
    v2_datatype,
)
from kfp_serve.serving.runtime.loader import ServedModel, env_flag, load_model
from kfp_serve.serving.runtime.server import (
    RuntimeApp,
    V2Request,
    configure_logging,
    parse_args,
    report_ignored_flags,
    serve,
)

log = logging.getLogger("kfp_serve.runtime.predictor")

PREDICT_PROBA_ENV = "PREDICT_PROBA"


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

    def __init__(self, name: str, model_dir: str | Path, *, predict_proba: bool | None = None):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.predict_proba = env_flag(PREDICT_PROBA_ENV) if predict_proba is None else predict_proba
        self.served: ServedModel | None = None
        self.version: str | None = None

    def load(self) -> bool:
        """Load the model directory.

        Raises:
            ServingError: The directory is not servable; the message says why.
        """
        self.served = load_model(self.model_dir, predict_proba=self.predict_proba)
        version = self.served.metadata.get("version")
        self.version = str(version) if version is not None else None
        self.ready = True
        log.info(
            "loaded %s model %s from %s (features=%s, proba=%s)",
            self.served.framework,
            type(self.served.estimator).__name__,
            self.served.path,
            self.served.spec.n_features,
            self.predict_proba,
        )
        return True

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
            batch = self.preprocess(body, headers)
            if verb is InferenceVerb.EXPLAIN:
                return self.explain(batch, headers), {}
            return self.postprocess(self.predict(batch, headers), headers), {}
        except RequestError as e:
            raise InvalidInput(str(e)) from e

    def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Batch:  # type: ignore[override]
        """Decode and validate the request (shape, feature count, dtype, NaN/inf)."""
        return decode_payload(payload, self._model.spec)

    def predict(  # type: ignore[override]
        self,
        payload: Batch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Predict and encode in the request's protocol."""
        result = self._model.predict(payload.X)
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
        """The v2 input tensor this model expects."""
        spec = self._model.spec
        return [
            {
                "name": "input-0",
                "datatype": v2_datatype(spec.dtype),
                "shape": [-1, spec.n_features if spec.n_features is not None else -1],
            }
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """The v2 output tensor this model answers with."""
        return [
            {"name": "output-0", "datatype": "", "shape": [-1, -1] if self.predict_proba else [-1]}
        ]

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/NAME``: v2 model metadata, plus the feature names when known."""
        spec = self._model.spec
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": f"kfp-serve-{self._model.framework}",
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
        }
        if spec.feature_names:
            meta["parameters"] = {"feature_names": list(spec.feature_names)}
        return meta


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kfp_serve.serving.runtime.predictor``.

    Returns:
        Process exit code (2 when the model cannot be loaded).
    """
    args = parse_args("predictor", argv)
    configure_logging(args.log_level)
    report_ignored_flags(args)
    model = PredictorModel(args.model_name, args.model_dir)
    try:
        model.load()
    except ServingError as e:
        log.error("cannot serve model %r: %s", args.model_name, e)
        return 2
    serve(
        RuntimeApp({model.name: model}),
        args.http_host,
        args.http_port,
        timeout_keep_alive=args.timeout_keep_alive,
        event_loop=args.event_loop,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
