"""ServeConfig: how an InferenceService's predictor and transformer pods are configured.

Semantics follow Kale's ServeConfig: generic fields (``env``, ``env_from``, ``requests``,
``limits``, ``node_selector``, ``affinity``, ``tolerations``, ``service_account_name``) fill both
the predictor and the transformer; ``predictor``/``transformer`` hold what is specific to one
of them. The merge rules live in :meth:`ServeConfig.resolve`, a pure function of the config.

Every value is checked and normalised to camelCase plain data when the config is built, so two
configs that mean the same thing compare equal and serialise the same way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from typing import Any

from kfp_serve.serving.admission import DEFAULT_MIN_REPLICAS, quote
from kfp_serve.serving.constants import PREDICTOR, TRANSFORMER
from kfp_serve.serving.errors import ServeConfigError
from kfp_serve.serving.schema import normalize, normalize_object, normalize_quantities, to_plain

COMPONENTS = (PREDICTOR, TRANSFORMER)
PROTOCOLS = ("v1", "v2")

# Keys a predictor/transformer dict may hold beyond KServe's component spec.
CONTAINER = "container"  # overrides for the main container
RUNTIME = "runtime"  # the ServingRuntime a predictor must use (predictor only)
_SPEC_CLASS = {PREDICTOR: "V1beta1PredictorSpec", TRANSFORMER: "V1beta1TransformerSpec"}
# The model spec is built by kfp-serve from the artifact; setting it here would fight that.
_BUILT_BY_US = (
    "model", "sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "onnx", "triton",
    "pmml", "paddle", "huggingface",
)  # fmt: skip
# Top-level fields a JSON config may spell in camelCase.
_CAMEL_ALIASES = {
    "envFrom": "env_from",
    "nodeSelector": "node_selector",
    "protocolVersion": "protocol_version",
    "runtimeVersion": "runtime_version",
    "serviceAccountName": "service_account_name",
}


@dataclass
class ResolvedComponent:
    """What one component gets once generic and specific settings are merged.

    Attributes:
        spec: Component-level fields (camelCase), e.g. ``minReplicas``, ``tolerations``.
        container: Overrides for the main container (camelCase V1Container fields).
        containers: A full custom container list, when the config gives one.
        runtime: The ServingRuntime name asked for (predictor only).
    """

    spec: dict[str, Any]
    container: dict[str, Any]
    containers: list[dict[str, Any]] | None = None
    runtime: str | None = None


@dataclass
class ServeConfig:
    """Configuration of a served model's predictor and transformer pods.

    Every field accepts Kubernetes client objects or plain dicts in camelCase or snake_case.

    Attributes:
        env: Environment variables for both containers (merged by name with specific ones).
        env_from: ``envFrom`` sources for both containers (merged with specific ones).
        requests: Resource requests for both containers (ignored where a component sets its own).
        limits: Resource limits for both containers (ignored where a component sets its own).
        annotations: Annotations of the InferenceService, propagated to its pods.
        labels: Labels of the InferenceService, propagated to its pods.
        node_selector: Node selector of both pods (ignored where a component sets its own).
        affinity: Affinity of both pods (ignored where a component sets its own).
        tolerations: Tolerations of both pods (merged with specific ones).
        predictor: Predictor spec fields, plus ``container`` or ``containers`` and ``runtime``.
        transformer: Transformer spec fields, plus ``container`` or ``containers``.
        protocol_version: ``"v1"`` or ``"v2"``: the protocol the predictor speaks.
        runtime_version: The version (image tag) of the serving runtime.
        service_account_name: The service account of both pods.
    """

    env: list[Any] = field(default_factory=list)
    env_from: list[Any] = field(default_factory=list)
    requests: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: Any = None
    tolerations: list[Any] = field(default_factory=list)
    predictor: dict[str, Any] = field(default_factory=dict)
    transformer: dict[str, Any] = field(default_factory=dict)
    protocol_version: str | None = None
    runtime_version: str | None = None
    service_account_name: str | None = None

    def __post_init__(self) -> None:
        self.env = normalize(self.env or [], "list[V1EnvVar]", "env")
        _check_env_names(self.env, "env")
        self.env_from = normalize(self.env_from or [], "list[V1EnvFromSource]", "env_from")
        self.requests = normalize_quantities(self.requests or {}, "requests")
        self.limits = normalize_quantities(self.limits or {}, "limits")
        self.annotations = normalize(self.annotations or {}, "dict(str, str)", "annotations")
        self.labels = normalize(self.labels or {}, "dict(str, str)", "labels")
        self.node_selector = normalize(self.node_selector or {}, "dict(str, str)", "node_selector")
        self.affinity = (
            normalize(self.affinity, "V1Affinity", "affinity") if self.affinity else None
        )
        self.tolerations = normalize(self.tolerations or [], "list[V1Toleration]", "tolerations")
        self.predictor = _normalize_component(self.predictor, PREDICTOR)
        self.transformer = _normalize_component(self.transformer, TRANSFORMER)
        if self.protocol_version is not None and self.protocol_version not in PROTOCOLS:
            raise ServeConfigError(
                f"protocol_version: {self.protocol_version!r} is not supported; "
                f"use one of {list(PROTOCOLS)}"
            )
        for name in ("runtime_version", "service_account_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ServeConfigError(f"{name}: expected a non-empty string, got {value!r}")

    # ---- construction and serialisation -------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        """Build from a plain mapping; top-level keys may be snake_case or camelCase."""
        if not isinstance(data, dict):
            raise ServeConfigError(f"serve_config: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = _CAMEL_ALIASES.get(key, key)
            if name not in known:
                raise ServeConfigError(
                    f"{key}: unknown ServeConfig field; known fields are {sorted(known)}"
                )
            if name in kwargs:
                raise ServeConfigError(f"{key}: given twice (as snake_case and camelCase)")
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def coerce(cls, value: ServeConfig | dict[str, Any] | str | None) -> ServeConfig:
        """Accept a ServeConfig, a dict, a JSON string or None (the empty config)."""
        if value is None or value == "":
            return cls()
        if isinstance(value, ServeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ServeConfigError(
                    f"serve_config: not valid JSON ({e}); pass a JSON object such as "
                    '\'{"limits": {"memory": "4Gi"}}\' or a dict'
                ) from e
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready data (only the fields that are set)."""
        return {f.name: copy.deepcopy(v) for f in fields(self) if (v := getattr(self, f.name))}

    def to_json(self) -> str:
        """The config as compact, key-sorted JSON (stable: used in an annotation)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    # ---- merge rules ----------------------------------------------------------------------

    def resolve(self, component: str) -> ResolvedComponent:
        """Merge the generic fields into ``component`` ("predictor" or "transformer").

        Rules: a generic value fills a specific field that is not set; ``env``, ``env_from``
        and ``tolerations`` are merged (for ``env`` the specific entry of the same name wins);
        for ``affinity``, ``requests``, ``limits`` and ``node_selector`` a specific value
        replaces the generic one as a whole.
        """
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
        specific = copy.deepcopy(getattr(self, component))
        container = specific.pop(CONTAINER, {})
        containers = specific.pop("containers", None)
        runtime = specific.pop(RUNTIME, None)
        spec = specific

        if self.node_selector and "nodeSelector" not in spec:
            spec["nodeSelector"] = copy.deepcopy(self.node_selector)
        if self.affinity and "affinity" not in spec:
            spec["affinity"] = copy.deepcopy(self.affinity)
        if self.service_account_name and "serviceAccountName" not in spec:
            spec["serviceAccountName"] = self.service_account_name
        if tolerations := _merge_unique(self.tolerations, spec.get("tolerations", [])):
            spec["tolerations"] = tolerations

        main = containers[0] if containers else container
        if env := merge_env(self.env, main.get("env", [])):
            main["env"] = env
        if env_from := _merge_unique(self.env_from, main.get("envFrom", [])):
            main["envFrom"] = env_from
        resources = main.get("resources", {})
        for key, generic in (("requests", self.requests), ("limits", self.limits)):
            if generic and key not in resources:
                resources[key] = copy.deepcopy(generic)
        if resources:
            main["resources"] = resources
        return ResolvedComponent(
            spec=spec, container=container, containers=containers, runtime=runtime
        )

    def scheduling_fields(self) -> list[str]:
        """Paths of the pod-scheduling fields this config sets (Knative gates them)."""
        found = [
            name for name in ("node_selector", "affinity", "tolerations") if getattr(self, name)
        ]
        for component in COMPONENTS:
            spec = getattr(self, component)
            found += [
                f"{component}.{key}"
                for key in ("nodeSelector", "affinity", "tolerations")
                if spec.get(key)
            ]
        return found


def merge_env(
    generic: list[dict[str, Any]], specific: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Generic env vars then specific ones; a specific var replaces a generic one of its name."""
    names = {var["name"] for var in specific}
    return [copy.deepcopy(v) for v in generic if v["name"] not in names] + copy.deepcopy(specific)


