"""Payload logging as KServe's ``logger`` spec defines it: requests and answers as CloudEvents.

``logger: {mode: all|request|response, url: ...}`` on a predictor or transformer makes KServe's
agent post each request and/or answer to ``url`` as a binary-mode CloudEvent: ``ce-type``
``org.kubeflow.serving.inference.request`` / ``...response``, ``ce-id`` the inference id (the same
for a request and its answer), the body as it went over the wire, and the extension attributes
``inferenceservicename``, ``namespace``, ``component``, ``endpoint``. This module does the same
inside the server.

KServe's agent sidecar does the sending; here :class:`PayloadLogger` starts one agent process per
server (:mod:`~kfp_serve.serving.runtime.payload_agent`) and hands it each event over a pipe, so
that building, sending and retrying events costs the serving process only a pipe write per
batch. Logging never slows or fails an answer: events the pipe cannot take at once are dropped,
a sink that is down is retried a few times with the project's back-off and then dropped; every
outcome is counted in ``kfp_serve_payload_log_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from kfp_serve.serving.constants import PAYLOAD_AGENT_MODULE
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
#: Bytes of events the pipe to the agent may hold unwritten; beyond it events are dropped.
MAX_UNSENT_BYTES = 16 * 1024 * 1024
#: How long events wait to be written to the agent's pipe together.
FLUSH_AFTER_S = 0.002
#: How long closing waits for the agent to send what is queued (its retries are bounded).
AGENT_EXIT_TIMEOUT_S = 20.0
#: One event on the pipe: kind (index in EVENT_TYPES), then the lengths of id, content type, body.
_FRAME = struct.Struct("!BIII")
EVENT_TYPES = (REQUEST_EVENT, RESPONSE_EVENT)


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
    """Hand one server's payload events to its agent process.

    Call :meth:`start` inside the server's event loop, :meth:`exchange` per inference (it never
    blocks), and :meth:`close` at shutdown (the agent sends what is queued).
    """

    def __init__(self, spec: LoggerSpec) -> None:
        self.spec = spec
        self.log_requests, self.log_responses = MODES[spec.mode]
        self._agent: asyncio.subprocess.Process | None = None
        self._pipe: asyncio.StreamWriter | None = None
        self._reports: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        self._pending_events = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start the agent; events logged before it is up wait in the pipe."""
        from kfp_serve.serving.runtime import metrics

        # Children looked up once: a labels() call costs more than the increment.
        self._outcomes = tuple(metrics.PAYLOAD_EVENTS.labels(o) for o in ("sent", "dropped",
                                                                          "retried"))
        self._dropped = self._outcomes[1]
        self._loop = asyncio.get_running_loop()
        # In a session of its own: stopping an endpoint signals the server's process group,
        # and an agent still starting (before it ignores SIGTERM) died of it with every event
        # queued. It exits when the server closes the pipe, or dies, which ends its input.
        self._agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", PAYLOAD_AGENT_MODULE, json.dumps(asdict(self.spec)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._pipe = self._agent.stdin
        assert self._agent.stdout is not None
        # Its pipe handed over now: a close() right after start() clears self._agent before the
        # task first runs.
        self._reports = asyncio.create_task(self._read_reports(self._agent.stdout),
                                            name="payload-agent-counts")

    async def close(self) -> None:
        """Close the pipe and wait (bounded) for the agent to send what it holds and exit."""
        if self._agent is None:
            return
        agent, self._agent = self._agent, None
        self._flush()
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        try:
            await asyncio.wait_for(agent.wait(), timeout=AGENT_EXIT_TIMEOUT_S)
        except TimeoutError:
            log.warning("the payload agent did not exit in %g s; killing it", AGENT_EXIT_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                agent.kill()
            await agent.wait()
        if self._reports is not None:
            await self._reports

    def exchange(
        self,
        inference_id: str,
        request: bytes,
        request_type: bytes,
        response: bytes | None = None,
        response_type: bytes = b"",
    ) -> None:
        """Queue one inference's events, as the mode says: its request's, and its answer's when
        there is one (``response`` None: refused, only the request is logged). Never blocks.

        One call per inference, not one per event: the calls cost the serving process more than
        the framing does.
        """
        if self._pipe is None:
            self._dropped.inc(2 if response is not None else 1)  # the agent is gone
            return
        rid = inference_id.encode()
        if self.log_requests:
            if self.log_responses and response is not None:
                data = (encode_event(0, rid, request_type, request)
                        + encode_event(1, rid, response_type, response))
                events = 2
            else:
                data = encode_event(0, rid, request_type, request)
                events = 1
        elif response is not None:
            data = encode_event(1, rid, response_type, response)
            events = 1
        else:
            return
        if not self._pending:
            # The events of the next few ms go out in one write: a pipe write per turn of the
            # loop cost the server more than the events it carried.
            self._loop.call_later(FLUSH_AFTER_S, self._flush)  # type: ignore[union-attr]
        self._pending.append(data)
        self._pending_events += events

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        events, self._pending_events = self._pending_events, 0
        if not pending:
            return
        pipe = self._pipe
        if pipe is None or pipe.is_closing() or (
            pipe.transport.get_write_buffer_size() > MAX_UNSENT_BYTES
        ):
            self._dropped.inc(events)  # the agent went away or cannot keep up: never wait
            return
        pipe.write(b"".join(pending))

    async def _read_reports(self, out: asyncio.StreamReader) -> None:
        """Add the agent's counts (read from its ``out``) to this server's metric, until the
        agent exits."""
        while line := await out.readline():
            try:
                counts = [int(n) for n in line.split()]
            except ValueError:
                continue
            for counter, n in zip(self._outcomes, counts, strict=False):
                if n:
                    counter.inc(n)
        if self._agent is not None:
            # Still serving, and the agent is gone: later events are dropped (and counted).
            log.error("the payload agent exited; payload events are dropped from now on")
            self._pipe = None


def encode_event(kind: int, inference_id: bytes, content_type: bytes, body: bytes) -> bytes:
    """One event as the agent reads it (``kind``: 0 request, 1 response)."""
    return b"".join((_FRAME.pack(kind, len(inference_id), len(content_type), len(body)),
                     inference_id, content_type, body))


def decode_events(
    buf: bytearray, limit: int | None = None
) -> list[tuple[int, bytes, bytes, bytes]]:
    """The complete events at the start of ``buf`` (``limit`` of them at most) as (kind, id,
    content type, body), kind an index in :data:`EVENT_TYPES`, the rest as the server framed
    them; they are removed from ``buf``, what follows them stays for the next call."""
    size = _FRAME.size
    limit = len(buf) // size if limit is None else limit  # no more events than that fit
    if len(buf) < size or limit <= 0:
        return []
    data = bytes(buf)  # its slices are bytes: a bytearray's would each need converting
    events: list[tuple[int, bytes, bytes, bytes]] = []
    at, total = 0, len(data)
    unpack = _FRAME.unpack_from
    while total - at >= size and len(events) < limit:
        kind, n_id, n_ct, n_body = unpack(data, at)
        end = at + size + n_id + n_ct + n_body
        if total < end:
            break
        id_at, ct_at = at + size, at + size + n_id
        body_at = ct_at + n_ct
        events.append((kind, data[id_at:ct_at], data[ct_at:body_at], data[body_at:end]))
        at = end
    del buf[:at]
    return events


def now() -> str:
    """``ce-time``: the current time, RFC 3339."""
    return datetime.now(UTC).isoformat()
