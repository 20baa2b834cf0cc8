"""The payload-logging agent: sends a model server's payload events to the sink as CloudEvents.

KServe logs payloads from its agent sidecar, not from the model server; this is the local
counterpart: one process per server (started by :class:`~.payload_log.PayloadLogger`), reading
the server's events from its stdin and posting each one to the ``logger.url`` sink as a
binary-mode CloudEvent. Building, sending and retrying events costs the serving process nothing
but one pipe write per batch of events (about 20 % of its CPU per request when it did the
sending itself, ``bench/dataplane.py``).

Protocol with the server, both over pipes:

- stdin: events framed by :func:`~.payload_log.decode_events`; end of input means the server
  is closing (or gone): what is queued is sent (within the bounded retries), then the agent exits.
- stdout: one line ``"<sent> <dropped> <retried>"`` of counts since the last line, at most every
  ``REPORT_EVERY_S``; the server adds them to its ``kfp_serve_payload_log_events`` metric.

Run as ``python -m kfp_serve.serving.runtime.payload_agent SPEC_JSON``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from typing import Any

from kfp_serve.serving.runtime.payload_log import (
    COMPONENT_ATTR,
    ENDPOINT_ATTR,
    EVENT_TYPES,
    INFERENCE_SERVICE_ATTR,
    NAMESPACE_ATTR,
    SPEC_VERSION,
    LoggerSpec,
    decode_events,
    now,
)

log = logging.getLogger("kfp_serve.runtime.payload_agent")

#: Events taken from the pipe and waiting to be sent at most: while this many wait, the pipe is
#: not read, and what the server writes waits there (and in the server's buffer, whose limit
#: is where events are dropped: ``payload_log.MAX_UNSENT_BYTES``).
QUEUE_SIZE = 1000
#: Events sent in one pipelined batch at most, how long a batch waits for more to join, and
#: how long its answers are left to arrive before they are read (see
#: :meth:`~kfp_serve.serving.runtime.upstream.UpstreamClient.pipeline`). One batch is in
#: flight at a time, so the largest batch over one cycle bounds an agent's rate: ~50 000
#: events/s.
PIPELINE_MAX = 256
LINGER_S = 0.005
SETTLE_S = 0.002
#: Attempts per event (the first plus retries) and the time one attempt may take.
ATTEMPTS = 3
SEND_TIMEOUT_S = 5.0
#: How often the counts go back to the server (its /metrics lags the sink by at most this).
REPORT_EVERY_S = 0.2
READ_CHUNK = 1 << 20
#: While events flow, the pipe is read this often (see :class:`PipeSource`), and holds this much.
READ_EVERY_S = 0.005
PIPE_BYTES = 1 << 20

#: An event as the server framed it: (kind, inference id, content type, body), kind an index
#: in EVENT_TYPES. Kept as bytes: it goes out as bytes (text only for a retry's headers).
Event = tuple[int, bytes, bytes, bytes]
_TYPE_VALUES = tuple(t.encode() for t in EVENT_TYPES)


class SinkError(Exception):
    """The sink answered with a status that a retry may fix (5xx, 429)."""


class EventSender:
    """Queue events and post them to the sink: pipelined batches, bounded retries, counted."""

    def __init__(self, spec: LoggerSpec) -> None:
        from urllib.parse import urlsplit

        from kfp_serve.serving.runtime.upstream import UpstreamClient

        self.spec = spec
        self.sent = self.dropped = self.retried = 0
        # A deque and two flags rather than an asyncio.Queue: a put and a get there cost more
        # than building and sending the event.
        self._queue: deque[Event] = deque()
        self._waiting = asyncio.Event()  # events are queued
        self._done = asyncio.Event()  # nothing is queued or being sent
        self._done.set()
        self._has_room = asyncio.Event()
        self._has_room.set()
        parts = urlsplit(spec.url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The transformer's keep-alive client: a fraction of httpx's cost per event, and no
        # proxy from the environment ever sees the payloads.
        self._client = UpstreamClient(
            f"{parts.scheme}://{parts.netloc}", timeout=SEND_TIMEOUT_S, max_idle=4,
            headers=self._fixed_headers(),
        )
        self._prefix = self._client.head_prefix("POST", self._path)
        self._task = asyncio.create_task(self._drain(), name="payload-sender")

    def room(self) -> int:
        """How many events :meth:`put_many` takes now."""
        return QUEUE_SIZE - len(self._queue)

    async def wait_for_room(self) -> None:
        """Return once the queue has room."""
        await self._has_room.wait()

    def put_many(self, events: list[Event]) -> None:
        """Queue ``events`` (at most :meth:`room` of them)."""
        assert len(events) <= self.room(), "more events than the queue has room for"
        self._queue.extend(events)
        if self._queue:
            self._done.clear()
            self._waiting.set()
        if not self.room():
            self._has_room.clear()

    def counts(self) -> tuple[int, int, int]:
        """(sent, dropped, retried) since the last call."""
        out = (self.sent, self.dropped, self.retried)
        self.sent = self.dropped = self.retried = 0
        return out

    async def close(self) -> None:
        """Send what is queued (bounded by the retries), then stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=ATTEMPTS * SEND_TIMEOUT_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.dropped += len(self._queue)
        await self._client.aclose()

    def _fixed_headers(self) -> dict[str, str]:
        fixed = {"ce-specversion": SPEC_VERSION, "ce-source": self.spec.source or "kfp-serve"}
        for attr, value in (
            (INFERENCE_SERVICE_ATTR, self.spec.inference_service),
            (NAMESPACE_ATTR, self.spec.namespace),
            (COMPONENT_ATTR, self.spec.component),
            (ENDPOINT_ATTR, self.spec.endpoint),
        ):
            fixed[f"ce-{attr}"] = _header_value(value)
        return fixed

    def _headers(
        self, event_type: str, inference_id: str, content_type: str, when: str | None = None
    ) -> dict[str, str]:
        """The binary-mode CloudEvents HTTP headers of one event besides the fixed ones the
        client sends with every request (``when``: its ``ce-time``, now by default).

        Written out rather than built with the SDK's ``to_binary``, which costs ~160 us per
        event; the tests parse these with the SDK.
        """
        values = (_id_value(inference_id), event_type, when or now(), content_type)
        return dict(zip(_EVENT_HEADERS, values, strict=True))

    async def _drain(self) -> None:
        """Send what is queued: everything waiting (after a short linger) goes out pipelined in
        one batch, so the busier the server, the less each event costs."""
        queue = self._queue
        while True:
            await self._waiting.wait()
            if len(queue) < PIPELINE_MAX:
                # Let a busy server's next events join this batch: a few ms of delay for an
                # event, a send (and the sink's wake-up) saved for each that joins.
                await asyncio.sleep(LINGER_S)
            batch = [queue.popleft() for _ in range(min(len(queue), PIPELINE_MAX))]
            self._has_room.set()
            if not queue:
                self._waiting.clear()
            try:
                if len(batch) == 1:
                    await self._send(batch[0])
                else:
                    await self._send_pipelined(batch)
            finally:
                if not queue:
                    self._done.set()

    async def _send_pipelined(self, batch: list[Event]) -> None:
        from kfp_serve.serving.runtime.upstream import UpstreamError

        when = now()
        # Each request framed here, in one formatting per event: the fixed headers are in
        # the prefix, the event's own after them.
        prefix, stamp, types = self._prefix, when.encode("latin-1"), _TYPE_VALUES
        data = b"".join([
            prefix + _EVENT_HEAD % (rid if _PLAIN_ID_BYTES(rid) else _id_bytes(rid),
                                    types[kind], stamp, content_type, len(body)) + body
            for kind, rid, content_type, body in batch
        ])
        answers = await self._client.pipeline(data, len(batch), settle=SETTLE_S)
        for event, answer in zip(batch, answers, strict=True):
            if isinstance(answer, UpstreamError) or answer.status >= 500 or answer.status == 429:
                event_type, inference_id, content_type, body = _text(event)
                headers = self._headers(event_type, inference_id, content_type, when)
                await self._retry(event_type, inference_id, body, headers)
            elif answer.status >= 400:
                event_type, inference_id, *_ = _text(event)
                self._drop(event_type, inference_id, ValueError(f"sink answered {answer.status}"))
            else:
                self.sent += 1

    async def _send(self, event: Event) -> None:
        from kfp_serve.serving.runtime.upstream import UpstreamError

        event_type, inference_id, content_type, body = _text(event)
        headers = self._headers(event_type, inference_id, content_type)
        try:
            # The usual case, a sink that answers, costs no retry machinery (tenacity's loop
            # costs as much as the post itself); a failure goes through the bounded retries.
            await self._post(body, headers)
        except (UpstreamError, SinkError):
            await self._retry(event_type, inference_id, body, headers)
            return
        except Exception as e:  # noqa: BLE001 - one bad event must not stop the others
            self._drop(event_type, inference_id, e)
            return
        self.sent += 1

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
                    self.retried += 1
                    await self._post(body, headers)
        except Exception as e:  # noqa: BLE001 - one bad event must not stop the others
            self._drop(event_type, inference_id, e)
            return
        self.sent += 1

    def _drop(self, event_type: str, inference_id: str, error: BaseException) -> None:
        self.dropped += 1
        log.warning("payload event %s for %s dropped: %s", event_type, inference_id, error)


