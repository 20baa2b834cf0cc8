"""HTTP/2 wire pieces gRPC needs (RFC 9113, RFC 7541, gRPC's PROTOCOL-HTTP2): frame headers,
the handful of HPACK representations that carry no table state, and gRPC status answers.

Shared by the runtime's gRPC transport (:mod:`kfp_serve.serving.runtime.grpc_transport`) and
the router's gRPC relay, which writes a few frames of its own. No grpc import: the router stays
light.
"""

from __future__ import annotations

import struct
from enum import IntEnum

#: The HTTP/2 client connection preface (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The preface's request line: how an HTTP/2 connection first looks to an HTTP/1 parser.
PREFACE_LINE = PREFACE.split(b"\r\n", 1)[0]
#: The largest stream id, and GOAWAY's "every stream" (RFC 9113 6.8).
LAST_STREAM = 0x7FFFFFFF

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS parameters (RFC 9113 6.5.2).
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x3, 0x4
SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x5, 0x6
#: Window and frame size every peer starts with.
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384


class ErrorCode(IntEnum):
    """HTTP/2 error codes (RFC 9113 7) used in RST_STREAM and GOAWAY."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    COMPRESSION_ERROR = 0x9


class Status(IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header (24-bit length, type, flags, stream id) and its payload."""
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream & LAST_STREAM) + payload


def goaway(last_stream: int, code: int = ErrorCode.NO_ERROR) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream & LAST_STREAM, code))


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a ``prefix_bits`` prefix under the bits ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as "literal without indexing, new name" (no table state, no Huffman)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


#: ``:status 200`` (HPACK static table entry 8) and gRPC's content type: every answer's head.
GRPC_RESPONSE_HEAD = b"\x88" + hpack_literal(b"content-type", b"application/grpc")


def grpc_message(text: str) -> bytes:
    """``grpc-message`` percent-encoding (everything outside printable ASCII, and ``%``)."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_block(code: int, message: str = "") -> bytes:
    """The HPACK block of gRPC trailers carrying ``code`` (and ``message``)."""
    block = hpack_literal(b"grpc-status", str(int(code)).encode())
    if message:
        block += hpack_literal(b"grpc-message", grpc_message(message))
    return block


def error_answer(stream: int, code: int, message: str) -> bytes:
    """The frames that end call ``stream`` with gRPC status ``code``: a trailers-only answer."""
    return frame(
        HEADERS, END_STREAM | END_HEADERS, stream, GRPC_RESPONSE_HEAD + status_block(code, message)
    )
