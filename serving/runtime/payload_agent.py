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
import json
import logging
import re
import signal
import sys
from typing import Any

from kfp_serve.serving.runtime.payload_log import (
    COMPONENT_ATTR,
    ENDPOINT_ATTR,
    INFERENCE_SERVICE_ATTR,
    NAMESPACE_ATTR,
    SPEC_VERSION,
    LoggerSpec,
    decode_events,
    now,
)

log = logging.getLogger("kfp_serve.runtime.payload_agent")

#: Events waiting to be sent; beyond this they are dropped (and counted), never awaited.
QUEUE_SIZE = 1000
#: Events sent in one pipelined batch at most, and how long a batch waits for more to join.
PIPELINE_MAX = 64
LINGER_S = 0.005
#: Attempts per event (the first plus retries) and the time one attempt may take.
ATTEMPTS = 3
SEND_TIMEOUT_S = 5.0
#: How often the counts go back to the server (its /metrics lags the sink by at most this).
REPORT_EVERY_S = 0.2
READ_CHUNK = 1 << 20

#: An event: (CloudEvents type, inference id, content type, body).
Event = tuple[str, str, str, bytes]


class SinkError(Exception):
    """The sink answered with a status that a retry may fix (5xx, 429)."""


class EventSender:
    """Queue events and post them to the sink: pipelined batches, bounded retries, counted."""

    def __init__(self, spec: LoggerSpec) -> None:
        from urllib.parse import urlsplit

        from kfp_serve.serving.runtime.upstream import UpstreamClient

        self.spec = spec
        self.sent = self.dropped = self.retried = 0
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        parts = urlsplit(spec.url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The transformer's keep-alive client: a fraction of httpx's cost per event, and no
        # proxy from the environment ever sees the payloads.
        self._client = UpstreamClient(
            f"{parts.scheme}://{parts.netloc}", timeout=SEND_TIMEOUT_S, max_idle=4
        )
        self._fixed = self._fixed_headers()
        self._task = asyncio.create_task(self._drain(), name="payload-sender")

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def counts(self) -> tuple[int, int, int]:
        """(sent, dropped, retried) since the last call."""
        out = (self.sent, self.dropped, self.retried)
        self.sent = self.dropped = self.retried = 0
        return out

    async def close(self) -> None:
        """Send what is queued (bounded by the retries), then stop."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=ATTEMPTS * SEND_TIMEOUT_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.dropped += self._queue.qsize()
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
        """The binary-mode CloudEvents HTTP headers of one event (``when``: its ``ce-time``,
        now by default; a pipelined batch shares one).

        Written out rather than built with the SDK's ``to_binary``, which costs ~160 us per
        event; the tests parse these with the SDK.
        """
        return {
            **self._fixed,
            "ce-id": inference_id if _PLAIN_ID(inference_id) else _header_value(inference_id),
            "ce-type": event_type,
            "ce-time": when or now(),
            "content-type": content_type,
        }

    async def _drain(self) -> None:
        """Send what is queued: everything waiting (after a short linger) goes out pipelined in
        one batch, so the busier the server, the less each event costs."""
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

    async def _send_pipelined(self, batch: list[Event]) -> None:
        from kfp_serve.serving.runtime.upstream import UpstreamError

        when = now()
        requests = [(body, self._headers(t, i, ct, when)) for t, i, ct, body in batch]
        answers = await self._client.post_many(self._path, requests)
        for (event_type, inference_id, _, body), (_, headers), answer in zip(
            batch, requests, answers, strict=True
        ):
            if isinstance(answer, UpstreamError) or answer.status >= 500 or answer.status == 429:
                await self._retry(event_type, inference_id, body, headers)
            elif answer.status >= 400:
                self._drop(event_type, inference_id, ValueError(f"sink answered {answer.status}"))
            else:
                self.sent += 1

    async def _send(
        self, event_type: str, inference_id: str, content_type: str, body: bytes
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


def _header_value(value: str) -> str:
    """A CloudEvents attribute as an HTTP header value (percent-encoded outside printable ASCII,
    as the HTTP binding says)."""
    from urllib.parse import quote

    return quote(value, safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.") if value else value


async def run(spec: LoggerSpec, source: asyncio.StreamReader, report: Any) -> None:
    """Send the events read from ``source`` until it ends; ``report(line)`` gets the counts."""
    sender = EventSender(spec)

    async def report_periodically() -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            _report(sender, report)

    reporter = asyncio.create_task(report_periodically())
    buf = bytearray()
    try:
        while chunk := await source.read(READ_CHUNK):
            buf += chunk
            for event in decode_events(buf):
                sender.put(event)
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
    loop = asyncio.get_running_loop()
    source = asyncio.StreamReader(limit=READ_CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(source), sys.stdin.buffer)
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
