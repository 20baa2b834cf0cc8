"""KServe's admission rules for InferenceService and TrainedModel, as one table.

A manifest can validate against the CRD schema and still be refused by the cluster: KServe runs a
validating webhook (``inferenceservice.kserve-webhook-server.validator``, and one for
TrainedModel) that checks what the schema cannot. This module restates those rules in our own
words, each with the field it guards and the KServe releases that enforce it, so that the builder
refuses the same inputs before anything is uploaded, and the Kubernetes API double refuses the
same requests the way the webhook does.

The rules were read from KServe's ``pkg/apis/serving/v1beta1/inference_service_validation.go``,
``component.go``, ``predictor*.go`` and ``pkg/apis/serving/v1alpha1/trainedmodel_webhook.go`` at
v0.15.2 through v0.20.0 and master. Where releases differ, ``Rule.since``/``Rule.until`` say so,
and a few checks look at the release itself (how the deployment-mode annotation is read):

- 0.15 knows ``Serverless``/``RawDeployment``; 0.16 renamed raw mode to ``Standard`` and reads
  autoscaling rules for ``Standard`` only (a ``RawDeployment`` annotation gets Knative's rules);
  from 0.17 the mutating webhook rewrites ``RawDeployment``→``Standard`` and
  ``Serverless``→``Knative`` before validation; from 0.19 the mode recorded in status is
  normalised the same way before an update is compared with it.
- PYTHONPATH is refused in every container from 0.18.
- ``spec.canary`` (canaries for Standard mode) and the predictor-name-change rule exist from 0.20.

Not here: the storage URI scheme, which KServe's controller (not its webhook) checks when it
reconciles (``isvc.check_storage_uri``; master also accepts ``oci+native://`` and
``oci+fetch://``), and the multi-node (``workerSpec``) rules, which kfp-serve never emits.

Unless told which release the cluster runs (``KFP_SERVE_KSERVE_VERSION``), the builder applies
every supported release's rules: a manifest it accepts is admitted by all of them. The
Kubernetes backend checks each TrainedModel the same way (``admit_trained_model``) before it
sends it: the local backend hosts models KServe's agent could not fetch (``file://``).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving import constants
from kfp_serve.serving.constants import PROTOCOL_ENV, STORAGE_URI_ENV
from kfp_serve.serving.errors import ServeConfigError

#: The KServe releases kfp-serve supports, oldest first; "master" is the newest development tree.
KSERVE_VERSIONS = ("0.15", "0.16", "0.17", "0.18", "0.19", "0.20", "master")
MASTER = "master"

ISVC_KIND = "InferenceService"
TM_KIND = "TrainedModel"
#: The names the webhooks are registered under (they head every denial message).
WEBHOOKS = {
    ISVC_KIND: "inferenceservice.kserve-webhook-server.validator",
    TM_KIND: "trainedmodel.kserve-webhook-server.validator",
}
#: Rules checked on create and update, or only when an existing object is updated.
ON_WRITE = "write"
ON_UPDATE = "update"
#: A refusal, or a setting KServe accepts and then ignores.
REFUSE = "refuse"
WARN = "warn"

ANNOTATION_AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
#: Knative's own autoscaler class annotation, read in serverless mode.
ANNOTATION_KNATIVE_CLASS = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"
AUTOSCALER_CLASSES = ("hpa", "external", "keda", "none")  # "kpa" is not among them
HPA, KEDA, KPA = "hpa", "keda", "kpa"
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")
KEDA_METRIC_TYPES = ("Resource", "External", "PodMetric")
LOGGER_MODES = ("all", "request", "response")
BLOCKED_ENV = ("PYTHONPATH",)
MAIN_CONTAINER = "kserve-container"
TRANSFORMER_CONTAINER = "transformer-container"
DEFAULT_MIN_REPLICAS = 1
#: Raw mode under its old and new names; the mode a missing annotation means (Knative).
RAW_DEPLOYMENT, STANDARD = "RawDeployment", "Standard"
SERVERLESS, KNATIVE = "Serverless", "Knative"
#: A predictor's built-in implementations (besides a custom container list).
PREDICTOR_FRAMEWORKS = (
    "xgboost", "pytorch", "triton", "sklearn", "tensorflow", "onnx", "pmml", "lightgbm",
    "paddle", "huggingface", "model",
)  # fmt: skip
EXPLAINER_FRAMEWORKS = ("art",)
COMPONENTS = ("predictor", "transformer", "explainer")

_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_TM_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
TM_STORAGE_PREFIXES = ("s3://", "gs://", "https://", "http://")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip

Finding = tuple[str, str]  # (path of the field, what is wrong with it)
Old = dict[str, Any] | None  # the stored object, on an update
Check = Callable[[dict[str, Any], Old, str], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """One admission rule of KServe.

    Attributes:
        id: A short readable id (used in messages and as the test id).
        kind: ``"InferenceService"`` or ``"TrainedModel"``.
        field: The field the rule guards.
        text: The rule, in our words.
        check: ``(object, old object or None, release) -> [(path, problem), ...]``.
        since: The first KServe release enforcing it.
        until: The last one (``"master"``: still enforced).
        on: ``ON_WRITE`` (create and update) or ``ON_UPDATE`` (update only).
        effect: ``REFUSE``, or ``WARN`` where KServe accepts the setting and ignores it.
    """

    id: str
    kind: str
    field: str
    text: str
    check: Check
    since: str = KSERVE_VERSIONS[0]
    until: str = MASTER
    on: str = ON_WRITE
    effect: str = REFUSE

    def applies_to(self, version: str) -> bool:
        """Whether KServe ``version`` enforces this rule."""
        index = KSERVE_VERSIONS.index(version)
        return KSERVE_VERSIONS.index(self.since) <= index <= KSERVE_VERSIONS.index(self.until)


@dataclass(frozen=True)
class Violation:
    """A rule an object breaks: where, how, and in which of the releases checked."""

    rule: Rule
    path: str
    problem: str
    versions: tuple[str, ...]

    def message(self, path: str | None = None) -> str:
        """``path: problem`` and the rule quoted, naming the releases (and how to fix it)."""
        where = ", ".join(self.versions) if len(self.versions) < 3 else (
            f"{self.versions[0]} to {self.versions[-1]}"
        )
        return f"{path or self.path}: {self.problem}; KServe ({where}) {quote(self.rule.id)}"


def quote(rule_id: str) -> str:
    """``admission rule 'id': "text"``: the rule as messages quote it."""
    return f"admission rule {rule_id!r}: \"{RULES_BY_ID[rule_id].text}\""


# ---- reading a manifest ------------------------------------------------------------------------


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def deployment_mode(annotations: dict[str, str], version: str) -> str | None:
    """The deployment-mode annotation as ``version``'s validating webhook sees it.

    From 0.17 the mutating webhook, which runs first, renames the legacy values.
    """
    mode = annotations.get(constants.ANNOTATION_DEPLOYMENT_MODE)
    if mode is not None and KSERVE_VERSIONS.index(version) >= KSERVE_VERSIONS.index("0.17"):
        mode = {RAW_DEPLOYMENT: STANDARD, SERVERLESS: KNATIVE}.get(mode, mode)
    return mode


def is_raw_mode(annotations: dict[str, str], version: str) -> bool:
    """Whether ``version``'s webhook treats the object as raw (Deployment) mode."""
    raw = RAW_DEPLOYMENT if version == "0.15" else STANDARD
    return deployment_mode(annotations, version) == raw


