"""Rolling a local endpoint forward: start servers, wait until they answer, move traffic, drain.

Applying a name again is a rollout, as on a cluster: the new revision starts next to the old
one, traffic moves only once it is Ready (by rewriting the registry record, which the router
follows on its next request), and the old revision is stopped once the router has finished its
requests. Each step is one function here; :meth:`LocalBackend.apply` calls them in order.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kfp_serve.retry import retrying, wait_until
from kfp_serve.serving import constants
from kfp_serve.serving.backends.local import canary, registry, supervisor
from kfp_serve.serving.backends.local.plan import Plan
from kfp_serve.serving.backends.local.registry import (
    LOGS_DIR,
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
)
from kfp_serve.serving.constants import (
    LOOPBACK,
    PREDICTOR,
    ROUTER_BACKLOG,
    TRANSFORMER,
    UNIX_SOCKET_FLAG,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.http import LOOPBACK_TIMEOUT, loopback_client

if TYPE_CHECKING:
    from kfp_serve.serving.backends.local.servers import Servers

logger = logging.getLogger(__name__)

#: What a server's log says when it lost the race for its port.
ADDRESS_IN_USE = ("address already in use", "errno 98", "cannot bind grpc port")
#: How often a revision is started again on new ports after losing such a race.
PORT_ATTEMPTS = 3
#: Seconds a new router gets to answer its status path.
ROUTER_START_TIMEOUT = 30.0
#: Seconds the router gets to switch to a new record and finish requests to retired servers.
DRAIN_TIMEOUT = 10.0
#: Pause between two readiness probes: a refused connection costs microseconds, so poll often
#: and the step that waits finishes within a few tens of ms of the servers being ready.
PROBE_INTERVAL = 0.02


class PortTaken(Exception):
    """A server lost the race for its port: start the revision again on new ports."""


class Progress:
    """Readiness progress on stderr: a spinner on a terminal, a line per step elsewhere."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._status: Any = None
        self._console: Any = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def start(self, text: str) -> None:
        if not self.enabled:
            return
        if self._console.is_terminal:
            self._status = self._console.status(text)
            self._status.start()
        else:
            self._console.print(text, markup=False, highlight=False)

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def done(self, text: str | None = None) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.enabled and text:
            self._console.print(text, markup=False, highlight=False)