def _merge_unique(generic: list[Any], specific: list[Any]) -> list[Any]:
    """Generic entries then specific ones, without exact duplicates."""
    merged: list[Any] = []
    for item in [*generic, *specific]:
        if item not in merged:
            merged.append(copy.deepcopy(item))
    return merged


def _check_env_names(env: list[dict[str, Any]], path: str) -> None:
    for i, var in enumerate(env):
        if not var.get("name"):
            raise ServeConfigError(f"{path}[{i}]: an environment variable needs a 'name'")


def _normalize_component(value: Any, component: str) -> dict[str, Any]:
    """Check a ``predictor``/``transformer`` dict and return it in camelCase."""
    value = to_plain(value) if value else {}
    if not isinstance(value, dict):
        raise ServeConfigError(f"{component}: expected a mapping, got {type(value).__name__}")
    value = dict(value)
    for key in _BUILT_BY_US:
        if key in value:
            raise ServeConfigError(
                f"{component}.{key}: kfp-serve builds the model spec from the artifact; set "
                f"'{component}.runtime', '{component}.container' or 'protocol_version' instead"
            )
    container = value.pop(CONTAINER, None)
    runtime = value.pop(RUNTIME, None)
    result = normalize_object(value, _SPEC_CLASS[component], component)
    if container is not None:
        if "containers" in result:
            raise ServeConfigError(
                f"{component}: set either 'container' (overrides for the main container) or "
                "'containers' (a full custom container list), not both"
            )
        result[CONTAINER] = normalize_object(
            to_plain(container), "V1Container", f"{component}.container", partial=True
        )
        _check_env_names(result[CONTAINER].get("env", []), f"{component}.container.env")
    for i, item in enumerate(result.get("containers", [])):
        _check_env_names(item.get("env", []), f"{component}.containers[{i}].env")
    if runtime is not None:
        if component != PREDICTOR:
            raise ServeConfigError(f"{component}.runtime: only the predictor selects a runtime")
        if not isinstance(runtime, str) or not runtime:
            raise ServeConfigError(f"{component}.runtime: expected a runtime name, got {runtime!r}")
        result[RUNTIME] = runtime
    _check_ranges(result, component)
    return result


