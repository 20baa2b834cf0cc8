"""Shadow traffic for a gated canary: the local router's mirror and its analysis window.

While a *mirror session* is open on an endpoint, its router

* times every request it relays and counts the failures, per revision (the stable one and the
  candidate), for the live analysis of ``kfp_serve.serving.gate.decide_live``;
* sends a copy of each request the **stable** revision answered successfully to the
  **candidate** as well, after the client already has the stable answer, and compares the two
  answers' predictions (agreement), the candidate's latency and its failures.

The client only ever gets the stable revision's answer: a mirrored request is sent after that
answer is written, through the router's own upstream connections, and its outcome is only
counted. The queue of mirrored requests is bounded (``MAX_INFLIGHT`` on the wire, ``QUEUE_SIZE``
waiting); a request that finds it full is dropped and counted, so a slow candidate can never
slow the stable path or grow the router's memory.

A session is opened and closed by writing and removing ``mirror.json`` next to the endpoint's
registry record (atomically, like the record); the router looks for it a few times a second
(in its sweep, not per request) and reports the session and its window on its status route
(``GET /kfp-serve/router``, key ``mirror``). A new session id starts an empty window.

Why "agreement" compares labels: two classifiers agree on a row when they predict the same
class (for rows of class probabilities: the same most likely class); numbers are compared with
a relative tolerance of 1e-6, anything else with ``==``. A request agrees when every row does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp_serve.serving.gate import Counts, LiveWindow, p99

logger = logging.getLogger("kfp_serve.router.mirror")

MIRROR_FILE = "mirror.json"
#: Mirrored requests on the wire at once, and waiting behind them; more are dropped.
MAX_INFLIGHT = 8
QUEUE_SIZE = 256
#: Latencies kept per revision and session (a window's p99 needs them all; this bounds memory).
MAX_SAMPLES = 200_000

#: ``send(upstream, request, done)`` relays ``request`` (raw bytes) to ``upstream`` and calls
#: ``done(answer)`` with the raw answer bytes (b"" if there was none); returns a cancel function.
Send = Callable[[Any, bytes, Callable[[bytes], None]], Callable[[], None]]


# -- the session file (written by the gated rollout, read by the router) ------------------------


@dataclass(frozen=True)
class Session:
    """An open mirror session: which revision is stable and which one is compared with it."""

    id: str
    stable: int
    candidate: int
    created: float = field(default_factory=time.time)


def session_path(endpoint_dir: str | os.PathLike[str]) -> Path:
    return Path(endpoint_dir) / MIRROR_FILE


def open_session(endpoint_dir: str | os.PathLike[str], stable: int, candidate: int) -> Session:
    """Start mirroring ``stable``'s traffic to ``candidate`` (atomic write of the session file)."""
    session = Session(id=uuid.uuid4().hex[:12], stable=stable, candidate=candidate)
    directory = Path(endpoint_dir)
    fd, tmp = tempfile.mkstemp(prefix=".mirror-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(session), f)
        os.replace(tmp, session_path(directory))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return session


def close_session(endpoint_dir: str | os.PathLike[str]) -> None:
    """Stop mirroring (the router notices within a sweep interval)."""
    session_path(endpoint_dir).unlink(missing_ok=True)


def read_session(path: str | os.PathLike[str]) -> Session | None:
    try:
        data = json.loads(Path(path).read_bytes())
        return Session(str(data["id"]), int(data["stable"]), int(data["candidate"]),
                       float(data.get("created", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- comparing answers --------------------------------------------------------------------------


def split_answer(raw: bytes) -> tuple[int | None, bytes]:
    """The status code and body of a raw HTTP/1.1 answer (None when it is not one)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None, b""
    head, body = raw[:end], raw[end + 4 :]
    parts = head[: head.find(b"\r\n") if b"\r\n" in head else len(head)].split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, b""
    lower = head.lower()
    if b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
        body = _dechunk(body)
    else:
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            value = lower[at + 17 : lower.find(b"\r\n", at + 2) if lower.find(b"\r\n", at + 2) > 0
                          else len(lower)].strip()
            if value.isdigit():
                body = body[: int(value)]
    return status, body


def _dechunk(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        nl = data.find(b"\r\n", i)
        if nl < 0:
            return bytes(out)
        try:
            size = int(data[i:nl].split(b";", 1)[0], 16)
        except ValueError:
            return bytes(out)
        if size == 0:
            return bytes(out)
        out += data[nl + 2 : nl + 2 + size]
        i = nl + 2 + size + 2


def _predictions(body: bytes) -> list[Any] | None:
    from kfp_serve.serving.predictions import response_predictions

    try:
        return response_predictions(json.loads(body))
    except Exception:  # noqa: BLE001 - any unreadable answer is "no predictions"
        return None


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _same_row(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        if a and b and all(map(_number, a)) and all(map(_number, b)) and len(a) == len(b):
            return max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        return len(a) == len(b) and all(map(_same_row, a, b))
    if _number(a) and _number(b):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) or a == b
    return a == b


def agree(stable: list[Any], candidate: list[Any]) -> bool:
    """Whether two answers' predictions agree on every row (see the module docstring)."""
    return len(stable) == len(candidate) and all(map(_same_row, stable, candidate))


# -- the router's side --------------------------------------------------------------------------


def _p50(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _summary(counts: Counts) -> dict[str, Any]:
    return {"requests": counts.requests, "errors": counts.errors,
            "p99_ms": p99(counts.latencies), "p50_ms": _p50(counts.latencies)}


class Mirror:
    """The router's mirror: counts a session's window and shadows stable requests.

    Args:
        path: The session file (``mirror.json`` next to the registry record).
        send: How the router relays a mirrored request (see ``Send``).
        clock: A fine-grained monotonic clock (seconds).
        call_later: The event loop's ``call_later`` (a mirrored request's timeout).
    """

    def __init__(
        self, path: str | os.PathLike[str], send: Send, clock: Callable[[], float],
        call_later: Callable[..., Any],
    ) -> None:
        self.path = str(path)
        self.send = send
        self.clock = clock
        self.call_later = call_later
        #: True while a session is open and both of its revisions are routed to.
        self.active = False
        self.session: Session | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._since = 0.0
        self._stable_rev = self._candidate_rev = -1
        self._candidate: Any = None
        self._reset()

    def _reset(self) -> None:
        #: Why the session's mirror was turned off (an error in the mirror itself), if it was.
        self.failure: str | None = None
        self.live: dict[int, Counts] = {}
        self.shadow = Counts(MAX_SAMPLES)
        self.compared = self.agreed = self.dropped = 0
        self.inflight = 0
        self.pending: deque[tuple[bytes, bytes]] = deque()

    # -- session ---------------------------------------------------------------------------

    def refresh(self, upstreams: list[Any]) -> None:
        """Follow the session file and the routes (called by the router's sweep)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            session = read_session(self.path) if stamp is not None else None
            if session is None or self.session is None or session.id != self.session.id:
                self._reset()
                self._since = self.clock()
            self.session = session
        session = self.session
        by_rev = {u.revision: u for u in upstreams}
        if session is None or self.failure or session.stable not in by_rev \
                or session.candidate not in by_rev:
            self.active = False
            self._candidate = None
            return
        self._stable_rev, self._candidate_rev = session.stable, session.candidate
        self._candidate = by_rev[session.candidate]
        self.active = True

    # -- hooks of the relay ----------------------------------------------------------------

    # Each hook runs inside the relay of a client's request: whatever goes wrong in the mirror
    # turns the mirror off (and is logged), it never reaches the client's request.

    def begin(self, exchange: Any) -> None:
        """A client request starts: time it; keep the stable answer's bytes to mirror them."""
        try:
            exchange.started = self.clock()
            if exchange.upstream.revision == self._stable_rev:
                exchange.capture = []
        except Exception as e:  # noqa: BLE001 - see above
            self._broken(e)

    def answered(self, exchange: Any) -> None:
        """A timed request got its whole answer."""
        try:
            status = exchange.status
            rev = exchange.upstream.revision
            elapsed = self.clock() - exchange.started
            self._stats(rev).add(None if status >= 500 else elapsed * 1000.0)
            if exchange.capture is not None and 200 <= status < 300 and self.active:
                self._offer(exchange.request, b"".join(exchange.capture))
        except Exception as e:  # noqa: BLE001 - see above
            self._broken(e)

    def failed(self, exchange: Any) -> None:
        """A timed request got no (whole) answer: a failure of its revision."""
        try:
            self._stats(exchange.upstream.revision).add(None)
        except Exception as e:  # noqa: BLE001 - see above
            self._broken(e)

    def _broken(self, error: Exception) -> None:
        logger.exception("mirror session %s turned off after an error: %s",
                         self.session.id if self.session else "?", error)
        self.active = False
        self.failure = f"{type(error).__name__}: {error}"

    def _stats(self, revision: int) -> Counts:
        stats = self.live.get(revision)
        if stats is None:
            stats = self.live[revision] = Counts(MAX_SAMPLES)
        return stats

    # -- mirrored requests -----------------------------------------------------------------

    def _offer(self, request: bytes, stable_answer: bytes) -> None:
        if self.inflight < MAX_INFLIGHT:
            self._send(request, stable_answer)
        elif len(self.pending) < QUEUE_SIZE:
            self.pending.append((request, stable_answer))
        else:
            self.dropped += 1

    def _send(self, request: bytes, stable_answer: bytes) -> None:
        candidate = self._candidate
        session = self.session
        self.inflight += 1
        started = self.clock()
        timer: Any = None

        def done(answer: bytes) -> None:
            if timer is not None:
                timer.cancel()
            self.inflight -= 1
            if self.session is session:  # not an answer to a session that has ended
                try:
                    self._compare(stable_answer, answer, self.clock() - started)
                except Exception as e:  # noqa: BLE001 - see the hooks above
                    self._broken(e)
            if self.pending and self.active:
                self._send(*self.pending.popleft())

        cancel = self.send(candidate, request, done)
        timer = self.call_later(candidate.timeout, cancel)

    def _compare(self, stable_answer: bytes, answer: bytes, seconds: float) -> None:
        status, body = split_answer(answer)
        if status is None or status >= 500:
            self.shadow.add(None)
            return
        stable_body = split_answer(stable_answer)[1]
        if status < 300 and body == stable_body:
            # The usual case of two models that agree: the same bytes, no JSON to parse.
            self.shadow.add(seconds * 1000.0)
            self.compared += 1
            self.agreed += 1
            return
        candidate = _predictions(body) if status < 300 else None
        if status < 300 and candidate is None:
            self.shadow.add(None)  # a 2xx the client could not have read is a failure too
            return
        self.shadow.add(seconds * 1000.0)
        stable = _predictions(stable_body)
        if stable is None:
            return  # nothing to compare with (the stable answer was not a prediction)
        self.compared += 1
        if candidate is not None and agree(stable, candidate):
            self.agreed += 1

    # -- what the status route reports ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        session = self.session
        if session is None:
            return {"session": None, "active": False}
        stable = self.live.get(session.stable, Counts(MAX_SAMPLES))
        live_candidate = self.live.get(session.candidate, Counts(MAX_SAMPLES))
        shadow = self.shadow
        both = live_candidate.latencies + shadow.latencies
        return {
            "session": session.id,
            "active": self.active,
            "failure": self.failure,
            "stable": session.stable,
            "candidate": session.candidate,
            "elapsed_seconds": self.clock() - self._since,
            "revisions": {
                "stable": _summary(stable),
                "candidate": _summary(live_candidate),
                "mirrored": _summary(shadow),
            },
            # The candidate's whole window: its own requests and the mirrored ones.
            "window": {
                "canary_requests": live_candidate.requests + shadow.requests,
                "canary_errors": live_candidate.errors + shadow.errors,
                "canary_p99_ms": p99(both),
                "stable_p99_ms": p99(stable.latencies),
                "mirrored": self.compared,
                "agreed": self.agreed,
            },
            "dropped": self.dropped,
            "queued": len(self.pending),
            "inflight": self.inflight,
        }


def live_window(status: dict[str, Any]) -> LiveWindow:
    """The ``LiveWindow`` of a router's ``mirror`` status."""
    w = status["window"]
    return LiveWindow(
        elapsed_seconds=float(status["elapsed_seconds"]),
        canary_requests=int(w["canary_requests"]),
        canary_errors=int(w["canary_errors"]),
        canary_p99_ms=w["canary_p99_ms"],
        stable_p99_ms=w["stable_p99_ms"],
        mirrored=int(w["mirrored"]),
        agreed=int(w["agreed"]),
    )
