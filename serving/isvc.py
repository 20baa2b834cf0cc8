"""Build the KServe ``serving.kserve.io/v1beta1`` InferenceService manifest for a served model.

A pure function: same inputs, same manifest. The local backend runs exactly this manifest on
this machine, and the Kubernetes backend applies it to a cluster.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from kfp_serve.artifacts.names import is_label_value, validate_name
from kfp_serve.serving import admission, constants
from kfp_serve.serving.config import PREDICTOR, TRANSFORMER, ServeConfig, merge_env
from kfp_serve.serving.errors import ServeConfigError

log = logging.getLogger(__name__)

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
#: The stock ClusterServingRuntime for each framework kfp-serve saves models for.
DEFAULT_RUNTIMES = {
    "sklearn": "kserve-sklearnserver",
    "xgboost": "kserve-xgbserver",
    "lightgbm": "kserve-lgbserver",
}
FRAMEWORKS = tuple(DEFAULT_RUNTIMES)
#: Runtimes that only speak one protocol.
V2_ONLY_RUNTIMES = ("kserve-mlserver",)
DEFAULT_PROTOCOL = "v1"
#: Schemes the KServe storage initializer accepts for storageUri.
STORAGE_SCHEMES = ("gs", "s3", "pvc", "file", "https", "http", "hdfs", "webhdfs", "oci", "hf")
# MAIN_CONTAINER: KServe's name for the main container (the controller adds ports and probes);
# STORAGE_URI_ENV: KServe runs the storage initializer for a custom container that sets it.
MAIN_CONTAINER, STORAGE_URI_ENV = admission.MAIN_CONTAINER, admission.STORAGE_URI_ENV
MODEL_MOUNT = "/mnt/models"
#: Deployment modes that run plain Deployments, where Knative's pod-spec gates do not apply.
RAW_MODES = (admission.RAW_DEPLOYMENT, admission.STANDARD)
KNATIVE_FLAGS = {
    "node_selector": "kubernetes.podspec-nodeselector",
    "affinity": "kubernetes.podspec-affinity",
    "tolerations": "kubernetes.podspec-tolerations",
}


class KnativeSchedulingWarning(UserWarning):
    """Pod scheduling fields that Knative rejects unless its feature flags are on."""


class IgnoredByKServeWarning(UserWarning):
    """A setting KServe's webhook accepts and the controller then ignores (e.g. a raw canary)."""


@dataclass(frozen=True)
class Provenance:
    """Where the served artifacts came from; recorded as labels and annotations."""

    model_id: int | None = None
    model_version: str | None = None
    transformer_id: int | None = None
    model_name: str | None = None
    model_alias: str | None = None
    model_snapshot: str | None = None
    transformer_snapshot: str | None = None