def _check_ranges(spec: dict[str, Any], component: str) -> None:
    """Value checks the schema tables cannot express."""
    for key in ("minReplicas", "maxReplicas", "containerConcurrency"):
        if key in spec and spec[key] < 0:
            rule = "container-concurrency" if key == "containerConcurrency" else "replicas"
            raise ServeConfigError(
                f"{component}.{key}: must be 0 or more, got {spec[key]}; KServe {quote(rule)}"
            )
    for key in ("timeout", "scaleTarget"):
        if key in spec and spec[key] < 1:
            raise ServeConfigError(f"{component}.{key}: must be 1 or more, got {spec[key]}")
    # KServe defaults minReplicas to 1, so a lone maxReplicas is compared with that.
    low = spec.get("minReplicas", DEFAULT_MIN_REPLICAS)
    if spec.get("maxReplicas") and low > spec["maxReplicas"]:
        raise ServeConfigError(
            f"{component}.minReplicas: {low} is above maxReplicas ({spec['maxReplicas']}); "
            f"KServe {quote('replicas')}"
        )
    batcher = spec.get("batcher")
    if isinstance(batcher, dict):
        for key in ("maxBatchSize", "maxLatency"):
            if key in batcher and batcher[key] < 1:
                raise ServeConfigError(
                    f"{component}.batcher.{key}: must be 1 or more, got {batcher[key]} "
                    f"({'rows per model call' if key == 'maxBatchSize' else 'milliseconds'}; "
                    "leave it out for KServe's default)"
                )
    percent = spec.get("canaryTrafficPercent")
    if percent is not None and not 0 <= percent <= 100:
        raise ServeConfigError(
            f"{component}.canaryTrafficPercent: must be between 0 and 100, got {percent}"
        )
