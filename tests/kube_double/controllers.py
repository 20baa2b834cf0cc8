"""Fake controllers of the API double: KServe (InferenceService and TrainedModel status), CSI
snapshots, PVCs.

Each reacts to store events the way its real counterpart would, after a delay the test chooses.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfp_serve.serving import admission, constants
from tests.kube_double.store import (
    EVENT,
    ISVC,
    PVC,
    TRAINED_MODEL,
    VOLUME_SNAPSHOT,
    ApiError,
    Event,
    Store,
    now_rfc3339,
)


class Scheduler:
    """One thread running callbacks at given monotonic times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="kube-double-controllers", daemon=True
        )
        self._thread.start()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            self._cond.notify()

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(time.monotonic() + max(0.0, delay), fn)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (
                    not self._heap or self._heap[0][0] > time.monotonic()
                ):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except ApiError:
                pass  # the object went away meanwhile: nothing to reconcile


@dataclass
class IsvcBehavior:
    """How the fake KServe controller treats an InferenceService generation.

    Attributes:
        outcome: "ready"; "fail" (Ready=False with ``reason``/``message``); "never" (stays
            Unknown: for timeouts); "manual" (the test calls set_ready/set_failed itself).
        delay: seconds from seeing a new generation to writing the outcome.
        reason: Ready=False reason when failing.
        message: Ready=False message when failing.
        terminal: a failure KServe gives up on (modelStatus BlockedByFailedLoad) or a transient one.
        progress: write Ready=Unknown for the new generation right away (observedGeneration bumped).
        stale_ready: on an update, first touch the status while it still says Ready=True for the
            old generation (a client that ignores observedGeneration returns too early).
        component_url: set status.components.<component>.url, also when failing.
        domain: ingress domain of status.url.
        not_found_after_ready: the data plane answers 404 to this many requests after Ready
            (kserve/kserve#1658).
    """

    outcome: str = "ready"
    delay: float = 0.05
    reason: str = "RevisionFailed"
    message: str = (
        'Revision "{name}-predictor-00001" failed with message: '
        "Container failed with: ModuleNotFoundError: No module named 'sklearn'."
    )
    terminal: bool = True
    progress: bool = True
    stale_ready: bool = True
    component_url: bool = True
    domain: str = "example.com"
    not_found_after_ready: int = 0


