"""A stateful stand-in for the KFP API server (v2beta1), for what ``kfp-serve upload`` needs.

Real HTTP on 127.0.0.1, answered the way the KFP 2.x API server answers (paths, snake_case JSON
field names as its protojson marshaller writes them, 409 for duplicates, 400 for a spec that
does not parse, 404 for unknown ids). Covered:

- ``GET  /apis/v2beta1/healthz``
- ``GET  /apis/v2beta1/pipelines`` (``filter`` with EQUALS on ``display_name``/``name``,
  ``namespace``, ``page_size``)
- ``POST /apis/v2beta1/pipelines`` (create a pipeline without a version)
- ``GET|DELETE /apis/v2beta1/pipelines/{id}``
- ``GET  /apis/v2beta1/pipelines/{id}/versions``
- ``POST /apis/v2beta1/pipelines/upload`` (multipart ``uploadfile``: pipeline + first version)
- ``POST /apis/v2beta1/pipelines/upload_version`` (multipart, ``pipelineid``, ``name``)

Namespaces follow the server: in single-user mode every namespace is replaced by "" (all
pipelines are shared); in multi-user mode a list without ``namespace`` sees the shared
pipelines only, and a pipeline lives in the namespace it was created in.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

PREFIX = "/apis/v2beta1"


@dataclass
class Version:
    id: str
    name: str
    display_name: str
    description: str
    created_at: str
    package: bytes
    spec: dict[str, Any]

    def to_json(self, pipeline_id: str) -> dict[str, Any]:
        return {
            "pipeline_id": pipeline_id, "pipeline_version_id": self.id, "name": self.name,
            "display_name": self.display_name, "description": self.description,
            "created_at": self.created_at, "pipeline_spec": self.spec,
        }


@dataclass
class Pipeline:
    id: str
    name: str
    display_name: str
    description: str
    namespace: str
    created_at: str
    versions: list[Version] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = {"pipeline_id": self.id, "name": self.name, "display_name": self.display_name,
                "description": self.description, "created_at": self.created_at}
        if self.namespace:
            data["namespace"] = self.namespace
        return data


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KfpApiDouble:
    """The server and its state; ``with KfpApiDouble() as api: kfp.Client(host=api.url)``."""

    def __init__(self, *, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.pipelines: dict[str, Pipeline] = {}
        #: (method, path) of every request, in order.
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._clock = itertools.count()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KfpApiDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- state ----------------------------------------------------------------------------------

    def namespace(self, value: str | None) -> str:
        """The server's ReplaceNamespace: single-user mode has one, shared, namespace."""
        return (value or "") if self.multi_user else ""

    def _now(self) -> str:
        # Distinct, increasing timestamps: versions sort by creation like on the server.
        tick = next(self._clock)
        return datetime.fromtimestamp(1_767_225_600 + tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def find(self, key: str, value: str, namespace: str) -> list[Pipeline]:
        return [p for p in self.pipelines.values()
                if p.namespace == namespace and getattr(p, key) == value]

    def create_pipeline(self, name: str, display_name: str, description: str,
                        namespace: str) -> Pipeline:
        if not name:
            raise ApiError(400, "Invalid input error: name is required")
        if self.find("name", name, namespace):
            raise ApiError(409, f"Already exist error: pipeline with name {name!r} and "
                                f"namespace {namespace!r} already exists")
        pipeline = Pipeline(str(uuid.uuid4()), name, display_name or name, description,
                            namespace, self._now())
        self.pipelines[pipeline.id] = pipeline
        return pipeline

    def add_version(self, pipeline: Pipeline, name: str, display_name: str, description: str,
                    package: bytes) -> Version:
        if any(v.name == name for v in pipeline.versions):
            raise ApiError(409, "Failed to create a pipeline version")
        spec = parse_pipeline_spec(package)
        version = Version(str(uuid.uuid4()), name, display_name or name, description,
                          self._now(), package, spec)
        pipeline.versions.append(version)
        return version

    def get(self, pipeline_id: str) -> Pipeline:
        try:
            return self.pipelines[pipeline_id]
        except KeyError:
            raise ApiError(404, f"Pipeline {pipeline_id} not found") from None


def parse_pipeline_spec(package: bytes) -> dict[str, Any]:
    """The pipeline spec of an uploaded IR YAML, checked as the server checks it (400 if not)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        docs = [d for d in yaml.safe_load_all(package.decode()) if d is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ApiError(400, f"Invalid input error: the file is not YAML: {e}") from None
    if not docs or not isinstance(docs[0], dict):
        raise ApiError(400, "Invalid input error: empty pipeline spec")
    spec = docs[0]
    for key in ("pipelineInfo", "root", "schemaVersion"):
        if key not in spec:
            raise ApiError(400, f"Invalid input error: pipeline spec has no {key!r}")
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
        for platform in docs[1:]:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as e:
        raise ApiError(400, f"Invalid input error: invalid pipeline spec: {e}") from None
    return spec


def _multipart_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(filename, content) of the ``uploadfile`` part of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ApiError(400, "Failed to read pipeline from file")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_filename() or "", part.get_payload(decode=True) or b""
    raise ApiError(400, "Failed to read pipeline from file")


def _filter_predicates(raw: str | None) -> list[tuple[str, str]]:
    if not raw:
        return []
    try:
        predicates = json.loads(raw).get("predicates", [])
    except (ValueError, AttributeError):
        raise ApiError(400, f"Invalid input error: cannot parse filter {raw!r}") from None
    out = []
    for p in predicates:
        # protojson takes an enum by name or by number (kfp.Client sends EQUALS as 1).
        if p.get("operation") not in ("EQUALS", 1) or p.get("key") not in ("display_name", "name"):
            raise ApiError(400, f"Invalid input error: unsupported predicate {p!r}")
        value = p.get("stringValue", p.get("string_value"))
        out.append((p["key"], value))
    return out


def _handler(api: KfpApiDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, data: dict[str, Any]) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            body = self._body()
            with api._lock:
                api.requests.append((method, parts.path))
                try:
                    status, data = self._route(method, parts.path, query, body)
                except ApiError as e:
                    status, data = e.status, {"error_message": str(e), "code": e.status,
                                              "message": str(e), "details": []}
            self._send(status, data)

        def _route(self, method: str, path: str, query: dict[str, str],
                   body: bytes) -> tuple[int, dict[str, Any]]:
            if not path.startswith(PREFIX):
                raise ApiError(404, f"Not Found: {path}")
            path = path[len(PREFIX):]
            if (method, path) == ("GET", "/healthz"):
                return 200, {"multi_user": api.multi_user}
            if (method, path) == ("GET", "/pipelines"):
                namespace = api.namespace(query.get("namespace"))
                found = [p for p in api.pipelines.values() if p.namespace == namespace]
                for key, value in _filter_predicates(query.get("filter")):
                    found = [p for p in found if getattr(p, key) == value]
                found.sort(key=lambda p: p.created_at)
                size = int(query.get("page_size") or 20)
                result: dict[str, Any] = {}
                if found:  # protojson leaves empty lists and zero out
                    result = {"pipelines": [p.to_json() for p in found[:size]],
                              "total_size": len(found)}
                return 200, result
            if (method, path) == ("POST", "/pipelines"):
                data = json.loads(body or b"{}")
                name = data.get("name") or data.get("display_name") or ""
                pipeline = api.create_pipeline(
                    name, data.get("display_name") or name, data.get("description") or "",
                    api.namespace(data.get("namespace")),
                )
                return 200, pipeline.to_json()
            if (method, path) == ("POST", "/pipelines/upload"):
                filename, package = _multipart_file(self.headers["Content-Type"], body)
                name = query.get("name") or query.get("display_name") or filename
                spec = parse_pipeline_spec(package)  # before anything is created
                del spec
                pipeline = api.create_pipeline(
                    name, query.get("display_name") or name, query.get("description", ""),
                    api.namespace(query.get("namespace")),
                )
                try:
                    api.add_version(pipeline, pipeline.name, pipeline.display_name,
                                    pipeline.description, package)
                except ApiError:
                    del api.pipelines[pipeline.id]
                    raise
                return 200, pipeline.to_json()
            if (method, path) == ("POST", "/pipelines/upload_version"):
                filename, package = _multipart_file(self.headers["Content-Type"], body)
                if not query.get("pipelineid"):
                    raise ApiError(400, "Failed to create a pipeline version")
                pipeline = api.get(query["pipelineid"])
                name = query.get("name") or query.get("display_name") or filename
                version = api.add_version(pipeline, name, query.get("display_name") or name,
                                          query.get("description", ""), package)
                return 200, version.to_json(pipeline.id)
            if match := re.fullmatch(r"/pipelines/([^/]+)", path):
                pipeline = api.get(match.group(1))
                if method == "GET":
                    return 200, pipeline.to_json()
                if method == "DELETE":
                    if pipeline.versions:
                        raise ApiError(400, f"Failed precondition: pipeline {pipeline.id} has "
                                            "versions; delete them first")
                    del api.pipelines[pipeline.id]
                    return 200, {}
            if (match := re.fullmatch(r"/pipelines/([^/]+)/versions", path)) and method == "GET":
                pipeline = api.get(match.group(1))
                versions = sorted(pipeline.versions, key=lambda v: v.created_at)
                if not versions:
                    return 200, {}
                return 200, {"pipeline_versions": [v.to_json(pipeline.id) for v in versions],
                             "total_size": len(versions)}
            raise ApiError(404, f"Not Found: {method} {PREFIX}{path}")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

    return Handler
