"""Build the manifests of a multi-model endpoint: the parent InferenceService and one KServe
``serving.kserve.io/v1alpha1`` TrainedModel per hosted model.

KServe's multi-model serving runs one model server (the parent's predictor, with a model format
and runtime but no ``storageUri``) and loads into it every TrainedModel that names the parent in
``spec.inferenceService``; each declares the ``memory`` it needs, and the controller refuses a
model that would take the server past its memory limit. Pure functions, like ``isvc.py``: the
local backend runs these manifests on this machine and the Kubernetes backend applies them.
"""

from __future__ import annotations

from typing import Any

from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving import admission, constants
from kfp_serve.serving.config import PREDICTOR, ServeConfig
from kfp_serve.serving.errors import ServeConfigError
from kfp_serve.serving.isvc import (
    FRAMEWORKS,
    Provenance,
    build_inference_service,
    check_name,
    check_storage_uri,
)
from kfp_serve.serving.schema import quantity

API_VERSION = "serving.kserve.io/v1alpha1"
KIND = admission.TM_KIND
#: The TrainedModel status conditions KServe's controller sets (and the API double plays).
CONDITION_READY = "Ready"
CONDITION_FRAMEWORK_SUPPORTED = "FrameworkSupported"
CONDITION_MEMORY_AVAILABLE = "MemoryResourceAvailable"
CONDITION_PARENT_READY = "InferenceServiceReady"
CONDITION_IS_MMS_PREDICTOR = "IsMMSPredictor"


def trained_model_manifest(
    name: str,
    parent: str,
    *,
    storage_uri: str,
    framework: str,
    memory: str | int,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The camelCase TrainedModel manifest that loads one model into a multi-model endpoint.

    Checked like an InferenceService before anything is applied: the name (a DNS-1123 label, so
    it is also a valid KServe TrainedModel name and a URL path segment), the framework, the
    storage URI's scheme and the memory quantity. KServe's webhook accepts only ``s3:// gs://
    https:// http://`` storage for a TrainedModel; that rule is the cluster's to apply (the
    Kubernetes backend's dry run and the API double run it): a local endpoint loads ``file://``
    snapshots too.

    Args:
        name: The model's name on the endpoint (``/v1/models/{name}``, ``/v2/models/{name}``).
        parent: The multi-model InferenceService that hosts it.
        storage_uri: Where the model directory is (a snapshot URI, stock KServe layout).
        framework: ``"sklearn"``, ``"xgboost"`` or ``"lightgbm"``: the parent's model format.
        memory: Memory the model needs in the server (``"64Mi"``); counted against the
            server's limit.
        namespace: The namespace to put in the manifest, if any.
        labels: Labels to add (kfp-serve's own ``managed-by`` label is always set).

    Raises:
        ServeConfigError: A bad name, parent, framework, URI or memory; the message names it.
    """
    validate_name(name, "model name")
    validate_name(parent, "parent endpoint name")
    if namespace is not None:
        validate_name(namespace, "namespace")
    if framework not in FRAMEWORKS:
        raise ServeConfigError(
            f"framework: {framework!r} is not supported; use one of {list(FRAMEWORKS)}"
        )
    check_storage_uri(storage_uri, "storage_uri")
    memory = quantity(memory, "memory")
    if memory_bytes(memory) <= 0:
        raise ServeConfigError(f"memory: {memory!r} must be more than 0, e.g. '64Mi'")
    owned = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}
    user = dict(labels or {})
    if user.get(constants.LABEL_MANAGED_BY, constants.MANAGED_BY) != constants.MANAGED_BY:
        raise ServeConfigError(
            f"labels.{constants.LABEL_MANAGED_BY}: this key is set by kfp-serve; remove it"
        )
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {**user, **owned}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "inferenceService": parent,
            "model": {"framework": framework, "storageUri": storage_uri, "memory": memory},
        },
    }


def parent_inference_service(
    name: str,
    framework: str,
    *,
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    namespace: str | None = None,
    provenance: Provenance | None = None,
    kserve_version: str | None = None,
) -> dict[str, Any]:
    """The InferenceService that hosts TrainedModels: a predictor with model format and runtime
    but no ``storageUri`` (``build_inference_service(..., multi_model=True)``).

    Its memory limit (ServeConfig ``limits.memory`` or ``predictor.container.resources``) is
    what the hosted models' declared ``memory`` is counted against.
    """
    check_name(name, "name")
    return build_inference_service(
        name,
        None,
        framework,
        serve_config=serve_config,
        namespace=namespace,
        provenance=provenance,
        kserve_version=kserve_version,
        multi_model=True,
    )


def memory_bytes(value: str | int | float) -> int:
    """A Kubernetes memory quantity in bytes (``"64Mi"`` -> 67108864).

    Raises:
        ServeConfigError: Not a quantity.
    """
    number = admission.quantity(value)
    if number is None:
        raise ServeConfigError(
            f"memory: {value!r} is not a Kubernetes quantity; write it like '64Mi' or '1Gi'"
        )
    return int(number)


def server_memory_limit(parent: dict[str, Any]) -> int | None:
    """The memory limit (bytes) of a multi-model parent's model server, None when it has none.

    KServe counts the TrainedModels' memory against the predictor's ``resources.limits.memory``.
    """
    predictor = (parent.get("spec") or {}).get(PREDICTOR) or {}
    model = predictor.get("model")
    if not isinstance(model, dict):
        containers = predictor.get("containers") or [{}]
        model = containers[0]
    limit = ((model.get("resources") or {}).get("limits") or {}).get("memory")
    return memory_bytes(limit) if limit is not None else None


def is_multi_model(manifest: dict[str, Any]) -> bool:
    """True for a parent InferenceService whose predictor names a model format but no
    ``storageUri``: its models come from TrainedModels."""
    predictor = (manifest.get("spec") or {}).get(PREDICTOR) or {}
    model = predictor.get("model")
    return isinstance(model, dict) and not model.get("storageUri")


def parent_framework(manifest: dict[str, Any]) -> str | None:
    """The model format a multi-model parent serves (``spec.predictor.model.modelFormat``)."""
    model = ((manifest.get("spec") or {}).get(PREDICTOR) or {}).get("model") or {}
    fmt = model.get("modelFormat") or {}
    return fmt.get("name") if isinstance(fmt, dict) else None


def model_url(endpoint_url: str, name: str, protocol: str = "v1") -> str:
    """The predict URL of a hosted model, as KServe reports it in a TrainedModel's status."""
    base = endpoint_url.rstrip("/")
    if protocol == "v2":
        return f"{base}/v2/models/{name}/infer"
    return f"{base}/v1/models/{name}:predict"