def build_inference_service(
    name: str,
    model_uri: str | None,
    framework: str,
    *,
    transformer_uri: str | None = None,
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    namespace: str | None = None,
    provenance: Provenance | None = None,
    kserve_version: str | None = None,
    multi_model: bool = False,
) -> dict[str, Any]:
    """Return the camelCase InferenceService manifest for a model (and optional transformer).

    The manifest is checked against KServe's admission rules (``serving/admission.py``) for
    ``kserve_version``: what the cluster's webhook would refuse is refused here, and what it
    would accept and then ignore is warned about.

    Args:
        name: The InferenceService name (DNS-1123 label).
        model_uri: Storage URI of the model directory (stock KServe layout); None with
            ``multi_model``.
        framework: ``"sklearn"``, ``"xgboost"`` or ``"lightgbm"``.
        transformer_uri: Storage URI of a Transformer artifact directory, if any.
        serve_config: A ServeConfig, or a dict / JSON string of one.
        namespace: The namespace to put in the manifest, if any.
        provenance: MLMD ids, version and snapshot URIs to record on the object.
        kserve_version: The cluster's KServe release (``"0.15"`` ... ``"master"``); default
            ``$KFP_SERVE_KSERVE_VERSION``, else the rules of every supported release.
        multi_model: The parent of a multi-model endpoint: the predictor names the model
            format and runtime but no ``storageUri``; TrainedModels bring the models
            (``serving/trained_model.py``).

    Raises:
        ServeConfigError: An invalid name, URI, framework or config, or one KServe's admission
            webhook would refuse (the message names the field and quotes the rule).
    """
    cfg = ServeConfig.coerce(serve_config)
    versions = admission.target_versions(kserve_version)
    check_name(name, "name", versions)
    if namespace is not None:
        validate_name(namespace, "namespace")
    if framework not in FRAMEWORKS:
        raise ServeConfigError(
            f"framework: {framework!r} is not supported; use one of {list(FRAMEWORKS)}"
        )
    if multi_model:
        if model_uri is not None:
            raise ServeConfigError(
                "model_uri: a multi-model endpoint has no model of its own; its models are "
                "TrainedModels (pass model_uri=None)"
            )
        if cfg.predictor.get("containers") is not None:
            raise ServeConfigError(
                "predictor.containers: a multi-model endpoint runs the framework's runtime; "
                "custom predictor containers cannot host TrainedModels here"
            )
    else:
        check_storage_uri(model_uri, "model_uri")
    if transformer_uri is not None:
        check_storage_uri(transformer_uri, "transformer_uri")
    protocol = cfg.protocol_version or DEFAULT_PROTOCOL

    spec: dict[str, Any] = {PREDICTOR: _predictor(cfg, model_uri, framework, protocol)}
    if transformer_uri is not None:
        spec[TRANSFORMER] = _transformer(cfg, name, transformer_uri, protocol)
    elif cfg.transformer:
        _warn(
            UserWarning,
            "serve_config.transformer is set but no transformer is served; it has no effect",
        )

    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = _merge_owned(cfg.labels, _labels(provenance), "labels")
    metadata["annotations"] = _merge_owned(
        cfg.annotations, _annotations(cfg, provenance), "annotations"
    )
    _warn_knative(cfg)
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    _admit(manifest, cfg, versions)
    return manifest


def check_name(name: str, field: str = "name", versions: tuple[str, ...] | None = None) -> str:
    """Refuse a name that is not a DNS-1123 label or that KServe refuses for an InferenceService.

    Checked before anything is submitted or snapshotted, so a bad name costs nothing.

    Raises:
        InvalidNameError: Not a DNS-1123 label.
        ServeConfigError: KServe's InferenceService name rule, quoted.
    """
    validate_name(name, field)
    found = admission.evaluate({"metadata": {"name": name}}, versions=versions)
    if found:
        raise ServeConfigError(found[0].message(field))
    return name


def _admit(manifest: dict[str, Any], cfg: ServeConfig, versions: tuple[str, ...]) -> None:
    """Refuse what KServe's webhook would refuse; warn about what KServe would ignore."""
    violations = admission.evaluate(manifest, versions=versions)
    for violation in admission.refusals(violations):
        message = violation.message(_config_path(violation.path, cfg))
        raise ServeConfigError(message + _release_hint(violation, versions))
    for violation in violations:
        _warn(IgnoredByKServeWarning, violation.message(_config_path(violation.path, cfg)))


def _release_hint(violation: admission.Violation, versions: tuple[str, ...]) -> str:
    """Some rules hold in some releases only: say how to check against the cluster's own."""
    if len(versions) == 1 or set(violation.versions) == set(versions):
        return ""
    return (
        f". Only some KServe releases refuse this: if the cluster runs another, set "
        f"{constants.KSERVE_VERSION_ENV} to its release (one of {list(admission.KSERVE_VERSIONS)})"
    )


def _config_path(path: str, cfg: ServeConfig) -> str:
    """Where a manifest field comes from in the ServeConfig (``spec.predictor.model.env`` ->
    ``predictor.container.env``), so the message points at what the user wrote."""
    if path.startswith("metadata.annotations"):
        return path.removeprefix("metadata.")
    if path == "metadata.name":
        return "name"
    path = path.removeprefix("spec.")
    for component in (PREDICTOR, TRANSFORMER):
        custom = "containers" in getattr(cfg, component)
        built = f"{component}.model" if component == PREDICTOR else f"{component}.containers[0]"
        if not custom and path.startswith(built):
            path = f"{component}.container" + path[len(built):]
    # An env index counts the merged list (generic and specific), not the user's own list.
    head, sep, _ = path.partition(".env[")
    return f"{head}.env" if sep else path


