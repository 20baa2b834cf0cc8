"""Object storage of the Kubernetes API double: versions, generations, events for watches."""

from __future__ import annotations

import copy
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    #: With a status subresource, writes to the main resource keep the stored status and
    #: writes to /status change nothing else (what CRDs with `subresources.status` do).
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name an API server uses in messages: ``inferenceservices.serving.kserve.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


ISVC = Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
TRAINED_MODEL = Resource("serving.kserve.io", "v1alpha1", "trainedmodels", "TrainedModel")
PVC = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
VOLUME_SNAPSHOT = Resource("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot")
POD = Resource("", "v1", "pods", "Pod")
#: core/v1 Events: no status subresource (an Event is all data).
EVENT = Resource("", "v1", "events", "Event", status_subresource=False)
RESOURCES: tuple[Resource, ...] = (ISVC, TRAINED_MODEL, PVC, VOLUME_SNAPSHOT, POD, EVENT)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answer of the double: becomes a Status object with this code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    obj: dict[str, Any]


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What bumps metadata.generation: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes; lists and scalars are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Store:
    """Every object, keyed by resource and (namespace, name); a global resourceVersion counter.

    All mutations go through here under one lock, append to the event log and wake watchers.
    ``listeners`` are called (outside the lock) after each write: the fake controllers.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self._rv = itertools.count(1000)
        self.current_rv = next(self._rv)
        self.objects: dict[Resource, dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in RESOURCES
        }
        self.events: list[Event] = []
        #: Watches from a resourceVersion older than this get 410 Gone (a compacted history).
        self.compacted_rv = 0
        self.listeners: list[Callable[[Event], None]] = []
        self.closed = False

    # -- helpers ------------------------------------------------------------------------------
    def _bump(self) -> str:
        self.current_rv = next(self._rv)
        return str(self.current_rv)

    def _emit(self, type_: str, resource: Resource, obj: dict[str, Any]) -> Event:
        event = Event(int(obj["metadata"]["resourceVersion"]), type_, resource, copy.deepcopy(obj))
        self.events.append(event)
        self.cond.notify_all()
        return event

    def _notify(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)

    @staticmethod
    def not_found(resource: Resource, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{resource.qualified} "{name}" not found',
            {"name": name, "group": resource.group, "kind": resource.plural},
        )

    @staticmethod
    def conflict(resource: Resource, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            {"name": name, "group": resource.group, "kind": resource.plural},
        )

    def _decorate(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        obj["apiVersion"] = resource.api_version
        obj["kind"] = resource.kind
        return obj

    # -- reads --------------------------------------------------------------------------------
    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self.objects[resource].get((namespace, name))
            if obj is None:
                raise self.not_found(resource, name)
            return copy.deepcopy(obj)

    def list(self, resource: Resource, namespace: str | None) -> tuple[list[dict], str]:
        with self.cond:
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self.objects[resource].items())
                if namespace is None or ns == namespace
            ]
            return items, str(self.current_rv)

    # -- writes -------------------------------------------------------------------------------
    def create(self, resource: Resource, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            meta = obj.setdefault("metadata", {})
            name = meta.get("name")
            if not name and meta.get("generateName"):
                name = meta["generateName"] + uuid.uuid4().hex[:5]
                meta["name"] = name
            if (namespace, name) in self.objects[resource]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource.qualified} "{name}" already exists',
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            meta.pop("generateName", None)
            if resource.namespaced:
                meta["namespace"] = namespace
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            meta["resourceVersion"] = self._bump()
            if resource.status_subresource:
                obj.pop("status", None)
            self._decorate(resource, obj)
            self.objects[resource][(namespace, name)] = obj
            event = self._emit("ADDED", resource, obj)
            result = copy.deepcopy(obj)
        self._notify(event)
        return result

    def update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        new: dict[str, Any],
        *,
        subresource: str | None = None,
        check_rv: bool = True,
    ) -> dict[str, Any]:
        """Replace an object (PUT semantics); ``subresource="status"`` changes only status."""
        with self.cond:
            old = self.objects[resource].get((namespace, name))
            if old is None:
                raise self.not_found(resource, name)
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if check_rv and sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise self.conflict(resource, name)
            if subresource == "status":
                obj = copy.deepcopy(old)
                if "status" in new:
                    obj["status"] = copy.deepcopy(new["status"])
                else:
                    obj.pop("status", None)
            else:
                obj = copy.deepcopy(new)
                meta = obj.setdefault("metadata", {})
                # Server-owned fields survive a replace whatever the client sent.
                for key in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                    if key in old["metadata"]:
                        meta[key] = old["metadata"][key]
                if resource.status_subresource:
                    if "status" in old:
                        obj["status"] = copy.deepcopy(old["status"])
                    else:
                        obj.pop("status", None)
                if _spec_part(obj) != _spec_part(old):
                    meta["generation"] = old["metadata"].get("generation", 1) + 1
                if "deletionTimestamp" in old["metadata"]:
                    meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
            self._decorate(resource, obj)
            if obj == old:
                # A no-op write changes nothing, not even resourceVersion (as a server does).
                return copy.deepcopy(old)
            obj["metadata"]["resourceVersion"] = self._bump()
            if "deletionTimestamp" in obj["metadata"] and not obj["metadata"].get("finalizers"):
                # The last finalizer of an object being deleted is gone: now it is deleted.
                del self.objects[resource][(namespace, name)]
                event = self._emit("DELETED", resource, obj)
            else:
                self.objects[resource][(namespace, name)] = obj
                event = self._emit("MODIFIED", resource, obj)
            result = copy.deepcopy(obj)
        self._notify(event)
        return result

    def delete(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        """Delete an object; one with finalizers only gets a deletionTimestamp (MODIFIED) and
        goes when its controller has removed them (see update)."""
        with self.cond:
            obj = self.objects[resource].get((namespace, name))
            if obj is None:
                raise self.not_found(resource, name)
            meta = obj["metadata"]
            if meta.get("finalizers"):
                if "deletionTimestamp" in meta:
                    return copy.deepcopy(obj)  # already being deleted: nothing changes
                meta["deletionTimestamp"] = now_rfc3339()
                meta["resourceVersion"] = self._bump()
                event = self._emit("MODIFIED", resource, obj)
            else:
                del self.objects[resource][(namespace, name)]
                meta["resourceVersion"] = self._bump()
                meta["deletionTimestamp"] = now_rfc3339()
                event = self._emit("DELETED", resource, obj)
            result = copy.deepcopy(obj)
        self._notify(event)
        return result

    def compact(self) -> None:
        """Forget history: watches from any older resourceVersion now get 410 Gone."""
        with self.cond:
            self.compacted_rv = self.current_rv

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_events(self, after_index: int, deadline: float) -> int:
        """Block until the event log grows past ``after_index`` or ``deadline``; its length."""
        with self.cond:
            while len(self.events) <= after_index and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(min(remaining, 0.5))
            return len(self.events)
