"""The payload agent's pipe reader: what the server writes arrives whole, in order, and the end
of the pipe ends it (the agent's sending is tested against real servers in test_dataplane)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

from kfp_serve.serving.runtime.payload_agent import PipeSource
from kfp_serve.serving.runtime.payload_log import decode_events, encode_event


def _write_slowly(fd: int, parts: list[bytes], pause: float) -> None:
    try:
        for part in parts:
            os.write(fd, part)
            time.sleep(pause)
    finally:
        os.close(fd)


def test_pipe_source_reads_every_event_in_order_and_ends_with_the_pipe():
    events = [(i % 2, f"id-{i // 2}".encode(), b"application/json", b'{"n": %d}' % i)
              for i in range(400)]
    stream = b"".join(encode_event(*event) for event in events)
    # Cut anywhere, not at event boundaries; a pause long enough that the reader finds the
    # pipe empty between writes (and must wait for it rather than end).
    parts = [stream[i : i + 97] for i in range(0, len(stream), 97)]
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=_write_slowly, args=(write_fd, parts, 0.0005))

    async def main() -> list[tuple[int, bytes, bytes, bytes]]:
        source = PipeSource(read_fd)
        buf, got = bytearray(), []
        writer.start()
        while chunk := await source.read(1 << 20):
            buf += chunk
            got += decode_events(buf)
        assert not buf
        return got

    try:
        got = asyncio.run(main())
    finally:
        writer.join()
        os.close(read_fd)
    assert got == events


def test_pipe_source_waits_on_an_empty_pipe_instead_of_ending():
    read_fd, write_fd = os.pipe()

    async def main() -> bytes:
        source = PipeSource(read_fd)
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, os.write, write_fd, b"late")
        started = time.monotonic()
        chunk = await source.read(100)
        assert time.monotonic() - started >= 0.25
        return chunk

    try:
        assert asyncio.run(main()) == b"late"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_more_events_than_the_queue_holds_wait_in_the_pipe_and_all_reach_the_sink():
    """A read that brings 2.5 queues' worth of events: the rest stay in the pipe's buffer
    until the queue has room, and every event is sent, in order (none dropped)."""
    from kfp_serve.serving.runtime import payload_agent
    from kfp_serve.serving.runtime.payload_log import LoggerSpec

    n = payload_agent.QUEUE_SIZE * 5 // 2
    stream = b"".join(encode_event(i % 2, f"q-{i}".encode(), b"application/json", b"{}")
                      for i in range(n))
    ids: list[str] = []
    counts: list[str] = []

    async def keep_alive_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:]
                              if ": " in line)
                await reader.readexactly(int(fields["content-length"]))
                ids.append(fields["ce-id"])
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def main() -> None:
        sink = await asyncio.start_server(keep_alive_sink, "127.0.0.1", 0)
        port = sink.sockets[0].getsockname()[1]
        source = asyncio.StreamReader()
        source.feed_data(stream)  # all of it in one read
        source.feed_eof()
        await payload_agent.run(LoggerSpec(url=f"http://127.0.0.1:{port}/"), source,
                                counts.append)
        sink.close()

    asyncio.run(main())
    sent, dropped, _ = (sum(int(line.split()[k]) for line in counts) for k in range(3))
    assert (sent, dropped) == (n, 0)
    assert ids == [f"q-{i}" for i in range(n)]