#: True for an id that needs no percent-encoding (a UUID, the usual case): checked in C.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._~-]+").fullmatch
_PLAIN_ID_BYTES = re.compile(rb"[A-Za-z0-9._~-]+").fullmatch
#: An event's own headers (besides the client's fixed ones), in this order: id, type, time,
#: content type. A pipelined request frames them from ``_EVENT_HEAD``, a retried one from
#: :meth:`EventSender._headers`: both from these names.
_EVENT_HEADERS = ("ce-id", "ce-type", "ce-time", "content-type")
_EVENT_HEAD = (
    b"".join(f"{name}: %b\r\n".encode() for name in _EVENT_HEADERS)
    + b"content-length: %d\r\n\r\n"
)


def _id_value(inference_id: str) -> str:
    return inference_id if _PLAIN_ID(inference_id) else _header_value(inference_id)


def _id_bytes(inference_id: bytes) -> bytes:
    """An id that is not plain, percent-encoded (ASCII, then)."""
    return _header_value(inference_id.decode("utf-8", "replace")).encode("ascii")


def _text(event: Event) -> tuple[str, str, str, bytes]:
    """An event's type, id and content type as text (for headers built one by one, and
    log lines)."""
    kind, inference_id, content_type, body = event
    return (EVENT_TYPES[kind], inference_id.decode("utf-8", "replace"),
            content_type.decode("latin-1"), body)


