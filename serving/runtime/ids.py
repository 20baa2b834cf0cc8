"""Ids for requests that bring none: UUID-shaped, unique across processes, and cheap.

``str(uuid.uuid4())`` was about 6 % of a v2 request's CPU (os.urandom and UUID formatting on
every answer). Here a random UUID-shaped prefix is drawn once per process and a counter fills
the last 12 hex digits.
"""

from __future__ import annotations

import itertools
import os
import uuid

_prefix = ""
_counter = itertools.count()


def _seed() -> None:
    global _prefix, _counter
    _prefix = str(uuid.uuid4())[:24]
    _counter = itertools.count()


_seed()
# Servers forked from the warm pool's fork server (which imported this module) each draw
# their own prefix: two servers never hand out the same id.
os.register_at_fork(after_in_child=_seed)


def new_id() -> str:
    """A fresh id (``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``)."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFF:012x}"
