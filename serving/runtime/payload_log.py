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
import uuid
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving.errors import ServingError

log = logging.getLogger("kfp_serve.runtime.payload_log")

#: KServe's event types.
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
#: KServe's logger modes and what each one sends.
MODES: dict[str, tuple[bool, bool]] = {
    "all": (True, True),
    "request": (True, False),
    "response": (False, True),
}
#: Events waiting to be sent; beyond this they are dropped (and counted), never awaited.
QUEUE_SIZE = 1000
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
        import httpx

        from kfp_serve.serving.runtime import metrics

        self._events = metrics.PAYLOAD_EVENTS
        self._queue = asyncio.Queue(QUEUE_SIZE)
        # trust_env=False: a proxy from the environment must not see the payloads.
        self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S, trust_env=False)
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
            self._events.labels("dropped").inc()

    def _headers(self, event_type: str, inference_id: str, content_type: str) -> dict[str, str]:
        from cloudevents.conversion import to_binary
        from cloudevents.http import CloudEvent

        attributes = {
            "type": event_type,
            "source": self.spec.source or "kfp-serve",
            "id": inference_id,
            "inferenceservicename": self.spec.inference_service,
            "namespace": self.spec.namespace,
            "component": self.spec.component,
            "endpoint": self.spec.endpoint,
            "datacontenttype": content_type,
        }
        headers, _ = to_binary(CloudEvent(attributes, None))
        return headers

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            event_type, inference_id, body, content_type = await self._queue.get()
            try:
                await self._send(event_type, inference_id, body, content_type)
            finally:
                self._queue.task_done()

    async def _send(
        self, event_type: str, inference_id: str, body: bytes, content_type: str
    ) -> None:
        import httpx

        from kfp_serve.retry import retrying_async

        headers = self._headers(event_type, inference_id, content_type)
        first = True
        try:
            async for attempt in retrying_async(
                attempts=ATTEMPTS, on=(httpx.TransportError, SinkError)
            ):
                with attempt:
                    if not first:
                        self._events.labels("retried").inc()
                    first = False
                    r = await self._client.post(self.spec.url, content=body, headers=headers)
                    if r.status_code >= 500 or r.status_code == 429:
                        raise SinkError(f"sink answered {r.status_code}")
                    if r.status_code >= 400:
                        # The sink refuses this event; sending it again will not help.
                        raise ValueError(f"sink answered {r.status_code}: {r.text[:200]}")
        except Exception as e:  # noqa: BLE001 - a logging failure must never reach serving
            self._events.labels("dropped").inc()
            log.warning("payload event %s for %s dropped: %s", event_type, inference_id, e)
            return
        self._events.labels("sent").inc()