def _header_value(value: str) -> str:
    """A CloudEvents attribute as an HTTP header value (percent-encoded outside printable ASCII,
    as the HTTP binding says)."""
    from urllib.parse import quote

    return quote(value, safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.") if value else value


class PipeSource:
    """The server's end of the pipe, read without a wake-up per write.

    An event-driven reader wakes the agent for every write the server makes (one per turn of
    its loop: thousands a second under load), and each wake-up costs more than the events it
    brings. This one, after a read that brought events, lets :data:`READ_EVERY_S` pass before
    the next: the pipe (enlarged to :data:`PIPE_BYTES`) holds what comes meanwhile. Only an
    empty pipe is waited on.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError, AttributeError):  # Linux only; the default is fine
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._brought = False

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the server has closed its end (or is gone)."""
        if self._brought:
            await asyncio.sleep(READ_EVERY_S)
        while True:
            try:
                chunk = os.read(self.fd, n)
            except BlockingIOError:
                await self._readable()
                continue
            self._brought = bool(chunk)
            return chunk

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)


async def run(spec: LoggerSpec, source: Any, report: Any) -> None:
    """Send the events read from ``source`` (its ``await read(n)`` returns ``b""`` at the
    end) until it ends; ``report(line)`` gets the counts."""
    sender = EventSender(spec)

    async def report_periodically() -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            _report(sender, report)

    reporter = asyncio.create_task(report_periodically())
    buf = bytearray()
    try:
        while True:
            # Only as many events as the queue takes leave the pipe's buffer: a sink slower
            # than the server (or an agent held up) makes the pipe wait, not events drop.
            await sender.wait_for_room()
            if events := decode_events(buf, sender.room()):
                sender.put_many(events)
                continue  # more may be complete in buf already
            if not (chunk := await source.read(READ_CHUNK)):
                break
            buf += chunk
        if buf:
            log.warning("the server's last payload event was cut off (%d bytes)", len(buf))
        await sender.close()
    finally:
        reporter.cancel()
        _report(sender, report)


def _report(sender: EventSender, report: Any) -> None:
    counts = sender.counts()
    if any(counts):
        report(" ".join(map(str, counts)) + "\n")


async def _main(spec: LoggerSpec) -> None:
    source = PipeSource(sys.stdin.fileno())
    out = sys.stdout

    def report(line: str) -> None:
        with contextlib.suppress(OSError):  # the server is gone: nobody to tell
            out.write(line)
            out.flush()

    await run(spec, source, report)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The agent runs in its own session (a signal to its server's group does not reach it);
    # one sent to it directly is ignored too: it keeps sending what its server queued and
    # exits when the server closes the pipe (or dies), which ends its input.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = LoggerSpec(**json.loads(args[0]))
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with kfp-serve's dependencies
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_main(spec))


if __name__ == "__main__":
    main()
