"""Payload logging as KServe's ``logger`` spec defines it: requests and answers as CloudEvents.

``logger: {mode: all|request|response, url: ...}`` on a predictor or transformer makes KServe's
agent post each request and/or answer to ``url`` as a binary-mode CloudEvent: ``ce-type``
``org.kubeflow.serving.inference.request`` / ``...response``, ``ce-id`` the inference id (the same
for a request and its answer), the body as it went over the wire, and the extension attributes
``inferenceservicename``, ``namespace``, ``component``, ``endpoint``. This module does the same.

Like KServe, which posts from its agent sidecar and not from the model server, the events are
sent by a separate logger process (``python -m kfp_serve.serving.runtime.payload_log``), one
per server process: two HTTP posts per request would otherwise cost the serving event loop a
third of a small model's request (measured: 40 us of 75 us per request). The server only
appends each event to a buffer that goes down the logger's stdin pipe once per event-loop turn
(:class:`PayloadLogger`); the logger (:class:`EventSender`) sends them, pipelining a backlog on
one keep-alive connection, and reports the outcomes back on its stdout, where the server counts
them in ``kfp_serve_payload_log_events``.

Logging never slows or fails an answer: a full pipe or queue drops the event, a sink that is down
is retried a few times with the project's back-off and then dropped; every outcome is counted. A
logger that exits is counted as dropping what it held, and serving goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from kfp_serve.serving.errors import ServingError

log = logging.getLogger("kfp_serve.runtime.payload_log")

#: KServe's event types.
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
#: KServe's extension attributes (lower-case alphanumeric, as CloudEvents requires).
INFERENCE_SERVICE_ATTR = "inferenceservicename"
NAMESPACE_ATTR = "namespace"
COMPONENT_ATTR = "component"
ENDPOINT_ATTR = "endpoint"
SPEC_VERSION = "1.0"
#: KServe's logger modes and what each one sends.
MODES: dict[str, tuple[bool, bool]] = {
    "all": (True, True),
    "request": (True, False),
    "response": (False, True),
}
#: Events waiting to be sent; beyond this they are dropped (and counted), never awaited.
QUEUE_SIZE = 1000
#: Events sent in one pipelined batch at most.
PIPELINE_MAX = 64
#: Attempts per event (the first plus retries) and the time one attempt may take.
ATTEMPTS = 3
SEND_TIMEOUT_S = 5.0


class SinkError(Exception):
    """The sink answered with a status that a retry may fix (5xx, 429)."""


@dataclass(frozen=True)
class LoggerSpec:
    """What to log and where: KServe's ``logger`` spec plus the event's context attributes."""

    url: str
    mode: str = "all"
    inference_service: str = ""
    namespace: str = ""
    component: str = "predictor"
    endpoint: str = "default"
    source: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ServingError(
                f"logger mode {self.mode!r} is not one of {sorted(MODES)} (KServe's logger.mode)"
            )
        if not self.url.startswith(("http://", "https://")):
            raise ServingError(f"logger url {self.url!r} must be an http:// or https:// URL")


class EventSender:
    """Queue and send payload events to the sink (in the logger process).

    Call :meth:`start` inside an event loop, :meth:`put` per event (never blocks), and
    :meth:`close` at the end (it sends what is queued, bounded by the retries).

    Args:
        spec: Where and what.
        on_outcome: Called with ``"sent"``, ``"retried"`` or ``"dropped"`` per event outcome.
    """

    def __init__(self, spec: LoggerSpec, on_outcome: Callable[[str], None]) -> None:
        self.spec = spec
        self._outcome = on_outcome
        self._queue: asyncio.Queue[tuple[str, str, bytes, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    async def start(self) -> None:
        """Open the HTTP client and start the sender task."""
        from urllib.parse import urlsplit

        from kfp_serve.serving.runtime.upstream import UpstreamClient

        self._queue = asyncio.Queue(QUEUE_SIZE)
        parts = urlsplit(self.spec.url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The transformer's keep-alive client: a fraction of httpx's cost per event, and no
        # proxy from the environment ever sees the payloads.
        self._client = UpstreamClient(
            f"{parts.scheme}://{parts.netloc}", timeout=SEND_TIMEOUT_S, max_idle=4
        )
        self._task = asyncio.create_task(self._drain(), name="payload-logger")

    async def close(self) -> None:
        """Send what is queued (bounded by the retries), then stop."""
        if self._task is None:
            return
        assert self._queue is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=ATTEMPTS * SEND_TIMEOUT_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._client.aclose()
        self._task = None

    def put(self, event_type: str, inference_id: str, body: bytes, content_type: str) -> None:
        """Queue one event; a full queue drops it."""
        if self._queue is None:
            return
        try:
            self._queue.put_nowait((event_type, inference_id, body, content_type))
        except asyncio.QueueFull:
            self._outcome("dropped")

    def _headers(
        self, event_type: str, inference_id: str, content_type: str, when: str | None = None
    ) -> dict[str, str]:
        """The binary-mode CloudEvents HTTP headers of one event (``when``: its ``ce-time``,
        now by default; a pipelined batch shares one).

        Written out rather than built with the SDK's ``to_binary``, which costs ~160 us per
        event, on the serving event loop; the tests parse these with the SDK.
        """
        return {
            **self._fixed_headers,
            "ce-id": inference_id if _PLAIN_ID(inference_id) else _header_value(inference_id),
            "ce-type": event_type,
            "ce-time": when or _now(),
            "content-type": content_type,
        }

    @property
    def _fixed_headers(self) -> dict[str, str]:
        fixed = self.__dict__.get("_fixed")
        if fixed is None:
            fixed = {"ce-specversion": SPEC_VERSION, "ce-source": self.spec.source or "kfp-serve"}
            for attr, value in (
                (INFERENCE_SERVICE_ATTR, self.spec.inference_service),
                (NAMESPACE_ATTR, self.spec.namespace),
                (COMPONENT_ATTR, self.spec.component),
                (ENDPOINT_ATTR, self.spec.endpoint),
            ):
                fixed[f"ce-{attr}"] = _header_value(value)
            self.__dict__["_fixed"] = fixed
        return fixed

    async def _drain(self) -> None:
        """Send what is queued: everything waiting goes out pipelined in one batch (one send
        for the batch), so the busier the server, the less each event costs it."""
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < PIPELINE_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                if len(batch) == 1:
                    await self._send(*batch[0])
                else:
                    await self._send_pipelined(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _send_pipelined(self, batch: list[tuple[str, str, bytes, str]]) -> None:
        from kfp_serve.serving.runtime.upstream import UpstreamError

        when = _now()
        requests = [(body, self._headers(t, i, ct, when)) for t, i, body, ct in batch]
        answers = await self._client.post_many(self._path, requests)
        for (event_type, inference_id, body, _), (_, headers), answer in zip(
            batch, requests, answers, strict=True
        ):
            if isinstance(answer, UpstreamError) or answer.status >= 500 or answer.status == 429:
                await self._retry(event_type, inference_id, body, headers)
            elif answer.status >= 400:
                self._drop(event_type, inference_id, ValueError(f"sink answered {answer.status}"))
            else:
                self._outcome("sent")

    async def _send(
        self, event_type: str, inference_id: str, body: bytes, content_type: str
    ) -> None:
        from kfp_serve.serving.runtime.upstream import UpstreamError

        headers = self._headers(event_type, inference_id, content_type)
        try:
            # The usual case, a sink that answers, costs no retry machinery (tenacity's loop
            # costs as much as the post itself); a failure goes through the bounded retries.
            await self._post(body, headers)
        except (UpstreamError, SinkError):
            await self._retry(event_type, inference_id, body, headers)
            return
        except Exception as e:  # noqa: BLE001 - a logging failure must never reach serving
            self._drop(event_type, inference_id, e)
            return
        self._outcome("sent")

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        r = await self._client.post(self._path, body, headers)
        if r.status >= 500 or r.status == 429:
            raise SinkError(f"sink answered {r.status}")
        if r.status >= 400:
            # The sink refuses this event; sending it again will not help.
            raise ValueError(f"sink answered {r.status}: {r.text[:200]}")

    async def _retry(
        self, event_type: str, inference_id: str, body: bytes, headers: dict[str, str]
    ) -> None:
        """The attempts after a failed first one, with the project's back-off."""
        from kfp_serve.retry import FIRST_WAIT, retrying_async
        from kfp_serve.serving.runtime.upstream import UpstreamError

        try:
            await asyncio.sleep(FIRST_WAIT)  # the back-off before a second attempt
            async for attempt in retrying_async(
                attempts=ATTEMPTS - 1, on=(UpstreamError, SinkError)
            ):
                with attempt:
                    self._outcome("retried")
                    await self._post(body, headers)
        except Exception as e:  # noqa: BLE001 - a logging failure must never reach serving
            self._drop(event_type, inference_id, e)
            return
        self._outcome("sent")

    def _drop(self, event_type: str, inference_id: str, error: BaseException) -> None:
        self._outcome("dropped")
        log.warning("payload event %s for %s dropped: %s", event_type, inference_id, error)