def now() -> str:
    """The timestamp the registry records (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Start


def start_router(
    python: str, name: str, port: int | None, env: dict[str, str], grpc_port: int | None = None
) -> tuple[ProcessRecord, subprocess.Popen]:
    """Start the endpoint's router on ``port`` and its gRPC listener on ``grpc_port`` if they
    are free (stable addresses), else on any port.

    Does not wait: see :func:`await_router_up`.
    """
    socks = [_listening_socket(port), _listening_socket(grpc_port)]
    try:
        http, grpc = socks
        log = registry.endpoint_dir(name) / LOGS_DIR / "router.log"
        # The listening sockets are handed over: no window in which another process could take
        # a port between choosing and binding it.
        proc = supervisor.start_detached(
            [
                python,
                "-m",
                constants.ROUTER_MODULE,
                "--endpoint",
                name,
                "--registry",
                str(registry.registry_path(name)),
                "--fd",
                str(http.fileno()),
                "--grpc-fd",
                str(grpc.fileno()),
            ],
            log=log,
            env=env,
            cwd=registry.endpoint_dir(name),
            pass_fds=(http.fileno(), grpc.fileno()),
        )
        record = ProcessRecord.started(
            proc, "router", _port(http), log, grpc_port=_port(grpc)
        )
    finally:
        for sock in socks:
            sock.close()
    return record, proc


def _listening_socket(port: int | None) -> socket.socket:
    """A socket listening on ``port`` of the loopback address if it is free, else on any."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port or 0))
        except OSError:
            sock.bind((LOOPBACK, 0))
        sock.listen(ROUTER_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def revision_record(plan: Plan, number: int, started: dict[str, ProcessRecord]) -> RevisionRecord:
    """The registry record of revision ``number`` of ``plan``, whose servers ``started`` (by
    role) run, processes or containers."""
    return RevisionRecord(
        revision=number,
        created=now(),
        manifest=plan.manifest,
        spec_hash=plan.spec_hash,
        protocol=plan.protocol,
        model_name=(plan.transformer or plan.predictor).model_name,
        predictor=started[PREDICTOR],
        transformer=started.get(TRANSFORMER),
        model_ids=plan.model_ids,
    )


def start_revision(
    python: str, plan: Plan, number: int, dirs: dict[str, Path], grace: float
) -> RevisionRecord:
    """Start the predictor (and transformer) of revision ``number``; does not wait.

    The transformer starts at once, next to the predictor: it does not need it to load.
    """
    from kfp_serve.serving.runtime import launch

    logs = registry.endpoint_dir(plan.name) / LOGS_DIR
    started: dict[str, ProcessRecord] = {}
    predictor_port: int | None = None
    try:
        for component in (plan.predictor, plan.transformer):
            if component is None:
                continue
            log = logs / f"rev{number}-{component.role}.log"
            log.unlink(missing_ok=True)
            extra: dict[str, Any] = {}
            if component.role == TRANSFORMER:
                extra = {
                    "predictor_host": f"{LOOPBACK}:{predictor_port}",
                    "predictor_protocol": component.predictor_protocol,
                }
            # A port of the kernel's choosing, never the manifest's (8081 on every pod).
            grpc_port = launch.free_port() if component.grpc else 0
            # The router's way in (UNIX_SOCKET_FLAG says why).
            unix_socket = f"@kfp-serve-{uuid.uuid4().hex}"
            extra["extra_args"] = [f"{UNIX_SOCKET_FLAG}={unix_socket}"]
            if grpc_port:
                extra["extra_args"].append(f"--grpc_port={grpc_port}")
            proc = launch.start_server(
                component.role,  # type: ignore[arg-type]
                component.model_name,
                dirs[component.role],
                log_path=log,
                host=LOOPBACK,
                env=component.server_env,
                python=python,
                **extra,
            )
            started[component.role] = ProcessRecord.started(
                proc, component.role, proc.port, log, component.model_name, grpc_port,
                unix_socket,
            )
            predictor_port = predictor_port or proc.port
    except BaseException:
        supervisor.stop(started.values(), grace)
        raise
    return revision_record(plan, number, started)


def start_ready_revision(
    servers: Servers,
    plan: Plan,
    number: int,
    artifacts: dict[str, Path | str],
    *,
    wait: bool,
    deadline: float,
    timeout: float,
    grace: float,
    progress: Progress,
) -> RevisionRecord:
    """``servers.start_revision``, then (if ``wait``) :func:`await_ready`; a revision that
    lost the race for a port starts again on new ones. On failure nothing of it is left
    running."""
    for attempt in retrying(attempts=PORT_ATTEMPTS, on=PortTaken, first_wait=0, max_wait=0):
        with attempt:
            revision = servers.start_revision(plan, number, artifacts, grace)
            if not wait:
                return revision
            try:
                await_ready(plan.name, revision, deadline, timeout, progress)
            except PortTaken:
                supervisor.stop(revision.processes, grace)
                if attempt.retry_state.attempt_number == PORT_ATTEMPTS:
                    raise ServingError(
                        f"endpoint {plan.name!r} revision {number}: no free port after "
                        f"{PORT_ATTEMPTS} attempts"
                    ) from None
                raise
            except BaseException:
                supervisor.stop(revision.processes, grace)
                raise
            return revision
    raise AssertionError("unreachable")  # pragma: no cover - retrying() re-raises the last error


# --------------------------------------------------------------------------------------------
# Wait ready


def probe(proc: ProcessRecord, *, timeout: float = LOOPBACK_TIMEOUT) -> bool:
    """True if the model server answers Ready within ``timeout`` seconds."""
    try:
        response = loopback_client().get(f"{proc.url}{constants.READY_PATH}", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def await_ready(
    name: str, revision: RevisionRecord, deadline: float, timeout: float, progress: Progress
) -> None:
    """Probe the servers of ``revision`` until each answers Ready, one exits, or time is up.

    Raises:
        PortTaken: a server lost the race for its port.
        ServingError: a server exited, or was not ready by ``deadline``; with its log tail.
    """
    pending = {p.role: p for p in revision.processes}
    started = time.monotonic()

    def all_ready() -> bool:
        for role, proc in list(pending.items()):
            code = supervisor.exit_code(proc.pid)
            if code is not None or not proc.alive():
                tail = supervisor.log_tail(proc.log)
                if any(s in tail.lower() for s in ADDRESS_IN_USE):
                    raise PortTaken()
                how = f"with code {code} " if code is not None else ""
                raise ServingError(
                    f"endpoint {name!r} revision {revision.revision}: the {role} exited "
                    f"{how}while starting; its log {proc.log!r} ends with:\n{tail}"
                )
            if probe(proc):
                del pending[role]
        progress.update(
            f"endpoint {name!r} revision {revision.revision}: waiting for "
            f"{' and '.join(sorted(pending))} ({time.monotonic() - started:.1f} s of "
            f"{timeout:.0f} s)"
        )
        return not pending

    try:
        wait_until(
            all_ready,
            deadline=max(0.0, deadline - time.monotonic()),
            interval=PROBE_INTERVAL,
            describe="readiness",
        )
    except TimeoutError:
        role, proc = next(iter(pending.items()))
        raise ServingError(
            f"endpoint {name!r} revision {revision.revision}: the {role} was not ready "
            f"within {timeout:.0f} s (raise timeout= if the model is large); its log "
            f"{proc.log!r} ends with:\n{supervisor.log_tail(proc.log)}"
        ) from None


def await_router_up(
    name: str, router: ProcessRecord, proc: subprocess.Popen | None, grace: float
) -> None:
    """Wait until the router started by :func:`start_router` answers its status path."""
    log = Path(router.log)

    def answers() -> bool:
        exited = proc.poll() is not None if proc is not None else not router.alive()
        if exited:
            code = proc.returncode if proc is not None else "?"
            raise ServingError(
                f"the router of endpoint {name!r} exited with code {code} while "
                f"starting; its log {str(log)!r} ends with:\n{supervisor.log_tail(log)}"
            )
        try:
            url = f"{router.url}{constants.ROUTER_STATUS_PATH}"
            return loopback_client().get(url).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(
            answers, deadline=ROUTER_START_TIMEOUT, interval=PROBE_INTERVAL, describe="router"
        )
    except TimeoutError:
        supervisor.stop([router], grace)
        raise ServingError(
            f"the router of endpoint {name!r} did not answer within "
            f"{ROUTER_START_TIMEOUT:.0f} s; see {str(log)!r}"
        ) from None


# --------------------------------------------------------------------------------------------
# Switch traffic, drain


def stable_revision(record: EndpointRecord) -> RevisionRecord | None:
    """The rolled-out revision a canary is compared with (see :func:`.canary.stable`)."""
    return canary.stable(record)


def commit(
    record: EndpointRecord,
    traffic: dict[str, int],
    *,
    new: RevisionRecord | None = None,
    event: dict[str, Any] | None = None,
) -> list[RevisionRecord]:
    """Write ``traffic`` (and ``new``, and ``event``) to the registry; the router follows on its
    next request. A revision that takes all traffic becomes the stable (rolled-out) one.

    Returns:
        The revisions that no longer get traffic. They stay in the record until they are
        stopped, so a crash in between still leaves their pids findable by delete().
    """
    if new is not None:
        record.revisions.append(new)
    record.traffic = traffic
    record.generation += 1
    record.updated = now()
    whole = [int(k) for k, v in traffic.items() if v == 100]
    if whole:
        record.mark_rolled_out(whole[0])
    if event is not None:
        record.add_event({"time": record.updated, **event, "traffic": dict(traffic)})
    registry.write_record(record)
    return [r for r in record.revisions if str(r.revision) not in traffic]


def await_drained(
    record: EndpointRecord, removed: list[RevisionRecord], *, timeout: float = DRAIN_TIMEOUT
) -> None:
    """Wait until the router routes by ``record`` and has finished its requests to ``removed``
    (and drained its gRPC connections to them).

    A router that does not confirm within ``timeout`` is logged, not fatal: the new revision
    serves either way.
    """
    gone = {r.entry.address for r in removed}
    gone_grpc = {r.entry.grpc_address for r in removed if r.entry.grpc_address}
    url = f"{record.url}{constants.ROUTER_STATUS_PATH}"

    def drained() -> bool:
        try:
            info = loopback_client().get(url).json()
        except (httpx.HTTPError, ValueError):
            return False
        busy = sum(
            u["inflight"]
            for u in info.get("upstreams", [])
            if u["url"].removeprefix("http://") in gone
        ) + sum(n for k, n in info.get("retired_inflight", {}).items() if k in gone)
        # gRPC connections to them: the router drains each (its calls finish) and closes it.
        busy += sum(
            n for k, n in info.get("grpc", {}).get("connections", {}).items() if k in gone_grpc
        )
        return info.get("generation", 0) >= record.generation and not busy

    try:
        wait_until(drained, deadline=timeout, interval=0.01, describe="drain")
    except TimeoutError:
        logger.warning(
            "endpoint %r: the router did not confirm the switch within %.0f s",
            record.name,
            timeout,
        )


def retire(record: EndpointRecord, removed: list[RevisionRecord], grace: float) -> None:
    """Drain ``removed``, drop them from the record, stop their servers, delete their logs."""
    if not removed:
        return
    await_drained(record, removed)
    record.revisions = [r for r in record.revisions if r not in removed]
    registry.write_record(record)
    supervisor.stop([p for r in removed for p in r.processes], grace)
    for r in removed:
        for p in r.processes:
            Path(p.log).unlink(missing_ok=True)
