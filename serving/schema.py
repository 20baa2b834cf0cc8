"""Check and normalise ServeConfig values against the Kubernetes and KServe client model schemas.

Users hand us Kubernetes client objects (``V1EnvVar``), or dicts in camelCase, snake_case or a
mix, at any depth. ``ApiClient.deserialize`` would silently drop the snake_case keys, so instead
we walk each value along the ``openapi_types``/``attribute_map`` tables that the generated client
classes carry, and produce plain camelCase JSON — the shape an InferenceService manifest needs.
Anything the tables do not know is an error naming its path: nothing is dropped silently.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from kfp_serve.serving.errors import ServeConfigError

# Kubernetes resource quantity (resource.Quantity): a signed decimal number with an optional
# binary (Ki…Ei), decimal (n, u, m, k, M…E) or exponent suffix.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\((\w+), (.+)\)$")
_TARGET_TYPES = ("Utilization", "Value", "AverageValue")
# Closed value sets that KServe's CRD declares but the generated client classes do not know.
# Checked here so a config fails when it is built, not when the API server sees it.
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("V1beta1PredictorSpec", "scaleMetric"): ("cpu", "memory", "concurrency", "rps"),
    ("V1beta1TransformerSpec", "scaleMetric"): ("cpu", "memory", "concurrency", "rps"),
    ("V1beta1PredictorSpec", "scaleMetricType"): _TARGET_TYPES,
    ("V1beta1TransformerSpec", "scaleMetricType"): _TARGET_TYPES,
    ("V1beta1LoggerSpec", "mode"): ("all", "request", "response"),
    ("V1beta1MetricsSpec", "type"): ("Resource", "External", "PodMetric"),
    ("V1beta1MetricTarget", "type"): _TARGET_TYPES,
    ("V1beta1ResourceMetricSource", "name"): ("cpu", "memory"),
    ("V1beta1ExternalMetrics", "backend"): ("prometheus", "graphite"),
    ("V1beta1PodMetrics", "backend"): ("opentelemetry",),
}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


@functools.cache
def model_class(type_name: str) -> type:
    """The generated client class called ``type_name`` (KServe's V1beta1*, else Kubernetes')."""
    if type_name.startswith(("V1beta1", "V1alpha1")):
        # The generated classes alone (kserve.models), not the whole SDK: a full ``import
        # kserve`` costs ~1.8 s and parses sys.argv (see kfp_serve.serving.runtime.kserve_package).
        from kfp_serve.serving.runtime.kserve_package import kserve_models

        cls = getattr(kserve_models(), type_name, None)
    else:
        import kubernetes.client

        cls = getattr(kubernetes.client, type_name, None)
    if cls is None:
        raise LookupError(f"no client model class named {type_name!r}")
    return cls


@functools.cache
def fields_of(type_name: str) -> dict[str, tuple[str, str]]:
    """Map every accepted key (snake_case and camelCase) to (camelCase key, type string)."""
    cls = model_class(type_name)
    fields: dict[str, tuple[str, str]] = {}
    for attr, type_string in cls.openapi_types.items():
        camel = cls.attribute_map[attr]
        fields[attr] = (camel, type_string)
        fields[camel] = (camel, type_string)
    return fields


@functools.cache
def required_fields(type_name: str) -> tuple[str, ...]:
    """camelCase names of the fields ``type_name`` requires (name of a V1Container, …).

    The generated classes only encode "required" as a ``None`` check in each property setter,
    so ask each setter once, on a bare instance.
    """
    cls = model_class(type_name)
    probe = cls.__new__(cls)
    probe.local_vars_configuration = type(_configuration())()
    required = []
    for attr in cls.openapi_types:
        try:
            setattr(probe, attr, None)
        except ValueError:
            required.append(cls.attribute_map[attr])
    return tuple(required)


def _configuration() -> Any:
    import kubernetes.client

    return kubernetes.client.Configuration()


def is_client_object(value: Any) -> bool:
    """True for instances of the generated Kubernetes/KServe client classes."""
    return hasattr(value, "openapi_types") and hasattr(value, "attribute_map")


def to_plain(value: Any) -> Any:
    """A client object (or a structure holding some) as camelCase JSON-ready data."""
    if is_client_object(value):
        import kubernetes.client

        return kubernetes.client.ApiClient().sanitize_for_serialization(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def describe(value: Any) -> str:
    """A short description of a value's type for error messages."""
    return type(value).__name__ if value is not None else "null"


