"""Serving: ServeConfig, the InferenceService builder, serve(), Endpoint and delivery
(rollout, set_traffic, promote, rollback).

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
    "Endpoint": "kfp_serve.serving.endpoint",
    "rollout": "kfp_serve.serving.delivery",
    "set_traffic": "kfp_serve.serving.delivery",
    "promote": "kfp_serve.serving.delivery",
    "rollback": "kfp_serve.serving.delivery",
    "rollout_state": "kfp_serve.serving.delivery",
    "RolloutState": "kfp_serve.serving.backends.traffic",
    "ServeConfigError": "kfp_serve.serving.errors",
    "ServingError": "kfp_serve.serving.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
