"""How the Kubernetes backend reads KServe TrainedModels: readiness, refusals, statuses.

Pure functions over the objects the API returns (the backend in ``kubernetes.py`` does the
calls), the shape of ``traffic.py``. What KServe's TrainedModel controller writes
(``pkg/controller/v1alpha1/trainedmodel``):

- labels ``inferenceservice=<parent>`` always, and ``serving.kserve.io/trainedmodel-allocated=
  <parent>`` once the parent's memory has room for it;
- conditions ``InferenceServiceReady``, ``IsMMSPredictor`` and ``MemoryResourceAvailable``, and
  ``Ready`` when all three are True (a False one gives Ready its reason);
- ``status.url``: the parent's URL and the model's predict path, once Ready;
- no ``observedGeneration``. Nothing a TrainedModel update may change (its memory is immutable)
  feeds those conditions, so Ready after an update still describes the updated object; which
  storageUri the model server has loaded is not reported anywhere in the API.
"""

from __future__ import annotations

from typing import Any

from kfp_serve.serving import admission, constants
from kfp_serve.serving.backends.base import (
    REASON_FRAMEWORK_MISMATCH,
    REASON_MEMORY_UNAVAILABLE,
    REASON_NOT_READY,
    TrainedModelStatus,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.trained_model import (
    CONDITION_READY,
    is_multi_model,
    memory_bytes,
    parent_framework,
    server_memory_limit,
)

#: KServe's reasons on a False condition.
KSERVE_MEMORY_REASON = "MemoryResourceNotAvailable"
KSERVE_NOT_MMS_REASON = "IsNotMMSPredictor"
KSERVE_PARENT_REASON = "InferenceServiceNotReady"
#: Ready=False reasons no amount of waiting fixes: the user has to change something.
TERMINAL_REASONS = frozenset({KSERVE_MEMORY_REASON, KSERVE_NOT_MMS_REASON})
#: KServe's reasons as the backend-neutral ones of TrainedModelStatus.
_REASONS = {KSERVE_MEMORY_REASON: REASON_MEMORY_UNAVAILABLE, KSERVE_PARENT_REASON: REASON_NOT_READY}
#: What the parent's server may use when its manifest sets no limit: KServe's defaulting webhook
#: fills it from the inferenceservice-config ConfigMap (2Gi as shipped; a cluster may differ).
KSERVE_DEFAULT_MEMORY_LIMIT = "2Gi"


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def parent_of(obj: dict[str, Any]) -> str:
    return str((obj.get("spec") or {}).get("inferenceService") or "")


def tm_readiness(obj: dict[str, Any], generation: int) -> tuple[str, str]:
    """("ready" | "failed" | "pending", one-line summary) of a TrainedModel.

    A controller that reports ``observedGeneration`` (KServe does not, today) is held to it.
    """
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed < generation:
        return "pending", f"waiting for the controller to observe generation {generation}"
    if "deletionTimestamp" in (obj.get("metadata") or {}):
        return "failed", "it is being deleted"
    conditions = _conditions(obj)
    ready = conditions.get(CONDITION_READY)
    if ready is None:
        return "pending", "waiting for KServe's TrainedModel controller"
    if ready.get("status") == "True":
        return "ready", "Ready"
    summary = "; ".join(
        f"{c.get('type')}={c.get('status')}"
        + (f" {c['reason']}" if c.get("reason") else "")
        + (f": {c['message']}" if c.get("message") else "")
        for c in conditions.values() if c.get("status") != "True"
    )
    return ("failed" if ready.get("reason") in TERMINAL_REASONS else "pending"), summary


def tm_status(obj: dict[str, Any]) -> TrainedModelStatus:
    """The backend-neutral status of a TrainedModel object."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    model = spec.get("model") or {}
    state, summary = tm_readiness(obj, meta.get("generation", 1))
    ready_cond = _conditions(obj).get(CONDITION_READY) or {}
    reason = None if state == "ready" else _REASONS.get(
        ready_cond.get("reason"), ready_cond.get("reason") or REASON_NOT_READY)
    return TrainedModelStatus(
        name=meta.get("name", ""),
        parent=parent_of(obj),
        ready=state == "ready",
        reason=reason,
        message=None if state == "ready" else summary,
        storage_uri=model.get("storageUri", ""),
        framework=model.get("framework", ""),
        memory=str(model.get("memory", "")),
        url=(obj.get("status") or {}).get("url"),
        namespace=meta.get("namespace"),
        labels=dict(meta.get("labels") or {}),
    )


def check_parent(tm: dict[str, Any], parent: dict[str, Any]) -> None:
    """Refuse, before anything is written, a TrainedModel its parent cannot host.

    KServe would accept it and then leave it not Ready (a single-model parent), or mark it Ready
    while the server fails to load it (another framework: KServe does not compare them).

    Raises:
        ServingError: The parent is a single-model endpoint, or serves another framework.
    """
    name, parent_name = tm["metadata"]["name"], parent["metadata"]["name"]
    if not is_multi_model(parent):
        raise ServingError(
            f"InferenceService {parent_name!r} serves one model (its predictor has a "
            f"storageUri), so it cannot host TrainedModel {name!r}: create a multi-model "
            f"endpoint with serve_many({parent_name!r}, [...]) or `kfp-serve serve --multi`"
        )
    wanted = ((tm.get("spec") or {}).get("model") or {}).get("framework")
    served = parent_framework(parent)
    if served and wanted != served:
        raise ServingError(
            f"{REASON_FRAMEWORK_MISMATCH}: TrainedModel {name!r} is a {wanted} model, but "
            f"InferenceService {parent_name!r} runs a {served} server; serve it on an endpoint "
            f"of {wanted} models"
        )


def check_same_parent(tm: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to move an existing TrainedModel to another parent.

    TrainedModel names are unique per namespace, while a model name is only unique per
    endpoint: two endpoints of one namespace cannot both host a model of the same name.

    Raises:
        ServingError: ``current`` (the stored object of that name) belongs to another parent.
    """
    name, wanted, hosted_by = tm["metadata"]["name"], parent_of(tm), parent_of(current)
    if hosted_by != wanted:
        namespace = (current.get("metadata") or {}).get("namespace")
        raise ServingError(
            f"a TrainedModel named {name!r} already exists in namespace {namespace!r}, hosted by "
            f"InferenceService {hosted_by!r}; TrainedModel names are unique per namespace, so "
            f"endpoint {wanted!r} cannot host a model of that name there: remove it from "
            f"{hosted_by!r} first (remove_model), or use another namespace"
        )


def same_memory(tm: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two TrainedModels declare the same memory (``"0.5Gi"`` is ``"512Mi"``)."""
    def declared(obj: dict[str, Any]) -> Any:
        return ((obj.get("spec") or {}).get("model") or {}).get("memory")

    return admission.quantity(declared(tm)) == admission.quantity(declared(current))


def memory_refusal(tm: dict[str, Any], parent: dict[str, Any],
                   siblings: list[dict[str, Any]]) -> str:
    """Why the parent's memory has no room for ``tm``, with the numbers (KServe gives none).

    ``siblings``: the parent's other TrainedModels; those KServe allocated count.
    """
    name, parent_name = tm["metadata"]["name"], parent["metadata"]["name"]
    needed = str(tm["spec"]["model"]["memory"])
    limit = server_memory_limit(parent)
    limit_text = (
        f"a memory limit of {_human(limit)}" if limit is not None
        else f"no memory limit of its own (KServe's default, {KSERVE_DEFAULT_MEMORY_LIMIT} as "
        "shipped, applies)"
    )
    if limit is None:
        limit = memory_bytes(KSERVE_DEFAULT_MEMORY_LIMIT)
    loaded = [
        o for o in siblings
        if o["metadata"]["name"] != name
        and (o["metadata"].get("labels") or {}).get(constants.LABEL_TM_ALLOCATED) == parent_name
    ]
    used = sum(memory_bytes(o["spec"]["model"]["memory"]) for o in loaded)
    listed = ", ".join(f"{o['metadata']['name']}: {o['spec']['model']['memory']}"
                       for o in sorted(loaded, key=lambda o: o["metadata"]["name"]))
    return (
        f"TrainedModel {name!r} declares {needed} of memory, but InferenceService "
        f"{parent_name!r} has {limit_text} and the models it hosts already declare "
        f"{_human(used)}" + (f" ({listed})" if listed else "") + f": {_human(limit - used)} is "
        f"free. Raise the endpoint's limits.memory, declare less memory for {name!r}, or "
        "remove a model"
    )


def _human(n: int) -> str:
    """Bytes as the largest binary unit that keeps it whole (``"640Mi"``)."""
    if n < 0:
        return f"-{_human(-n)}"
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20)):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)

