"""The Kubernetes serving backend: InferenceServices on a cluster with KServe.

Talks to the API server with the official ``kubernetes`` client (not ``KServeClient``, which
turns every API error into a bare RuntimeError, polls readiness every 10 s and returns silently
when its watch times out). What it does differently:

- apply = get, then create or merge-patch (idempotent; a no-op apply sends no write), always with
  ``fieldValidation=Strict`` so a typo is an error instead of a silently pruned field;
- 400/401/403/404/409/422 are reported with the API server's own message and never retried;
  5xx, 429 and connection problems are retried with backoff inside the caller's deadline; a
  write refused with 409 is recomputed from a fresh read (5 times at most); these retries and
  every wait below go through the project's one retry policy (``kfp_serve.retry``);
- readiness is awaited with a watch (no polling interval) for the *new* generation: a Ready=True
  left over from the previous generation does not end the wait; watches that end are resumed;
- ``pvc://`` snapshots named in the manifest's annotations are hydrated into PVCs first;
- a multi-model endpoint is a parent InferenceService plus one KServe TrainedModel per hosted
  model, applied and awaited the same way (``apply_trained_model``; how their status reads is
  in ``trained_models.py``), removed with a wait for KServe's finalizer.

The ``kubernetes`` package is imported lazily: ``serving`` must stay cheap to import.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from kfp_serve.artifacts.environment import running_in_pod
from kfp_serve.artifacts.kube import (
    client_configuration,
    default_namespace,
    kubeconfig_path,
    use_in_cluster,
)
from kfp_serve.artifacts.names import validate_name
from kfp_serve.retry import retrying, wait_until
from kfp_serve.serving import admission
from kfp_serve.serving.backends import kube_events
from kfp_serve.serving.backends.base import KUBERNETES, EndpointStatus, TrainedModelStatus
from kfp_serve.serving.backends.traffic import (
    PROMOTE,
    ROLLBACK,
    TRAFFIC,
    RolloutState,
    promote_patch,
    rollback_patch,
    rollout_state,
    settled,
    traffic_patch,
)
from kfp_serve.serving.backends.trained_models import (
    KSERVE_MEMORY_REASON,
    check_parent,
    check_same_parent,
    memory_refusal,
    parent_of,
    same_memory,
    tm_readiness,
    tm_status,
)
from kfp_serve.serving.constants import (
    ANNOTATION_MODEL_SNAPSHOT,
    ANNOTATION_TRANSFORMER_SNAPSHOT,
    DOMAIN,
    KSERVE_VERSION_ENV,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.isvc import grpc_component
from kfp_serve.serving.trained_model import is_multi_model

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    """One KServe resource type the backend writes: where it lives in the API, how it is named."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def path(self, namespace: str) -> tuple[str, str, str, str]:
        """(group, version, namespace, plural): the leading arguments of CustomObjectsApi."""
        return self.group, self.version, namespace, self.plural


INFERENCE_SERVICE = Kind(GROUP, VERSION, PLURAL, KIND)
TRAINED_MODEL = Kind(GROUP, "v1alpha1", "trainedmodels", "TrainedModel")

#: Where the cluster's ingress gateway is reachable from here ("host:port" or a URL).
INGRESS_ENV = "KFP_SERVE_INGRESS"
#: KServe's documented convention (``INGRESS_HOST``/``INGRESS_PORT``), used when the above is unset.
INGRESS_HOST_ENV = "INGRESS_HOST"
INGRESS_PORT_ENV = "INGRESS_PORT"

# Statuses worth retrying: the request may succeed a moment later unchanged.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Ready=False reasons after which KServe/Knative will not get there on their own: waiting on is
# pointless. Other Ready=False/Unknown states happen during every rollout.
TERMINAL_REASONS = frozenset(
    {"RevisionFailed", "ProgressDeadlineExceeded", "InvalidSpec", "BlockedByFailedLoad"}
)
TERMINAL_TRANSITIONS = frozenset({"BlockedByFailedLoad", "InvalidSpec"})
_APPLY_ATTEMPTS = 5  # conflicts (someone else wrote in between) before giving up
_MAX_WATCH_SECONDS = 10  # resume watches this often: a heartbeat for the progress output
_CONNECT_TIMEOUT = 5.0


def _grpc_address(obj: dict[str, Any], url: str | None) -> str | None:
    """``host:port`` of the InferenceService's OIP gRPC service, None when it serves none.

    KServe's gRPC setup names the serving container's port ``h2c``; Knative then routes the
    component's HTTP/2 traffic there through the same host and port as its URL (the ingress
    gateway's, port 80 by default), the Host header naming the service as for REST.
    """
    if not url or grpc_component(obj) is None:
        return None
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class _Retryable(Exception):
    """A failed attempt worth another one after a pause; its message says what failed."""


class _OutOfTime(ServingError):
    """The API kept failing until the caller's deadline (no time left for another attempt)."""


class _Conflict(Exception):
    """The stored object changed under a write (409), or was just replaced: read it again."""


class InferenceServiceNotReadyError(ServingError):
    """An InferenceService failed or did not become Ready in time.

    Attributes:
        name, namespace: the InferenceService.
        reason, message: of its Ready condition (or the failing one), if any.
        conditions: every status condition, as the API returned them.
        url: a component URL if the controller set one.
        timed_out: True when the deadline passed, False for a terminal failure.
    """

    def __init__(
        self,
        text: str,
        *,
        name: str,
        namespace: str,
        reason: str | None,
        message: str | None,
        conditions: list[dict[str, Any]],
        url: str | None,
        timed_out: bool,
    ) -> None:
        super().__init__(text)
        self.name = name
        self.namespace = namespace
        self.reason = reason
        self.message = message
        self.conditions = conditions
        self.url = url
        self.timed_out = timed_out


class TrainedModelNotReadyError(ServingError):
    """A TrainedModel was refused (no memory left, a single-model parent) or not Ready in time.

    Attributes:
        status: what the backend saw last (``status.reason``, ``status.message``).
        timed_out: True when the deadline passed, False for a refusal.
    """

    def __init__(self, text: str, *, status: TrainedModelStatus, timed_out: bool) -> None:
        super().__init__(text)
        self.status = status
        self.timed_out = timed_out


def ingress_address() -> tuple[str, str] | None:
    """(scheme, host[:port]) of the ingress gateway from KFP_SERVE_INGRESS or INGRESS_HOST/PORT."""
    value = os.environ.get(INGRESS_ENV, "").strip()
    if value:
        if "://" in value:
            parts = urlsplit(value)
            return parts.scheme or "http", parts.netloc
        return "http", value
    host = os.environ.get(INGRESS_HOST_ENV, "").strip()
    if not host:
        return None
    port = os.environ.get(INGRESS_PORT_ENV, "").strip()
    return "http", f"{host}:{port}" if port else host


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((obj.get("status") or {}).get("conditions")) or [])


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in _conditions(obj) if c.get("type") == type_), None)


