"""Serving: ServeConfig, the InferenceService builder, serve() and Endpoint.

Attributes load on first use so that ``import kfp_serve.serving`` stays cheap for KFP components.
"""

from kfp_serve._lazy import lazy_exports

_EXPORTS = {
    "ServeConfig": "kfp_serve.serving.config",
    "ResolvedComponent": "kfp_serve.serving.config",
    "build_inference_service": "kfp_serve.serving.isvc",
    "Provenance": "kfp_serve.serving.isvc",
    "KnativeSchedulingWarning": "kfp_serve.serving.isvc",
    "serve": "kfp_serve.serving.deploy",
    "serve_many": "kfp_serve.serving.multi",
    "add_model": "kfp_serve.serving.multi",
    "remove_model": "kfp_serve.serving.multi",
    "trained_model_manifest": "kfp_serve.serving.trained_model",
    "parent_inference_service": "kfp_serve.serving.trained_model",
    "Endpoint": "kfp_serve.serving.endpoint",
    "ServeConfigError": "kfp_serve.serving.errors",
    "ServingError": "kfp_serve.serving.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