def check_storage_uri(uri: str, field: str) -> str:
    """Refuse URIs whose scheme the KServe storage initializer cannot fetch."""
    scheme = urlparse(uri).scheme if isinstance(uri, str) else ""
    if scheme not in STORAGE_SCHEMES:
        raise ServeConfigError(
            f"{field}: {uri!r} is not a storage URI KServe can load; use one of the schemes "
            f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
        )
    return uri


def _predictor(
    cfg: ServeConfig, model_uri: str | None, framework: str, protocol: str
) -> dict[str, Any]:
    resolved = cfg.resolve(PREDICTOR)
    component = resolved.spec
    if resolved.containers is not None:  # a custom predictor: the user's containers as given
        component["containers"] = _with_storage_env(resolved.containers, model_uri)
        return component
    runtime = resolved.runtime or DEFAULT_RUNTIMES[framework]
    if runtime in V2_ONLY_RUNTIMES and protocol != "v2":
        raise ServeConfigError(
            f"predictor.runtime: {runtime!r} only speaks protocol v2; set protocol_version='v2'"
        )
    model: dict[str, Any] = {
        "modelFormat": {"name": framework},
        # Explicit, so that sklearn + v2 is not routed to MLServer by auto-selection.
        "runtime": runtime,
    }
    if model_uri is not None:  # None: a multi-model parent, whose models are TrainedModels
        model["storageUri"] = model_uri
    model["protocolVersion"] = protocol
    if cfg.runtime_version:
        model["runtimeVersion"] = cfg.runtime_version
    overrides = dict(resolved.container)
    name = overrides.pop("name", None)
    if name not in (None, MAIN_CONTAINER):
        # KServe names the model's container itself; from 0.16 its webhook refuses a name here.
        _warn(
            IgnoredByKServeWarning,
            f"predictor.container.name: {name!r} is left out: KServe names the model server's "
            f"container {MAIN_CONTAINER!r} (and from 0.16 refuses a name on the model spec); "
            "use predictor.containers for a custom container list with your own names",
        )
    model.update(_override(model, overrides))
    _grpc_port(model)
    component["model"] = model
    return component


#: KServe's port name for a gRPC (HTTP/2 cleartext) container port, and its default port.
GRPC_PORT_NAME = "h2c"
GRPC_DEFAULT_PORT = 8081


def _grpc_port(container: dict[str, Any]) -> None:
    """Declare the gRPC port when the container's args turn gRPC on (``--enable_grpc=true`` or
    ``--grpc_port=N``), named ``h2c`` as KServe expects, unless ports are set already.

    Knative gives a container one port: in serverless mode the ``h2c`` port then receives all
    of the component's traffic (KServe's gRPC setup); in RawDeployment mode REST stays on 8080.
    """
    port = None
    for arg in container.get("args") or []:
        flag, _, value = str(arg).partition("=")
        if flag == "--grpc_port" and value.isdigit():
            port = int(value)
        elif flag == "--enable_grpc" and value.lower() in ("true", "1", "yes") and port is None:
            port = GRPC_DEFAULT_PORT
    if port is not None and "ports" not in container:
        container["ports"] = [{"name": GRPC_PORT_NAME, "containerPort": port, "protocol": "TCP"}]


def grpc_component(manifest: dict[str, Any]) -> str | None:
    """The component that answers the InferenceService's calls (the transformer when there is
    one) if it declares an ``h2c`` port, i.e. serves OIP gRPC on the cluster; else None."""
    spec = manifest.get("spec") or {}
    role = TRANSFORMER if spec.get(TRANSFORMER) else PREDICTOR
    component = spec.get(role) or {}
    containers = list(component.get("containers") or [])
    if isinstance(component.get("model"), dict):
        containers.append(component["model"])
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == GRPC_PORT_NAME:
                return role
    return None


def _transformer(
    cfg: ServeConfig, name: str, transformer_uri: str, protocol: str
) -> dict[str, Any]:
    resolved = cfg.resolve(TRANSFORMER)
    component = resolved.spec
    if resolved.containers is not None:
        component["containers"] = _with_storage_env(resolved.containers, transformer_uri)
        return component
    container: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        "image": os.environ.get(constants.IMAGE_ENV) or constants.DEFAULT_IMAGE,
        "command": ["python", "-m", constants.TRANSFORMER_MODULE],
        # KServe adds --predictor_host and --http_port, but not the protocol (DESIGN.md).
        "args": [
            f"--model_name={name}",
            f"--model_dir={MODEL_MOUNT}",
            f"--predictor_protocol={protocol}",
            # In a pod the server must listen beyond loopback; locally the default stays 127.0.0.1.
            "--http_host=0.0.0.0",
        ],
        "env": [{"name": constants.STORAGE_URI_ENV, "value": transformer_uri}],
    }
    container.update(_override(container, resolved.container))
    _grpc_port(container)
    component["containers"] = [container]
    return component