def readiness(obj: dict[str, Any], generation: int) -> tuple[str, str]:
    """("ready" | "failed" | "pending", one-line summary) of ``obj`` for ``generation``.

    Ready only counts once the controller has observed ``generation``: right after an update
    the status still shows the previous generation's Ready=True.
    """
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    ready = _condition(obj, "Ready")
    if observed is None or observed < generation:
        stale = (
            " (Ready=True is for the previous generation)"
            if ready and ready.get("status") == "True"
            else ""
        )
        return "pending", (
            f"waiting for the controller to observe generation {generation} "
            f"(observed: {observed if observed is not None else 'none'}){stale}"
        )
    if ready and ready.get("status") == "True":
        return "ready", f"Ready (generation {generation})"
    not_true = [c for c in _conditions(obj) if c.get("status") != "True"]
    summary = (
        "; ".join(
            f"{c.get('type')}={c.get('status')}"
            + (f" {c['reason']}" if c.get("reason") else "")
            + (f": {c['message']}" if c.get("message") else "")
            for c in not_true
        )
        or "no conditions yet"
    )
    transition = (status.get("modelStatus") or {}).get("transitionStatus")
    failed = transition in TERMINAL_TRANSITIONS or (
        ready is not None
        and ready.get("status") == "False"
        and ready.get("reason") in TERMINAL_REASONS
    )
    return ("failed" if failed else "pending"), summary


def merge_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning ``old`` into ``new`` (null removes a key)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value)
    return patch


def _owned(key: str) -> bool:
    """Labels/annotations kfp-serve manages (others belong to users or controllers: kept)."""
    return key.startswith(f"{DOMAIN}/")


