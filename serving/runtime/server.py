"""A lean HTTP host for kfp-serve's kserve.Model runtimes, and their command line.

Why not ``kserve.ModelServer``: it binds 0.0.0.0 (hard-coded in its RESTServer), starts a gRPC
server on 8081 by default, logs a line per request (timing middleware + latency log), and
validates every v2 body through pydantic before the model decodes it again. Here one raw ASGI
app on uvicorn (uvloop + httptools) serves the same KServe v1/v2 REST routes, JSON via orjson,
no per-request logging, and binds 127.0.0.1 unless told otherwise. The models are still
``kserve.Model`` subclasses, so ``kserve.ModelServer`` can host them too.

Routes: ``GET /``, ``/v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v1/models``,
``/v1/models/NAME``, ``/v2/models/NAME``, ``/v2/models/NAME/ready``; ``POST
/v1/models/NAME:predict``, ``/v1/models/NAME:explain``, ``/v2/models/NAME[/versions/V]/infer``.
Errors answer ``{"error": "<message>"}`` with 400 (bad request), 404 (unknown model/route),
405, 413, 501 (no explainer), 502/504 (transformer: predictor failed), 503 (not ready).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving.constants import HTTP_HOST_ENV, LOOPBACK

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


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The command line of ``python -m kfp_serve.serving.runtime.<kind>``.

    The flags are KServe's (what the controller and ServingRuntimes pass), plus ``--http_host``.
    kserve flags that make no sense here (gRPC, multiprocess workers, docs, access-log format)
    are accepted and ignored with a log line, so a stock ServingRuntime's args still start us.
    """
    p = argparse.ArgumentParser(
        prog=f"python -m kfp_serve.serving.runtime.{kind}",
        description=f"kfp-serve KServe {kind} runtime (REST v1 + v2).",
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
        "--timeout-keep-alive",
        "--timeout_keep_alive",
        dest="timeout_keep_alive",
        type=int,
        default=65,
        help="Keep-alive timeout (s).",
    )
    p.add_argument("--log_level", default=os.environ.get("KFP_SERVE_LOG_LEVEL", "INFO"))
    # Accepted for compatibility with kserve's ModelServer flags; see _ignored_flags().
    p.add_argument("--grpc_port", type=int, default=None)
    p.add_argument("--enable_grpc", type=_strtobool, default=None)
    p.add_argument("--workers", type=int, default=1)
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
    if args.enable_grpc:
        log.warning("--enable_grpc: kfp-serve runtimes serve REST only; no gRPC server started")
    if args.workers and args.workers > 1:
        log.warning("--workers=%d: kfp-serve runtimes run one worker process", args.workers)
    if args.ssl_certfile or args.ssl_keyfile:
        log.warning("--ssl_*: TLS is terminated by the mesh/ingress; serving plain HTTP")


# --------------------------------------------------------------------------------------------
# ASGI app


@dataclass
class V2Request:
    """A parsed v2 JSON body, tagged so a model can tell it from a v1 dict."""

    body: Any


Handler = Callable[[Any, dict[str, str], bool], Awaitable[Any]]


def _route(method: str, path: str) -> tuple[str, str | None]:
    """(route kind, model name) for a request line; kind "" means not found."""
    # The kind depends on the path only; _http answers 405 when the method does not fit.
    if path.startswith("/v1/models/"):
        rest = path[11:]
        if rest.endswith(":predict"):
            return "v1", rest[:-8]
        if rest.endswith(":explain"):
            return "explain", rest[:-8]
        return ("v1_ready", rest) if rest and "/" not in rest and method == "GET" else ("", None)
    if path.startswith("/v2/models/"):
        parts = path[11:].split("/")
        if len(parts) == 2 and parts[1] == "infer":
            return "v2", parts[0]
        if len(parts) == 4 and parts[1] == "versions" and parts[3] == "infer":
            return "v2", parts[0]
        if method != "GET":
            return "", None
        if len(parts) == 1:
            return "v2_metadata", parts[0]
        if len(parts) == 2 and parts[1] == "ready":
            return "v2_ready", parts[0]
        return "", None
    static = {
        "/": "live",
        "/v2/health/live": "v2_live",
        "/v2/health/ready": "v2_health_ready",
        "/v1/models": "v1_models",
        "/v2/models": "v1_models",
        "/v2": "v2_server",
    }
    return static.get(path, ""), None


POST_ROUTES = frozenset({"v1", "v2", "explain"})