def _override(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Container overrides applied to ``base``: env merged by name, other fields replaced."""
    result = copy.deepcopy(override)
    if "env" in override:
        result["env"] = merge_env(base.get("env", []), override["env"])
    return result


def _with_storage_env(containers: list[dict[str, Any]], uri: str) -> list[dict[str, Any]]:
    """Custom containers, the first told where its artifact is (unless it says already)."""
    containers = copy.deepcopy(containers)
    if not containers:
        return containers  # refused by the admission rules, with the rule quoted
    main = containers[0]
    if not any(var["name"] == constants.STORAGE_URI_ENV for var in main.get("env", [])):
        main["env"] = [*main.get("env", []), {"name": constants.STORAGE_URI_ENV, "value": uri}]
    return containers


def _labels(provenance: Provenance | None) -> dict[str, str]:
    labels = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}
    if provenance is None:
        return labels
    if provenance.model_id is not None:
        labels[constants.LABEL_MODEL_ID] = str(provenance.model_id)
    if provenance.transformer_id is not None:
        labels[constants.LABEL_TRANSFORMER_ID] = str(provenance.transformer_id)
    if provenance.model_version is not None:
        if not is_label_value(provenance.model_version):
            raise ServeConfigError(
                f"model version {provenance.model_version!r} cannot be a Kubernetes label value"
            )
        labels[constants.LABEL_MODEL_VERSION] = provenance.model_version
    # Names and aliases are DNS-1123 labels (validated when recorded), so valid label values.
    if provenance.model_name is not None:
        labels[constants.LABEL_MODEL_NAME] = provenance.model_name
    if provenance.model_alias is not None:
        labels[constants.LABEL_MODEL_ALIAS] = provenance.model_alias
    return labels


def _annotations(cfg: ServeConfig, provenance: Provenance | None) -> dict[str, str]:
    annotations = {constants.ANNOTATION_SERVE_CONFIG: cfg.to_json()}
    if provenance and provenance.model_snapshot:
        annotations[constants.ANNOTATION_MODEL_SNAPSHOT] = provenance.model_snapshot
    if provenance and provenance.transformer_snapshot:
        annotations[constants.ANNOTATION_TRANSFORMER_SNAPSHOT] = provenance.transformer_snapshot
    return annotations


def _merge_owned(user: dict[str, str], owned: dict[str, str], field: str) -> dict[str, str]:
    """User labels/annotations plus kfp-serve's own; the user may not set kfp-serve's keys."""
    for key in owned:
        if key in user and user[key] != owned[key]:
            raise ServeConfigError(
                f"{field}.{key}: this key is set by kfp-serve to trace the served artifacts; "
                "remove it from the ServeConfig"
            )
    return {**user, **owned}


def _warn_knative(cfg: ServeConfig) -> None:
    """Knative rejects pod scheduling fields unless its feature flags are on (kserve#1425)."""
    mode = cfg.annotations.get(constants.ANNOTATION_DEPLOYMENT_MODE)
    if mode in RAW_MODES:
        return
    found = cfg.scheduling_fields()
    if not found:
        return
    flags = sorted(
        {
            flag
            for key, flag in KNATIVE_FLAGS.items()
            if any(path.split(".")[-1] in (key, _camel(key)) for path in found)
        }
    )
    _warn(
        KnativeSchedulingWarning,
        f"ServeConfig sets {', '.join(found)}; in KServe's serverless (Knative) mode these are "
        f"rejected unless the Knative feature flags {', '.join(flags)} are 'enabled' in the "
        "knative-serving 'config-features' ConfigMap. Enable them, or set the annotation "
        f"{constants.ANNOTATION_DEPLOYMENT_MODE}: RawDeployment.",
    )


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _warn(category: type[Warning], message: str) -> None:
    log.warning(message)
    warnings.warn(message, category, stacklevel=3)