def apply_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes ``current`` what ``desired`` asks for; None if nothing to do.

    The spec is made equal to the manifest's (fields the manifest dropped are removed).
    Labels and annotations the manifest sets are set; kfp-serve's own that it no longer sets are
    removed; anyone else's (kubectl, KServe, users) are left alone. The patch carries the
    resourceVersion it was computed from, so a concurrent write makes it fail with 409 instead
    of being silently merged.
    """
    meta_patch: dict[str, Any] = {}
    cur_meta, want_meta = current.get("metadata") or {}, desired.get("metadata") or {}
    for field in ("labels", "annotations"):
        cur, want = cur_meta.get(field) or {}, want_meta.get(field) or {}
        diff = {k: v for k, v in want.items() if cur.get(k) != v}
        diff.update({k: None for k in cur if k not in want and _owned(k)})
        if diff:
            meta_patch[field] = diff
    patch: dict[str, Any] = {}
    if current.get("spec") != desired.get("spec"):
        patch["spec"] = merge_diff(current.get("spec") or {}, desired.get("spec") or {})
    if meta_patch:
        patch["metadata"] = meta_patch
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = cur_meta.get("resourceVersion")
    return patch


def _api_message(e: Any) -> tuple[str, str]:
    """(reason, message) of an ApiException, from the Status body the server sent."""
    reason, message = str(getattr(e, "reason", "") or ""), ""
    try:
        body = json.loads(e.body or "{}")
        reason = body.get("reason") or reason
        message = body.get("message") or ""
    except (TypeError, ValueError):
        message = str(e.body or "")[:500]
    return reason, message or str(e)


_HINTS = {
    401: "the credentials in the kubeconfig (or the pod's service account token) were refused",
    403: (
        "the service account lacks an RBAC permission: apply serving/rbac.yaml in the namespace "
        "(check with `kubectl auth can-i {verb} {resource} -n {namespace}`)"
    ),
    404: "is KServe installed (`kubectl get crd {resource}`)?",
    422: "the manifest does not match the {kind} CRD installed on the cluster",
    400: "the manifest does not match the {kind} CRD installed on the cluster",
}

# How the API server words a validating webhook's refusal (it reuses 403/400, not RBAC's meaning).
_WEBHOOK_DENIAL = "admission webhook "
_WEBHOOK_HINTS = {
    KIND: (
        "KServe's validating webhook refused the manifest: change the field it names (serve(..., "
        f"dry_run=True) checks the same rules; set {KSERVE_VERSION_ENV} to the cluster's KServe "
        "release to check that release's rules)"
    ),
    TRAINED_MODEL.kind: (
        "KServe's validating webhook refused the TrainedModel: change the field it names "
        "(kfp_serve.serving.admission.admit_trained_model checks the same rules)"
    ),
}


class KubernetesBackend:
    """Serves InferenceService manifests on the cluster the environment points at.

    Args:
        namespace: default namespace; else the pod's service account namespace (in a pod), else
            the kubeconfig context's namespace, else "default".
        kubeconfig: kubeconfig path (default: $KUBECONFIG, else ~/.kube/config); in a pod the
            in-cluster config is used unless this is given.
        context: kubeconfig context (default: the current one).
        api_client: a ready ``kubernetes.client.ApiClient`` (tests); skips config loading.
        progress: where progress lines go (default stderr); None or False silences them.
        request_timeout: read timeout of one API request in seconds (watches excepted).
        probe_timeout: after Ready, how long to wait for the endpoint to answer when it is
            reachable from here (in a pod, or through KFP_SERVE_INGRESS/INGRESS_HOST); 0 skips.
    """

    name = KUBERNETES

    def __init__(
        self,
        *,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        api_client: Any = None,
        progress: IO[str] | bool | None = True,
        request_timeout: float = 30.0,
        probe_timeout: float = 30.0,
    ) -> None:
        self._namespace = namespace
        self._kubeconfig = str(kubeconfig) if kubeconfig is not None else None
        self._context = context
        self._api_client = api_client
        self._context_namespace: str | None = None
        self._out: IO[str] | None = sys.stderr if progress is True else (progress or None)
        self.request_timeout = request_timeout
        self.probe_timeout = probe_timeout
        self._custom: Any = None
        self._core: Any = None

    # -- configuration ------------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        """(CustomObjectsApi, CoreV1Api), configured on first use."""
        if self._custom is None:
            from kubernetes import client

            api_client = self._api_client or client.ApiClient(self._load_configuration())
            # Retries are ours (deadline-aware, never for 4xx): urllib3 must not add its own.
            api_client.configuration.retries = False
            api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
            self._api_client = api_client
            self._custom = client.CustomObjectsApi(api_client)
            self._core = client.CoreV1Api(api_client)
        return self._custom, self._core

    def _load_configuration(self) -> Any:
        from kubernetes import config

        try:
            return client_configuration(self._kubeconfig, self._context)
        except (config.ConfigException, OSError) as e:
            where = (
                "in-cluster service account"
                if use_in_cluster(self._kubeconfig)
                else f"kubeconfig {kubeconfig_path(self._kubeconfig)!r}"
            )
            raise ServingError(
                f"cannot configure the Kubernetes client from the {where}: {e}. Point KUBECONFIG "
                "at a cluster, or serve locally with KFP_SERVE_BACKEND=local"
            ) from e

    @property
    def namespace(self) -> str:
        """The namespace used when a call or manifest names none."""
        if self._namespace:
            return self._namespace
        if self._context_namespace is None:
            # An ApiClient handed in without a kubeconfig says nothing about namespaces.
            configured_elsewhere = self._api_client is not None and self._kubeconfig is None
            found = None if configured_elsewhere and not running_in_pod() else default_namespace(
                self._kubeconfig, self._context
            )
            self._context_namespace = found or "default"
        return self._context_namespace

    # -- plumbing -----------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self._out is not None:
            print(f"[kfp-serve] {text}", file=self._out, flush=True)

    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, deadline: float, **kwargs: Any
    ) -> Any:
        """Call the API, retrying 5xx/429/connection errors with backoff until ``deadline``.

        Other API errors (4xx) are raised at once as ``ApiException`` for the caller to handle.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        attempts, last = 0, "none"

        def once() -> Any:
            nonlocal attempts, last
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Retryable(last)  # no time left for (another) attempt
            kwargs["_request_timeout"] = (
                min(_CONNECT_TIMEOUT, remaining),
                min(self.request_timeout, remaining),
            )
            attempts += 1
            try:
                return fn(*args, **kwargs)
            except ApiException as e:
                if e.status not in RETRYABLE_STATUSES:
                    raise
                reason, message = _api_message(e)
                last = f"{e.status} {reason}: {message}"
            except (urllib3.exceptions.HTTPError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            raise _Retryable(last)

        def say(error: BaseException, pause: float) -> None:
            self._say(f"{what}: {error}; retrying in {pause:.1f}s")

        try:
            return retrying(
                deadline=max(0.0, deadline - time.monotonic()),
                on=_Retryable,
                first_wait=0.1,
                max_wait=2.0,
                jitter=0.5,
                before_sleep=say,
            )(once)
        except _Retryable as e:
            raise _OutOfTime(
                f"{what} failed: the Kubernetes API server did not answer successfully "
                f"before the deadline ({attempts} attempt(s); last error: {e})"
            ) from None

    def _refused(
        self, e: Any, verb: str, name: str, namespace: str, kind: Kind = INFERENCE_SERVICE
    ) -> ServingError:
        reason, message = _api_message(e)
        webhook = message.startswith(_WEBHOOK_DENIAL)
        hint = (_WEBHOOK_HINTS[kind.kind] if webhook else _HINTS.get(e.status, "")).format(
            verb=verb, resource=f"{kind.plural}.{kind.group}", namespace=namespace,
            kind=kind.kind)
        return ServingError(
            f"the Kubernetes API server refused to {verb} {kind.kind} {name!r} in namespace "
            f"{namespace!r}: {e.status} {reason}: {message}" + (f" — {hint}" if hint else "")
        )

    # -- ServingBackend -----------------------------------------------------------------------
    def apply(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> EndpointStatus:
        """Create or update the InferenceService and (by default) wait until it is Ready.

        Args:
            manifest: an InferenceService (serving.kserve.io/v1beta1), camelCase.
            wait: wait for Ready of the generation this apply produced.
            timeout: seconds for everything (API retries, hydration, readiness, probe).

        Raises:
            ServingError: the API server refused it (message included), or it kept failing.
            InferenceServiceNotReadyError: it failed or was not Ready within ``timeout``.
        """
        started = time.monotonic()
        deadline = started + timeout
        body = self._prepare(manifest)
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        self._hydrate_snapshots(body, namespace, deadline)
        obj = self._apply_object(body, name, namespace, deadline)
        self._record_event(obj, *kube_events.applied(obj))
        generation = obj["metadata"].get("generation", 1)
        if not wait:
            return self._endpoint_status(obj)
        obj = self._wait_ready(name, namespace, obj, generation, started, deadline, timeout)
        status = self._endpoint_status(obj)
        self._probe(status, deadline)
        self._say(
            f"InferenceService {name!r} is Ready after {time.monotonic() - started:.1f}s"
            + (f": {status.url}" if status.url else "")
        )
        return status

    def _prepare(
        self, manifest: dict[str, Any], kind: Kind = INFERENCE_SERVICE
    ) -> dict[str, Any]:
        if not isinstance(manifest, dict):
            raise ServingError(f"a {kind.kind} manifest must be a dict, got {manifest!r}")
        body = copy.deepcopy(manifest)
        if body.get("kind", kind.kind) != kind.kind or body.get(
            "apiVersion", kind.api_version
        ) != kind.api_version:
            raise ServingError(
                f"the Kubernetes backend applies {kind.api_version} {kind.kind} manifests here, "
                f"got {body.get('apiVersion')!r} {body.get('kind')!r}"
            )
        body["apiVersion"], body["kind"] = kind.api_version, kind.kind
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            raise ServingError(f"the {kind.kind} manifest has no metadata.name")
        meta["namespace"] = meta.get("namespace") or self.namespace
        # Refused here, before any API call, like everywhere else a name enters kfp-serve.
        validate_name(meta["name"], "metadata.name")
        validate_name(meta["namespace"], "metadata.namespace")
        body.pop("status", None)
        return body

    def _hydrate_snapshots(self, body: dict[str, Any], namespace: str, deadline: float) -> None:
        """Create the PVCs that pvc:// snapshots are served from (before the pods need them)."""
        annotations = body["metadata"].get("annotations") or {}
        uris = [
            annotations.get(k) for k in (ANNOTATION_MODEL_SNAPSHOT, ANNOTATION_TRANSFORMER_SNAPSHOT)
        ]
        uris = [u for u in uris if isinstance(u, str) and u.startswith("pvc://")]
        if not uris:
            return
        from kfp_serve.artifacts.errors import SnapshotError
        from kfp_serve.artifacts.snapshots import pvc

        _, core = self._clients()

        def hydrate(uri: str, _request_timeout: tuple[float, float]) -> str:
            return pvc.hydrate(uri, namespace, core, request_timeout=_request_timeout[1])

        for uri in uris:
            try:
                claim = self._call(f"hydrating {uri}", hydrate, uri, deadline=deadline)
            except SnapshotError as e:
                raise ServingError(f"cannot serve snapshot {uri!r}: {e}") from e
            except self._api_exception() as e:
                reason, message = _api_message(e)
                raise ServingError(
                    f"cannot hydrate a PVC from snapshot {uri!r} in namespace {namespace!r}: "
                    f"{e.status} {reason}: {message}"
                ) from e
            self._say(f"PVC {claim!r} hydrated from {uri}")

    @staticmethod
    def _api_exception() -> type[Exception]:
        from kubernetes.client.exceptions import ApiException

        return ApiException

    def _apply_object(
        self,
        body: dict[str, Any],
        name: str,
        namespace: str,
        deadline: float,
        kind: Kind = INFERENCE_SERVICE,
        check: Callable[[dict[str, Any]], None] | None = None,
        replace: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """get, then create or merge-patch; retried on conflicts; returns the stored object.

        ``check`` sees the stored object before it is patched (and may refuse to touch it);
        when ``replace`` says so, the stored object is deleted (and awaited) and created anew.
        """
        custom, _ = self._clients()
        api_exception = self._api_exception()
        where = kind.path(namespace)
        what = f"{kind.kind} {name!r}"

        def once() -> dict[str, Any]:
            try:
                current = self._call(
                    f"reading {what}",
                    custom.get_namespaced_custom_object,
                    *where,
                    name,
                    deadline=deadline,
                )
            except api_exception as e:
                if e.status != 404:
                    raise self._refused(e, "get", name, namespace, kind) from e
                try:
                    obj = self._call(
                        f"creating {what}",
                        custom.create_namespaced_custom_object,
                        *where,
                        body,
                        field_validation="Strict",
                        deadline=deadline,
                    )
                except api_exception as e2:
                    if e2.status == 409:
                        # Created meanwhile (or by our own timed-out attempt): patch it.
                        raise _Conflict from e2
                    raise self._refused(e2, "create", name, namespace, kind) from e2
                self._say(f"created {what} in namespace {namespace!r}")
                return obj
            if check is not None:
                check(current)
            if replace is not None and replace(current):
                self._delete_object(kind, name, namespace, deadline, missing_ok=True)
                self._wait_gone(kind, name, namespace, deadline)
                raise _Conflict  # gone now: created by the next attempt
            patch = apply_patch(current, body)
            if patch is None:
                self._say(
                    f"{what} is unchanged (generation "
                    f"{current['metadata'].get('generation')})"
                )
                return current
            try:
                obj = self._call(
                    f"updating {what}",
                    custom.patch_namespaced_custom_object,
                    *where,
                    name,
                    patch,
                    field_validation="Strict",
                    deadline=deadline,
                )
            except api_exception as e:
                if e.status == 409:
                    # Written by someone else since our get: recompute from fresh state.
                    raise _Conflict from e
                raise self._refused(e, "patch", name, namespace, kind) from e
            self._say(
                f"updated {what} in namespace {namespace!r} "
                f"(generation {obj['metadata'].get('generation')})"
            )
            return obj

        try:
            # A conflict is answered by a fresh read at once: waiting would not make it likelier
            # that the other writer is done.
            return retrying(attempts=_APPLY_ATTEMPTS, on=_Conflict, first_wait=0, max_wait=0)(once)
        except _Conflict:
            raise ServingError(
                f"{what} in namespace {namespace!r} kept changing while it was "
                f"being applied ({_APPLY_ATTEMPTS} conflicts): is another client writing it?"
            ) from None

    def _watch_events(
        self,
        name: str,
        namespace: str,
        resource_version: str | None,
        deadline: float,
        kind: Kind = INFERENCE_SERVICE,
    ) -> Iterator[dict[str, Any]]:
        """Events of one object until the watch ends (server timeout or deadline)."""
        from kubernetes import watch

        custom, _ = self._clients()
        remaining = deadline - time.monotonic()
        kwargs: dict[str, Any] = {
            "field_selector": f"metadata.name={name}",
            # Whole seconds, at least 1; the read timeout below enforces the exact deadline.
            "timeout_seconds": max(1, min(_MAX_WATCH_SECONDS, math.ceil(remaining))),
            "_request_timeout": (min(_CONNECT_TIMEOUT, remaining), max(0.01, remaining)),
            "allow_watch_bookmarks": False,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        w = watch.Watch()
        try:
            yield from w.stream(
                custom.list_namespaced_custom_object, *kind.path(namespace), **kwargs
            )
        finally:
            w.stop()

    def _wait_ready(
        self,
        name: str,
        namespace: str,
        obj: dict[str, Any],
        generation: int,
        started: float,
        deadline: float,
        timeout: float,
        kind: Kind = INFERENCE_SERVICE,
        judge: Callable[[dict[str, Any], int], tuple[str, str]] = readiness,
        fail: Callable[..., Exception] | None = None,
        gone: str = "",
    ) -> dict[str, Any]:
        """Watch the object until ``judge`` says ready (returned) or failed (``fail`` raised).

        ``gone`` is said when it is deleted meanwhile (why that may happen).
        """
        import urllib3

        api_exception = self._api_exception()
        custom, _ = self._clients()
        fail = fail or self._not_ready
        what = f"{kind.kind} {name!r} in namespace {namespace!r}"
        latest = obj
        rv = obj["metadata"].get("resourceVersion")
        state, summary = judge(latest, generation)
        shown: list[Any] = ["", 0.0]  # last summary printed, and when

        def show(force: bool = False) -> None:
            now = time.monotonic()
            if force or summary != shown[0] or now - shown[1] >= _MAX_WATCH_SECONDS:
                self._say(f"{name} [{now - started:5.1f}s/{timeout:.0f}s] {summary}")
                shown[0], shown[1] = summary, now

        def decided() -> bool:
            """Whether the wait is over: True when ready; raises when failed or out of time."""
            show()
            if state == "ready":
                return True
            if state == "failed":
                raise fail(latest, generation, timeout, timed_out=False)
            if deadline - time.monotonic() <= 0:
                raise fail(latest, generation, timeout, timed_out=True)
            return False

        def watch() -> None:
            """Follow events until the state is decided or the watch ends (server timeout).

            Raises:
                _Retryable: the watch was interrupted: re-read, then watch again.
            """
            nonlocal latest, rv, state, summary
            try:
                for event in self._watch_events(name, namespace, rv, deadline, kind):
                    if event["type"] == "DELETED":
                        raise ServingError(
                            f"{what} was deleted while waiting for it to become Ready" + gone
                        )
                    latest = event["raw_object"]
                    rv = latest["metadata"].get("resourceVersion") or rv
                    state, summary = judge(latest, generation)
                    if state != "pending":
                        return
                    show()
            except api_exception as e:
                if e.status in (403, 401):
                    raise self._refused(e, "watch", name, namespace, kind) from e
                # 410 Gone (history compacted) and server errors: re-read, then watch again.
                raise _Retryable(f"watch interrupted ({e.status} {_api_message(e)[0]})") from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if time.monotonic() >= deadline:
                    return  # the read timeout was the deadline: decided() reports the timeout
                raise _Retryable(f"watch interrupted ({type(e).__name__})") from e

        def reread() -> None:
            nonlocal latest, rv, state, summary
            try:
                latest = self._call(
                    f"reading {kind.kind} {name!r}",
                    custom.get_namespaced_custom_object,
                    *kind.path(namespace),
                    name,
                    deadline=deadline,
                )
            except api_exception as e:
                if e.status == 404:
                    raise ServingError(
                        f"{what} disappeared while waiting for it to become Ready"
                        + (gone or " (deleted by someone else?)")
                    ) from e
                raise self._refused(e, "get", name, namespace, kind) from e
            except _OutOfTime:
                # The API kept failing until the deadline: report the readiness timeout.
                raise fail(latest, generation, timeout, timed_out=True) from None
            rv = latest["metadata"].get("resourceVersion")
            state, summary = judge(latest, generation)

        def say(error: BaseException, pause: float) -> None:
            self._say(f"{name}: {error}; re-reading the {kind.kind}")

        # A watch the server ends is resumed at once from the last version seen (this loop);
        # an interrupted one is retried after a pause and a re-read, the pauses growing until
        # a watch ends normally again.
        while not decided():
            try:
                for attempt in retrying(
                    deadline=max(0.0, deadline - time.monotonic()),
                    on=_Retryable,
                    first_wait=0.1,
                    max_wait=2.0,
                    before_sleep=say,
                ):
                    with attempt:
                        if attempt.retry_state.attempt_number > 1:
                            reread()
                            if state != "pending":
                                break
                            show()
                        watch()
            except _Retryable:
                # Interrupted again, and the next pause would end past the deadline.
                raise fail(latest, generation, timeout, timed_out=True) from None
        return latest

    def _not_ready(
        self, obj: dict[str, Any], generation: int, timeout: float, *, timed_out: bool
    ) -> InferenceServiceNotReadyError:
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name", "?"), meta.get("namespace", "?")
        status = obj.get("status") or {}
        conditions = _conditions(obj)
        ready = _condition(obj, "Ready") or {}
        failing = (
            ready
            if ready.get("reason")
            else next(
                (c for c in conditions if c.get("status") == "False" and c.get("reason")), ready
            )
        )
        reason, message = failing.get("reason"), failing.get("message")
        components = status.get("components") or {}
        url = next((c.get("url") for c in components.values() if c.get("url")), None)
        url = url or status.get("url")
        head = (
            f"InferenceService {name!r} in namespace {namespace!r} did not become Ready within "
            f"{timeout:.0f}s"
            if timed_out
            else f"InferenceService {name!r} in namespace {namespace!r} failed"
        )
        lines = [
            f"{head} (generation {generation}, observed by the controller: "
            f"{status.get('observedGeneration', 'none')})."
        ]
        if reason or message:
            lines.append(f"  reason: {reason or '-'}: {message or '-'}")
        if conditions:
            lines.append("  conditions:")
            lines += [
                f"    {c.get('type')}={c.get('status')}"
                + (f" {c['reason']}" if c.get("reason") else "")
                + (f": {c['message']}" if c.get("message") else "")
                for c in conditions
            ]
        model_status = status.get("modelStatus") or {}
        if model_status.get("transitionStatus"):
            failure = model_status.get("lastFailureInfo") or {}
            lines.append(
                f"  model status: {model_status['transitionStatus']}"
                + (f" ({failure.get('reason')}: {failure.get('message')})" if failure else "")
            )
        if url:
            lines.append(f"  url: {url}")
        selector = f"serving.kserve.io/inferenceservice={name}"
        lines += [
            "  what to check next:",
            f"    kubectl describe inferenceservice {name} -n {namespace}",
            f"    kubectl get pods -n {namespace} -l {selector}",
            f"    kubectl logs -n {namespace} -l {selector} -c kserve-container --tail=100",
            f"    kubectl get events -n {namespace} --sort-by=.lastTimestamp",
        ]
        if status.get("observedGeneration", 0) < generation:
            lines.append(
                "    (the KServe controller has not processed this generation: "
                "kubectl logs -n kserve deploy/kserve-controller-manager)"
            )
        return InferenceServiceNotReadyError(
            "\n".join(lines),
            name=name,
            namespace=namespace,
            reason=reason,
            message=message,
            conditions=conditions,
            url=url,
            timed_out=timed_out,
        )

    def _endpoint_status(self, obj: dict[str, Any]) -> EndpointStatus:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        generation = meta.get("generation", 1)
        state, _ = readiness(obj, generation)
        ready_cond = _condition(obj, "Ready") or {}
        components = {
            comp: info["url"]
            for comp, info in (status.get("components") or {}).items()
            if isinstance(info, dict) and info.get("url")
        }
        external = status.get("url")
        cluster_local = (status.get("address") or {}).get("url")
        if cluster_local:
            components["cluster-local"] = cluster_local
        if external:
            components["external"] = external
        headers: dict[str, str] = {}
        url = external or cluster_local
        if running_in_pod() and cluster_local:
            url = cluster_local  # no ingress hop (and no external DNS) needed inside the cluster
        elif external and (ingress := ingress_address()):
            # Outside: connect to the ingress gateway and name the service in the Host header.
            parts = urlsplit(external)
            headers["Host"] = parts.hostname or parts.netloc
            url = f"{ingress[0]}://{ingress[1]}{parts.path}".rstrip("/")
        return EndpointStatus(
            grpc_address=_grpc_address(obj, url),
            name=meta.get("name", ""),
            backend=KUBERNETES,
            url=url,
            ready=state == "ready",
            namespace=meta.get("namespace"),
            manifest=obj,
            reason=None if state == "ready" else ready_cond.get("reason"),
            message=None if state == "ready" else ready_cond.get("message"),
            components=components,
            headers=headers,
        )

    def _probe(self, status: EndpointStatus, deadline: float, model: str | None = None) -> None:
        """After Ready, wait until the endpoint answers (kserve/kserve#1658: 404 right after).

        ``model``: the hosted model to ask, on a multi-model endpoint (default: the endpoint's
        own, whose name it has; a multi-model parent has none to ask until models arrive).
        Only when reachable from here (in a pod, or through a configured ingress), bounded by
        ``probe_timeout``; a probe that never succeeds is reported, not raised: Ready is what
        the cluster says, and the caller's smoke test retries on its own.
        """
        if not status.url or self.probe_timeout <= 0:
            return
        if not (running_in_pod() or status.headers):
            return
        if model is None and is_multi_model(status.manifest):
            return
        model = model or status.name
        spec = status.manifest.get("spec") or {}
        predictor = spec.get("predictor") or {}
        protocol = next(
            (
                v.get("protocolVersion")
                for v in predictor.values()
                if isinstance(v, dict) and v.get("protocolVersion")
            ),
            "v1",
        )
        if protocol == "v2" and "transformer" not in spec:
            path = f"/v2/models/{model}/ready"
        else:
            path = f"/v1/models/{model}"
        probe_deadline = min(deadline, time.monotonic() + self.probe_timeout)

        def once() -> None:
            request = urllib.request.Request(status.url + path, headers=status.headers)
            try:
                remaining = max(0.05, probe_deadline - time.monotonic())
                with urllib.request.urlopen(request, timeout=min(5.0, remaining)) as response:
                    if response.status == 200:
                        return
                    raise _Retryable(f"HTTP {response.status}")
            except urllib.error.HTTPError as e:
                if e.code not in (404, 502, 503, 504):
                    raise  # an answer that waiting will not change
                raise _Retryable(f"HTTP {e.code}") from None
            except (urllib.error.URLError, OSError) as e:
                raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None

        try:
            retrying(
                deadline=max(0.0, probe_deadline - time.monotonic()),
                on=_Retryable,
                first_wait=0.05,
                max_wait=1.0,
            )(once)
        except urllib.error.HTTPError as e:
            status.message = f"Ready, but {status.url}{path} answers HTTP {e.code}"
        except _Retryable as e:
            status.message = (
                f"Ready, but {status.url}{path} did not answer 200 yet "
                f"(last: {e}); clients should retry for a short while"
            )
            self._say(f"{status.name}: {status.message}")

    def _read(
        self, kind: Kind, name: str, namespace: str, deadline: float
    ) -> dict[str, Any] | None:
        """One object, None if it does not exist (other refusals raise ServingError)."""
        custom, _ = self._clients()
        try:
            return self._call(
                f"reading {kind.kind} {name!r}",
                custom.get_namespaced_custom_object,
                *kind.path(namespace),
                name,
                deadline=deadline,
            )
        except self._api_exception() as e:
            if e.status == 404:
                return None
            raise self._refused(e, "get", name, namespace, kind) from e

    def _list(self, kind: Kind, namespace: str, deadline: float) -> list[dict[str, Any]]:
        """Every object of ``kind`` in ``namespace``, sorted by name."""
        custom, _ = self._clients()
        try:
            result = self._call(
                f"listing {kind.plural}",
                custom.list_namespaced_custom_object,
                *kind.path(namespace),
                deadline=deadline,
            )
        except self._api_exception() as e:
            raise self._refused(e, "list", "*", namespace, kind) from e
        return sorted(result.get("items", []), key=lambda o: o["metadata"]["name"])

    def get(self, name: str, namespace: str | None = None) -> EndpointStatus:
        """The current status of one InferenceService (with its models, if it hosts several).

        Raises:
            ServingError: it does not exist, or the API refused the read.
        """
        validate_name(name, "name")
        namespace = validate_name(namespace or self.namespace, "namespace")
        deadline = time.monotonic() + self.request_timeout * 2
        obj = self._read(INFERENCE_SERVICE, name, namespace, deadline)
        if obj is None:
            raise ServingError(
                f"no InferenceService {name!r} in namespace {namespace!r} "
                f"(list them with `kubectl get inferenceservices -n {namespace}`)"
            )
        status = self._endpoint_status(obj)
        if is_multi_model(obj):
            status.models = self.list_trained_models(name, namespace)
        return status

    def list(self, namespace: str | None = None) -> list[EndpointStatus]:
        """Every InferenceService in ``namespace``, sorted by name."""
        namespace = validate_name(namespace or self.namespace, "namespace")
        deadline = time.monotonic() + self.request_timeout * 2
        items = self._list(INFERENCE_SERVICE, namespace, deadline)
        statuses = [self._endpoint_status(o) for o in items]
        if any(is_multi_model(o) for o in items):
            models = [tm_status(o) for o in self._list(TRAINED_MODEL, namespace, deadline)]
            for status, obj in zip(statuses, items, strict=True):
                if is_multi_model(obj):
                    status.models = [m for m in models if m.parent == status.name]
        return statuses

    def delete(
        self, name: str, namespace: str | None = None, *, timeout: float = 120.0
    ) -> None:
        """Delete the InferenceService (KServe removes its pods and routes).

        The TrainedModels it hosts go first, and are awaited: KServe's controller only removes
        a TrainedModel's finalizer while its parent exists, so deleting the parent first would
        leave them Terminating for good.

        Raises:
            ServingError: it does not exist, or the API refused the delete.
        """
        validate_name(name, "name")
        namespace = validate_name(namespace or self.namespace, "namespace")
        custom, _ = self._clients()
        deadline = time.monotonic() + timeout
        hosted = [o["metadata"]["name"] for o in self._list(TRAINED_MODEL, namespace, deadline)
                  if parent_of(o) == name]
        for model in hosted:
            self._delete_object(TRAINED_MODEL, model, namespace, deadline, missing_ok=True)
        for model in hosted:
            self._wait_gone(TRAINED_MODEL, model, namespace, deadline)
        self._delete_object(INFERENCE_SERVICE, name, namespace, deadline)

    def _delete_object(
        self, kind: Kind, name: str, namespace: str, deadline: float, *, missing_ok: bool = False
    ) -> None:
        custom, _ = self._clients()
        try:
            self._call(
                f"deleting {kind.kind} {name!r}",
                custom.delete_namespaced_custom_object,
                *kind.path(namespace),
                name,
                deadline=deadline,
            )
        except self._api_exception() as e:
            if e.status == 404:
                if missing_ok:
                    return
                raise ServingError(
                    f"no {kind.kind} {name!r} in namespace {namespace!r} to delete"
                ) from e
            raise self._refused(e, "delete", name, namespace, kind) from e
        self._say(f"deleted {kind.kind} {name!r} in namespace {namespace!r}")

    def _wait_gone(self, kind: Kind, name: str, namespace: str, deadline: float) -> None:
        """Wait (with a watch) until a deleted object is gone: its finalizers have run.

        Each look reads it and watches it until it is deleted or the watch ends (the server's
        timeout, an interruption); the next look follows 0.2 s later.
        """
        import urllib3

        api_exception = self._api_exception()

        def read() -> dict[str, Any] | None:
            # One read may outlast the deadline: the answer says what is left to report.
            return self._read(kind, name, namespace, max(deadline, time.monotonic() + 1.0))

        def gone() -> bool:
            obj = read()
            if obj is None:
                return True
            if time.monotonic() >= deadline:
                raise ServingError(self._stuck(kind, obj))
            try:
                rv = obj["metadata"].get("resourceVersion")
                for event in self._watch_events(name, namespace, rv, deadline, kind):
                    if event["type"] == "DELETED":
                        return True
            except api_exception as e:
                if e.status in (401, 403):
                    raise self._refused(e, "watch", name, namespace, kind) from e
                # 410 Gone (history compacted) and server errors: look again.
            except (urllib3.exceptions.HTTPError, OSError):
                pass  # interrupted, or the deadline was the read timeout: look again
            return False

        try:
            wait_until(
                gone,
                deadline=max(0.0, deadline - time.monotonic()),
                interval=0.2,
                describe=f"the removal of {kind.kind} {name!r}",
            )
        except TimeoutError:
            obj = read()  # the last look may have ended just before its deletion
            if obj is not None:
                raise ServingError(self._stuck(kind, obj)) from None

    def _stuck(self, kind: Kind, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        text = (
            f"{kind.kind} {name!r} in namespace {namespace!r} is still Terminating (finalizers: "
            f"{meta.get('finalizers') or 'none'})"
        )
        parent = parent_of(obj) if kind is TRAINED_MODEL else ""
        deadline = time.monotonic() + self.request_timeout
        if parent and self._read(INFERENCE_SERVICE, parent, namespace, deadline) is None:
            text += (
                f": its parent InferenceService {parent!r} is gone, and KServe's controller only "
                "removes the finalizer while the parent exists. Remove it by hand: kubectl patch "
                f"trainedmodel {name} -n {namespace} --type=merge "
                "-p '{\"metadata\":{\"finalizers\":null}}'"
            )
        else:
            text += (
                "; is KServe's controller running? (kubectl logs -n kserve "
                "deploy/kserve-controller-manager)"
            )
        return text

    # -- multi-model endpoints (KServe TrainedModels; readings in serving/backends/
    # trained_models.py) ----------------------------------------------------------------------
    def apply_trained_model(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> TrainedModelStatus:
        """Create or update a TrainedModel and (by default) wait until KServe says it is Ready.

        Its parent must exist and be a multi-model InferenceService of the same framework:
        checked first, since KServe's controller deletes a TrainedModel whose parent is missing
        and would never load one of another framework. Applied like an InferenceService (get,
        then create or merge-patch, ``fieldValidation=Strict``); a name the namespace already
        uses for another parent's model is refused rather than moved. KServe refuses to change
        a TrainedModel's memory: one that declares other memory now is replaced (that model
        alone stops answering meanwhile).

        Raises:
            ServeConfigError: KServe's webhook would refuse it (checked here first, with the
                fix: a storage URI KServe's agent cannot fetch).
            ServingError: the API server or KServe's webhook refused it (its message included),
                the parent cannot host it, or the name is taken by another endpoint's model.
            TrainedModelNotReadyError: the parent's memory has no room for it (the numbers are
                in the message), the parent is single-model, or not Ready within ``timeout``.
        """
        started = time.monotonic()
        deadline = started + timeout
        body = self._prepare(manifest, TRAINED_MODEL)
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        parent_name = parent_of(body)
        if not parent_name:
            raise ServingError(
                f"TrainedModel {name!r}: spec.inferenceService is empty; name the multi-model "
                "endpoint that hosts it"
            )
        versions = admission.target_versions()
        admission.admit_trained_model(body, versions=versions)  # what the webhook would refuse

        def check(current: dict[str, Any]) -> None:
            check_same_parent(body, current)
            if same_memory(body, current):  # else it is replaced, not updated
                admission.admit_trained_model(body, old=current, versions=versions)
        parent = self._read(INFERENCE_SERVICE, parent_name, namespace, deadline)
        if parent is None:
            raise ServingError(
                f"TrainedModel {name!r}: its parent InferenceService {parent_name!r} does not "
                f"exist in namespace {namespace!r} (KServe's controller would delete the "
                f"TrainedModel): create the endpoint first with serve_many({parent_name!r}, ...)"
            )
        check_parent(body, parent)
        obj = self._apply_object(body, name, namespace, deadline, TRAINED_MODEL, check=check,
                                 replace=lambda current: self._memory_changed(body, current))
        if not wait:
            return tm_status(obj)
        obj = self._wait_ready(
            name, namespace, obj, obj["metadata"].get("generation", 1), started, deadline,
            timeout, kind=TRAINED_MODEL, judge=tm_readiness, fail=self._tm_not_ready,
            gone=f" (KServe's controller deletes a TrainedModel whose parent {parent_name!r} "
            "is missing: was the endpoint deleted?)",
        )
        status = tm_status(obj)
        # Ready says the parent can host it; KServe's agent loads it afterwards: ask for it.
        parent = self._read(INFERENCE_SERVICE, parent_name, namespace, deadline) or parent
        served = self._endpoint_status(parent)
        self._probe(served, deadline, model=name)
        status.message = served.message
        self._say(
            f"TrainedModel {name!r} is Ready on {parent_name!r} after "
            f"{time.monotonic() - started:.1f}s" + (f": {status.url}" if status.url else "")
        )
        return status

    def _memory_changed(self, body: dict[str, Any], current: dict[str, Any]) -> bool:
        """Whether the stored TrainedModel declares other memory: KServe's webhook refuses to
        change it (the allocation was counted with it), so it must be replaced."""
        if same_memory(body, current):
            return False
        self._say(
            f"TrainedModel {body['metadata']['name']!r} now declares "
            f"{body['spec']['model']['memory']} instead of {current['spec']['model']['memory']}: "
            "KServe keeps a TrainedModel's memory, so it is replaced (deleted, then created)"
        )
        return True

    def _tm_not_ready(
        self, obj: dict[str, Any], generation: int, timeout: float, *, timed_out: bool
    ) -> TrainedModelNotReadyError:
        status = tm_status(obj)
        namespace, parent_name = status.namespace or self.namespace, status.parent
        ready = next((c for c in (obj.get("status") or {}).get("conditions") or []
                      if c.get("type") == "Ready"), {})
        if ready.get("reason") == KSERVE_MEMORY_REASON:
            deadline = time.monotonic() + self.request_timeout
            parent = self._read(INFERENCE_SERVICE, parent_name, namespace, deadline) or {
                "metadata": {"name": parent_name}, "spec": {}}
            siblings = [o for o in self._list(TRAINED_MODEL, namespace, deadline)
                        if parent_of(o) == parent_name]
            status.message = memory_refusal(obj, parent, siblings)
            head = f"{status.reason}: {status.message}"
        elif timed_out:
            head = (f"TrainedModel {status.name!r} in namespace {namespace!r} did not become "
                    f"Ready within {timeout:.0f}s: {status.message}")
        else:
            head = (f"TrainedModel {status.name!r} in namespace {namespace!r} was refused: "
                    f"{status.message}")
        lines = [
            head,
            "  what to check next:",
            f"    kubectl describe trainedmodel {status.name} -n {namespace}",
            f"    kubectl get inferenceservice {parent_name} -n {namespace}",
        ]
        return TrainedModelNotReadyError("\n".join(lines), status=status, timed_out=timed_out)

    def delete_trained_model(
        self, name: str, namespace: str | None = None, *, timeout: float = 60.0
    ) -> None:
        """Delete a TrainedModel and wait until it is gone (the server has dropped the model).

        Raises:
            ServingError: there is none of that name, the API refused, or it stayed Terminating
                (the message says why and how to clear it).
        """
        validate_name(name, "model name")
        namespace = validate_name(namespace or self.namespace, "namespace")
        deadline = time.monotonic() + timeout
        self._delete_object(TRAINED_MODEL, name, namespace, deadline)
        self._wait_gone(TRAINED_MODEL, name, namespace, deadline)

    def list_trained_models(
        self, parent: str, namespace: str | None = None
    ) -> list[TrainedModelStatus]:
        """The TrainedModels naming ``parent`` (loaded or refused), sorted by name."""
        validate_name(parent, "parent endpoint name")
        namespace = validate_name(namespace or self.namespace, "namespace")
        deadline = time.monotonic() + self.request_timeout * 2
        return [tm_status(o) for o in self._list(TRAINED_MODEL, namespace, deadline)
                if parent_of(o) == parent]

    # -- canary traffic (KServe semantics; the plans are in serving/backends/traffic.py) -------
    def set_traffic(
        self, name: str, percent: int, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Send ``percent`` % to the latest revision (``canaryTrafficPercent``), the rest stable.

        Raises:
            ServingError: bad percent, no such InferenceService, or traffic did not move in time
                (the message says which revision is not Ready).
        """
        return self._move_traffic(name, namespace, TRAFFIC, percent, timeout)

    def promote(
        self, name: str, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Let the latest revision take all traffic (remove ``canaryTrafficPercent``).

        Raises:
            ServingError: there is no canary, or the latest revision did not take the traffic.
        """
        return self._move_traffic(name, namespace, PROMOTE, None, timeout)

    def rollback(
        self, name: str, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Send all traffic back to the latest rolled-out revision (``canaryTrafficPercent: 0``).

        Works while the new revision is not Ready: the stable one never stopped serving.

        Raises:
            ServingError: there is no previous revision to go back to.
        """
        return self._move_traffic(name, namespace, ROLLBACK, None, timeout)

    def rollout_state(self, name: str, namespace: str | None = None) -> RolloutState:
        """The predictor's revisions and traffic split now."""
        return rollout_state(self.get(name, namespace).manifest)

    def _move_traffic(
        self, name: str, namespace: str | None, action: str, percent: int | None, timeout: float
    ) -> RolloutState:
        namespace = validate_name(namespace or self.namespace, "namespace")
        custom, _ = self._clients()
        api_exception = self._api_exception()
        deadline = time.monotonic() + timeout
        plans = {
            TRAFFIC: lambda o: traffic_patch(o, percent),
            PROMOTE: promote_patch,
            ROLLBACK: rollback_patch,
        }
        where = (GROUP, VERSION, namespace, PLURAL, name)

        def once() -> dict[str, Any]:
            patch = plans[action](self.get(name, namespace).manifest)
            try:
                return self._call(
                    f"{action} of InferenceService {name!r}",
                    custom.patch_namespaced_custom_object,
                    *where,
                    patch,
                    field_validation="Strict",
                    deadline=deadline,
                )
            except api_exception as e:
                if e.status != 409:
                    raise self._refused(e, "patch", name, namespace) from e
                raise _Conflict from e  # written meanwhile: plan again from the fresh state

        try:
            obj = retrying(attempts=_APPLY_ATTEMPTS, on=_Conflict, first_wait=0, max_wait=0)(once)
        except _Conflict:
            raise ServingError(
                f"InferenceService {name!r} kept changing during {action} ({_APPLY_ATTEMPTS} "
                "conflicts): is another client writing it?"
            ) from None
        self._say(f"{action} of InferenceService {name!r}: waiting for traffic to move")
        polled = False

        def moved() -> bool:  # the patch's answer first, then a fresh read each time
            nonlocal obj, polled
            if polled:
                obj = self.get(name, namespace).manifest
            polled = True
            return settled(obj, action, percent)

        try:
            wait_until(
                moved,
                deadline=max(0.0, deadline - time.monotonic()),
                interval=0.05,
                max_interval=0.5,
                describe=f"{action} of InferenceService {name!r}",
            )
        except TimeoutError:
            state = rollout_state(obj)
            _, summary = readiness(obj, obj["metadata"].get("generation", 1))
            raise ServingError(
                f"{action} of InferenceService {name!r}: traffic did not move within "
                f"{timeout:g}s; now {state.traffic or 'no traffic reported'} (latest "
                f"revision {state.latest_created}, ready {state.latest_ready}, stable "
                f"{state.latest_rolled_out}): {summary}. A new revision that is not Ready "
                "takes no traffic; rollback() sends everything to the stable one"
            ) from None
        state = rollout_state(obj)
        self._say(f"InferenceService {name!r} traffic: {state.traffic}")
        self._record_event(obj, action, kube_events.moved(action, state))
        return state

    # -- rollout events: core/v1 Events on the InferenceService (kube_events.py) --------------
    def events(
        self, name: str, namespace: str | None = None, *, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` Events of InferenceService ``name`` (kfp-serve's own and the
        controller's), oldest first, as ``{"time", "action", "message", ...}``.

        Raises:
            ServingError: no such InferenceService, or the API refused to list its Events.
        """
        obj = self.get(name, namespace).manifest
        namespace = obj["metadata"]["namespace"]
        _, core = self._clients()
        deadline = time.monotonic() + self.request_timeout * 2
        try:
            return kube_events.recent(core, functools.partial(self._call, deadline=deadline),
                                      obj, limit)
        except self._api_exception() as e:
            reason, message = _api_message(e)
            raise ServingError(
                f"the Kubernetes API server refused to list the events of InferenceService "
                f"{name!r} in namespace {namespace!r}: {e.status} {reason}: {message} — grant "
                "'list' on 'events' (core API group) to this account, as serving/rbac.yaml does"
            ) from e

    def _record_event(self, obj: dict[str, Any], action: str, message: str) -> None:
        """Record ``action`` as an Event on ``obj``; the change itself is done, so a refusal
        is said, not raised."""
        _, core = self._clients()
        deadline = time.monotonic() + self.request_timeout
        try:
            kube_events.record(core, functools.partial(self._call, deadline=deadline), obj,
                               action, message)
        except (self._api_exception(), ServingError) as e:
            detail = f"{e.status} {_api_message(e)[0]}" if hasattr(e, "status") else str(e)
            self._say(
                f"event {action!r} not recorded on InferenceService "
                f"{obj['metadata']['name']!r} ({detail}): grant 'create' on 'events' (core "
                "API group), as serving/rbac.yaml does"
            )
