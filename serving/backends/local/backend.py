"""The embedded serving backend: runs an InferenceService manifest as processes on this machine.

Each endpoint is a router in front of one or two revisions; a revision is a predictor model
server and, if the manifest has one, a transformer in front of it. Every process is detached
(see :mod:`.supervisor`), so it outlives the process that applied the manifest — a kfp.local
step or a notebook cell — and never holds that process's pipes open. Everything binds
127.0.0.1 only.

Applying a name again is a rollout (:mod:`.rollout`): if the new revision fails, the old one
keeps serving and the error carries the new server's log. ``spec.predictor.canaryTrafficPercent``
keeps the previous revision and sends that percentage of requests to the new one.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from typing import Any

from kfp_serve.artifacts.home import HOME_ENV, state_dir
from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving.backends.base import (
    LOCAL,
    REASON_NOT_READY,
    REASON_PROCESS_EXITED,
    REASON_STARTING,
    EndpointStatus,
)
from kfp_serve.serving.backends.local import registry, rollout, supervisor
from kfp_serve.serving.backends.local.plan import Plan, plan_manifest, split_traffic
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
)
from kfp_serve.serving.backends.local.storage import resolve_storage
from kfp_serve.serving.constants import PREDICTOR, STORAGE_URI_ENV, TRANSFORMER
from kfp_serve.serving.errors import ServingError

logger = logging.getLogger(__name__)

#: Reason reported for an endpoint directory whose record cannot be read.
REASON_REGISTRY_UNREADABLE = "RegistryUnreadable"


class LocalBackend:
    """Serves InferenceService manifests as local processes (see the module docstring).

    Args:
        python: Interpreter that runs the servers (default: this one).
        progress: Show readiness progress on stderr.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopping a server.
        probe_timeout: Timeout of the HTTP ready probe of ``get``/``list``.
    """

    name = LOCAL

    def __init__(
        self,
        *,
        python: str | None = None,
        progress: bool = True,
        stop_grace: float = supervisor.DEFAULT_GRACE,
        probe_timeout: float = 1.0,
    ) -> None:
        self.python = python or sys.executable
        self.progress = progress
        self.stop_grace = stop_grace
        self.probe_timeout = probe_timeout

    # -- apply --------------------------------------------------------------------------------

    def apply(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> EndpointStatus:
        """Start (or roll out) the endpoint ``manifest`` describes and return its status.

        Args:
            manifest: A camelCase InferenceService manifest.
            wait: Wait until the servers are Ready. A rollout over a serving revision always
                waits: traffic may only move to servers that answer.
            timeout: Seconds the new servers get to become Ready.

        Raises:
            ServingError: the manifest cannot be run locally, or the new revision did not
                become Ready (the previous revision, if any, keeps serving).
        """
        plan = plan_manifest(manifest)
        deadline = time.monotonic() + timeout
        with registry.locked(plan.name):
            record = registry.read_record(plan.name)
            if record is not None and _only_traffic_changes(record, plan):
                stable = rollout.stable_revision(record)
                traffic = split_traffic(
                    stable.revision if stable else None, record.latest.revision, plan.canary_percent
                )
                if traffic != record.traffic:
                    rollout.retire(record, rollout.commit(record, traffic), self.stop_grace)
                return self._status(record, probe=True)
            return self._roll_out(
                plan, record, wait=wait or record is not None, deadline=deadline, timeout=timeout
            )

    def _roll_out(
        self,
        plan: Plan,
        record: EndpointRecord | None,
        *,
        wait: bool,
        deadline: float,
        timeout: float,
    ) -> EndpointStatus:
        """plan -> start -> wait ready -> switch traffic -> drain -> record."""
        first_apply = not registry.exists(plan.name)
        number = (max(r.revision for r in record.revisions) + 1) if record else 1
        stable = rollout.stable_revision(record) if record is not None else None
        previous = (
            f" The previous revision {stable.revision} keeps serving at {record.url}."
            if record is not None and stable is not None
            else ""
        )
        progress = rollout.Progress(self.progress)
        progress.start(f"endpoint {plan.name!r}: starting revision {number}")
        from kfp_serve.serving.runtime import launch

        # The servers are forked from a warm pool: start it now, so it imports while the
        # snapshots are verified and the router starts (no-op if it runs or is disabled).
        launch.warm_up(self.python)
        router: ProcessRecord | None = None
        new: RevisionRecord | None = None
        try:
            # Plan: the verified directory each server loads (a tampered snapshot stops here).
            dirs = {
                PREDICTOR: resolve_storage(
                    plan.predictor.storage_uri, field="spec.predictor storageUri"
                )
            }
            if plan.transformer is not None:
                dirs[TRANSFORMER] = resolve_storage(
                    plan.transformer.storage_uri, field=f"transformer {STORAGE_URI_ENV}"
                )
            registry.endpoint_dir(plan.name).mkdir(parents=True, exist_ok=True)
            # Start: the router first and awaited last, so it comes up while the models load.
            router_proc = None
            if record is None or not record.router.alive():
                port = record.router.port if record is not None else None
                router, router_proc = rollout.start_router(
                    self.python, plan.name, port, dict(os.environ)
                )
            # Start and wait ready.
            new = rollout.start_ready_revision(
                self.python,
                plan,
                number,
                dirs,
                wait=wait,
                deadline=deadline,
                timeout=timeout,
                grace=self.stop_grace,
                progress=progress,
            )
            if router is not None:
                rollout.await_router_up(plan.name, router, router_proc, self.stop_grace)
            # Switch traffic.
            record = _with_router(record, plan.name, router)
            if stable is not None and not all(p.alive() for p in stable.processes):
                if plan.canary_percent is not None and plan.canary_percent < 100:
                    logger.warning(
                        "endpoint %r: revision %s has exited, so the canary gets all traffic",
                        plan.name,
                        stable.revision,
                    )
                stable = None
            traffic = split_traffic(
                stable.revision if stable else None, new.revision, plan.canary_percent
            )
            removed = rollout.commit(record, traffic, new=new)
        except BaseException as e:
            progress.done()
            # Nothing of this attempt may outlive it: the registry does not name it yet.
            supervisor.stop(
                [*(new.processes if new else []), *([router] if router else [])], self.stop_grace
            )
            if first_apply:
                # Refused before any server wrote a log (e.g. a tampered snapshot): leave no
                # empty endpoint directory behind. Logs of a failed start are kept.
                with contextlib.suppress(OSError):
                    registry.endpoint_dir(plan.name).rmdir()
            if isinstance(e, ServingError):
                raise ServingError(f"{e}{previous}") from e
            raise
        # Drain and record: the old revision finishes its requests, then stops.
        rollout.retire(record, removed, self.stop_grace)
        status = self._status(record, probe=True)
        if not wait and not status.ready and status.reason == REASON_NOT_READY:
            status.reason = REASON_STARTING
        progress.done(
            f"endpoint {plan.name!r} revision {number} "
            f"{'ready' if status.ready else 'started'} at {record.url}"
            + (f" ({traffic[str(number)]}% of traffic)" if len(traffic) > 1 else "")
        )
        return status

    # -- get / list / delete ------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> EndpointStatus:
        """The status of endpoint ``name`` (processes checked, servers probed over HTTP).

        Raises:
            ServingError: there is no local endpoint called ``name``.
        """
        record = registry.read_record(validate_name(name, "endpoint name"))
        if record is None:
            raise ServingError(
                f"there is no local endpoint named {name!r} in {_searched()}: run "
                "`kfp-serve endpoints` to list them, or serve the model first"
            )
        return self._status(record, probe=True)

    def list(self, namespace: str | None = None) -> list[EndpointStatus]:
        """The status of every local endpoint, by name (``namespace`` is ignored locally)."""
        result = []
        for name in registry.list_names():
            record = registry.read_record(name)
            if record is None:
                result.append(
                    EndpointStatus(
                        name=name,
                        backend=LOCAL,
                        url=None,
                        ready=False,
                        reason=REASON_REGISTRY_UNREADABLE,
                        message=f"{str(registry.registry_path(name))!r} cannot be read: "
                        f"`kfp-serve stop {name}` removes it",
                    )
                )
                continue
            result.append(self._status(record, probe=True))
        return result

    def delete(self, name: str, namespace: str | None = None) -> None:
        """Stop every process of endpoint ``name`` and remove its directory.

        Stopping the last endpoint also stops the warm pool: nothing is left running.

        Raises:
            ServingError: there is no local endpoint called ``name``.
        """
        validate_name(name, "endpoint name")
        if not registry.exists(name):
            # Checked before locking: a name that never existed leaves no lock file behind.
            raise ServingError(
                f"there is no local endpoint named {name!r} to stop in {_searched()}: run "
                "`kfp-serve endpoints` to list them"
            )
        with registry.locked(name):
            record = registry.read_record(name)
            if record is not None:
                supervisor.stop(
                    [record.router, *(p for r in record.revisions for p in r.processes)],
                    self.stop_grace,
                )
            registry.remove(name)
        if not registry.list_names():
            self.stop_pool()

    def delete_all(self) -> list[str]:
        """Stop every local endpoint of this ``KFP_SERVE_HOME`` and the warm pool.

        Returns:
            The names of the endpoints that were stopped.
        """
        names = [p.name for p in registry.endpoint_dirs()]
        for name in names:
            with contextlib.suppress(ServingError):  # stopped meanwhile by someone else
                self.delete(name)
        self.stop_pool()
        return names

    @staticmethod
    def stop_pool() -> bool:
        """Stop the warm pool of this ``KFP_SERVE_HOME`` (running servers keep running).

        Returns:
            True if a pool was running and stopped.
        """
        from kfp_serve.serving.runtime import warm_pool

        return warm_pool.stop()

    # -- status -------------------------------------------------------------------------------

    def _status(self, record: EndpointRecord, *, probe: bool) -> EndpointStatus:
        latest = record.latest
        components: dict[str, str] = {"router": record.url}
        for rev in record.active:
            prefix = "" if rev.revision == latest.revision else "previous-"
            for p in rev.processes:
                components[prefix + p.role] = p.url
        status = EndpointStatus(
            name=record.name,
            backend=LOCAL,
            url=record.url,
            ready=True,
            namespace=None,
            manifest=copy.deepcopy(latest.manifest),
            components=components,
        )
        checks: list[tuple[str, RevisionRecord | None, ProcessRecord]] = [
            ("router", None, record.router)
        ]
        checks += [(p.role, r, p) for r in record.active for p in r.processes]
        for role, rev, proc in checks:
            if not proc.alive():
                where = f" of revision {rev.revision}" if rev is not None else ""
                status.ready = False
                status.reason = REASON_PROCESS_EXITED
                status.message = (
                    f"the {role}{where} of endpoint {record.name!r} (pid {proc.pid}) has exited; "
                    f"see its log {proc.log!r}. Serve it again to restart it, or run "
                    f"`kfp-serve stop {record.name}` to clean up"
                )
                return status
        if probe:
            for role, rev, proc in checks[1:]:
                if not rollout.probe(proc, timeout=self.probe_timeout):
                    status.ready = False
                    status.reason = REASON_NOT_READY
                    status.message = (
                        f"the {role} of revision {rev.revision if rev else '?'} of endpoint "
                        f"{record.name!r} runs (pid {proc.pid}) but does not answer ready "
                        f"at {proc.url}; see its log {proc.log!r}"
                    )
                    return status
        return status


def _only_traffic_changes(record: EndpointRecord, plan: Plan) -> bool:
    """True when ``plan`` differs from the serving revision in canaryTrafficPercent at most,
    and that revision still runs: traffic moves, no server starts."""
    latest = record.latest
    return (
        latest.spec_hash == plan.spec_hash
        and record.router.alive()
        and all(p.alive() for p in latest.processes)
    )


def _with_router(
    record: EndpointRecord | None, name: str, router: ProcessRecord | None
) -> EndpointRecord:
    """``record`` with its newly started ``router``, or a new record for a first apply."""
    if record is None:
        assert router is not None  # a first apply always starts a router
        stamp = rollout.now()
        return EndpointRecord(
            name=name,
            created=stamp,
            updated=stamp,
            router=router,
            revisions=[],
            traffic={},
            generation=0,
        )
    if router is not None:
        record.router = router
    return record


def _searched() -> str:
    """Where local endpoints were looked for, for "not found" errors."""
    return f"{HOME_ENV}={str(state_dir())!r}"


__all__ = ["LocalBackend"]
