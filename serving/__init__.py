"""Serving: ServeConfig, the InferenceService builder, serve() and Endpoint.

Attributes load on first use so that ``import serving`` stays cheap for KFP components.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ServeConfig": "serving.config",
    "ResolvedComponent": "serving.config",
    "build_inference_service": "serving.isvc",
    "Provenance": "serving.isvc",
    "KnativeSchedulingWarning": "serving.isvc",
    "serve": "serving.deploy",
    "Endpoint": "serving.endpoint",
    "ServeConfigError": "serving.errors",
    "ServingError": "serving.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