def _cond(type_: str, status: str, reason: str | None = None, message: str | None = None) -> dict:
    c: dict[str, Any] = {"type": type_, "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


#: KServe's annotation that gives each traffic target its own URL (tag-based routing).
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


#: The event source of KServe's controller manager (``GetEventRecorderFor``).
KSERVE_COMPONENT = "v1beta1Controllers"


def record_event(
    store: Store, obj: dict[str, Any], type_: str, reason: str, message: str, *, component: str
) -> dict[str, Any]:
    """Create a core/v1 Event about ``obj`` the way client-go's legacy event recorder does
    (name ``<object>.<unix nanoseconds in hex>``, source and reportingComponent, count 1)."""
    meta = obj["metadata"]
    stamp = now_rfc3339()
    return store.create(EVENT, meta["namespace"], {
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}"},
        "involvedObject": {
            "kind": obj.get("kind", ISVC.kind), "namespace": meta["namespace"],
            "name": meta["name"], "uid": meta.get("uid", ""),
            "apiVersion": obj.get("apiVersion", ISVC.api_version),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "type": type_,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": "",
    })


class KServeController:
    """Plays the KServe controller: status.conditions, URLs and observedGeneration."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self.default = IsvcBehavior()
        self._per_name: dict[str, IsvcBehavior] = {}
        self._seen_generation: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        #: perf_counter() just before the final Ready=True write, per (namespace, name, generation).
        self.ready_times: dict[tuple[str, str, int], float] = {}
        #: Remaining data-plane 404s per (namespace, name).
        self.data_plane_404: dict[tuple[str, str], int] = {}
        self.data_plane_requests: list[tuple[str, str, int]] = []
        #: Pod templates seen per (namespace, name, component), one per revision (see _revision).
        self._templates: dict[tuple[str, str, str], list[str]] = {}
        #: The predictor spec of each revision, by (namespace, revision name): its storageUri.
        self._revision_specs: dict[tuple[str, str], dict[str, Any]] = {}
        #: What a revision answers, by revision name (see ``answer``).
        self.answers: dict[str, Callable[[list[Any]], list[Any] | int]] = {}
        self._models: dict[str, Any] = {}
        store.listeners.append(self._on_event)

    def program(self, name: str | None = None, **changes: Any) -> IsvcBehavior:
        """Set the behaviour for ``name`` (or the default for all) and return it."""
        with self._lock:
            if name is None:
                self.default = replace(self.default, **changes)
                return self.default
            behavior = replace(self._per_name.get(name, self.default), **changes)
            self._per_name[name] = behavior
            return behavior

    def behavior(self, name: str) -> IsvcBehavior:
        with self._lock:
            return self._per_name.get(name, self.default)

    # -- reactions ----------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.resource is not ISVC or event.type == "DELETED":
            if event.resource is ISVC:
                meta = event.obj["metadata"]
                self._seen_generation.pop((meta.get("namespace", ""), meta["name"]), None)
                for comp in ("predictor", "transformer", "explainer"):
                    self._templates.pop((meta.get("namespace", ""), meta["name"], comp), None)
            return
        meta = event.obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        generation = meta.get("generation", 1)
        with self._lock:
            if self._seen_generation.get(key, 0) >= generation:
                return  # a status write, or an update that did not change the spec
            self._seen_generation[key] = generation
        behavior = self.behavior(meta["name"])
        if behavior.outcome == "manual":
            return  # the test writes the status itself (set_ready / set_failed)
        self.scheduler.after(0, lambda: self._start(key, generation, behavior))
        if behavior.outcome in ("ready", "fail"):
            self.scheduler.after(behavior.delay, lambda: self._finish(key, generation, behavior))

    def _current(self, key: tuple[str, str], generation: int) -> dict | None:
        try:
            obj = self.store.get(ISVC, *key)
        except ApiError:
            return None
        return obj if obj["metadata"].get("generation") == generation else None

    def _write_status(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        before = self.store.get(ISVC, *key)
        after = self.store.update(ISVC, key[0], key[1], {"status": status}, subresource="status")
        self._ready_event(before, after)

    def _ready_event(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """The Events KServe's InferenceService controller records when Ready changes
        (``updateStatus``): Normal InferenceServiceReady on becoming Ready, Warning
        InferenceServiceNotReady when Ready turns False (not for Unknown: a rollout)."""
        def ready(obj: dict[str, Any]) -> str | None:
            found = next((c for c in (obj.get("status") or {}).get("conditions", [])
                          if c.get("type") == "Ready"), None)
            return found.get("status") if found else None

        name = after["metadata"]["name"]
        if ready(before) != "True" and ready(after) == "True":
            kind, reason, message = "Normal", "InferenceServiceReady", (
                f"InferenceService [{name}] is Ready")
        elif ready(before) == "True" and ready(after) == "False":
            failing = [c["type"] for c in after["status"]["conditions"]
                       if c.get("status") == "False"]
            kind, reason, message = "Warning", "InferenceServiceNotReady", (
                f"InferenceService [{name}] is no longer Ready because of: {failing}")
        else:
            return
        record_event(self.store, after, kind, reason, message, component=KSERVE_COMPONENT)

    def _start(self, key: tuple[str, str], generation: int, behavior: IsvcBehavior) -> None:
        obj = self._current(key, generation)
        if obj is None:
            return
        status = copy.deepcopy(obj.get("status") or {})
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if behavior.stale_ready and ready and ready["status"] == "True":
            # Knative created the new revision, the old one still serves: Ready=True, old gen.
            pred = status.setdefault("components", {}).setdefault("predictor", {})
            pred["latestCreatedRevision"] = self._revision(obj, "predictor")
            self._write_status(key, status)
        if behavior.progress or not status:
            status = copy.deepcopy(status)
            status["observedGeneration"] = generation
            waiting = (
                f'Configuration "{key[1]}-predictor" is waiting for a Revision to become ready.'
            )
            status["conditions"] = [
                _cond("IngressReady", "Unknown"),
                _cond("PredictorReady", "Unknown", "RevisionMissing", waiting),
                _cond("Ready", "Unknown", "RevisionMissing", waiting),
            ]
            status.setdefault("modelStatus", {})["transitionStatus"] = "InProgress"
            if not behavior.progress:
                # A first status without claiming the generation (nothing observed yet).
                status.pop("observedGeneration")
            self._write_status(key, status)

    def _urls(self, obj: dict[str, Any], behavior: IsvcBehavior) -> dict[str, Any]:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        components = {}
        for comp in ("predictor", "transformer", "explainer"):
            if comp not in obj.get("spec", {}):
                continue
            components[comp] = {
                "url": f"http://{name}-{comp}.{ns}.{behavior.domain}",
                "address": {"url": f"http://{name}-{comp}.{ns}.svc.cluster.local"},
                "latestCreatedRevision": self._revision(obj, comp),
            }
        return components

    # -- revisions and traffic, as KServe reports a canary rollout --------------------------------
    def _revision(self, obj: dict[str, Any], comp: str) -> str:
        """The component's latest revision name, ``<name>-<comp>-0000N``.

        Knative cuts a new revision when the pod template changes, not on every generation:
        ``canaryTrafficPercent`` only moves traffic, so changing it alone keeps the revision.
        """
        meta = obj["metadata"]
        spec = {k: v for k, v in obj["spec"][comp].items() if k != "canaryTrafficPercent"}
        template = json.dumps(spec, sort_keys=True)
        with self._lock:
            seen = self._templates.setdefault((meta["namespace"], meta["name"], comp), [])
            if not seen or seen[-1] != template:
                seen.append(template)
            revision = f"{meta['name']}-{comp}-{len(seen):05d}"
            self._revision_specs[(meta["namespace"], revision)] = spec
            return revision

    @staticmethod
    def _traffic(
        obj: dict[str, Any], components: dict[str, Any], *, ready: bool
    ) -> None:
        """See ``_split``; with the annotation ``serving.kserve.io/enable-tag-routing: "true"``
        each traffic target also gets its tag's own URL (Knative's ``<tag>-<route>`` host,
        the component's host with the tag in front), as KServe copies it from the route."""
        KServeController._split(obj, components, ready=ready)
        annotations = obj["metadata"].get("annotations") or {}
        if annotations.get(TAG_ROUTING_ANNOTATION) != "true":
            return
        for out in components.values():
            scheme, _, host = out["url"].partition("://")
            for target in out.get("traffic") or []:
                target["url"] = f"{scheme}://{target['tag']}-{host}"

    @staticmethod
    def _split(
        obj: dict[str, Any], components: dict[str, Any], *, ready: bool
    ) -> None:
        """Fill each component's revisions and traffic the way KServe's controller does.

        With ``canaryTrafficPercent`` and a rolled-out revision, the latest ready revision
        (tag ``latest``) gets the canary share and the latest rolled-out one (tag ``prev``) the
        rest; without it, the latest ready revision takes 100 %. A revision that ends up with
        100 % becomes the latest rolled-out one, and the one it replaces the previous. A new
        revision that is not Ready takes no traffic: ``latest`` still routes to the last Ready.
        """
        old = (obj.get("status") or {}).get("components") or {}
        for comp, out in components.items():
            before = old.get(comp) or {}
            latest_ready = out["latestCreatedRevision"] if ready else before.get(
                "latestReadyRevision")
            rolled = before.get("latestRolledoutRevision")
            previous = before.get("previousRolledoutRevision")
            canary = obj["spec"][comp].get("canaryTrafficPercent")
            if latest_ready is None:
                continue  # nothing has been Ready yet: no route
            out["latestReadyRevision"] = latest_ready
            if canary is not None and rolled:
                traffic = [
                    {"tag": "latest", "revisionName": latest_ready, "latestRevision": True,
                     "percent": canary},
                    {"tag": "prev", "revisionName": rolled, "latestRevision": False,
                     "percent": 100 - canary},
                ]
            else:
                traffic = [{"tag": "latest", "revisionName": latest_ready,
                            "latestRevision": True, "percent": 100}]
            share = sum(t["percent"] for t in traffic if t["revisionName"] == latest_ready)
            if share == 100 and rolled != latest_ready:
                previous, rolled = rolled, latest_ready
            out["traffic"] = traffic
            out["latestRolledoutRevision"] = rolled
            if previous:
                out["previousRolledoutRevision"] = previous

    def _finish(self, key: tuple[str, str], generation: int, behavior: IsvcBehavior) -> None:
        obj = self._current(key, generation)
        if obj is None:
            return
        if behavior.outcome == "ready":
            self.set_ready(key[1], key[0], _obj=obj, _behavior=behavior)
        else:
            self.set_failed(key[1], key[0], _obj=obj, _behavior=behavior)

    def set_ready(self, name: str, namespace: str = "default", **kw: Any) -> dict[str, Any]:
        """Write Ready=True for the current generation (what outcome="ready" does after delay)."""
        obj = kw.get("_obj") or self.store.get(ISVC, namespace, name)
        behavior = kw.get("_behavior") or self.behavior(name)
        generation = obj["metadata"]["generation"]
        components = self._urls(obj, behavior)
        self._traffic(obj, components, ready=True)
        comp_conditions = [_cond(f"{c.capitalize()}Ready", "True") for c in components]
        mode = (obj["metadata"].get("annotations") or {}).get(
            "serving.kserve.io/deploymentMode", "Serverless"
        )
        status = {
            "observedGeneration": generation,
            "url": f"http://{name}.{namespace}.{behavior.domain}",
            "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
            "components": components,
            "conditions": [_cond("IngressReady", "True"), *comp_conditions, _cond("Ready", "True")],
            "deploymentMode": mode,
            "modelStatus": {
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                "transitionStatus": "UpToDate",
                "copies": {"failedCopies": 0, "totalCopies": 1},
            },
        }
        self.data_plane_404[(namespace, name)] = behavior.not_found_after_ready
        self.ready_times[(namespace, name, generation)] = time.perf_counter()
        self._write_status((namespace, name), status)
        return status

    def set_failed(self, name: str, namespace: str = "default", **kw: Any) -> dict[str, Any]:
        """Write Ready=False with the behaviour's reason and message for the current generation."""
        obj = kw.get("_obj") or self.store.get(ISVC, namespace, name)
        behavior = kw.get("_behavior") or self.behavior(name)
        message = behavior.message.format(name=name)
        components = self._urls(obj, behavior) if behavior.component_url else {}
        self._traffic(obj, components, ready=False)
        model_status: dict[str, Any] = {
            "states": {"activeModelState": "", "targetModelState": "FailedToLoad"},
            "transitionStatus": "BlockedByFailedLoad" if behavior.terminal else "InProgress",
        }
        if behavior.terminal:
            model_status["lastFailureInfo"] = {"reason": "ModelLoadFailed", "message": message}
        status = {
            "observedGeneration": obj["metadata"]["generation"],
            "components": components,
            "conditions": [
                _cond("IngressReady", "True"),
                _cond("PredictorReady", "False", behavior.reason, message),
                _cond("Ready", "False", behavior.reason, message),
            ],
            "modelStatus": model_status,
        }
        self._write_status((namespace, name), status)
        return status

    # -- data plane ---------------------------------------------------------------------------
    def answer(self, revision: str, fn: Callable[[list[Any]], list[Any] | int]) -> None:
        """Make ``revision`` answer a predict request's ``instances`` with ``fn(instances)``:
        a list of predictions, or an HTTP status code to fail with. Without one, a revision
        whose storageUri is a local path answers with that sklearn model's predictions, and
        any other with zeros."""
        self.answers[revision] = fn

    def find_by_host(self, host: str) -> tuple[str, str] | None:
        """(namespace, name) of the InferenceService whose status.url/component URL has ``host``."""
        found = self.route(host)
        return found[:2] if found else None

    def route(self, host: str) -> tuple[str, str, str | None] | None:
        """(namespace, name, revision) a request to ``host`` reaches: a tag URL's revision, or
        for the InferenceService's and its components' URLs one of the predictor's traffic
        targets, drawn by their percent (None before any revision is routed)."""
        items, _ = self.store.list(ISVC, None)
        for obj in items:
            status = obj.get("status") or {}
            key = obj["metadata"]["namespace"], obj["metadata"]["name"]
            components = status.get("components") or {}
            targets = (components.get("predictor") or {}).get("traffic") or []
            for target in targets:
                if target.get("url") and _host(target["url"]) == host:
                    return (*key, target["revisionName"])
            urls = [status.get("url", "")] + [c.get("url", "") for c in components.values()]
            if any(_host(u) == host for u in urls if u):
                weights = [t.get("percent") or 0 for t in targets]
                if not any(weights):
                    return (*key, None)
                [chosen] = random.choices(targets, weights=weights)
                return (*key, chosen["revisionName"])
        return None

    def _predictions(self, namespace: str, revision: str | None, instances: list[Any]) -> Any:
        """What ``revision`` answers (see ``answer``): predictions, or a status code."""
        if revision in self.answers:
            return self.answers[revision](instances)
        spec = self._revision_specs.get((namespace, revision or ""), {})
        uri = str(((spec.get("model") or {}).get("storageUri")) or "")
        local = uri.removeprefix("file://")
        if local.startswith("/"):
            from kfp_serve.artifacts.model import load_model_file

            with self._lock:
                if local not in self._models:
                    self._models[local] = load_model_file(Path(local))
                model = self._models[local]
            return model.predict(instances).tolist()
        return [0 for _ in instances]

    def data_plane(self, host: str, method: str, path: str, body: Any) -> tuple[int, dict]:
        """Answer a request sent to an InferenceService URL (through the "ingress")."""
        routed = self.route(host)
        if routed is None:
            return 404, {"error": f"no route for host {host!r}"}
        key, revision = routed[:2], routed[2]
        with self._lock:
            remaining = self.data_plane_404.get(key, 0)
            if remaining > 0:
                self.data_plane_404[key] = remaining - 1
        code = 404 if remaining > 0 else 200
        self.data_plane_requests.append((host, path, code))
        name = key[1]
        if code == 404:
            return 404, {"error": f"Model with name {name} does not exist."}
        if path.endswith(":predict") and isinstance(body, dict):
            answer = self._predictions(key[0], revision, list(body.get("instances", [])))
            if isinstance(answer, int):
                return answer, {"error": f"revision {revision} failed with {answer}"}
            return 200, {"predictions": answer}
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return 200, {"model_name": name, "outputs": []}
        return 200, {"name": name, "ready": True}


@dataclass
class TrainedModelBehavior:
    """How the fake KServe controller treats TrainedModels.

    Attributes:
        outcome: "reconcile" (what KServe's TrainedModel controller does) or "never" (no
            status at all: for timeouts).
        delay: seconds from a change (of the TrainedModel, its parent or a sibling) to the
            reconcile.
        default_memory_limit: the predictor's memory limit when the parent sets none. KServe's
            defaulting webhook fills it from the ``inferenceservice-config`` ConfigMap (2Gi as
            shipped); the double does not mutate stored objects, so it assumes it here.
    """

    outcome: str = "reconcile"
    delay: float = 0.02
    default_memory_limit: str = "2Gi"


#: KServe's finalizer on every TrainedModel (it removes the model from the parent's config).
TM_FINALIZER = "trainedmodel.finalizer"
#: The conditions whose conjunction is Ready (KServe's living condition set), and their
#: failure reasons and messages as KServe's controller writes them.
TM_CONDITIONS = {
    "InferenceServiceReady": (
        "InferenceServiceNotReady",
        "Inference Service needs to be ready before Trained Model can be ready",
    ),
    "IsMMSPredictor": (
        "IsNotMMSPredictor",
        "Inference Service predictor is not configured for multi-model serving",
    ),
    "MemoryResourceAvailable": (
        "MemoryResourceNotAvailable",
        "Inference Service does not have enough memory resources for Trained Model",
    ),
}


def _mark(conditions: list[dict[str, Any]], type_: str, status: str,
          reason: str | None = None, message: str | None = None) -> None:
    """Set one condition the way knative's condition sets do: lastTransitionTime only moves
    when the condition changes, and the list stays sorted by type."""
    new = _cond(type_, status, reason, message)
    for i, old in enumerate(conditions):
        if old["type"] == type_:
            same = {k: v for k, v in old.items() if k != "lastTransitionTime"}
            if same == {k: v for k, v in new.items() if k != "lastTransitionTime"}:
                return
            conditions[i] = new
            break
    else:
        conditions.append(new)
    conditions.sort(key=lambda c: c["type"])


def _predictor_implementation(isvc: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(key, spec) of the predictor's implementation: a framework/model spec or containers[0]."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    containers = predictor.get("containers") or []
    if containers:
        return "containers", containers[0]
    for key in admission.PREDICTOR_FRAMEWORKS:
        if isinstance(predictor.get(key), dict):
            return key, predictor[key]
    return None


def is_multi_model(isvc: dict[str, Any]) -> bool:
    """KServe's IsMMSPredictor: a custom container that sets MULTI_MODEL_SERVER=true, or a
    model/framework spec with no storageUri (nor storage) that is not Hugging Face."""
    found = _predictor_implementation(isvc)
    if found is None:
        return False
    key, impl = found
    if key == "containers":
        return any(e.get("name") == constants.MULTI_MODEL_SERVER_ENV and e.get("value") == "true"
                   for e in impl.get("env") or [])
    if key == "huggingface" or (impl.get("modelFormat") or {}).get("name") == "huggingface":
        return False
    return not impl.get("storageUri") and not impl.get("storage")


class TrainedModelController:
    """Plays KServe's TrainedModel controller (``pkg/controller/v1alpha1/trainedmodel``).

    On every change of a TrainedModel, of its parent InferenceService or of a sibling:

    - no parent: the TrainedModel is deleted (with its finalizer already on, it then stays
      Terminating: KServe checks the parent before it handles deletion, so TrainedModels must be
      deleted before their parent);
    - labels ``inferenceservice=<parent>`` and the finalizer are added;
    - conditions InferenceServiceReady, IsMMSPredictor and MemoryResourceAvailable, and Ready
      when all three are True. Memory counts every TrainedModel of the parent already allocated
      (label ``serving.kserve.io/trainedmodel-allocated``) plus this one, against the predictor
      container's memory limit; one that fits gets the allocated label;
    - status.url/address: the parent's, with ``/v1/models/<name>:predict`` (or the v2 infer
      path), once the conditions hold;
    - being deleted: the finalizer is removed (the model leaves the parent's model config).

    KServe writes no ``observedGeneration`` for TrainedModels, and neither does the double; nor
    a ``FrameworkSupported`` condition (KFServing once did): KServe does not compare the model's
    framework with the server's (kfp-serve checks that before it applies a TrainedModel).
    Where KServe requeues a TrainedModel whose parent is not ready (with backoff), the double
    reconciles again when the parent or a sibling changes.
    """

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self.behavior = TrainedModelBehavior()
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        store.listeners.append(self._on_event)

    def program(self, **changes: Any) -> TrainedModelBehavior:
        self.behavior = replace(self.behavior, **changes)
        return self.behavior

    def _on_event(self, event: Event) -> None:
        meta = event.obj["metadata"]
        namespace = meta.get("namespace", "")
        if event.resource is TRAINED_MODEL:
            if event.type != "DELETED":
                self._schedule((namespace, meta["name"]))
            parent = (event.obj.get("spec") or {}).get("inferenceService")
            self._siblings(namespace, parent, but=meta["name"])
        elif event.resource is ISVC:
            self._siblings(namespace, meta["name"])

    def _siblings(self, namespace: str, parent: str | None, but: str | None = None) -> None:
        items, _ = self.store.list(TRAINED_MODEL, namespace)
        for tm in items:
            if (tm.get("spec") or {}).get("inferenceService") == parent and (
                    tm["metadata"]["name"] != but):
                self._schedule((namespace, tm["metadata"]["name"]))

    def _schedule(self, key: tuple[str, str]) -> None:
        behavior = self.behavior
        if behavior.outcome == "never":
            return
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
        self.scheduler.after(behavior.delay, lambda: self._reconcile(key, behavior))

    def _reconcile(self, key: tuple[str, str], behavior: TrainedModelBehavior) -> None:
        with self._lock:
            self._pending.discard(key)
        namespace, name = key
        try:
            tm = self.store.get(TRAINED_MODEL, namespace, name)
        except ApiError:
            return
        parent_name = tm["spec"].get("inferenceService", "")
        try:
            isvc = self.store.get(ISVC, namespace, parent_name)
        except ApiError:
            self.store.delete(TRAINED_MODEL, namespace, name)
            return
        meta = tm["metadata"]
        if "deletionTimestamp" in meta:
            meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != TM_FINALIZER]
            self.store.update(TRAINED_MODEL, namespace, name, tm, check_rv=False)
            return
        labels = meta.setdefault("labels", {})
        labels[constants.LABEL_TM_PARENT] = parent_name
        if TM_FINALIZER not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), TM_FINALIZER]
        status = copy.deepcopy(tm.get("status") or {})
        conditions = status.setdefault("conditions", [])
        holds = {
            "InferenceServiceReady": _is_ready(isvc),
            "IsMMSPredictor": is_multi_model(isvc),
            "MemoryResourceAvailable": self._memory_fits(tm, isvc, behavior),
        }
        for type_, ok in holds.items():
            # Each False dependent marks Ready False with its reason (the last one wins);
            # Ready turns True only when every dependent is.
            if ok:
                _mark(conditions, type_, "True")
            else:
                reason, message = TM_CONDITIONS[type_]
                _mark(conditions, type_, "False", reason, message)
                _mark(conditions, "Ready", "False", reason, message)
        if holds["MemoryResourceAvailable"]:
            labels[constants.LABEL_TM_ALLOCATED] = parent_name
        if all(holds.values()):
            _mark(conditions, "Ready", "True")
            status.update(self._urls(name, isvc))
        stored = self.store.update(TRAINED_MODEL, namespace, name, tm, check_rv=False)
        self.store.update(TRAINED_MODEL, namespace, name, {**stored, "status": status},
                          subresource="status", check_rv=False)

    def _memory_fits(self, tm: dict[str, Any], isvc: dict[str, Any],
                     behavior: TrainedModelBehavior) -> bool:
        found = _predictor_implementation(isvc)
        if found is None:
            return False
        limit = (((found[1].get("resources") or {}).get("limits") or {}).get("memory")
                 or behavior.default_memory_limit)
        parent, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
        items, _ = self.store.list(TRAINED_MODEL, namespace)
        allocated = [
            o for o in items
            if (o["metadata"].get("labels") or {}).get(constants.LABEL_TM_PARENT) == parent
            and (o["metadata"].get("labels") or {}).get(constants.LABEL_TM_ALLOCATED) == parent
        ]
        if constants.LABEL_TM_ALLOCATED not in (tm["metadata"].get("labels") or {}):
            allocated.append(tm)
        total = sum(admission.quantity(o["spec"]["model"].get("memory")) or 0 for o in allocated)
        return (admission.quantity(limit) or 0) >= total

    @staticmethod
    def _urls(name: str, isvc: dict[str, Any]) -> dict[str, Any]:
        found = _predictor_implementation(isvc)
        protocol = (found[1].get("protocolVersion") if found else None) or "v1"
        path = f"/v2/models/{name}/infer" if protocol == "v2" else f"/v1/models/{name}:predict"
        status = isvc.get("status") or {}
        out: dict[str, Any] = {}
        if status.get("url"):
            out["url"] = status["url"] + path
        if (status.get("address") or {}).get("url"):
            out["address"] = {"url": status["address"]["url"] + path}
        return out


