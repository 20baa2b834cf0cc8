"""A Kubernetes API double on 127.0.0.1 that the official ``kubernetes`` client talks to unmodified.

Real HTTP (threaded, HTTP/1.1 keep-alive, chunked watch streams), state per
group/version/namespace/plural, ``resourceVersion``/``generation``/``uid``/``creationTimestamp``,
Status objects for 400/403/404/409/422/5xx, merge patch, replace with conflict check, watch with
``resourceVersion`` and ``timeoutSeconds``. Fake controllers play KServe, the CSI snapshotter and
PVC binding; the KServe InferenceService and TrainedModel CRD schemas from ``../shared/reference``
validate every such object strictly, then KServe's validating webhook rules
(``kfp_serve.serving.admission``) admit or deny it as the webhook would (403 Forbidden,
"admission webhook ... denied the request"). Requests whose Host header names an InferenceService
URL go to a fake data plane (the "ingress").
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from kfp_serve.serving import admission
from tests.kube_double.controllers import (
    KServeController,
    RecordedCall,
    Scheduler,
    SnapshotController,
    TrainedModelController,
)
from tests.kube_double.faults import FaultPlan
from tests.kube_double.store import (
    EVENT,
    ISVC,
    PVC,
    RESOURCES,
    TRAINED_MODEL,
    VOLUME_SNAPSHOT,
    ApiError,
    Resource,
    Store,
    merge_patch,
)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
#: The KServe kinds validated strictly against the reference CRDs.
CRD_RESOURCES = (ISVC, TRAINED_MODEL)
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _check_label_key(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f"prefix part must be a DNS-1123 subdomain, got {prefix!r}"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return "name part must consist of alphanumeric characters, '-', '_' or '.', at most 63"
    return None


def validate_metadata(resource: Resource, obj: dict[str, Any]) -> list[str]:
    """What the API server checks in metadata (KServe's stricter name rule is the webhook's)."""
    errors = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: Required value"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: Required value: name or generateName is required")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: Invalid value: {name!r}: a DNS-1123 subdomain must ...")
    for key, value in (meta.get("labels") or {}).items():
        problem = _check_label_key(key)
        if problem:
            errors.append(f"metadata.labels: Invalid value: {key!r}: {problem}")
        if not isinstance(value, str):
            errors.append(f"metadata.labels[{key}]: Invalid value: must be a string")
        elif value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
            errors.append(
                f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                "or consist of alphanumeric characters, '-', '_' or '.', at most 63 characters"
            )
    for key, value in (meta.get("annotations") or {}).items():
        problem = _check_label_key(key)
        if problem:
            errors.append(f"metadata.annotations: Invalid value: {key!r}: {problem}")
        if not isinstance(value, str):
            errors.append(f"metadata.annotations[{key}]: Invalid value: must be a string")
    return errors


def validate_core(resource: Resource, obj: dict[str, Any]) -> list[str]:
    """Minimal spec checks for the core/snapshot types the double serves."""
    spec = obj.get("spec") or {}
    errors = []
    if resource is PVC:
        if not spec.get("accessModes"):
            errors.append("spec.accessModes: Required value: at least 1 access mode is required")
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if not storage:
            errors.append("spec.resources[storage]: Required value")
        source = spec.get("dataSource")
        if source is not None and not {"kind", "name"} <= set(source):
            errors.append("spec.dataSource: Invalid value: kind and name are required")
    elif resource is EVENT:
        errors += _validate_event(obj)
    elif resource is VOLUME_SNAPSHOT:
        source = spec.get("source") or {}
        if len([k for k in ("persistentVolumeClaimName", "volumeSnapshotContentName")
                if source.get(k)]) != 1:
            errors.append(
                "spec.source: Invalid value: exactly one of persistentVolumeClaimName and "
                "volumeSnapshotContentName must be set"
            )
    return errors


def _validate_event(obj: dict[str, Any]) -> list[str]:
    """What the API server checks in a core/v1 Event (``ValidateEventCreate``'s legacy rules):
    an involvedObject, and its namespace must be the Event's (for an Event without
    ``eventTime``, the only kind the legacy API is used for here)."""
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict):
        return ["involvedObject: Required value"]
    namespace = (obj.get("metadata") or {}).get("namespace") or ""
    if involved.get("namespace", "") not in (namespace, "") or (
        not involved.get("namespace") and namespace not in ("", "default")
    ):
        return [
            f"involvedObject.namespace: Invalid value: {involved.get('namespace', '')!r}: does "
            "not match event.namespace"
        ]
    if obj.get("type") not in (None, "", "Normal", "Warning"):
        return [f"type: Unsupported value: {obj['type']!r}: supported values: Normal, Warning"]
    return []


class KubeDouble:
    """The API double: start(), then point a kubernetes client at ``url`` (see kubeconfig()).

    Attributes:
        store: all objects and the event log.
        kserve: the fake KServe controller (``kserve.program(name, outcome=..., delay=...)``).
        trained_models: the fake KServe TrainedModel controller (``trained_models.program(...)``).
        snapshots: the fake CSI snapshotter (``snapshots.behavior``).
        faults: programmable faults (``faults.add(verb="patch", status=403)``).
        calls: every API request seen, in order (``RecordedCall``).
        watch_cap: if set, every watch ends after at most this many seconds (as API servers cut
            watches at a random min-request-timeout): clients must resume.
        rbac_rules: if set (a Role's ``rules``), requests they do not allow get 403.
        validate: validate InferenceServices strictly against the reference CRDs.
        kserve_version: the KServe release whose webhook rules admit InferenceServices and
            TrainedModels; None: every supported release's rules.
        admission: run the webhook rules at all (off: a cluster without KServe's webhook).
    """

    def __init__(
        self,
        *,
        validate: bool = True,
        token: str = "kube-double-token",
        kserve_version: str | None = None,
        admission: bool = True,
    ) -> None:
        self.store = Store()
        self._scheduler = Scheduler()
        self.kserve = KServeController(self.store, self._scheduler)
        self.trained_models = TrainedModelController(self.store, self._scheduler)
        self.snapshots = SnapshotController(self.store, self._scheduler)
        self.faults = FaultPlan()
        self.calls: list[RecordedCall] = []
        self.watch_cap: float | None = None
        self.rbac_rules: list[dict[str, Any]] | None = None
        self.token = token
        self.validate = validate and _schema_available()
        self.kserve_version = kserve_version
        self.admission = admission
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> KubeDouble:
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self.validate:
            # Building the schema validators costs seconds once per process (cached after):
            # pay it here, not inside the first request, where a client could time out.
            _warm_validators()
        return self

    def stop(self) -> None:
        self.store.close()
        self._scheduler.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KubeDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the double first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- clients ------------------------------------------------------------------------------
    def kubeconfig_dict(self, namespace: str | None = "default", context: str = "kube-double"):
        ctx: dict[str, Any] = {"cluster": "kube-double", "user": "kube-double"}
        if namespace:
            ctx["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-double", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-double", "user": {"token": self.token}}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
        }

    def write_kubeconfig(
        self, path: str | Path, namespace: str | None = "default", context: str = "kube-double"
    ) -> Path:
        """Write a kubeconfig whose current context points at the double."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(namespace, context)))
        return path

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for the double (no global state touched)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(self.configuration())

    # -- inspection ---------------------------------------------------------------------------
    def calls_matching(
        self, verb: str | None = None, resource: str | None = None, name: str | None = None
    ) -> list[RecordedCall]:
        return [
            c
            for c in list(self.calls)
            if (verb is None or c.verb == verb)
            and (resource is None or c.resource == resource)
            and (name is None or c.name == name)
        ]

    def get(self, resource: Resource, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.store.get(resource, namespace, name)

    def seed(self, resource: Resource, obj: dict[str, Any], namespace: str = "default") -> dict:
        """Create an object directly (no validation, no faults, not recorded)."""
        return self.store.create(resource, namespace, copy.deepcopy(obj))

    def allowed(self, verb: str, group: str, resource: str, subresource: str | None) -> bool:
        if self.rbac_rules is None:
            return True
        full = f"{resource}/{subresource}" if subresource else resource
        for rule in self.rbac_rules:
            if (
                (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
                and (full in rule.get("resources", []) or "*" in rule.get("resources", []))
                and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            ):
                return True
        return False


def _schema_available() -> bool:
    try:
        from tests.kserve_schema import reference_available
    except ImportError:
        return False
    return reference_available()


def _crd_of(error: str, version: str | None) -> bool:
    """Whether a strict-schema error (``"<crd dir>: path: message"``) is from the CRD of the
    release the double plays; with no release set (or no CRD of it), every reference CRD counts."""
    from tests.kserve_schema import version_dirs

    prefix = f"{version}-" if version == admission.MASTER else f"v{version}."
    if version is None or not any(d.name.startswith(prefix) for d in version_dirs()):
        return True
    return error.partition(":")[0].startswith(prefix)


def _warm_validators() -> None:
    from tests.kserve_schema import validate_strict

    for resource in CRD_RESOURCES:
        validate_strict({"apiVersion": resource.api_version, "kind": resource.kind}, resource.kind)


def _discovery_resources(group: str, version: str) -> dict[str, Any]:
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    resources = [
        {
            "name": r.plural,
            "singularName": r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }
        for r in served
    ]
    resources += [
        {"name": f"{r.plural}/status", "singularName": "", "namespaced": True, "kind": r.kind,
         "verbs": ["get", "patch", "update"]}
        for r in served
        if r.status_subresource
    ]
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: KubeDouble

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # tests stay quiet; the calls list is the log

    # -- plumbing -----------------------------------------------------------------------------
    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the body of the request was in an unknown format: "
                           f"{e}") from e

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # -- routing ------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host and host not in LOOPBACK_HOSTS:
            body = self._read_body_quiet()
            code, answer = self.double.kserve.data_plane(host, method, split.path, body)
            self._send_json(code, answer)
            return
        parts = [p for p in split.path.split("/") if p]
        try:
            if self._discovery(parts):
                return
            self._api(method, parts, query)
        except ApiError as e:
            self._send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body_quiet(self) -> Any:
        try:
            return self._read_body()
        except ApiError:
            return None

    def _discovery(self, parts: list[str]) -> bool:
        if parts == ["version"]:
            self._send_json(200, {
                "major": "1", "minor": "31", "gitVersion": "v1.31.0-kube-double",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22", "compiler": "gc",
                "platform": "linux/amd64"})
        elif parts == ["api"]:
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})
        elif parts == ["apis"]:
            groups = sorted({(r.group, r.version) for r in RESOURCES if r.group})
            self._send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, v in groups]})
        elif parts == ["api", "v1"]:
            self._send_json(200, _discovery_resources("", "v1"))
        elif len(parts) == 3 and parts[0] == "apis":
            self._send_json(200, _discovery_resources(parts[1], parts[2]))
        else:
            return False
        return True

    def _parse(self, parts: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) of a resource path."""
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = _BY_PATH.get((group, version, rest[0]))
        if resource is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub not in (None, "status") or (sub and not resource.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, namespace, name, sub

    @staticmethod
    def _verb(method: str, name: str | None, query: dict[str, str]) -> str:
        if method == "GET":
            if name:
                return "get"
            return "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]

    def _api(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        double = self.double
        resource, namespace, name, sub = self._parse(parts)
        verb = self._verb(method, name, query)
        if verb == "delete" and not name:
            verb = "deletecollection"
        call = RecordedCall(verb, resource.group, resource.plural, namespace, name, sub, 0, query)
        double.calls.append(call)
        try:
            self._fault(call)
            if not double.allowed(verb, resource.group, resource.plural, sub):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{resource.qualified} "{name or ""}" is forbidden: User '
                    f'"system:serviceaccount:{namespace}:pipeline-runner" cannot {verb} resource '
                    f'"{resource.plural}{"/" + sub if sub else ""}" in API group '
                    f'"{resource.group}" in the namespace "{namespace}"',
                    {"name": name or "", "group": resource.group, "kind": resource.plural},
                )
            validation = query.get("fieldValidation")
            if validation not in (None, "Strict", "Warn", "Ignore"):
                raise ApiError(400, "BadRequest", f"fieldValidation {validation!r} is not valid")
            if verb == "watch":
                _check_field_labels(query, resource)
                call.code = 200
                self._watch(resource, namespace, query)
                return
            code, body = self._dispatch(verb, resource, namespace, name, sub, query)
        except ApiError as e:
            call.code = e.code
            raise
        call.code = code
        self._send_json(code, body)

    def _fault(self, call: RecordedCall) -> None:
        fault = self.double.faults.take(call.verb, call.resource, call.name)
        if fault is None:
            return
        if fault.delay:
            time.sleep(fault.delay)
        if fault.hang:
            # Hold the request, then drop the connection without an answer: a client timeout.
            call.code = -1
            self._read_body_quiet()
            time.sleep(fault.hang)
            self.close_connection = True
            raise _Dropped()
        if fault.status:
            reason = fault.reason or _REASONS.get(fault.status, "InternalError")
            message = fault.message or (
                f'{call.resource} "{call.name or ""}" is forbidden: User '
                f'"system:serviceaccount:{call.namespace}:pipeline-runner" cannot {call.verb} '
                f'resource "{call.resource}" in API group "{call.group}" in the namespace '
                f'"{call.namespace}"'
                if fault.status == 403
                else f"injected {fault.status} {reason}"
            )
            self._read_body_quiet()
            raise ApiError(fault.status, reason, message,
                           {"name": call.name or "", "kind": call.resource})

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _Dropped:
            self.close_connection = True

    # -- verbs --------------------------------------------------------------------------------
    def _need_namespace(self, resource: Resource, namespace: str | None) -> str:
        if resource.namespaced and not namespace:
            raise ApiError(405, "MethodNotAllowed", "namespaced resource needs a namespace")
        return namespace or ""

    def _validate(
        self,
        resource: Resource,
        obj: dict[str, Any],
        query: dict[str, str],
        old: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if obj.get("apiVersion") not in (None, resource.api_version) or obj.get("kind") not in (
            None,
            resource.kind,
        ):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({resource.api_version})",
            )
        errors = validate_metadata(resource, obj) + validate_core(resource, obj)
        if resource in CRD_RESOURCES and self.double.validate:
            from tests.kserve_schema import validate_strict

            candidate = copy.deepcopy(obj)
            candidate.setdefault("apiVersion", resource.api_version)
            candidate.setdefault("kind", resource.kind)
            strict_errors = [
                e for e in validate_strict(candidate, resource.kind)
                if _crd_of(e, self.double.kserve_version)
            ]
            if query.get("fieldValidation") == "Strict":
                strict_errors = [
                    e.replace("Additional properties are not allowed", "strict decoding error: "
                              "unknown field") for e in strict_errors]
            errors += strict_errors
        if errors:
            name = (obj.get("metadata") or {}).get("name", "")
            raise ApiError(
                422,
                "Invalid",
                f'{resource.kind}.{resource.group or "core"} "{name}" is invalid: '
                + "; ".join(errors),
                {"name": name, "group": resource.group, "kind": resource.kind,
                 "causes": [{"reason": "FieldValueInvalid", "message": e} for e in errors]},
            )
        self._admit(resource, obj, old)

    def _admit(self, resource: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """KServe's validating webhook: runs after schema validation, denies with 403."""
        if not self.double.admission or resource.kind not in admission.WEBHOOKS:
            return
        versions = admission.target_versions(self.double.kserve_version)
        refused = admission.refusals(
            admission.evaluate(obj, kind=resource.kind, old=old, versions=versions)
        )
        if refused:
            code, reason, message = admission.denial(resource.kind, refused[0])
            name = (obj.get("metadata") or {}).get("name", "")
            raise ApiError(code, reason, message,
                           {"name": name, "group": resource.group, "kind": resource.plural})

    def _check_namespace(self, obj: dict[str, Any], namespace: str) -> None:
        sent = (obj.get("metadata") or {}).get("namespace")
        if sent and namespace and sent != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )

    def _dispatch(
        self,
        verb: str,
        resource: Resource,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        query: dict[str, str],
    ) -> tuple[int, Any]:
        store = self.double.store
        if verb == "get":
            obj = store.get(resource, self._need_namespace(resource, namespace), name or "")
            return 200, obj
        if verb == "list":
            _check_field_labels(query, resource)  # also when nothing would be compared
            items, rv = store.list(resource, namespace)
            items = [o for o in items if _selected(o, query, resource)]
            return 200, {
                "apiVersion": resource.api_version,
                "kind": f"{resource.kind}List",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        ns = self._need_namespace(resource, namespace)
        if verb == "create":
            if sub:
                raise ApiError(405, "MethodNotAllowed", "create on a subresource")
            body = self._read_body()
            self._check_namespace(body or {}, ns)
            if resource.namespaced and isinstance(body, dict) and isinstance(
                    body.get("metadata"), dict):
                # The server sets the namespace from the URL before validating the object.
                body["metadata"].setdefault("namespace", ns)
            self._validate(resource, body, query)
            return 201, store.create(resource, ns, body)
        if verb == "update":
            body = self._read_body()
            self._check_namespace(body or {}, ns)
            if (body.get("metadata") or {}).get("name") not in (None, name):
                raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
            if sub is None:
                self._validate(resource, body, query, old=store.get(resource, ns, name or ""))
            return 200, store.update(resource, ns, name or "", body, subresource=sub)
        if verb == "patch":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type not in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted "
                               f"media types include: application/merge-patch+json, "
                               f"application/strategic-merge-patch+json (got {content_type!r})")
            patch = self._read_body()
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            with store.cond:  # read-modify-write must not interleave with another writer
                current = store.get(resource, ns, name or "")
                sent_rv = (patch.get("metadata") or {}).get("resourceVersion")
                if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                    raise store.conflict(resource, name or "")
                new = merge_patch(current, patch)
                if sub is None:
                    self._validate(resource, new, query, old=current)
                new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                return 200, store.update(resource, ns, name or "", new, subresource=sub)
        if verb == "delete":
            return 200, store.delete(resource, ns, name or "")
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported by the double")

    def _watch(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> None:
        double = self.double
        store = double.store
        timeout = float(query.get("timeoutSeconds") or 1800)
        if double.watch_cap is not None:
            timeout = min(timeout, double.watch_cap)
        deadline = time.monotonic() + timeout
        rv_param = query.get("resourceVersion") or ""

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event_type: str, obj: dict[str, Any]) -> None:
            line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        def matches(obj: dict[str, Any]) -> bool:
            if namespace and obj["metadata"].get("namespace") != namespace:
                return False
            return _selected(obj, query, resource)

        try:
            with store.cond:
                index = len(store.events)
                if rv_param in ("", "0"):
                    # No resourceVersion: synthetic ADDED events for the current state first.
                    items, _ = store.list(resource, namespace)
                    initial = [o for o in items if matches(o)]
                else:
                    initial = []
                    rv = int(rv_param)
                    if rv < store.compacted_rv:
                        gone = ApiError(410, "Expired",
                                        f"too old resource version: {rv} ({store.compacted_rv})")
                        send("ERROR", gone.status())
                        initial = None
                    else:
                        # Replay what happened after rv (the event log is ordered by rv).
                        index = next(
                            (i for i, e in enumerate(store.events) if e.rv > rv), len(store.events)
                        )
            if initial is not None:
                for obj in initial:
                    send("ADDED", obj)
                while time.monotonic() < deadline and not store.closed:
                    with store.cond:
                        pending = store.events[index:]
                        index += len(pending)
                    for event in pending:
                        if event.resource is resource and matches(event.obj):
                            send(event.type, event.obj)
                    if not pending:
                        store.wait_events(index, deadline)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Dropped(Exception):
    """Raised to abandon a request without answering (a hang fault)."""


