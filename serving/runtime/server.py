"""A lean HTTP host for kfp-serve's kserve.Model runtimes, and their command line.

Why not ``kserve.ModelServer``: it binds 0.0.0.0 (hard-coded in its RESTServer), starts a gRPC
server on 8081 by default, logs a line per request (timing middleware + latency log), and
validates every v2 body through pydantic before the model decodes it again. Here one raw ASGI
app on uvicorn (uvloop, with kfp-serve's HTTP/1.1 protocol from
:mod:`kfp_serve.serving.runtime.http1`) serves the same KServe v1/v2 REST routes, JSON via
orjson, no per-request logging, and binds 127.0.0.1 unless told otherwise. The models are still
``kserve.Model`` subclasses, so ``kserve.ModelServer`` can host them too.

Routes: ``GET /``, ``/v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v1/models``,
``/v1/models/NAME``, ``/v2/models/NAME[/versions/V]``, ``/v2/models/NAME[/versions/V]/ready``,
``/metrics``; ``POST /v1/models/NAME:predict``, ``/v1/models/NAME:explain``,
``/v2/models/NAME[/versions/V]/infer`` (JSON, or the binary tensor extension: see
:mod:`kfp_serve.serving.runtime.binary`). Errors answer ``{"error": "<message>"}`` with 400 (bad
request), 404 (unknown model, version or route), 405, 413, 415 (content type), 501 (no
explainer), 502/504 (transformer: predictor failed), 503 (not ready).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving.constants import HTTP_HOST_ENV, LOOPBACK, UNIX_SOCKET_FLAG

log = logging.getLogger("kfp_serve.runtime")

DEFAULT_HOST = LOOPBACK
DEFAULT_PORT = 8080
DEFAULT_MODEL_DIR = "/mnt/models"
#: Refuse bodies above this size (413) instead of buffering them without bound.
MAX_BODY_ENV = "KFP_SERVE_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024


def max_body_bytes() -> int:
    """The body size limit, read when the app is built, not at import: a server forked from
    the warm pool imported this module under the pool's environment, not its own."""
    return int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES))

#: Request headers a transformer forwards to its predictor (as kserve does).
FORWARD_HEADERS = frozenset({b"x-request-id", b"x-b3-traceid", b"authorization"})