def autoscaler(annotations: dict[str, str], version: str) -> str | None:
    """Which autoscaler's rules apply: ``"hpa"``, ``"keda"``, ``"kpa"`` or None (no rules)."""
    if is_raw_mode(annotations, version):
        chosen = annotations.get(ANNOTATION_AUTOSCALER_CLASS)
        return chosen if chosen in (HPA, KEDA) else None
    return HPA if annotations.get(ANNOTATION_KNATIVE_CLASS) == KNATIVE_HPA_CLASS else KPA


def _components(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in COMPONENTS:
        component = spec.get(name)
        if isinstance(component, dict):
            yield f"spec.{name}", component


def _implementations(name: str, component: dict[str, Any]) -> list[str]:
    """The implementations a component sets, as KServe counts them."""
    frameworks = {"predictor": PREDICTOR_FRAMEWORKS, "explainer": EXPLAINER_FRAMEWORKS}.get(
        name, ()
    )
    found = [f for f in frameworks if isinstance(component.get(f), dict)]
    containers = [c for c in component.get("containers") or [] if isinstance(c, dict)]
    if containers and name == "predictor":
        # Every container named kserve-container is a custom predictor; else the first one is.
        mains = [c for c in containers if c.get("name") == MAIN_CONTAINER]
        found += ["containers"] * len(mains) if mains else ([] if found else ["containers"])
    elif containers:
        found.append("containers")
    return found


def _containers(path: str, component: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container of a component (framework container, containers, init, workers)."""
    for key in (*PREDICTOR_FRAMEWORKS, *EXPLAINER_FRAMEWORKS):
        if isinstance(component.get(key), dict):
            yield f"{path}.{key}", component[key]
    for key in ("containers", "initContainers"):
        for i, container in enumerate(component.get(key) or []):
            if isinstance(container, dict):
                yield f"{path}.{key}[{i}]", container
    worker = component.get("workerSpec")
    if isinstance(worker, dict):
        yield from _containers(f"{path}.workerSpec", {k: worker.get(k) for k in (
            "containers", "initContainers")})


def _env(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in container.get("env") or [] if isinstance(v, dict)]


def _storage_uri(component: dict[str, Any], name: str) -> str | None:
    """The component's single storage URI: its framework's, or the custom container's env."""
    for key in (*PREDICTOR_FRAMEWORKS, *EXPLAINER_FRAMEWORKS):
        if isinstance(component.get(key), dict) and component[key].get("storageUri"):
            return component[key]["storageUri"]
    containers = [c for c in component.get("containers") or [] if isinstance(c, dict)]
    if containers and name != "explainer":
        main = next((c for c in containers if c.get("name") == MAIN_CONTAINER), containers[0])
        for var in _env(main):
            if var.get("name") == STORAGE_URI_ENV:
                return var.get("value")
    return None


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity as a number (None if it is not one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        return None
    try:
        return float(match.group(1)) * _SUFFIXES[match.group(2)]
    except ValueError:
        return None


# ---- InferenceService rules --------------------------------------------------------------------


def _name(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    name = (obj.get("metadata") or {}).get("name")
    if isinstance(name, str) and not _ISVC_NAME.match(name):
        yield "metadata.name", f"{name!r} does not start with a letter or has other characters"


def _autoscaler_class(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    value = _annotations(obj).get(ANNOTATION_AUTOSCALER_CLASS)
    if value is not None and value not in AUTOSCALER_CLASSES:
        yield (
            f"metadata.annotations[{ANNOTATION_AUTOSCALER_CLASS}]",
            f"{value!r} is not one of {list(AUTOSCALER_CLASSES)}",
        )


def _blocked_env(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        for cpath, container in _containers(path, component):
            for i, var in enumerate(_env(container)):
                if var.get("name") in BLOCKED_ENV:
                    yield f"{cpath}.env[{i}].name", f"{var['name']} is set"


def _one_implementation(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    spec = obj.get("spec") or {}
    for path, component in _components(spec):
        found = _implementations(path.rsplit(".", 1)[-1], component)
        if len(found) != 1:
            yield path, f"sets {len(found)} implementations ({', '.join(found) or 'none'})"
    for i, canary in enumerate(spec.get("canary") or []):
        predictor = (canary or {}).get("predictor") or {}
        found = _implementations("predictor", predictor)
        if len(found) != 1:
            yield (
                f"spec.canary[{i}].predictor",
                f"sets {len(found)} implementations ({', '.join(found) or 'none'})",
            )


def _custom_protocol(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    if _implementations("predictor", predictor) != ["containers"]:
        return
    for i, var in enumerate(_env(predictor["containers"][0])):
        if var.get("name") == PROTOCOL_ENV and var.get("value") not in ("v1", "v2"):
            yield (
                f"spec.predictor.containers[0].env[{i}].value",
                f"{PROTOCOL_ENV}={var.get('value')!r}",
            )
            return


def _replicas(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        low, high = component.get("minReplicas"), component.get("maxReplicas") or 0
        low = DEFAULT_MIN_REPLICAS if low is None else low
        if low < 0:
            yield f"{path}.minReplicas", f"is {low}"
        if high < 0:
            yield f"{path}.maxReplicas", f"is {high}"
        elif high and low > high:
            yield f"{path}.minReplicas", f"{low} is above maxReplicas {high}"


def _concurrency(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        value = component.get("containerConcurrency")
        if value is not None and value < 0:
            yield f"{path}.containerConcurrency", f"is {value}"


def _logger_mode(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        logger = component.get("logger")
        if isinstance(logger, dict) and logger.get("mode") not in LOGGER_MODES:
            yield f"{path}.logger.mode", f"is {logger.get('mode')!r}"


def _logger_storage(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        storage = (component.get("logger") or {}).get("storage")
        if isinstance(storage, dict):
            missing = [k for k in ("path", "parameters", "key") if storage.get(k) is None]
            if missing:
                yield f"{path}.logger.storage", f"lacks {', '.join(missing)}"


def _kpa(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if autoscaler(_annotations(obj), version) != KPA:
        return
    for path, component in _components(obj.get("spec") or {}):
        if component.get("deploymentStrategy") is not None:
            yield f"{path}.deploymentStrategy", "is set in serverless (Knative) mode"
        metric = component.get("scaleMetric") or KPA_METRICS[0]
        if metric not in KPA_METRICS:
            yield f"{path}.scaleMetric", f"{metric!r} is not one of {list(KPA_METRICS)}"
        target = component.get("scaleTarget")
        if metric == "rps" and target is not None and target < 1:
            yield f"{path}.scaleTarget", f"{target} requests per second"


def _hpa(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if autoscaler(_annotations(obj), version) != HPA:
        return
    for path, component in _components(obj.get("spec") or {}):
        metric = component.get("scaleMetric") or HPA_METRICS[0]
        if metric not in HPA_METRICS:
            yield f"{path}.scaleMetric", f"{metric!r} is not one of {list(HPA_METRICS)}"
            continue
        target = component.get("scaleTarget")
        # KServe bounds the target by 100 whatever the metric (a memory target in MiB too).
        if target is not None and (target > 100 or target < 1):
            yield f"{path}.scaleTarget", f"{target} for metric {metric!r}"
        for i, spec in enumerate((component.get("autoScaling") or {}).get("metrics") or []):
            if spec.get("type") != "Resource":
                yield f"{path}.autoScaling.metrics[{i}].type", f"{spec.get('type')!r}"
            elif not spec.get("resource"):
                yield f"{path}.autoScaling.metrics[{i}].resource", "is missing"


def _keda_metric(path: str, metric: dict[str, Any]) -> Iterator[Finding]:
    kind = metric.get("type")
    if kind not in KEDA_METRIC_TYPES:
        yield f"{path}.type", f"{kind!r} is not one of {list(KEDA_METRIC_TYPES)}"
        return
    key = {"Resource": "resource", "External": "external", "PodMetric": "podmetric"}[kind]
    source = metric.get(key)
    if not isinstance(source, dict):
        yield f"{path}.{key}", f"is missing for type {kind}"
        return
    target = source.get("target") or {}
    if kind == "Resource":
        name, target_type = source.get("name"), target.get("type")
        if name == "cpu" and target_type != "Utilization":
            yield f"{path}.resource.target.type", f"{target_type!r} for cpu (use Utilization)"
        elif name == "memory":
            if target_type not in ("AverageValue", "Utilization"):
                yield f"{path}.resource.target.type", f"{target_type!r} for memory"
            elif target_type == "AverageValue":
                amount = quantity(target.get("averageValue"))
                if amount is None or amount < 2**20:
                    yield f"{path}.resource.target.averageValue", "is below 1Mi"
        elif name not in ("cpu", "memory"):
            yield f"{path}.resource.name", f"{name!r} is not cpu or memory"
    else:
        if not (source.get("metric") or {}).get("query"):
            yield f"{path}.{key}.metric.query", "is empty"
        if target.get("value") is None:
            yield f"{path}.{key}.target.value", "is empty"
    needs = {"Utilization": "averageUtilization", "AverageValue": "averageValue",
             "Value": "value"}.get(target.get("type"))
    if needs and target.get(needs) is None:
        yield f"{path}.{key}.target.{needs}", f"is missing for target type {target['type']}"
    utilization = target.get("averageUtilization")
    if target.get("type") == "Utilization" and utilization is not None and not (
        1 <= utilization <= 100
    ):
        yield f"{path}.{key}.target.averageUtilization", f"is {utilization}"


def _keda(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if autoscaler(_annotations(obj), version) != KEDA:
        return
    for path, component in _components(obj.get("spec") or {}):
        if component.get("scaleMetric") is not None:
            yield f"{path}.scaleMetric", "is set (KEDA scales on autoScaling.metrics)"
        for i, metric in enumerate((component.get("autoScaling") or {}).get("metrics") or []):
            yield from _keda_metric(f"{path}.autoScaling.metrics[{i}]", metric or {})


def _collocated_storage_uri(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    for i, container in enumerate(predictor.get("containers") or []):
        if isinstance(container, dict) and container.get("name") == TRANSFORMER_CONTAINER:
            for j, var in enumerate(_env(container)):
                if var.get("name") == STORAGE_URI_ENV:
                    yield f"spec.predictor.containers[{i}].env[{j}]", "sets STORAGE_URI"
            return


def _storage_uris(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    for path, component in _components(obj.get("spec") or {}):
        uris = component.get("storageUris")
        if uris is None:
            continue
        if _storage_uri(component, path.rsplit(".", 1)[-1]) is not None:
            yield f"{path}.storageUris", "is set together with a storageUri"
        plain: list[str] = []
        pvc: list[str] = []
        for i, item in enumerate(uris):
            item = item if isinstance(item, dict) else {}
            mount = item.get("mountPath") or ""
            if not item.get("uri"):
                yield f"{path}.storageUris[{i}].uri", "is empty"
            elif mount == "/" or not mount.startswith("/") or ".." in mount:
                yield f"{path}.storageUris[{i}].mountPath", f"{mount!r}"
            else:
                (pvc if item["uri"].startswith("pvc://") else plain).append(mount)
        if len(pvc) != len(set(pvc)):
            yield f"{path}.storageUris", "mounts two pvc:// URIs at the same path"
        if len(plain) > 1 and posixpath.commonpath(plain) == "/":
            yield f"{path}.storageUris", f"mount paths {plain} share no parent below /"


def _predictor_name(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    for key in PREDICTOR_FRAMEWORKS:
        if isinstance(predictor.get(key), dict) and predictor[key].get("name"):
            yield f"spec.predictor.{key}.name", f"is {predictor[key]['name']!r}"


def _canary_mode(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if (obj.get("spec") or {}).get("canary") and deployment_mode(
        _annotations(obj), version
    ) != STANDARD:
        mode = _annotations(obj).get(constants.ANNOTATION_DEPLOYMENT_MODE) or "Serverless"
        yield "spec.canary", f"is set in {mode} mode"


def _canary_entries(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    spec = obj.get("spec") or {}
    canaries = spec.get("canary") or []
    if not canaries:
        return
    stable = spec.get("predictor") or {}
    if _storage_uri(stable, "predictor") is None and not isinstance(stable.get("model"), dict):
        yield "spec.predictor", "has no model (a canary needs a stable model to compare with)"
    seen: set[str] = set()
    total = 0
    for i, canary in enumerate(canaries):
        canary = canary or {}
        predictor, path = canary.get("predictor") or {}, f"spec.canary[{i}]"
        name = predictor.get("name")
        if not name:
            yield f"{path}.predictor.name", "is empty"
        elif name in seen:
            yield f"{path}.predictor.name", f"{name!r} is used twice"
        elif name == stable.get("name"):
            yield f"{path}.predictor.name", f"{name!r} is the stable predictor's name"
        seen.add(name or "")
        percent = canary.get("trafficPercent") or 0
        if not 0 <= percent <= 100:
            yield f"{path}.trafficPercent", f"is {percent}"
        total += percent
        for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling", "workerSpec"):
            if predictor.get(key):
                yield f"{path}.predictor.{key}", "is set (a canary runs fixed replicas)"
        low = predictor.get("minReplicas")
        stable_low = stable.get("minReplicas", DEFAULT_MIN_REPLICAS)
        if low is not None and low > stable_low:
            yield f"{path}.predictor.minReplicas", f"{low} is above the stable {stable_low}"
    if total > 100:
        yield "spec.canary", f"trafficPercent adds up to {total}"


def _canary_ignored(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    annotations = _annotations(obj)
    if deployment_mode(annotations, version) not in (RAW_DEPLOYMENT, STANDARD):
        return
    for path, component in _components(obj.get("spec") or {}):
        if component.get("canaryTrafficPercent") is not None:
            mode = annotations[constants.ANNOTATION_DEPLOYMENT_MODE]
            yield (
                f"{path}.canaryTrafficPercent",
                f"is ignored in {mode} mode: every request goes to the newest revision. Serve "
                "without the annotation (Knative mode) for a canary split"
                + (", or on KServe 0.20+ use spec.canary" if version in ("0.20", MASTER) else ""),
            )


def _mode_change(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    recorded = ((old or {}).get("status") or {}).get("deploymentMode")
    if not recorded:
        return
    if KSERVE_VERSIONS.index(version) >= KSERVE_VERSIONS.index("0.19"):
        recorded = deployment_mode({constants.ANNOTATION_DEPLOYMENT_MODE: recorded}, version)
    wanted = deployment_mode(_annotations(obj), version)
    if wanted is not None and wanted != recorded:
        yield (
            f"metadata.annotations[{constants.ANNOTATION_DEPLOYMENT_MODE}]",
            f"changes the mode from {recorded!r} to {wanted!r}",
        )


def _predictor_rename(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if old is None:
        return
    new_p = (obj.get("spec") or {}).get("predictor") or {}
    old_p = (old.get("spec") or {}).get("predictor") or {}
    if new_p.get("name") != old_p.get("name") and (
        _storage_uri(new_p, "predictor") == _storage_uri(old_p, "predictor")
    ):
        yield "spec.predictor.name", f"renamed {old_p.get('name')!r} → {new_p.get('name')!r}"


# ---- TrainedModel rules ------------------------------------------------------------------------


def _tm_name(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    name = (obj.get("metadata") or {}).get("name")
    if isinstance(name, str) and not _TM_NAME.match(name):
        yield "metadata.name", f"{name!r} has characters other than letters, digits, '_', '-'"


def _tm_storage_uri(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    uri = ((obj.get("spec") or {}).get("model") or {}).get("storageUri") or ""
    if not uri.startswith(TM_STORAGE_PREFIXES):
        yield "spec.model.storageUri", f"{uri!r} has another scheme"


def _tm_memory(obj: dict[str, Any], old: Old, version: str) -> Iterable[Finding]:
    if old is None:
        return
    new_text = ((obj.get("spec") or {}).get("model") or {}).get("memory")
    old_text = ((old.get("spec") or {}).get("model") or {}).get("memory")
    if quantity(new_text) != quantity(old_text):
        yield "spec.model.memory", f"was changed from {old_text!r} to {new_text!r}"


RULES: tuple[Rule, ...] = (
    Rule("isvc-name", ISVC_KIND, "metadata.name",
         "an InferenceService name is lower-case letters, digits and '-', starts with a letter "
         "and ends with a letter or digit: [a-z]([-a-z0-9]*[a-z0-9])?", _name),
    Rule("autoscaler-class", ISVC_KIND, ANNOTATION_AUTOSCALER_CLASS,
         "the autoscaler class annotation is one of hpa, external, keda, none", _autoscaler_class),
    Rule("blocked-env", ISVC_KIND, "env",
         "no container may set PYTHONPATH (refused for security reasons)", _blocked_env,
         since="0.18"),
    Rule("one-implementation", ISVC_KIND, "predictor / transformer / explainer",
         "each component sets exactly one implementation: one model framework, or custom "
         "containers (for a predictor: one container named kserve-container)",
         _one_implementation),
    Rule("custom-protocol", ISVC_KIND, "predictor.containers[0].env",
         "a custom predictor's PROTOCOL variable is v1 or v2", _custom_protocol),
    Rule("replicas", ISVC_KIND, "minReplicas / maxReplicas",
         "minReplicas and maxReplicas are 0 or more, and minReplicas (default 1) is not above a "
         "non-zero maxReplicas", _replicas),
    Rule("container-concurrency", ISVC_KIND, "containerConcurrency",
         "containerConcurrency is 0 or more", _concurrency),
    Rule("logger-mode", ISVC_KIND, "logger.mode",
         "a logger sets mode to all, request or response", _logger_mode),
    Rule("logger-storage", ISVC_KIND, "logger.storage",
         "a logger's storage sets path, parameters and key", _logger_storage, since="0.16"),
    Rule("kpa-scaling", ISVC_KIND, "scaleMetric / scaleTarget / deploymentStrategy",
         "with Knative's autoscaler (serverless mode, no Knative HPA class) scaleMetric is "
         "concurrency or rps, an rps scaleTarget is 1 or more, and deploymentStrategy is only "
         "for raw deployment mode", _kpa),
    Rule("hpa-scaling", ISVC_KIND, "scaleMetric / scaleTarget / autoScaling",
         "with the HPA autoscaler (raw mode with autoscalerClass hpa, or serverless mode with "
         "Knative's HPA class) scaleMetric is cpu or memory, scaleTarget is between 1 and 100, "
         "and autoScaling metrics are of type Resource", _hpa),
    Rule("keda-scaling", ISVC_KIND, "scaleMetric / autoScaling",
         "with KEDA (raw mode with autoscalerClass keda) scaleMetric is not set; a cpu metric "
         "targets Utilization, a memory metric AverageValue (at least 1Mi) or Utilization; "
         "External and PodMetric metrics need a query and a target value; a Utilization target "
         "is between 1 and 100", _keda),
    Rule("collocated-storage-uri", ISVC_KIND, "predictor.containers[transformer-container].env",
         "a transformer container collocated in the predictor does not set STORAGE_URI",
         _collocated_storage_uri),
    Rule("storage-uris", ISVC_KIND, "storageUris",
         "a component sets storageUri or storageUris, not both; each storageUris entry has a "
         "uri and an absolute mountPath other than / without '..'; pvc:// mount paths are "
         "distinct and the other mount paths share a parent below /", _storage_uris,
         since="0.16"),
    Rule("standard-predictor-name", ISVC_KIND, "predictor.model.name",
         "a standard predictor (model or framework spec) does not set 'name'", _predictor_name,
         since="0.16"),
    Rule("canary-mode", ISVC_KIND, "spec.canary",
         "spec.canary is only for Standard deployment mode", _canary_mode, since="0.20"),
    Rule("canary-entries", ISVC_KIND, "spec.canary",
         "canaries need a stable predictor with a model; each canary names its predictor "
         "(unique, not the stable one), routes 0-100% (at most 100% in all), runs fixed "
         "replicas (no maxReplicas, scaleTarget, scaleMetric, autoScaling or workerSpec) and "
         "has no more minReplicas than the stable predictor", _canary_entries, since="0.20"),
    Rule("canary-ignored-in-raw", ISVC_KIND, "canaryTrafficPercent",
         "canaryTrafficPercent only splits traffic in serverless (Knative) mode; raw "
         "(RawDeployment/Standard) mode accepts it and ignores it (kserve/kserve#5335)",
         _canary_ignored, effect=WARN),
    Rule("deployment-mode-change", ISVC_KIND, constants.ANNOTATION_DEPLOYMENT_MODE,
         "an update may not change the deployment mode recorded in status.deploymentMode",
         _mode_change, on=ON_UPDATE),
    Rule("predictor-rename", ISVC_KIND, "predictor.name",
         "renaming the predictor on update needs a model change (another storageUri)",
         _predictor_rename, since="0.20", on=ON_UPDATE),
    Rule("tm-name", TM_KIND, "metadata.name",
         "a TrainedModel name is letters, digits, '_' and '-': [a-zA-Z0-9_-]+", _tm_name),
    Rule("tm-storage-uri", TM_KIND, "spec.model.storageUri",
         "a TrainedModel's storageUri starts with s3://, gs://, https:// or http://",
         _tm_storage_uri),
    Rule("tm-memory-immutable", TM_KIND, "spec.model.memory",
         "an update may not change a TrainedModel's memory", _tm_memory, on=ON_UPDATE),
)  # fmt: skip
RULES_BY_ID = {rule.id: rule for rule in RULES}


# ---- applying the rules ------------------------------------------------------------------------


def target_versions(version: str | None = None) -> tuple[str, ...]:
    """The KServe releases to check against: ``version``, else $KFP_SERVE_KSERVE_VERSION, else all.

    Raises:
        ServeConfigError: An unknown release.
    """
    chosen = version or os.environ.get(constants.KSERVE_VERSION_ENV) or ""
    if not chosen:
        return KSERVE_VERSIONS
    chosen = chosen.strip().lstrip("v")
    chosen = ".".join(chosen.split(".")[:2]) if chosen != MASTER else chosen
    if chosen not in KSERVE_VERSIONS:
        raise ServeConfigError(
            f"{constants.KSERVE_VERSION_ENV}: KServe {version or chosen!r} is not a supported "
            f"release; use one of {list(KSERVE_VERSIONS)} (or unset it to check them all)"
        )
    return (chosen,)


def evaluate(
    obj: dict[str, Any],
    *,
    kind: str = ISVC_KIND,
    old: dict[str, Any] | None = None,
    versions: Iterable[str] | None = None,
) -> list[Violation]:
    """Every rule ``obj`` breaks (refusals and warnings), in table order.

    Args:
        obj: The object as sent to the API server (camelCase).
        kind: ``"InferenceService"`` or ``"TrainedModel"``.
        old: The stored object, for an update (update-only rules run only then).
        versions: The KServe releases to check against (default: all supported).
    """
    versions = tuple(versions or KSERVE_VERSIONS)
    found: dict[tuple[str, str], tuple[Rule, str, list[str]]] = {}
    for rule in RULES:
        if rule.kind != kind or (rule.on == ON_UPDATE and old is None):
            continue
        for version in versions:
            if not rule.applies_to(version):
                continue
            for path, problem in rule.check(obj, old, version):
                entry = found.setdefault((rule.id, path), (rule, problem, []))
                entry[2].append(version)
    return [Violation(rule, path, problem, tuple(vs)) for (_, path), (rule, problem, vs) in
            found.items()]


def refusals(violations: Iterable[Violation]) -> list[Violation]:
    """The violations the webhook refuses (not the settings it only ignores)."""
    return [v for v in violations if v.rule.effect == REFUSE]


def denial(kind: str, violation: Violation) -> tuple[int, str, str]:
    """(code, reason, message) of the webhook's answer, as the API server relays it."""
    return (
        403,
        "Forbidden",
        # The API server's own wording, webhook name in double quotes (Go's %q).
        f'admission webhook "{WEBHOOKS[kind]}" denied the request: {violation.message()}',
    )


#: How to fix what each TrainedModel rule refuses (KServe's messages say only what is wrong).
_TM_FIXES = {
    "tm-name": "name the model with letters, digits, '_' and '-' only",
    "tm-storage-uri": (
        "on a cluster, KServe's model agent fetches TrainedModels from s3://, gs://, https:// or "
        "http:// only (not pvc:// or file://): snapshot the models to an S3 store "
        "(KFP_SERVE_SNAPSHOT_STORE=s3://bucket/prefix) before serving them behind one endpoint"
    ),
    "tm-memory-immutable": (
        "a hosted model keeps the memory it was added with: add the new version with the same "
        "memory, or remove the model and add it again with the new memory"
    ),
}


def admit_trained_model(
    manifest: dict[str, Any],
    *,
    old: dict[str, Any] | None = None,
    versions: Iterable[str] | None = None,
) -> None:
    """Refuse a TrainedModel KServe's webhook would refuse, before it is sent.

    Args:
        manifest: The TrainedModel (camelCase).
        old: The stored TrainedModel, for an update.
        versions: The KServe releases to check against (default: ``target_versions()``).

    Raises:
        ServeConfigError: The first rule broken: field, problem, the rule quoted, the fix.
    """
    chosen = tuple(versions or target_versions())
    for violation in refusals(evaluate(manifest, kind=TM_KIND, old=old, versions=chosen)):
        name = (manifest.get("metadata") or {}).get("name", "?")
        raise ServeConfigError(
            f"TrainedModel {name!r}: {violation.message()}; "
            f"{_TM_FIXES.get(violation.rule.id, 'change the field it names')}"
        )