#: The field labels an API server supports for core/v1 Events beyond metadata.name/namespace
#: (``pkg/registry/core/event/strategy.go``: ToSelectableFields); the path into the Event.
_EVENT_FIELDS = {
    "involvedObject.kind": ("involvedObject", "kind"),
    "involvedObject.namespace": ("involvedObject", "namespace"),
    "involvedObject.name": ("involvedObject", "name"),
    "involvedObject.uid": ("involvedObject", "uid"),
    "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
    "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
    "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
    "reason": ("reason",),
    "reportingComponent": ("reportingComponent",),
    "source": ("source", "component"),
    "type": ("type",),
}


def _check_field_labels(query: dict[str, str], resource: Resource) -> None:
    """400 for a fieldSelector naming a field ``resource`` cannot be selected by."""
    supported = {"metadata.name", "metadata.namespace"} | (
        set(_EVENT_FIELDS) if resource is EVENT else set())
    for term in filter(None, (query.get("fieldSelector") or "").split(",")):
        key = _split_term(term)[0]
        if key not in supported:
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')


def _field(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = obj
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _selected(obj: dict[str, Any], query: dict[str, str], resource: Resource | None = None) -> bool:
    """Whether ``obj`` passes the fieldSelector and labelSelector of the query."""
    meta = obj.get("metadata") or {}
    for term in filter(None, (query.get("fieldSelector") or "").split(",")):
        key, op, value = _split_term(term)
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
        if resource is EVENT:
            actual.update({k: _field(obj, path) for k, path in _EVENT_FIELDS.items()})
        if key not in actual:
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        if (actual[key] == value) != (op != "!="):
            return False
    labels = meta.get("labels") or {}
    for term in filter(None, (query.get("labelSelector") or "").split(",")):
        if "=" not in term:
            negate = term.startswith("!")
            if (term.lstrip("!") in labels) == negate:
                return False
            continue
        key, op, value = _split_term(term)
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


def _split_term(term: str) -> tuple[str, str, str]:
    for op in ("!=", "==", "="):
        if op in term:
            key, value = term.split(op, 1)
            return key.strip(), op, value.strip()
    raise ApiError(400, "BadRequest", f"invalid selector term {term!r}")