def _is_ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


@dataclass
class SnapshotBehavior:
    """How the fake CSI snapshotter treats a new VolumeSnapshot."""

    outcome: str = "ready"  # "ready" | "fail" | "never"
    delay: float = 0.05
    message: str = "Failed to create snapshot: rpc error: code = Internal desc = volume is busy"
    restore_size: str | None = None  # default: the source PVC's requested storage, else 1Gi


class SnapshotController:
    """Plays the CSI external-snapshotter (VolumeSnapshot readyToUse) and PVC binding."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self.behavior = SnapshotBehavior()
        self.pvc_bind_delay = 0.02
        store.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.type != "ADDED":
            return
        meta = event.obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if event.resource is VOLUME_SNAPSHOT:
            behavior = self.behavior
            if behavior.outcome != "never":
                self.scheduler.after(behavior.delay, lambda: self._snapshot_done(key, behavior))
        elif event.resource is PVC:
            self.scheduler.after(self.pvc_bind_delay, lambda: self._bind(key))

    def _snapshot_done(self, key: tuple[str, str], behavior: SnapshotBehavior) -> None:
        obj = self.store.get(VOLUME_SNAPSHOT, *key)
        source = (obj.get("spec") or {}).get("source") or {}
        size = behavior.restore_size
        if size is None:
            try:
                pvc = self.store.get(PVC, key[0], source.get("persistentVolumeClaimName", ""))
                size = pvc["spec"]["resources"]["requests"]["storage"]
            except (ApiError, KeyError):
                size = "1Gi"
        status: dict[str, Any] = {
            "boundVolumeSnapshotContentName": f"snapcontent-{obj['metadata']['uid']}",
            "readyToUse": behavior.outcome == "ready",
        }
        if behavior.outcome == "ready":
            status |= {"creationTime": now_rfc3339(), "restoreSize": size}
        else:
            status["error"] = {"message": behavior.message, "time": now_rfc3339()}
        self.store.update(VOLUME_SNAPSHOT, *key, {"status": status}, subresource="status")

    def _bind(self, key: tuple[str, str]) -> None:
        pvc = self.store.get(PVC, *key)
        source = (pvc.get("spec") or {}).get("dataSource") or {}
        if source.get("kind") == "VolumeSnapshot":
            try:
                snap = self.store.get(VOLUME_SNAPSHOT, key[0], source.get("name", ""))
            except ApiError:
                return  # stays Pending, like a real provisioner waiting for its source
            if not (snap.get("status") or {}).get("readyToUse"):
                self.scheduler.after(0.05, lambda: self._bind(key))
                return
        spec = pvc.get("spec") or {}
        status = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes", []),
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get(
                "storage", "1Gi")},
        }
        self.store.update(PVC, *key, {"status": status}, subresource="status")


@dataclass
class RecordedCall:
    """One request as the double saw it (what RBAC would check)."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    code: int
    query: dict[str, str] = field(default_factory=dict)
