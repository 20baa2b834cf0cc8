"""HTTP plumbing every client of a model server shares within a process.

httpx builds a new TLS context (and loads the whole CA bundle) for each ``Client`` it makes with
the default ``verify``: 15-30 ms of CPU with the GIL held. Made per call, that was most of what
``Endpoint("iris")`` cost (the local backend opened a client for each status probe), and eight
threads each opening an Endpoint got their first answer a quarter of a second after the first
did (``bench/fairness.py``). So the TLS context is built once, and loopback calls (probes of
local servers, the router's status) share one pooled client.
"""

from __future__ import annotations

import atexit
import functools
import os
import ssl
import threading

import httpx

#: Timeout of a loopback call that names none: local servers answer probes in milliseconds.
LOOPBACK_TIMEOUT = 1.0
#: Seconds an idle pooled loopback connection may be reused: well below the shortest idle
#: timeout of a server behind it (uvicorn's default is 5 s), so a probe never sends on a
#: connection the server is closing at that moment (it would fail, and read as "not ready").
LOOPBACK_KEEPALIVE = 1.0

_lock = threading.Lock()
_loopback: httpx.Client | None = None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process shares, built once."""
    return httpx.create_ssl_context()


def loopback_client() -> httpx.Client:
    """The process's pooled client for calls to servers on 127.0.0.1 (thread-safe; a forked
    child gets its own, never its parent's sockets). Pass ``timeout=`` per request to change
    the default :data:`LOOPBACK_TIMEOUT`; do not close it."""
    global _loopback
    client = _loopback
    if client is None:
        with _lock:
            if _loopback is None:
                # trust_env=False: a proxy from the environment must never see loopback traffic.
                _loopback = httpx.Client(
                    timeout=LOOPBACK_TIMEOUT,
                    limits=httpx.Limits(keepalive_expiry=LOOPBACK_KEEPALIVE),
                    trust_env=False,
                    verify=tls_context(),
                )
            client = _loopback
    return client


def _close_loopback() -> None:
    global _loopback
    with _lock:
        if _loopback is not None:
            _loopback.close()
            _loopback = None


def _forget_parents_client() -> None:
    # The child must not write to the parent's pooled connections, nor close them (closing a
    # socket shared with the parent could cut its request): drop the reference, build anew.
    global _loopback, _lock
    _loopback = None
    _lock = threading.Lock()  # the parent may have held it while forking


os.register_at_fork(after_in_child=_forget_parents_client)
atexit.register(_close_loopback)
