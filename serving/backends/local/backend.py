"""The embedded serving backend: runs an InferenceService manifest as processes on this machine.

Each endpoint is a router in front of one or two revisions; a revision is a predictor model
server and, if the manifest has one, a transformer in front of it. Every process is detached
(see :mod:`.supervisor`), so it outlives the process that applied the manifest — a kfp.local
step or a notebook cell — and never holds that process's pipes open. Everything binds
127.0.0.1 only.

Applying a name again is a rollout (:mod:`.rollout`): if the new revision fails, the old one
keeps serving and the error carries the new server's log. ``spec.predictor.canaryTrafficPercent``
keeps the previous revision and sends that percentage of requests to the new one; then
``set_traffic``, ``promote`` and ``rollback`` move traffic with KServe's semantics
(:mod:`.canary`), without starting a server.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
from typing import Any

from kfp_serve.artifacts.home import HOME_ENV, state_dir
from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving.backends.base import (
    DOCKER,
    LOCAL,
    REASON_NOT_READY,
    REASON_PROCESS_EXITED,
    REASON_STARTING,
    EndpointStatus,
    RevisionStatus,
    TrainedModelStatus,
)
from kfp_serve.serving.backends.local import (
    canary,
    registry,
    rollout,
    supervisor,
    trained_models,
)
from kfp_serve.serving.backends.local.plan import Plan, plan_manifest, split_traffic
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
)
from kfp_serve.serving.backends.local.servers import ProcessServers, Servers
from kfp_serve.serving.backends.local.storage import resolve_storage  # noqa: F401 - exported
from kfp_serve.serving.backends.traffic import PROMOTE, ROLLBACK, TRAFFIC, RolloutState
from kfp_serve.serving.errors import ServingError

logger = logging.getLogger(__name__)

#: Reason reported for an endpoint directory whose record cannot be read.
REASON_REGISTRY_UNREADABLE = "RegistryUnreadable"
#: Event action of a new revision (the traffic actions are named in ..traffic).
SERVE = "serve"


class LocalBackend:
    """Serves InferenceService manifests as local processes (see the module docstring).

    Args:
        python: Interpreter that runs the servers (default: this one).
        progress: Show readiness progress on stderr.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopping a server.
        probe_timeout: Timeout of the HTTP ready probe of ``get``/``list``.
    """

    name = LOCAL
    #: Hand TrainedModels to the server through its model directory instead of by storage URI
    #: (see :func:`.trained_models.load`): for servers that see only that directory.
    stage_trained_models = False

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
        self.servers = self._servers()

    def _servers(self) -> Servers:
        """How this backend starts an endpoint's servers (the Docker backend: containers)."""
        return ProcessServers(self.python)

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
                # The applied spec is what the endpoint runs now, canary field included.
                changed = record.latest.manifest != plan.manifest
                record.latest.manifest = plan.manifest
                if traffic != record.traffic or changed:
                    event = {
                        "action": TRAFFIC,
                        "revision": record.latest.revision,
                        "message": f"applied again; traffic {_split_text(record, traffic)}",
                    }
                    removed = rollout.commit(record, traffic, event=event)
                    rollout.retire(record, removed, self.stop_grace)
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
        router: ProcessRecord | None = None
        new: RevisionRecord | None = None
        try:
            # Plan: what each server loads, verified (a tampered snapshot stops here).
            artifacts = self.servers.prepare(plan)
            registry.endpoint_dir(plan.name).mkdir(parents=True, exist_ok=True)
            # Start: the router first and awaited last, so it comes up while the models load.
            router_proc = None
            if record is None or not record.router.alive():
                if record is not None:
                    # It has exited; what is left of it (a stopped container) goes.
                    supervisor.stop([record.router], self.stop_grace)
                old = record.router if record is not None else None
                router, router_proc = self.servers.start_router(
                    plan.name, old.port if old else None, old.grpc_port if old else None
                )
            # Start and wait ready.
            new = rollout.start_ready_revision(
                self.servers,
                plan,
                number,
                artifacts,
                wait=wait,
                deadline=deadline,
                timeout=timeout,
                grace=self.stop_grace,
                progress=progress,
            )
            if record is not None and plan.multi_model and record.trained_models:
                # The new server starts empty: it gets the endpoint's models before traffic.
                _reload_models(record, new, timeout, self.stage_trained_models)
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
            models = canary.model_label(new)
            if stable is not None:
                models = f"{canary.model_label(stable)} → {models}"
            event = {
                "action": SERVE,
                "revision": new.revision,
                "model": canary.model_label(new),
                "message": f"revision {new.revision} started ({models}); traffic "
                + _split_text(record, traffic, new),
            }
            removed = rollout.commit(record, traffic, new=new, event=event)
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

    # -- multi-model endpoints (TrainedModels) --------------------------------------------------

    def apply_trained_model(
        self, manifest: dict[str, Any], *, wait: bool = True, timeout: float = 300.0
    ) -> TrainedModelStatus:
        """Load the model of a TrainedModel manifest into its running parent endpoint.

        The parent's server verifies the snapshot and loads it without a restart; the other
        models keep answering. The outcome is recorded, so a refused model (too little memory,
        a tampered snapshot, another framework) is listed with its reason.

        Raises:
            ServingError: No such multi-model parent, another endpoint hosts that name, or
                (with ``wait``) the server refused the model: the reason and numbers in the text.
        """
        name, parent = trained_models.read_manifest(manifest)
        with registry.locked(parent):
            record = trained_models.check_parent(
                registry.read_record(parent), parent, f"TrainedModel {name!r}"
            )
            other = trained_models.owner(
                [r for n in registry.list_names() if n != parent
                 for r in [registry.read_record(n)] if r is not None],
                name,
            )
            if other is not None:
                raise ServingError(
                    f"TrainedModel {name!r}: endpoint {other.name!r} hosts a model of that name "
                    "already (names are unique, as in a Kubernetes namespace); remove it there "
                    f"first (`kfp-serve models unload {other.name} {name}`)"
                )
            previous = record.trained_models.get(name)
            if previous is not None and previous.ready and previous.manifest == manifest:
                # Applying the same TrainedModel again changes nothing, if it still serves.
                (same,) = [
                    s for s in trained_models.statuses(record, probe=True) if s.name == name
                ]
                if same.ready:
                    return same
            outcome = trained_models.load(
                record, copy.deepcopy(manifest), timeout=timeout, stage=self.stage_trained_models
            )
            if outcome.ready or previous is None or not previous.ready:
                record.trained_models[name] = outcome
            else:
                # A refused reload: the loaded version keeps serving, the refusal is noted.
                previous.reason, previous.message = outcome.reason, outcome.message
                previous.updated = outcome.updated
            record.updated = rollout.now()
            registry.write_record(record)
        (status,) = [
            s for s in trained_models.statuses(record, probe=False) if s.name == name
        ]
        if not outcome.ready:
            status.ready, status.reason, status.message = False, outcome.reason, outcome.message
            if wait:
                raise ServingError(
                    f"endpoint {parent!r} refused model {name!r} ({outcome.reason}): "
                    f"{outcome.message}. Its other models keep serving"
                )
        return status

    def delete_trained_model(self, name: str, namespace: str | None = None) -> None:
        """Unload model ``name`` from the endpoint that hosts it and forget it.

        Raises:
            ServingError: No local endpoint hosts a model of that name.
        """
        validate_name(name, "model name")
        records = [r for n in registry.list_names() for r in [registry.read_record(n)] if r]
        found = trained_models.owner(records, name)
        if found is None:
            raise ServingError(
                f"no local endpoint hosts a model named {name!r}; "
                "`kfp-serve describe ENDPOINT` lists the models an endpoint hosts"
            )
        with registry.locked(found.name):
            record = registry.read_record(found.name)
            if record is None or name not in record.trained_models:
                return  # removed meanwhile by someone else
            trained_models.unload(record, name)
            trained_models.unstage(record.name, name)
            del record.trained_models[name]
            record.updated = rollout.now()
            registry.write_record(record)

    def list_trained_models(
        self, parent: str, namespace: str | None = None
    ) -> list[TrainedModelStatus]:
        """The models endpoint ``parent`` hosts (or was refused), checked against its server.

        Raises:
            ServingError: There is no such multi-model endpoint.
        """
        record = trained_models.check_parent(
            registry.read_record(validate_name(parent, "endpoint name")), parent,
            f"models of {parent!r}",
        )
        return trained_models.statuses(record, probe=True, timeout=self.probe_timeout)

    # -- traffic ------------------------------------------------------------------------------

    def set_traffic(
        self, name: str, percent: int, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Send ``percent`` % to the latest revision, the rest to the stable one.

        At 100 the latest revision takes all traffic and the stable one stops; at 0 the
        stable one takes all of it (a rollback) and the latest one keeps running idle.

        Raises:
            ServingError: bad percent, no such endpoint, or the revision that should take
                traffic no longer runs.
        """
        return self._move_traffic(name, TRAFFIC, percent, timeout)

    def promote(
        self, name: str, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Let the latest revision take all traffic (the canary field is removed); the stable
        revision finishes its requests and stops.

        Raises:
            ServingError: there is no canary, or the latest revision no longer runs.
        """
        return self._move_traffic(name, PROMOTE, None, timeout)

    def rollback(
        self, name: str, namespace: str | None = None, *, timeout: float = 120.0
    ) -> RolloutState:
        """Send all traffic back to the stable revision (canary 0), also when the latest
        revision no longer runs; the latest one keeps running with no traffic.

        Raises:
            ServingError: there is no previous revision to go back to.
        """
        return self._move_traffic(name, ROLLBACK, None, timeout)

    def rollout_state(self, name: str, namespace: str | None = None) -> RolloutState:
        """The predictor's revisions and traffic split now (KServe's names and fields)."""
        return canary.rollout_state(self._record(name), _alive)

    def _move_traffic(
        self, name: str, action: str, percent: int | None, timeout: float
    ) -> RolloutState:
        with registry.locked(validate_name(name, "endpoint name")):
            record = self._record(name)
            if not record.router.alive():
                raise ServingError(
                    f"the router of local endpoint {name!r} has exited (see "
                    f"{record.router.log!r}): serve the model again to restart it"
                )
            move = canary.plan_move(record, action, _alive, percent)
            record.latest.manifest = canary.with_canary(record.latest.manifest, move.canary_percent)
            event = {"action": action, "revision": record.latest.revision, "message": move.message}
            removed = rollout.commit(record, move.traffic, event=event)
            # Returns once the router routes by the new split (and has drained what it left).
            rollout.await_drained(record, removed, timeout=min(timeout, rollout.DRAIN_TIMEOUT))
            rollout.retire(record, removed, self.stop_grace)
            if self.progress:
                rollout.Progress(True).done(f"endpoint {name!r}: {move.message}")
            return canary.rollout_state(record, _alive)

    def _record(self, name: str) -> EndpointRecord:
        """The registry record of ``name``; ServingError says where it was looked for."""
        record = registry.read_record(validate_name(name, "endpoint name"))
        if record is None:
            raise ServingError(
                f"there is no {self.name} endpoint named {name!r} in {_searched()}: run "
                "`kfp-serve endpoints` to list them, or serve the model first"
            )
        return record

    # -- get / list / delete ------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> EndpointStatus:
        """The status of endpoint ``name`` (processes checked, servers probed over HTTP).

        Raises:
            ServingError: there is no local endpoint called ``name``.
        """
        return self._status(self._record(name), probe=True)

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
                f"there is no {self.name} endpoint named {name!r} to stop in {_searched()}: "
                "run `kfp-serve endpoints` to list them"
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
            backend=backend_of(record),
            url=record.url,
            ready=True,
            namespace=None,
            manifest=copy.deepcopy(latest.manifest),
            components=components,
            revisions=_revisions(record),
            events=copy.deepcopy(record.events),
            grpc_address=record.grpc_address or None,
        )
        if record.trained_models:
            status.models = trained_models.statuses(
                record, probe=probe, timeout=self.probe_timeout
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
                tail = supervisor.log_tail(proc.log, lines=10) if proc.container else ""
                status.message = (
                    f"the {role}{where} of endpoint {record.name!r} ({_identity(proc)}) has "
                    f"exited; see its log {proc.log!r}. Serve it again to restart it, or run "
                    f"`kfp-serve stop {record.name}` to clean up"
                    + (f"; its log ends with:\n{tail}" if tail else "")
                )
                return status
        if probe:
            for role, rev, proc in checks[1:]:
                if not rollout.probe(proc, timeout=self.probe_timeout):
                    status.ready = False
                    status.reason = REASON_NOT_READY
                    status.message = (
                        f"the {role} of revision {rev.revision if rev else '?'} of endpoint "
                        f"{record.name!r} runs ({_identity(proc)}) but does not answer ready "
                        f"at {proc.url}; see its log {proc.log!r}"
                    )
                    return status
        return status


def _revisions(record: EndpointRecord) -> list[RevisionStatus]:
    """Every revision of ``record``, latest first, as the backend-neutral status reports it."""
    base = canary.stable(record)
    result = []
    for rev in sorted(record.revisions, key=lambda r: r.revision, reverse=True):
        ids = rev.model_ids
        model = {
            key: ids[source]
            for key, source in (
                ("id", "model"),
                ("name", "model_name"),
                ("version", "model_version"),
                ("alias", "model_alias"),
            )
            if ids.get(source)
        }
        result.append(
            RevisionStatus(
                name=registry.revision_name(record.name, rev.revision),
                percent=record.traffic.get(str(rev.revision), 0),
                ready=_alive(rev),
                latest=rev.revision == record.latest.revision,
                stable=base is not None and rev.revision == base.revision,
                created=rev.created,
                model=model,
                transformer_id=ids.get("transformer"),
                urls={p.role: p.url for p in rev.processes},
            )
        )
    return result


def _alive(rev: RevisionRecord) -> bool:
    return all(p.alive() for p in rev.processes)


def _split_text(
    record: EndpointRecord, traffic: dict[str, int], new: RevisionRecord | None = None
) -> str:
    """``iris 2.0.0 20 %, iris 1.0.0 80 %``: who gets which share of ``traffic``."""
    revisions = {str(r.revision): r for r in [*record.revisions, *([new] if new else [])]}
    parts = [
        f"{canary.model_label(revisions[k])} {v} %" for k, v in traffic.items() if k in revisions
    ]
    return ", ".join(reversed(parts))


def backend_of(record: EndpointRecord) -> str:
    """The backend whose servers run ``record``'s endpoint (both share the registry)."""
    return DOCKER if record.router.container else LOCAL


def _identity(proc: ProcessRecord) -> str:
    """How a server is named in a status: its pid, or its container."""
    if proc.container:
        return f"container {proc.log.removeprefix(supervisor.CONTAINER_LOG_PREFIX)}"
    return f"pid {proc.pid}"


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


def _reload_models(
    record: EndpointRecord, revision: RevisionRecord, timeout: float, stage: bool
) -> None:
    """Load the endpoint's models into a new revision of its parent; a refusal is recorded."""
    for name, tm in sorted(record.trained_models.items()):
        if not tm.ready:
            continue
        outcome = trained_models.load(
            record, tm.manifest, timeout=timeout, revisions=[revision], stage=stage
        )
        if not outcome.ready:
            logger.warning(
                "endpoint %r: revision %s refused model %r: %s",
                record.name, revision.revision, name, outcome.message,
            )
        record.trained_models[name] = outcome


def _searched() -> str:
    """Where local endpoints were looked for, for "not found" errors."""
    return f"{HOME_ENV}={str(state_dir())!r}"


__all__ = ["LocalBackend"]