#: True for an id that needs no percent-encoding (a UUID, the usual case): checked in C.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._~-]+").fullmatch


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _header_value(value: str) -> str:
    """A CloudEvents attribute as an HTTP header value (percent-encoded outside printable ASCII,
    as the HTTP binding says)."""
    from urllib.parse import quote

    return quote(value, safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.") if value else value


# --------------------------------------------------------------------------------------------
# The server's side: events down a pipe to the logger process

#: One event on the pipe: kind (0 request, 1 answer), then the lengths of id, content type and
#: body, then those bytes.
_RECORD = struct.Struct(">BHHI")
_KINDS = (REQUEST_EVENT, RESPONSE_EVENT)
#: Bytes the pipe may hold unsent before events are dropped (about QUEUE_SIZE small events).
PIPE_LIMIT = 8 * 1024 * 1024
#: How often the logger reports its outcome counts back (seconds).
REPORT_INTERVAL_S = 0.2
#: The outcomes the logger reports, in ``kfp_serve_payload_log_events``.
OUTCOMES = ("sent", "retried", "dropped")


class PayloadLogger:
    """Hand a server's payload events to its logger process.

    Call :meth:`start` inside the server's event loop, :meth:`request`/:meth:`response` per
    inference (a buffer append: they never block or fail), and :meth:`close` at shutdown (the
    logger sends what it holds, bounded by the retries, then exits).
    """

    def __init__(self, spec: LoggerSpec) -> None:
        self.spec = spec
        self.log_requests, self.log_responses = MODES[spec.mode]
        self._proc: asyncio.subprocess.Process | None = None
        self._buffer = bytearray()
        self._flush_scheduled = False
        self._reader: asyncio.Task[None] | None = None
        #: Events handed to the logger and not yet reported on (counted dropped if it dies).
        self._pending = 0

    async def start(self) -> None:
        """Start the logger process and the task that counts what it reports."""
        from kfp_serve.serving.runtime import metrics

        self._counters = {o: metrics.PAYLOAD_EVENTS.labels(o) for o in OUTCOMES}
        self._loop = asyncio.get_running_loop()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, json.dumps(asdict(self.spec)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_reports(), name="payload-logger-reports")

    def request(self, inference_id: str, body: bytes, content_type: str) -> None:
        """Hand over the request event (when the mode logs requests)."""
        if self.log_requests:
            self._put(0, inference_id, body, content_type)

    def response(self, inference_id: str, body: bytes, content_type: str) -> None:
        """Hand over the answer event (when the mode logs answers)."""
        if self.log_responses:
            self._put(1, inference_id, body, content_type)

    def _put(self, kind: int, inference_id: str, body: bytes, content_type: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        if proc.stdin.transport.get_write_buffer_size() + len(self._buffer) > PIPE_LIMIT:
            self._counters["dropped"].inc()  # the logger is behind: never wait for it
            return
        ident, ctype = inference_id.encode(), content_type.encode()
        self._buffer += _RECORD.pack(kind, len(ident), len(ctype), len(body))
        self._buffer += ident
        self._buffer += ctype
        self._buffer += body
        self._pending += 1
        if not self._flush_scheduled:
            # One write per event-loop turn for every event of that turn.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        proc = self._proc
        if not self._buffer or proc is None or proc.stdin is None:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        with contextlib.suppress(ConnectionError, RuntimeError):  # the logger is gone
            proc.stdin.write(data)

    async def _read_reports(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            try:
                counts = json.loads(line)
            except ValueError:
                continue
            for outcome, n in counts.items():
                if outcome in self._counters and n > 0:
                    self._counters[outcome].inc(n)
                    if outcome != "retried":
                        self._pending -= n
        code = await self._proc.wait()
        if self._pending > 0:
            # Whatever it held is lost with it; serving goes on without logging.
            self._counters["dropped"].inc(self._pending)
            self._pending = 0
        if not self._closing:
            log.error("the payload logger exited (code %s); events are no longer sent", code)

    _closing = False

    async def close(self) -> None:
        """Let the logger send what it holds (bounded by the retries), then stop it."""
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        self._flush()
        if proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=ATTEMPTS * SEND_TIMEOUT_S + 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, timeout=5)
        self._proc = None


# --------------------------------------------------------------------------------------------
# The logger process


async def _serve_pipe(spec: LoggerSpec) -> None:
    """Read events from stdin until it closes, send them, report outcomes on stdout."""
    loop = asyncio.get_running_loop()
    counts = dict.fromkeys(OUTCOMES, 0)

    def outcome(name: str) -> None:
        counts[name] += 1

    def report() -> None:
        if any(counts.values()):
            sys.stdout.write(json.dumps(counts) + "\n")
            sys.stdout.flush()
            for key in counts:
                counts[key] = 0

    async def reporter() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            report()

    sender = EventSender(spec, outcome)
    await sender.start()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ticker = asyncio.create_task(reporter())
    try:
        while True:
            try:
                head = await reader.readexactly(_RECORD.size)
            except asyncio.IncompleteReadError:
                break  # the server closed the pipe: finish what is queued
            kind, n_id, n_ct, n_body = _RECORD.unpack(head)
            data = await reader.readexactly(n_id + n_ct + n_body)
            sender.put(
                _KINDS[kind],
                data[:n_id].decode(errors="replace"),
                data[n_id + n_ct :],
                data[n_id : n_id + n_ct].decode(errors="replace"),
            )
        await sender.close()
    finally:
        ticker.cancel()
        report()


def main(argv: list[str] | None = None) -> int:
    """``python -m kfp_serve.serving.runtime.payload_log SPEC_JSON``: the logger process a
    server starts (events on stdin, outcome counts on stdout, its log on stderr)."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = LoggerSpec(**json.loads(args[0]))
    # It shares the server's process group, so stopping the server signals it too: it ends when
    # its stdin does instead, after sending what it holds (bounded by the retries).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with kserve's uvicorn
        asyncio.run(_serve_pipe(spec))
    else:
        uvloop.run(_serve_pipe(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
