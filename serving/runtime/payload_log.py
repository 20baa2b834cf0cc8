"""Payload logging as KServe's ``logger`` spec defines it: requests and answers as CloudEvents.

``logger: {mode: all|request|response, url: ...}`` on a predictor or transformer makes KServe's
agent post each request and/or answer to ``url`` as a binary-mode CloudEvent: ``ce-type``
``org.kubeflow.serving.inference.request`` / ``...response``, ``ce-id`` the inference id (the same
for a request and its answer), the body as it went over the wire, and the extension attributes
``inferenceservicename``, ``namespace``, ``component``, ``endpoint``. This module does the same
inside the server.

Logging never slows or fails an answer: events go to a bounded queue drained by one background
task; a full queue drops the event, a sink that is down is retried a few times with the project's
back-off and then dropped; every outcome is counted in ``kfp_serve_payload_log_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
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
#: Events sent in one pipelined batch at most, and how long a batch waits for more to join.
PIPELINE_MAX = 64
LINGER_S = 0.005
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


class PayloadLogger:
    """Queue and send payload events for one server.

    Call :meth:`start` inside the server's event loop, :meth:`request`/:meth:`response` per
    inference (they never block), and :meth:`close` at shutdown (it sends what is queued).
    """

    def __init__(self, spec: LoggerSpec) -> None:
        self.spec = spec
        self.log_requests, self.log_responses = MODES[spec.mode]
        self._queue: asyncio.Queue[tuple[str, str, bytes, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    async def start(self) -> None:
        """Open the HTTP client and start the sender task."""
        from urllib.parse import urlsplit

        from kfp_serve.serving.runtime import metrics
        from kfp_serve.serving.runtime.upstream import UpstreamClient

        self._events = metrics.PAYLOAD_EVENTS
        # Children looked up once: a labels() call costs more than the increment.
        self._sent = metrics.PAYLOAD_EVENTS.labels("sent")
        self._dropped = metrics.PAYLOAD_EVENTS.labels("dropped")
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

    @staticmethod
    def new_id() -> str:
        """An inference id for a request that brought none."""
        return str(uuid.uuid4())

    def request(self, inference_id: str, body: bytes, content_type: str) -> None:
        """Queue the request event (when the mode logs requests)."""
        if self.log_requests:
            self._put(REQUEST_EVENT, inference_id, body, content_type)

    def response(self, inference_id: str, body: bytes, content_type: str) -> None:
        """Queue the answer event (when the mode logs answers)."""
        if self.log_responses:
            self._put(RESPONSE_EVENT, inference_id, body, content_type)

    def _put(self, event_type: str, inference_id: str, body: bytes, content_type: str) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait((event_type, inference_id, body, content_type))
        except asyncio.QueueFull:
            self._dropped.inc()

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
        """Send what is queued: everything waiting (after a short linger) goes out pipelined in
        one batch, one send for the batch, so the busier the server, the less each event costs
        it."""
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if queue.qsize() < PIPELINE_MAX:
                # Let a busy server's next events join this batch: a few ms of delay for an
                # event, a send (and the sink's wake-up) saved for each that joins.
                await asyncio.sleep(LINGER_S)
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
                self._sent.inc()

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
        self._sent.inc()

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
                    self._events.labels("retried").inc()
                    await self._post(body, headers)
        except Exception as e:  # noqa: BLE001 - a logging failure must never reach serving
            self._drop(event_type, inference_id, e)
            return
        self._sent.inc()

    def _drop(self, event_type: str, inference_id: str, error: BaseException) -> None:
        self._dropped.inc()
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
