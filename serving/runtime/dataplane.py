"""What a manifest's component asks of the data plane, as settings for a local server.

On a cluster KServe's agent sidecar does batching (``batcher``) and payload logging (``logger``),
the ServingRuntime named in ``model.runtime`` decides the answers, and container ``args`` such
as ``--workers`` reach the server. Locally the same component spec becomes one environment
variable, :data:`DATAPLANE_ENV` (JSON of server flag defaults), that the runtime servers read
(:func:`kfp_serve.serving.runtime.server.build_parser`); flags given explicitly still win.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kfp_serve.serving.errors import ServeConfigError

#: Environment variable carrying the settings below as JSON.
DATAPLANE_ENV = "KFP_SERVE_DATAPLANE"
#: Container args the local server honours from the manifest (flag -> setting).
_ARG_SETTINGS = {
    "--workers": "workers",
    "--enable_grpc": "enable_grpc",
    "--grpc_port": "grpc_port",
    "--enable_metrics": "enable_metrics",
}


def component_settings(component: dict[str, Any], role: str, name: str) -> dict[str, Any]:
    """Server flag defaults for one predictor/transformer spec of an InferenceService.

    Args:
        component: ``spec.predictor`` or ``spec.transformer`` of the manifest.
        role: ``"predictor"`` or ``"transformer"`` (for messages and log events).
        name: The InferenceService name (log events carry it).

    Returns:
        Settings by flag destination (``max_batchsize``, ``log_url``, ``serving_runtime``, ...).

    Raises:
        ServeConfigError: A batcher or logger value KServe would refuse; the message names it.
    """
    settings: dict[str, Any] = {}
    batcher = component.get("batcher")
    if batcher is not None:
        from kfp_serve.serving.runtime.batcher import (
            DEFAULT_MAX_BATCH_SIZE,
            DEFAULT_MAX_LATENCY_MS,
            check_batcher_values,
        )

        size = batcher.get("maxBatchSize", DEFAULT_MAX_BATCH_SIZE)
        latency = batcher.get("maxLatency", DEFAULT_MAX_LATENCY_MS)
        check_batcher_values(size, latency, f"{role}.batcher")
        settings.update(enable_batcher=True, max_batchsize=int(size), max_latency=float(latency))
    logger = component.get("logger")
    if logger is not None:
        url = logger.get("url")
        mode = logger.get("mode", "all")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ServeConfigError(
                f"{role}.logger.url: {url!r} is not an http(s) URL; payload events need a sink"
            )
        if mode not in ("all", "request", "response"):
            raise ServeConfigError(
                f"{role}.logger.mode: {mode!r} is not one of 'all', 'request', 'response'"
            )
        settings.update(log_url=url, log_mode=mode, inference_service=name, component=role)
    model = component.get("model")
    if isinstance(model, dict):
        if model.get("runtime"):
            settings["serving_runtime"] = str(model["runtime"])
        model_format = (model.get("modelFormat") or {}).get("name")
        if role == "predictor" and model_format and not model.get("storageUri"):
            # A multi-model parent: its server starts empty and TrainedModels are loaded
            # into it, their declared memory counted against the container's limit.
            settings["multi_model"] = True
            settings["model_format"] = str(model_format)
            limit = ((model.get("resources") or {}).get("limits") or {}).get("memory")
            if limit is not None:
                settings["memory_limit"] = str(limit)
        args = model.get("args") or []
    else:
        containers = component.get("containers") or [{}]
        args = containers[0].get("args") or []
    for arg in args:
        flag, _, value = str(arg).partition("=")
        if flag in _ARG_SETTINGS and value:
            settings[_ARG_SETTINGS[flag]] = value
    return settings


def component_env(component: dict[str, Any], role: str, name: str) -> dict[str, str]:
    """:func:`component_settings` as the environment of a local server ({} when none apply)."""
    settings = component_settings(component, role, name)
    return {DATAPLANE_ENV: json.dumps(settings)} if settings else {}


def serves_grpc(env: dict[str, str]) -> bool:
    """True when a server started with ``env`` runs OIP gRPC (``--enable_grpc=true`` or
    ``--grpc_port=N`` in its component's args)."""
    try:
        settings = json.loads(env.get(DATAPLANE_ENV) or "{}")
    except ValueError:
        return False
    enabled = str(settings.get("enable_grpc", "")).strip().lower() in ("true", "1", "yes", "y")
    return enabled or bool(settings.get("grpc_port"))


def settings_from_env() -> dict[str, Any]:
    """The settings a server was started with (``{}`` when :data:`DATAPLANE_ENV` is unset).

    Raises:
        ServeConfigError: The variable is set but not a JSON object.
    """
    raw = os.environ.get(DATAPLANE_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ServeConfigError(f"${DATAPLANE_ENV} is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ServeConfigError(f"${DATAPLANE_ENV} must hold a JSON object")
    return data
