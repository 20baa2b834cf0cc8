"""Per-test programmable faults of the Kubernetes API double (403s, 500s, hangs, delays)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Fault:
    """One programmed misbehaviour, matched against every API request.

    Args:
        verb: RBAC verb to match (get, list, watch, create, update, patch, delete); None = any.
        resource: plural resource ("inferenceservices"); None = any.
        name: object name; None = any.
        status: HTTP status to answer (403, 404, 409, 500, 503, ...); None = no error answer.
        reason: Status reason; defaults from the status code.
        message: Status message; a realistic one is generated when empty.
        delay: seconds to wait before handling (or answering) the request.
        hang: seconds to hold the connection and then drop it without any answer (a timeout).
        times: how many matching requests it applies to; None = forever.
        every: apply only to every ``every``-th matching request (1 = all): intermittent faults.
    """

    verb: str | None = None
    resource: str | None = None
    name: str | None = None
    status: int | None = None
    reason: str | None = None
    message: str | None = None
    delay: float = 0.0
    hang: float = 0.0
    times: int | None = 1
    every: int = 1
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, verb: str, resource: str, name: str | None) -> bool:
        return (
            (self.verb is None or self.verb == verb)
            and (self.resource is None or self.resource == resource)
            and (self.name is None or self.name == name)
        )


class FaultPlan:
    """The faults of one double; thread-safe; the first matching live fault wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault | None = None, /, **kwargs: object) -> Fault:
        """Program a fault: ``plan.add(verb="patch", status=403)`` or ``plan.add(Fault(...))``."""
        fault = fault or Fault(**kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, verb: str, resource: str, name: str | None) -> Fault | None:
        """The fault that applies to this request, if any (counts it as fired)."""
        with self._lock:
            for fault in self._faults:
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if not fault.matches(verb, resource, name):
                    continue
                fault.seen += 1
                if (fault.seen - 1) % max(1, fault.every):
                    continue
                fault.fired += 1
                return fault
        return None