def _strtobool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("y", "yes", "t", "true", "on", "1"):
        return True
    if v in ("n", "no", "f", "false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return x


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The command line of ``python -m kfp_serve.serving.runtime.<kind>``.

    The flags are KServe's (what the controller and ServingRuntimes pass), plus ``--http_host``.
    kserve flags that make no sense here (thread pools, docs, access-log format) are accepted and
    ignored with a log line, so a stock ServingRuntime's args still start us.
    """
    p = argparse.ArgumentParser(
        prog=f"python -m kfp_serve.serving.runtime.{kind}",
        description=f"kfp-serve KServe {kind} runtime (REST v1 + v2, OIP gRPC).",
    )
    p.add_argument("--model_name", default="model", help="Name in the URL paths.")
    p.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="Artifact directory (model.joblib / model.json / transformer.joblib).",
    )
    p.add_argument("--http_port", type=int, default=DEFAULT_PORT, help="REST port.")
    p.add_argument(
        "--http_host",
        default=os.environ.get(HTTP_HOST_ENV) or DEFAULT_HOST,
        help=f"Address to bind (default ${HTTP_HOST_ENV} or {DEFAULT_HOST}; a pod needs 0.0.0.0).",
    )
    p.add_argument(
        UNIX_SOCKET_FLAG,
        default="",
        help="Also serve HTTP on this unix socket (a name starting with '@' is in Linux's "
        "abstract namespace): the local router's way in, cheaper than loopback TCP.",
    )
    p.add_argument(
        "--timeout-keep-alive",
        "--timeout_keep_alive",
        dest="timeout_keep_alive",
        type=int,
        default=65,
        help="Keep-alive timeout (s).",
    )
    p.add_argument("--log_level", default=os.environ.get("KFP_SERVE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="Server processes sharing the port (SO_REUSEPORT); the model loads once, before fork.",
    )
    p.add_argument(
        "--enable_metrics",
        type=_strtobool,
        default=True,
        help="Serve Prometheus metrics on GET /metrics and time every request (default true).",
    )
    # KServe's batcher and logger run in its agent sidecar (flags --enable-batcher, --max-batchsize,
    # --max-latency, --log-url, --log-mode); here they run in the server, under the same names.
    p.add_argument("--enable_batcher", "--enable-batcher", dest="enable_batcher", type=_strtobool,
                   default=False, help="Merge concurrent requests into one model call.")
    p.add_argument("--max_batchsize", "--max-batchsize", dest="max_batchsize", type=_positive_int,
                   default=None, help="Batcher: most rows per model call (maxBatchSize).")
    p.add_argument("--max_latency", "--max-latency", dest="max_latency", type=_positive_float,
                   default=None, help="Batcher: ms the first request of a batch may wait.")
    p.add_argument("--log_url", "--log-url", dest="log_url", default=None,
                   help="Payload logging: CloudEvents sink URL (KServe's logger.url).")
    p.add_argument("--log_mode", "--log-mode", dest="log_mode", default="all",
                   choices=["all", "request", "response"], help="Payload logging: what to send.")
    p.add_argument("--inference_service", "--inference-service", dest="inference_service",
                   default=None, help="Payload logging: the InferenceService name in events.")
    p.add_argument("--namespace", default="", help="Payload logging: the namespace in events.")
    p.add_argument("--component", default=kind, help="Payload logging: the component in events.")
    p.add_argument("--enable_grpc", type=_strtobool, default=False,
                   help="Also serve OIP gRPC (inference.GRPCInferenceService).")
    p.add_argument("--grpc_port", type=int, default=None,
                   help="gRPC port (enables gRPC; KServe's default is 8081).")
    p.add_argument("--grpc_max_message_bytes", type=_positive_int, default=None,
                   help="Largest gRPC message accepted or sent (default: the body limit).")
    # Accepted for compatibility with kserve's ModelServer flags; see report_ignored_flags().
    for flag in ("--max_threads", "--max_asyncio_workers"):
        p.add_argument(flag, type=int, default=None)
    for flag in ("--enable_docs_url", "--enable_latency_logging", "--configure_logging"):
        p.add_argument(flag, type=_strtobool, default=None)
    for flag in ("--log_config_file", "--access_log_format", "--ssl_certfile", "--ssl_keyfile"):
        p.add_argument(flag, default=None)
    p.add_argument(
        "--event-loop",
        "--event_loop",
        dest="event_loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
    )
    if kind == "predictor":
        from kfp_serve.serving.runtime.fidelity import RUNTIME_ENV, RUNTIMES

        p.add_argument(
            "--serving_runtime",
            default=os.environ.get(RUNTIME_ENV) or RUNTIMES[0],
            choices=RUNTIMES,
            help="Answer exactly as this ServingRuntime does (the manifest's runtime; default "
            f"${RUNTIME_ENV} or {RUNTIMES[0]}, whose answers are the richest).",
        )
        p.add_argument(
            "--multi_model",
            type=_strtobool,
            default=False,
            help="Start with no model and load models through the v2 model repository "
            "extension (a multi-model parent: no storageUri).",
        )
        p.add_argument(
            "--model_format",
            default=None,
            help="Multi-model: the framework every loaded model must be (sklearn, xgboost).",
        )
        p.add_argument(
            "--memory_limit",
            default=None,
            help="Multi-model: the server's memory (a quantity such as 1Gi); loads past it, "
            "counting each model's declared memory, are refused.",
        )
    if kind == "transformer":
        p.add_argument(
            "--predictor_host",
            default=None,
            help="HOST[:PORT] of the predictor (KServe passes it).",
        )
        p.add_argument(
            "--predictor_protocol",
            "--protocol",
            dest="predictor_protocol",
            default="v1",
            choices=["v1", "v2", "grpc-v2"],
            help="Protocol the predictor speaks (callers may use either).",
        )
        p.add_argument("--predictor_use_ssl", type=_strtobool, default=False)
        p.add_argument("--predictor_request_timeout_seconds", type=float, default=600.0)
        p.add_argument("--predictor_request_retries", type=int, default=0)
        p.add_argument("--enable_predictor_health_check", action="store_true")
    from kfp_serve.serving.runtime.dataplane import settings_from_env

    # What the manifest asked for (batcher, logger, workers, ...), below explicit flags.
    p.set_defaults(**settings_from_env())
    return p


def parse_args(kind: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the runtime's flags; unknown flags are kept in ``ns.unknown`` (logged, not fatal)."""
    ns, unknown = build_parser(kind).parse_known_args(argv)
    ns.unknown = unknown
    return ns


def configure_logging(level: str) -> None:
    """Log lines to stderr (the launcher sends them to a file); nothing per request."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kserve and uvicorn each log per request / per connection at INFO in some paths.
    for noisy in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def report_ignored_flags(args: argparse.Namespace) -> None:
    """Say once, at start-up, which kserve flags have no effect here."""
    if args.unknown:
        log.warning("ignoring unknown arguments: %s", " ".join(args.unknown))
    if args.ssl_certfile or args.ssl_keyfile:
        log.warning("--ssl_*: TLS is terminated by the mesh/ingress; serving plain HTTP")


# --------------------------------------------------------------------------------------------
# ASGI app


@dataclass
class V2Request:
    """A parsed v2 JSON body, tagged so a model can tell it from a v1 dict."""

    body: Any


#: Content types a POST body may have: JSON, or JSON + binary tensors (the binary extension).
JSON_TYPES = ("application/json",)
ACCEPTED_TYPES = "application/json, application/octet-stream (with Inference-Header-Content-Length)"
_CONTENT_TYPE = b"content-type"
_HEADER_LENGTH = b"inference-header-content-length"
_REQUEST_ID = b"x-request-id"
_JSON = b"application/json"
#: Extensions of the Open Inference Protocol this server implements (``GET /v2``).
EXTENSIONS = ["binary_tensor_data"]
#: The v2 model repository extension (multi-model servers only).
REPOSITORY_ROUTES = frozenset({"repo_index", "repo_load", "repo_unload"})
POST_ROUTES = frozenset({"v1", "v2", "explain"}) | REPOSITORY_ROUTES


def _route(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(route kind, model name, version) for a request line; kind "" means not found."""
    # The kind depends on the path only; _http answers 405 when the method does not fit.
    if path.startswith("/v1/models/"):
        rest = path[11:]
        if rest.endswith(":predict"):
            return "v1", rest[:-8], None
        if rest.endswith(":explain"):
            return "explain", rest[:-8], None
        if rest and "/" not in rest and method == "GET":
            return "v1_ready", rest, None
        return "", None, None
    if path.startswith("/v2/models/"):
        parts = path[11:].split("/")
        version = None
        if len(parts) >= 3 and parts[1] == "versions":
            version = parts[2]
            parts = [parts[0], *parts[3:]]
        if len(parts) == 2 and parts[1] == "infer":
            return "v2", parts[0], version
        if method != "GET":
            return "", None, None
        if len(parts) == 1:
            return "v2_metadata", parts[0], version
        if len(parts) == 2 and parts[1] == "ready":
            return "v2_ready", parts[0], version
        return "", None, None
    if path.startswith("/v2/repository/"):
        rest = path[15:]
        if rest == "index":
            return "repo_index", None, None
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "models" and parts[1] and parts[2] == "load":
            return "repo_load", parts[1], None
        if len(parts) == 3 and parts[0] == "models" and parts[1] and parts[2] == "unload":
            return "repo_unload", parts[1], None
        return "", None, None
    static = {
        "/": "live",
        "/v2/health/live": "v2_live",
        "/v2/health/ready": "v2_health_ready",
        "/v1/models": "v1_models",
        "/v2/models": "v1_models",
        "/v2": "v2_server",
        "/metrics": "metrics",
    }
    return static.get(path, ""), None, None


def server_version() -> str:
    """kfp-serve's version, as ``GET /v2`` reports it."""
    from importlib import metadata

    try:
        return metadata.version("kfp-serve")
    except metadata.PackageNotFoundError:
        return "unknown"


class RuntimeApp:
    """Raw ASGI app serving kserve.Model instances over KServe's v1/v2 REST protocol.

    A model must offer ``ready``, ``await model(payload, headers, verb)`` (kserve's call
    contract, returning ``(response_dict, response_headers)``), ``await model.healthy()``, and
    optionally ``metadata()`` for ``GET /v2/models/NAME`` and ``version`` (the one version its
    ``versions/{v}`` routes answer for).

    Args:
        models: Served models by name.
        on_startup: Awaited when the server starts (inside its event loop).
        on_shutdown: Awaited when it stops.
        metrics: Count requests and serve ``GET /metrics``.
        payload_logger: Send requests/answers as CloudEvents (see
            :mod:`kfp_serve.serving.runtime.payload_log`).
        repository: A multi-model server's :class:`~kfp_serve.serving.runtime.repository.
            ModelRepository` (its ``models`` are ``models``): turns on the model repository
            extension routes.
    """

    def __init__(
        self,
        models: dict[str, Any],
        *,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        metrics: bool = True,
        payload_logger: Any = None,
        repository: Any = None,
    ) -> None:
        import orjson

        from kfp_serve.serving.runtime import binary, codec
        from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput, ModelNotReady
        from kfp_serve.serving.runtime.ids import new_id

        self.models = models
        self.repository = repository
        self.extensions = list(EXTENSIONS)
        if repository is not None:
            from kfp_serve.serving.runtime.repository import EXTENSION

            self.extensions.append(EXTENSION)
        self.max_body = max_body_bytes()
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._dumps = orjson.dumps
        self._dump_opts = orjson.OPT_SERIALIZE_NUMPY
        # Bound once: an import statement in a request's path costs a microsecond or more.
        self._binary = binary
        self._parse_json = codec.parse_json
        self._request_error = codec.RequestError
        self._verb_predict = InferenceVerb.PREDICT
        self._verb_explain = InferenceVerb.EXPLAIN
        self._invalid_input = InvalidInput
        self._not_ready = ModelNotReady
        self._new_id = new_id
        self.payload_logger = payload_logger
        self._count: Callable[[str, str, int], None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        if metrics:
            from kfp_serve.serving.runtime import metrics as prom

            self._count = prom.request_counter()
            self._exposition = prom.exposition
            self._metrics_type = prom.METRICS_CONTENT_TYPE.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            routed = _route(scope["method"], scope["path"])
            if self._count is None:
                await self._http(scope, receive, send, routed)
                return
            # Every answer path returns the status it sent: counting needs no wrapped send.
            status = 500
            try:
                status = await self._http(scope, receive, send, routed) or 500
            finally:
                route, name, _ = routed
                self._count(name if name in self.models else "", route or "unknown", status)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._count is not None:
                        from kfp_serve.serving.runtime import metrics as prom

                        # Pending latency observations reach other workers' scrapes too.
                        self._flusher = asyncio.create_task(prom.flush_periodically())
                    if self.payload_logger is not None:
                        await self.payload_logger.start()
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as e:  # noqa: BLE001 - reported to uvicorn, which exits
                    await send({"type": "lifespan.startup.failed", "message": repr(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._flusher is not None:
                    self._flusher.cancel()
                for hook in (self._on_shutdown, getattr(self.payload_logger, "close", None)):
                    if hook is None:
                        continue
                    try:
                        await hook()
                    except Exception:  # noqa: BLE001 - shutting down anyway
                        log.exception("error during shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send_bytes(
        self, send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> int:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return status

    async def _send(self, send: Callable, status: int, payload: Any) -> int:
        body = self._dumps(payload, option=self._dump_opts)
        return await self._send_bytes(send, status, body, [(b"content-type", _JSON)])

    async def _error(self, send: Callable, status: int, message: str) -> int:
        return await self._send(send, status, {"error": message})

    async def _read_body(self, receive: Callable) -> bytes | None:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _http(
        self,
        scope: dict,
        receive: Callable,
        send: Callable,
        routed: tuple[str, str | None, str | None],
    ) -> int:
        """Answer one HTTP request (``routed``: its :func:`_route`); the status sent."""
        method = scope["method"]
        kind, name, version = routed
        if not kind:
            return await self._error(send, 404, f"no route {method} {scope['path']}")
        if (kind in POST_ROUTES) != (method == "POST"):
            return await self._error(send, 405, f"method {method} not allowed on {scope['path']}")
        if kind in REPOSITORY_ROUTES:
            return await self._repository_route(kind, name, receive, send)
        if name is None:
            return await self._server_route(kind, send)
        model = self.models.get(name)
        if model is None:
            return await self._error(
                send, 404, f"model {name!r} is not served here; served: {sorted(self.models)}"
            )
        if version is not None:
            served = getattr(model, "version", None)
            if version != served:
                offer = f"version {served!r}" if served else "no versioned routes"
                return await self._error(
                    send,
                    404,
                    f"model {name!r} has no version {version!r}; it serves {offer} "
                    f"(or drop /versions/{version} from the path)",
                )
        if kind not in POST_ROUTES:
            return await self._model_route(kind, name, model, send)
        if not model.ready:
            return await self._error(send, 503, f"model {name!r} is not ready")
        headers = dict(scope["headers"])
        content_type = headers.get(_CONTENT_TYPE, b"").split(b";", 1)[0].strip().lower()
        header_length = headers.get(_HEADER_LENGTH)
        if content_type and not (
            content_type == _JSON
            or content_type.endswith(b"+json")
            or (content_type == b"application/octet-stream" and kind == "v2")
        ):
            return await self._error(
                send,
                415,
                f"unsupported Content-Type {content_type.decode(errors='replace')!r}; "
                f"send {ACCEPTED_TYPES if kind == 'v2' else 'application/json'}",
            )
        raw = await self._read_body(receive)
        if raw is None:
            return await self._error(send, 413, f"request body larger than {self.max_body} bytes")
        return await self._infer(kind, model, raw, header_length, headers, send)

    def _decode(self, kind: str, raw: bytes, header_length: bytes | None) -> Any:
        if header_length is None or kind != "v2":
            return self._parse_json(raw)
        binary = self._binary
        n = binary.header_length(header_length.decode(errors="replace"), len(raw))
        view = memoryview(raw)
        body = self._parse_json(bytes(view[:n]))
        binary.attach_inputs(body, view[n:])
        return body

    async def _infer(
        self,
        kind: str,
        model: Any,
        raw: bytes,
        header_length: bytes | None,
        request_headers: dict[bytes, bytes],
        send: Callable,
    ) -> int:
        plogger = self.payload_logger
        inference_id = None
        try:
            body = self._decode(kind, raw, header_length)
            if plogger is not None:
                inference_id = self._inference_id(body, request_headers)
            requested = None
            if kind == "v2":
                requested = self._binary.requested_outputs(body)
            payload = V2Request(body) if kind == "v2" else body
            headers = {
                k.decode(): v.decode() for k, v in request_headers.items() if k in FORWARD_HEADERS
            }
            verb = self._verb_explain if kind == "explain" else self._verb_predict
            response, _ = await model(payload, headers, verb)
            if requested is not None:
                content, extra = self._encode_v2(response, *requested)
            else:
                content, extra = self._dumps(response, option=self._dump_opts), []
        except Exception as e:  # noqa: BLE001 - every refusal answered; the server keeps serving
            if inference_id is not None:  # decoded, then refused: its request is still logged
                plogger.exchange(inference_id, raw, request_headers.get(_CONTENT_TYPE, _JSON))
            return await self._error(send, *self._refusal(e))
        if extra:
            json_part = content
            content = b"".join([json_part, *extra])
            out_headers = [
                (b"content-type", self._binary.BINARY_CONTENT_TYPE.encode()),
                (_HEADER_LENGTH, str(len(json_part)).encode()),
            ]
        else:
            out_headers = [(b"content-type", _JSON)]
        if inference_id is not None:
            plogger.exchange(inference_id, raw, request_headers.get(_CONTENT_TYPE, _JSON),
                             content, out_headers[0][1])
        return await self._send_bytes(send, 200, content, out_headers)

    def _refusal(self, e: Exception) -> tuple[int, str]:
        """The status and message an inference that raised ``e`` is answered with."""
        if isinstance(e, self._request_error):
            return e.status, str(e)
        if isinstance(e, self._invalid_input):
            return 400, str(e)
        if isinstance(e, NotImplementedError):
            return 501, str(e) or "not implemented"
        if isinstance(e, self._not_ready):
            return 503, str(e)
        if isinstance(e, (ValueError, TypeError, KeyError, IndexError)):
            # Input passed the codec but the model still refused it (e.g. an unknown category
            # in a OneHotEncoder): the client's data, so 400, and the server keeps serving.
            log.debug("model rejected input", exc_info=True)
            return 400, f"the model rejected the input: {e}"
        log.error("inference failed", exc_info=e)  # a real server error
        return 500, f"{type(e).__name__}: {e}"

    def _encode_v2(
        self, response: Any, requested: list[dict[str, Any]] | None, binary_default: bool
    ) -> tuple[bytes, list[bytes]]:
        """The JSON part of a v2 answer and the binary chunks that follow it (if any)."""
        if requested is None and not binary_default:
            return self._dumps(response, option=self._dump_opts), []
        response, chunks = self._binary.select_outputs(response, requested, binary_default)
        return self._dumps(response, option=self._dump_opts), chunks

    def _inference_id(self, body: Any, headers: dict[bytes, bytes]) -> str:
        """The id that ties a request's and its answer's log events (set in a v2 body)."""
        if isinstance(body, dict) and body.get("id") is not None:
            return str(body["id"])
        rid = headers.get(_REQUEST_ID)
        if rid:
            inference_id = rid.decode(errors="replace")
        else:
            inference_id = self._new_id()
        if isinstance(body, dict) and "inputs" in body:
            body["id"] = inference_id  # the answer echoes it
        return inference_id

    async def _server_route(self, kind: str, send: Callable) -> int:
        if kind == "live":
            return await self._send(send, 200, {"status": "alive"})
        elif kind == "v2_live":
            return await self._send(send, 200, {"live": True})
        elif kind == "v2_health_ready":
            ready = True
            for m in self.models.values():
                ready = ready and await m.healthy()
            return await self._send(send, 200 if ready else 503, {"ready": ready})
        elif kind == "v1_models":
            return await self._send(send, 200, {"models": sorted(self.models)})
        elif kind == "v2_server":
            info = {
                "name": "kfp-serve",
                "version": server_version(),
                "extensions": self.extensions,
            }
            return await self._send(send, 200, info)
        elif kind == "metrics":
            if self._count is None:
                return await self._error(send, 404, "metrics are off (--enable_metrics=false)")
            return await self._send_bytes(
                send, 200, self._exposition(), [(b"content-type", self._metrics_type)]
            )

    async def _repository_route(
        self, kind: str, name: str | None, receive: Callable, send: Callable
    ) -> int:
        """``POST /v2/repository/index`` and ``/v2/repository/models/NAME/load|unload``."""
        if self.repository is None:
            return await self._error(
                send,
                404,
                "this server hosts one model; the model repository extension is served by "
                "multi-model servers (a parent InferenceService without storageUri)",
            )
        from kfp_serve.serving.runtime.codec import RequestError, parse_json
        from kfp_serve.serving.runtime.repository import LoadRefused

        raw = await self._read_body(receive)
        if raw is None:
            return await self._error(send, 413, f"request body larger than {self.max_body} bytes")
        try:
            body = parse_json(raw) if raw.strip() else {}
        except RequestError as e:
            return await self._error(send, e.status, str(e))
        if not isinstance(body, dict):
            return await self._error(send, 400, "the request body must be a JSON object")
        try:
            if kind == "repo_index":
                answer: Any = self.repository.index(ready_only=bool(body.get("ready")))
            elif kind == "repo_load":
                answer = await self.repository.load(name, body.get("parameters"))
            else:
                answer = self.repository.unload(name)
        except LoadRefused as e:
            return await self._send(send, e.status, {"error": str(e), "reason": e.reason})
        return await self._send(send, 200, answer)

    async def _model_route(self, kind: str, name: str, model: Any, send: Callable) -> int:
        if kind == "v2_metadata":
            meta = model.metadata() if hasattr(model, "metadata") else {"name": name}
            if hasattr(meta, "__await__"):
                meta = await meta
            return await self._send(send, 200, meta)
        ready = bool(await model.healthy())
        if not ready:
            return await self._error(send, 503, f"model {name!r} is not ready")
        return await self._send(send, 200, {"name": name, "ready": True})


def run_server(
    args: argparse.Namespace,
    model: Any,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    repository: Any = None,
) -> int:
    """Serve one loaded model as the flags say: metrics, batcher, payload logger, gRPC, workers.

    With ``repository`` (and ``model`` None) it serves the repository's models instead, loaded
    and unloaded while it runs (a multi-model server).

    Returns:
        Process exit code.
    """
    from kfp_serve.serving.errors import ServingError

    if repository is not None:
        return _run_multi(args, repository)
    parent = os.getpid()
    shared_metrics = None
    if args.enable_metrics:
        from kfp_serve.serving.runtime import metrics

        if args.workers > 1:
            shared_metrics = metrics.share_across_workers()
        model.timers = metrics.timers_for(model.name)
    if args.enable_batcher or args.max_batchsize or args.max_latency:
        if not hasattr(model, "batcher"):
            log.warning("batcher: %s does not batch; requests run one by one", type(model).__name__)
        else:
            from kfp_serve.serving.runtime.batcher import (
                DEFAULT_MAX_BATCH_SIZE,
                DEFAULT_MAX_LATENCY_MS,
                Batcher,
                BatcherSpec,
            )

            spec = BatcherSpec(
                max_batch_size=args.max_batchsize or DEFAULT_MAX_BATCH_SIZE,
                max_latency_ms=args.max_latency or DEFAULT_MAX_LATENCY_MS,
            )
            on_batch = None
            if args.enable_metrics:
                from kfp_serve.serving.runtime import metrics

                batches = metrics.BATCHES.labels(model.name)
                batched = metrics.BATCHED_REQUESTS.labels(model.name)

                def on_batch(n: int) -> None:
                    batches.inc()
                    batched.inc(n)

            model.batcher = Batcher(model.predict_rows, spec, on_batch)
            log.info("batching up to %d rows or %g ms", spec.max_batch_size, spec.max_latency_ms)
    payload_logger = None
    if args.log_url:
        from kfp_serve.serving.runtime.payload_log import LoggerSpec, PayloadLogger

        try:
            payload_logger = PayloadLogger(
                LoggerSpec(
                    url=args.log_url,
                    mode=args.log_mode,
                    inference_service=args.inference_service or model.name,
                    namespace=args.namespace,
                    component=args.component,
                    source=f"http://{args.http_host}:{args.http_port}/",
                )
            )
        except ServingError as e:
            log.error("%s", e)
            return 2
    grpc_server: Any = None
    if args.enable_grpc or args.grpc_port:
        from kfp_serve.serving.runtime.grpc_server import GRPC_DEFAULT_PORT, GrpcServer

        grpc_server = GrpcServer(
            {model.name: model},
            host=args.http_host,
            port=args.grpc_port or GRPC_DEFAULT_PORT,
            max_message_bytes=args.grpc_max_message_bytes or max_body_bytes(),
            shared=args.workers > 1,
        )

    async def startup() -> None:
        if on_startup is not None:
            await on_startup()
        if grpc_server is not None:
            await grpc_server.start()

    async def shutdown() -> None:
        if grpc_server is not None:
            await grpc_server.stop()
        if on_shutdown is not None:
            await on_shutdown()

    app = RuntimeApp(
        {model.name: model},
        on_startup=startup,
        on_shutdown=shutdown,
        metrics=args.enable_metrics,
        payload_logger=payload_logger,
    )
    try:
        serve(
            app,
            args.http_host,
            args.http_port,
            timeout_keep_alive=args.timeout_keep_alive,
            event_loop=args.event_loop,
            workers=args.workers,
            unix_socket=args.http_unix_socket,
        )
    finally:
        if shared_metrics is not None and os.getpid() == parent:
            metrics.remove_shared(shared_metrics)
    return 0


def _run_multi(args: argparse.Namespace, repository: Any) -> int:
    """A multi-model server: the repository's models over REST (and gRPC), in one process."""
    if args.enable_batcher or args.max_batchsize or args.max_latency:
        log.warning("batcher: a multi-model server runs requests one by one")
    if args.log_url:
        log.warning("payload logging is not offered by a multi-model server; --log_url ignored")
    if args.workers > 1:
        # Each worker would hold its own repository: a load would reach one of them only.
        log.warning("a multi-model server runs one worker; --workers=%d ignored", args.workers)
    grpc_server: Any = None
    if args.enable_grpc or args.grpc_port:
        from kfp_serve.serving.runtime.grpc_server import GRPC_DEFAULT_PORT, GrpcServer

        grpc_server = GrpcServer(
            repository.models,
            host=args.http_host,
            port=args.grpc_port or GRPC_DEFAULT_PORT,
            max_message_bytes=args.grpc_max_message_bytes or max_body_bytes(),
        )
    app = RuntimeApp(
        repository.models,
        on_startup=grpc_server.start if grpc_server is not None else None,
        on_shutdown=grpc_server.stop if grpc_server is not None else None,
        metrics=args.enable_metrics,
        repository=repository,
    )
    serve(
        app,
        args.http_host,
        args.http_port,
        timeout_keep_alive=args.timeout_keep_alive,
        event_loop=args.event_loop,
        unix_socket=args.http_unix_socket,
    )
    return 0


def reuse_port_socket(host: str, port: int, *, shared: bool = True) -> socket.socket:
    """A listening socket on ``host:port``; with ``shared``, one other workers can bind too
    (SO_REUSEPORT).

    The kernel spreads new connections over every socket bound this way, so N worker processes
    share one port without a master accepting for them. A single server binds unshared, so that
    a port taken by anyone is an error, never a silently split port.

    Raises:
        SystemExit: The port is taken (by a process that did not set SO_REUSEPORT, if shared).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        log.error("cannot bind %s:%d: %s", host, port, e)
        sock.close()
        raise SystemExit(3) from e
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def unix_address(name: str) -> str:
    """The socket address of unix socket ``name``: a path, or ``@name`` for a name in Linux's
    abstract namespace (nothing on disk to clean up, gone with the process)."""
    return "\0" + name[1:] if name.startswith("@") else name


def unix_listener(name: str) -> socket.socket:
    """A listening unix socket named ``name`` (see :func:`unix_address`).

    Raises:
        SystemExit: The name is taken.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(unix_address(name))
    except OSError as e:
        log.error("cannot bind the unix socket %s: %s", name, e)
        sock.close()
        raise SystemExit(3) from e
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def serve(
    app: RuntimeApp,
    host: str,
    port: int,
    *,
    timeout_keep_alive: int = 65,
    event_loop: str = "auto",
    workers: int = 1,
    unix_socket: str = "",
) -> None:
    """Run ``app`` with uvicorn until SIGTERM/SIGINT, in ``workers`` processes sharing the port
    (and ``unix_socket``, when given: see :func:`unix_listener`).

    Workers are forked after the model is loaded (its memory is shared copy-on-write); each binds
    its own SO_REUSEPORT socket. They share this process's group, so stopping the group (what
    :func:`kfp_serve.serving.runtime.launch.stop_server` does) stops them all; when this process
    exits it stops the others too.

    Raises:
        SystemExit: uvicorn could not bind (the port is taken) or start-up failed.
    """
    # One unix listener for every worker: they accept from the same queue.
    extra = [unix_listener(unix_socket)] if unix_socket else []
    if workers <= 1:
        server = _uvicorn_server(app, host, port, timeout_keep_alive, event_loop)
        log.info("serving %s on http://%s:%d", sorted(app.models), host, port)
        if extra:
            server.run(sockets=[reuse_port_socket(host, port, shared=False), *extra])
        else:
            server.run()
        if not server.started:
            # uvicorn logs the cause (e.g. address already in use) and returns instead of raising.
            raise SystemExit(3)
        return
    first = reuse_port_socket(host, port)  # fails fast, before forking, if the port is taken
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:  # a worker: its own socket, its own event loop
            first.close()
            code = 0
            try:
                sock = reuse_port_socket(host, port)
                _uvicorn_server(app, host, port, timeout_keep_alive, event_loop).run(
                    sockets=[sock, *extra]
                )
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker %d failed", os.getpid())
                code = 1
            os._exit(code)
        children.append(pid)
    log.info("serving %s on http://%s:%d with %d workers", sorted(app.models), host, port, workers)
    server = _uvicorn_server(app, host, port, timeout_keep_alive, event_loop)
    try:
        server.run(sockets=[first, *extra])
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if not server.started:
        raise SystemExit(3)


def _uvicorn_server(
    app: RuntimeApp, host: str, port: int, timeout_keep_alive: int, event_loop: str
) -> Any:
    import uvicorn

    from kfp_serve.serving.runtime.http1 import Http1Protocol

    loop = event_loop
    if loop == "auto":
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:  # pragma: no cover
            loop = "asyncio"
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http=Http1Protocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        # No X-Forwarded-* rewriting: nothing here reads the client's address, and the
        # middleware costs a coroutine per request.
        proxy_headers=False,
        timeout_keep_alive=timeout_keep_alive,
        backlog=2048,
    )
    return uvicorn.Server(config)