def normalize(value: Any, type_string: str, path: str) -> Any:
    """Check ``value`` against ``type_string`` and return it as camelCase plain data.

    Args:
        value: A client object, dict, list or primitive.
        type_string: A type as written in ``openapi_types`` (``"list[V1EnvVar]"``,
            ``"dict(str, str)"``, ``"V1Affinity"``, ``"int"``, ``"object"`` …).
        path: Where the value sits in the config, for error messages.

    Raises:
        ServeConfigError: Unknown key, wrong type or bad quantity, naming ``path``.
    """
    value = to_plain(value)
    if type_string == "object":  # int-or-string and other free-form fields
        return value
    if match := _LIST.match(type_string):
        if not isinstance(value, (list, tuple)):
            raise ServeConfigError(f"{path}: expected a list, got {describe(value)}: {value!r}")
        return [normalize(item, match.group(1), f"{path}[{i}]") for i, item in enumerate(value)]
    if match := _DICT.match(type_string):
        if not isinstance(value, dict):
            raise ServeConfigError(f"{path}: expected a mapping, got {describe(value)}: {value!r}")
        # Keys of a free-form mapping (labels, limits) are the user's data: never camelised.
        return {str(k): normalize(v, match.group(2), f"{path}.{k}") for k, v in value.items()}
    if type_string in _PRIMITIVES:
        expected = _PRIMITIVES[type_string]
        if not isinstance(value, expected) or (type_string != "bool" and isinstance(value, bool)):
            raise ServeConfigError(
                f"{path}: expected {type_string}, got {describe(value)}: {value!r}"
            )
        return value
    return normalize_object(value, type_string, path)


def normalize_object(
    value: Any, type_name: str, path: str, *, partial: bool = False
) -> dict[str, Any]:
    """Normalise a mapping that must match the client model class ``type_name``.

    Args:
        partial: The mapping overrides fields of an object built elsewhere, so the fields the
            type requires need not all be there.
    """
    if not isinstance(value, dict):
        raise ServeConfigError(
            f"{path}: expected a {type_name} or a mapping, got {describe(value)}: {value!r}"
        )
    fields = fields_of(type_name)
    result: dict[str, Any] = {}
    for key, item in value.items():
        if key not in fields:
            raise ServeConfigError(
                f"{path}.{key}: unknown field for {type_name}; known fields are "
                f"{sorted(k for k, (camel, _) in fields.items() if k == camel)}"
            )
        camel, type_string = fields[key]
        if item is None:
            continue
        if camel in result:
            raise ServeConfigError(f"{path}.{key}: given twice (as snake_case and camelCase)")
        if type_name == "V1ResourceRequirements" and camel in ("limits", "requests"):
            result[camel] = normalize_quantities(item, f"{path}.{key}")
        else:
            result[camel] = normalize(item, type_string, f"{path}.{key}")
        allowed = ENUMS.get((type_name, camel))
        if allowed and result[camel] not in allowed:
            raise ServeConfigError(
                f"{path}.{key}: {result[camel]!r} is not allowed; use one of {list(allowed)}"
            )
    if not partial:
        missing = [name for name in required_fields(type_name) if name not in result]
        if missing:
            raise ServeConfigError(f"{path}: {type_name} needs {', '.join(map(repr, missing))}")
    return result


def quantity(value: Any, path: str) -> str:
    """A Kubernetes resource quantity as a string (``"4Gi"``, ``"100m"``, ``2`` → ``"2"``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ServeConfigError(
            f"{path}: expected a quantity such as '4Gi' or '500m', got {value!r}"
        )
    text = str(value)
    if not _QUANTITY.fullmatch(text):
        raise ServeConfigError(
            f"{path}: {value!r} is not a Kubernetes quantity; write it like '4Gi', '512Mi', "
            "'500m' or '2' (no spaces; binary suffixes Ki/Mi/Gi, decimal k/M/G)"
        )
    return text


def normalize_quantities(value: Any, path: str) -> dict[str, str]:
    """A ``requests``/``limits`` mapping of resource name to quantity."""
    value = to_plain(value)
    if not isinstance(value, dict):
        raise ServeConfigError(
            f"{path}: expected a mapping such as {{'memory': '4Gi'}}, got {value!r}"
        )
    return {str(k): quantity(v, f"{path}.{k}") for k, v in value.items()}