class RuntimeApp:
    """Raw ASGI app serving kserve.Model instances over KServe's v1/v2 REST protocol.

    A model must offer ``ready``, ``await model(payload, headers, verb)`` (kserve's call
    contract, returning ``(response_dict, response_headers)``), ``await model.healthy()``, and
    optionally ``metadata()`` for ``GET /v2/models/NAME``.
    """

    def __init__(
        self,
        models: dict[str, Any],
        *,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        import orjson

        from kfp_serve.serving.runtime._kserve import InferenceVerb, InvalidInput, ModelNotReady

        self.models = models
        self.max_body = max_body_bytes()
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._dumps = orjson.dumps
        self._dump_opts = orjson.OPT_SERIALIZE_NUMPY
        self._verb_predict = InferenceVerb.PREDICT
        self._verb_explain = InferenceVerb.EXPLAIN
        self._invalid_input = InvalidInput
        self._not_ready = ModelNotReady

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as e:  # noqa: BLE001 - reported to uvicorn, which exits
                    await send({"type": "lifespan.startup.failed", "message": repr(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown is not None:
                    try:
                        await self._on_shutdown()
                    except Exception:  # noqa: BLE001 - shutting down anyway
                        log.exception("error during shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(self, send: Callable, status: int, payload: Any) -> None:
        body = self._dumps(payload, option=self._dump_opts)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Callable, status: int, message: str) -> None:
        await self._send(send, status, {"error": message})

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

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        method = scope["method"]
        kind, name = _route(method, scope["path"])
        if not kind:
            await self._error(send, 404, f"no route {method} {scope['path']}")
            return
        if (kind in POST_ROUTES) != (method == "POST"):
            await self._error(send, 405, f"method {method} not allowed on {scope['path']}")
            return
        if name is None:
            await self._server_route(kind, send)
            return
        model = self.models.get(name)
        if model is None:
            await self._error(
                send, 404, f"model {name!r} is not served here; served: {sorted(self.models)}"
            )
            return
        if kind not in POST_ROUTES:
            await self._model_route(kind, name, model, send)
            return
        if not model.ready:
            await self._error(send, 503, f"model {name!r} is not ready")
            return
        raw = await self._read_body(receive)
        if raw is None:
            await self._error(send, 413, f"request body larger than {self.max_body} bytes")
            return
        await self._infer(kind, model, raw, scope, send)

    async def _infer(self, kind: str, model: Any, raw: bytes, scope: dict, send: Callable) -> None:
        from kfp_serve.serving.runtime.codec import RequestError, parse_json

        try:
            body = parse_json(raw)
            payload = V2Request(body) if kind == "v2" else body
            headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARD_HEADERS}
            verb = self._verb_explain if kind == "explain" else self._verb_predict
            response, _ = await model(payload, headers, verb)
        except RequestError as e:
            await self._error(send, e.status, str(e))
            return
        except self._invalid_input as e:
            await self._error(send, 400, str(e))
            return
        except NotImplementedError as e:
            await self._error(send, 501, str(e) or "not implemented")
            return
        except self._not_ready as e:
            await self._error(send, 503, str(e))
            return
        except (ValueError, TypeError, KeyError, IndexError) as e:
            # Input passed the codec but the model still refused it (e.g. an unknown category
            # in a OneHotEncoder): the client's data, so 400, and the server keeps serving.
            log.debug("model rejected input", exc_info=True)
            await self._error(send, 400, f"the model rejected the input: {e}")
            return
        except Exception as e:  # noqa: BLE001 - a real server error; keep serving
            log.exception("inference failed")
            await self._error(send, 500, f"{type(e).__name__}: {e}")
            return
        await self._send(send, 200, response)

    async def _server_route(self, kind: str, send: Callable) -> None:
        if kind == "live":
            await self._send(send, 200, {"status": "alive"})
        elif kind == "v2_live":
            await self._send(send, 200, {"live": True})
        elif kind == "v2_health_ready":
            ready = True
            for m in self.models.values():
                ready = ready and await m.healthy()
            await self._send(send, 200 if ready else 503, {"ready": ready})
        elif kind == "v1_models":
            await self._send(send, 200, {"models": sorted(self.models)})
        elif kind == "v2_server":
            from importlib import metadata

            try:
                version = metadata.version("kfp-serve")
            except metadata.PackageNotFoundError:
                version = "unknown"
            await self._send(send, 200, {"name": "kfp-serve", "version": version, "extensions": []})

    async def _model_route(self, kind: str, name: str, model: Any, send: Callable) -> None:
        ready = bool(await model.healthy())
        if kind == "v2_metadata":
            meta = model.metadata() if hasattr(model, "metadata") else {"name": name}
            await self._send(send, 200, meta)
            return
        if not ready:
            await self._error(send, 503, f"model {name!r} is not ready")
            return
        await self._send(send, 200, {"name": name, "ready": True})


def serve(
    app: RuntimeApp, host: str, port: int, *, timeout_keep_alive: int = 65, event_loop: str = "auto"
) -> None:
    """Run ``app`` with uvicorn until SIGTERM/SIGINT.

    Raises:
        SystemExit: uvicorn could not bind (the port is taken) or start-up failed.
    """
    import uvicorn

    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:  # pragma: no cover - kserve depends on uvicorn[standard]
        http = "auto"
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
        http=http,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_keep_alive=timeout_keep_alive,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    log.info("serving %s on http://%s:%d", sorted(app.models), host, port)
    server.run()
    if not server.started:
        # uvicorn logs the cause (e.g. address already in use) and returns instead of raising.
        raise SystemExit(3)
