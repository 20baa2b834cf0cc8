"""The payload agent's pipe reader: what the server writes arrives whole, in order, and the end
of the pipe ends it (the agent's sending is tested against real servers in test_dataplane)."""

from __future__ import annotations

import asyncio
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
