"""The embedded serving backend: runs an InferenceService manifest as processes on this machine.

Each endpoint is a router (router.py) in front of one or two revisions; a revision is a
predictor model server and, if the manifest has one, a transformer in front of it. Every process
is detached (its own session, stdin from /dev/null, output to a log file under
``$KFP_SERVE_HOME/endpoints/<name>/logs``), so it outlives the process that applied the manifest —
a kfp.local step or a notebook cell — and never holds that process's pipes open. Everything binds
127.0.0.1 only.

Applying a name again is a rollout, as on a cluster: the new revision starts next to the old one,
traffic moves only once it is Ready, and if it fails the old revision keeps serving and the error
carries the new server's log. ``spec.predictor.canaryTrafficPercent`` keeps the previous revision
and sends that percentage of requests to the new one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving import constants
from kfp_serve.serving.backends.base import LOCAL, EndpointStatus
from kfp_serve.serving.backends.local.registry import (
    LOGS_DIR,
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
    endpoint_dir,
    list_names,
    locked,
    log_tail,
    process_start_time,
    read_record,
    registry_path,
    write_record,
)
from kfp_serve.serving.errors import ServingError

logger = logging.getLogger(__name__)

PREDICTOR_MODULE = "kfp_serve.serving.runtime.predictor"
TRANSFORMER_MODULE = "kfp_serve.serving.runtime.transformer"
ROUTER_MODULE = "kfp_serve.serving.backends.local.router"
STORAGE_URI_ENV = "STORAGE_URI"
LOOPBACK = "127.0.0.1"
#: Reasons reported in EndpointStatus.reason.
REASON_PROCESS_EXITED = "ProcessExited"
REASON_NOT_READY = "NotReady"
REASON_STARTING = "Starting"
#: Flags of a transformer container that the local backend sets itself: the cluster values
#: (``--model_dir=/mnt/models``, ``--http_host=0.0.0.0``) must never reach a local server.
_LOCAL_FLAGS = {"--model_dir", "--http_host", "--http_port", "--predictor_host", "--grpc_port"}
_ADDRESS_IN_USE = ("address already in use", "errno 98")
_PORT_ATTEMPTS = 3
#: Env vars that choose a server's listen address: the local backend decides that, not the
#: manifest (--http_host 127.0.0.1 is passed explicitly as well).
_HOST_ENVS = {"KFP_SERVE_HTTP_HOST", "HTTP_HOST"}


# --------------------------------------------------------------------------------------------
# What a manifest asks for


@dataclass
class ComponentPlan:
    """One server to start: its role, artifact, model name and environment."""

    role: str
    storage_uri: str
    model_name: str
    env: dict[str, str]
    predictor_protocol: str = "v1"


@dataclass
class Plan:
    """The parts of an InferenceService manifest the local backend acts on."""

    name: str
    manifest: dict[str, Any]
    protocol: str
    predictor: ComponentPlan
    transformer: ComponentPlan | None
    canary_percent: int | None
    spec_hash: str
    model_ids: dict[str, str]


def plan_manifest(manifest: dict[str, Any]) -> Plan:
    """Read what the local backend needs from ``manifest``; ServingError names a missing part."""
    if not isinstance(manifest, dict) or manifest.get("kind", "InferenceService") != (
        "InferenceService"
    ):
        raise ServingError(
            "the local backend runs InferenceService manifests: pass the dict that "
            "serve(..., dry_run=True) or build_inference_service() returns"
        )
    metadata = manifest.get("metadata") or {}
    name = validate_name(metadata.get("name"), "metadata.name")
    spec = manifest.get("spec") or {}
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        raise ServingError(f"InferenceService {name!r} has no spec.predictor")

    model = predictor.get("model")
    if model is None:
        # The older per-framework form (spec.predictor.sklearn / .xgboost) runs the same way.
        model = next((predictor[k] for k in ("sklearn", "xgboost") if k in predictor), None)
    if isinstance(model, dict) and model.get("storageUri"):
        storage_uri = str(model["storageUri"])
        protocol = str(model.get("protocolVersion") or "v1")
        env = _plain_env(model.get("env"), name, "predictor")
    else:
        containers = predictor.get("containers") or []
        main = containers[0] if containers else {}
        env = _plain_env(main.get("env"), name, "predictor")
        storage_uri = env.get(STORAGE_URI_ENV) or _flag(main.get("args") or [], "--model_dir")
        if not storage_uri:
            raise ServingError(
                f"InferenceService {name!r}: the local backend needs spec.predictor.model."
                f"storageUri (or a {STORAGE_URI_ENV} env var on a custom predictor container); "
                "custom predictor images cannot run locally"
            )
        protocol = str(predictor.get("protocolVersion") or env.get("PROTOCOL") or "v1")
    if protocol not in ("v1", "v2"):
        raise ServingError(
            f"InferenceService {name!r}: protocolVersion {protocol!r} is not served locally; "
            "use 'v1' or 'v2'"
        )

    transformer_plan = None
    transformer = spec.get("transformer")
    if transformer:
        containers = transformer.get("containers") or []
        if not containers:
            raise ServingError(f"InferenceService {name!r}: spec.transformer has no containers")
        main = containers[0]
        args = [str(a) for a in main.get("args") or []]
        t_env = _plain_env(main.get("env"), name, "transformer")
        t_uri = t_env.pop(STORAGE_URI_ENV, None) or _flag(args, "--storage_uri")
        if not t_uri:
            raise ServingError(
                f"InferenceService {name!r}: the transformer container has no {STORAGE_URI_ENV} "
                "env var saying where its artifact is"
            )
        transformer_plan = ComponentPlan(
            role="transformer",
            storage_uri=t_uri,
            model_name=_flag(args, "--model_name") or name,
            env=t_env,
            predictor_protocol=_flag(args, "--predictor_protocol") or protocol,
        )

    canary = predictor.get("canaryTrafficPercent")
    if canary is not None and (not isinstance(canary, int) or not 0 <= canary <= 100):
        raise ServingError(
            f"InferenceService {name!r}: spec.predictor.canaryTrafficPercent {canary!r} must be "
            "an integer from 0 to 100"
        )
    labels = metadata.get("labels") or {}
    model_ids = {
        key: str(labels[label])
        for key, label in (
            ("model", constants.LABEL_MODEL_ID),
            ("transformer", constants.LABEL_TRANSFORMER_ID),
            ("model_version", constants.LABEL_MODEL_VERSION),
        )
        if label in labels
    }
    return Plan(
        name=name,
        manifest=copy.deepcopy(manifest),
        protocol=protocol,
        predictor=ComponentPlan("predictor", storage_uri, name, env, protocol),
        transformer=transformer_plan,
        canary_percent=canary,
        spec_hash=_spec_hash(manifest),
        model_ids=model_ids,
    )


def _spec_hash(manifest: dict[str, Any]) -> str:
    """A digest of what makes a revision: the spec (minus traffic) and identifying metadata."""
    spec = copy.deepcopy(manifest.get("spec") or {})
    for component in spec.values():
        if isinstance(component, dict):
            component.pop("canaryTrafficPercent", None)
    metadata = manifest.get("metadata") or {}
    annotations = dict(metadata.get("annotations") or {})
    # The recorded ServeConfig repeats the spec, canary percentage included: leave it out, or
    # promoting a canary would look like a new revision.
    annotations.pop(constants.ANNOTATION_SERVE_CONFIG, None)
    ident = {"spec": spec, "labels": metadata.get("labels") or {}, "annotations": annotations}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _plain_env(env: Iterable[dict[str, Any]] | None, name: str, role: str) -> dict[str, str]:
    """The literal env vars of a container; secret references are skipped (by name only)."""
    result: dict[str, str] = {}
    for var in env or []:
        key = var.get("name")
        if not key:
            continue
        if "value" in var and var["value"] is not None:
            result[str(key)] = str(var["value"])
        elif "valueFrom" in var:
            # Secrets and config maps do not exist locally; never log what they would hold.
            logger.info(
                "endpoint %r %s: env %s comes from a valueFrom reference and is not set locally",
                name,
                role,
                key,
            )
    return result


def _flag(args: list[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in a container's args."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def resolve_storage(uri: str, *, field: str = "storageUri") -> Path:
    """A local directory to load an artifact from.

    A snapshot URI (file:// or s3://, ending in ``blake3-<hex>``) is opened through the snapshot
    store, which verifies its digest: a tampered or incomplete snapshot is refused, never loaded.
    A plain directory (a path, or a file:// URI that is not a snapshot) is used as it is.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in ("", "file", "s3"):
        raise ServingError(
            f"{field} {uri!r}: the local backend loads file:// and s3:// snapshots or local "
            f"directories, not {scheme}://; serve it on a cluster (KFP_SERVE_BACKEND=kubernetes)"
        )
    from kfp_serve.artifacts.snapshots.base import SNAPSHOT_NAME

    if scheme and SNAPSHOT_NAME.fullmatch(uri.rstrip("/").rsplit("/", 1)[-1]):
        from kfp_serve.artifacts.snapshots import SnapshotStore

        try:
            return Path(SnapshotStore().open(uri))
        except SnapshotError as e:
            raise ServingError(f"{field} {uri!r} cannot be served: {e}") from e
    if scheme == "s3":
        raise ServingError(
            f"{field} {uri!r} is not a snapshot: the local backend loads s3:// artifacts only as "
            "snapshots (artifacts.SnapshotStore().snapshot(dir).uri)"
        )
    path = Path(uri[len("file://") :] if scheme == "file" else uri).expanduser()
    if not path.is_dir():
        raise ServingError(
            f"{field} {uri!r} does not exist or is not a directory: save the artifact again "
            "or pass its model directory"
        )
    return path.resolve()


# --------------------------------------------------------------------------------------------
# Starting processes


#: Popen objects of servers this process started: kept so they are not garbage-collected with
#: a ResourceWarning while the server runs, and so exit codes can be read.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session: no terminal signals from the caller, its own process group to stop,
            # and the server outlives the caller.
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            env=env,
            cwd=cwd,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _record(
    proc: subprocess.Popen[bytes], role: str, port: int, log: Path, model: str = ""
) -> ProcessRecord:
    start = process_start_time(proc.pid)
    return ProcessRecord(
        role=role,
        pid=proc.pid,
        start_time=start if start is not None else -1,
        port=port,
        log=str(log),
        model_name=model,
    )


def _exit_code(pid: int) -> int | None:
    proc = _CHILDREN.get(pid)
    return proc.poll() if proc is not None else None


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    """The manifest's env for a server, minus anything that would move it off loopback."""
    return {k: v for k, v in extra.items() if k not in _HOST_ENVS}


class _Progress:
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


# --------------------------------------------------------------------------------------------
# The backend


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
        stop_grace: float = 5.0,
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
        with locked(plan.name):
            record = read_record(plan.name)
            if record is not None:
                moved = self._traffic_only(record, plan)
                if moved is not None:
                    return moved
            return self._rollout(
                plan, record, wait=wait or record is not None, deadline=deadline, timeout=timeout
            )

    def _traffic_only(self, record: EndpointRecord, plan: Plan) -> EndpointStatus | None:
        """Move traffic without new servers when only canaryTrafficPercent changed."""
        latest = record.latest
        if latest.spec_hash != plan.spec_hash or not record.router.alive():
            return None
        if not all(p.alive() for p in latest.processes):
            return None
        stable = self._stable(record)
        percent = plan.canary_percent
        if percent is None or percent >= 100 or stable is None or stable is latest:
            traffic = {str(latest.revision): 100}
        else:
            # A 0% canary stays listed (and running) with no traffic, as on a cluster.
            traffic = {str(stable.revision): 100 - percent, str(latest.revision): percent}
        if traffic != record.traffic:
            self._switch(record, traffic)
        return self._status(record, probe=True)

    @staticmethod
    def _stable(record: EndpointRecord) -> RevisionRecord | None:
        """The rolled-out revision a canary is compared with: the active one that is not latest
        (or the latest, when it is the only one)."""
        if not record.revisions:
            return None
        others = [r for r in record.active if r.revision != record.latest.revision]
        if others:
            return max(others, key=lambda r: record.traffic.get(str(r.revision), 0))
        return record.latest if record.latest in record.active else None

    def _rollout(
        self,
        plan: Plan,
        record: EndpointRecord | None,
        *,
        wait: bool,
        deadline: float,
        timeout: float,
    ) -> EndpointStatus:
        directory = endpoint_dir(plan.name)
        first_apply = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        number = (max(r.revision for r in record.revisions) + 1) if record else 1
        previous = (
            f" The previous revision {self._stable(record).revision} keeps serving at {record.url}."
            if record is not None and self._stable(record) is not None
            else ""
        )
        progress = _Progress(self.progress)
        progress.start(f"endpoint {plan.name!r}: starting revision {number}")
        from kfp_serve.serving.runtime import launch

        # The servers are forked from a warm pool: start it now, so it imports while the
        # snapshots are verified and the router starts (no-op if it runs or is disabled).
        launch.warm_up(self.python)
        router: ProcessRecord | None = None
        new: RevisionRecord | None = None
        committed = False
        try:
            dirs = {
                "predictor": resolve_storage(
                    plan.predictor.storage_uri, field="spec.predictor storageUri"
                )
            }
            if plan.transformer is not None:
                dirs["transformer"] = resolve_storage(
                    plan.transformer.storage_uri, field=f"transformer {STORAGE_URI_ENV}"
                )
            router_proc = None
            if record is None or not record.router.alive():
                # Started first and awaited last: it comes up while the model servers load.
                router, router_proc = self._spawn_router(
                    plan.name, record.router.port if record is not None else None
                )
            new = self._start_revision(plan, number, dirs, deadline, timeout, progress, wait=wait)
            if router is not None:
                self._await_router_up(plan.name, router, router_proc)
            now = _now()
            if record is None:
                assert router is not None
                record = EndpointRecord(
                    name=plan.name,
                    created=now,
                    updated=now,
                    router=router,
                    revisions=[],
                    traffic={},
                    generation=0,
                )
            elif router is not None:
                record.router = router
            stable = self._stable(record)
            if stable is not None and not all(p.alive() for p in stable.processes):
                if plan.canary_percent is not None and plan.canary_percent < 100:
                    logger.warning(
                        "endpoint %r: revision %s has exited, so the canary gets all traffic",
                        plan.name,
                        stable.revision,
                    )
                stable = None
            percent = plan.canary_percent
            if stable is None or percent is None or percent >= 100:
                traffic = {str(new.revision): 100}
            else:
                traffic = {str(stable.revision): 100 - percent, str(new.revision): percent}
            removed = self._commit(record, traffic, new=new)
            committed = True
        except BaseException as e:
            progress.done()
            # Nothing of this attempt may outlive it unless the registry already names it.
            if not committed:
                _terminate_all(
                    [*(new.processes if new else []), *([router] if router else [])],
                    self.stop_grace,
                )
                if first_apply:
                    # Refused before any server wrote a log (e.g. a tampered snapshot): leave
                    # no empty endpoint directory behind. Logs of a failed start are kept.
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            if isinstance(e, ServingError):
                raise ServingError(f"{e}{previous}") from e
            raise
        self._drain_and_stop(record, removed)
        status = self._status(record, probe=True)
        if not wait and not status.ready and status.reason == REASON_NOT_READY:
            status.reason = REASON_STARTING
        progress.done(
            f"endpoint {plan.name!r} revision {number} "
            f"{'ready' if status.ready else 'started'} at {record.url}"
            + (f" ({traffic[str(number)]}% of traffic)" if len(traffic) > 1 else "")
        )
        return status

    def _switch(self, record: EndpointRecord, traffic: dict[str, int]) -> None:
        """Move traffic between running revisions and stop those left without any."""
        self._drain_and_stop(record, self._commit(record, traffic, new=None))

    def _commit(
        self, record: EndpointRecord, traffic: dict[str, int], *, new: RevisionRecord | None
    ) -> list[RevisionRecord]:
        """Write ``traffic`` (and ``new``) to the registry; the router follows on its next
        request. Returns the revisions that no longer get traffic."""
        if new is not None:
            record.revisions.append(new)
        record.traffic = traffic
        record.generation += 1
        record.updated = _now()
        # The removed revisions stay in the record (without traffic) until they are stopped,
        # so a crash in between still leaves their pids findable by delete().
        write_record(record)
        return [r for r in record.revisions if str(r.revision) not in traffic]

    def _drain_and_stop(self, record: EndpointRecord, removed: list[RevisionRecord]) -> None:
        """Wait until the router has switched and finished requests to ``removed``; stop them."""
        if not removed:
            return
        self._await_router(record, removed)
        record.revisions = [r for r in record.revisions if r not in removed]
        write_record(record)
        _terminate_all([p for r in removed for p in r.processes], self.stop_grace)
        for r in removed:
            for p in r.processes:
                Path(p.log).unlink(missing_ok=True)

    def _await_router(self, record: EndpointRecord, removed: list[RevisionRecord]) -> None:
        """Wait until the router routes by ``record`` and finished requests to ``removed``."""
        gone = {f"127.0.0.1:{r.entry.port}" for r in removed}
        deadline = time.monotonic() + 10.0
        url = f"{record.url}/kfp-serve/router"
        while time.monotonic() < deadline:
            try:
                info = httpx.get(url, timeout=1.0, trust_env=False).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.02)
                continue
            busy = sum(
                u["inflight"]
                for u in info.get("upstreams", [])
                if u["url"].removeprefix("http://") in gone
            ) + sum(n for k, n in info.get("retired_inflight", {}).items() if k in gone)
            if info.get("generation", 0) >= record.generation and not busy:
                return
            time.sleep(0.01)
        logger.warning(
            "endpoint %r: the router did not confirm the switch within 10 s", record.name
        )

    def _spawn_router(
        self, name: str, port: int | None
    ) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
        """Start the endpoint's router on ``port`` if it is free (a stable URL), else any.

        Does not wait: see :meth:`_await_router_up`.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port or 0))
            except OSError:
                sock.bind((LOOPBACK, 0))
            sock.listen(1024)
            bound = int(sock.getsockname()[1])
            log = endpoint_dir(name) / LOGS_DIR / "router.log"
            # The listening socket is handed over: no window in which another process could
            # take the port between choosing and binding it.
            proc = _spawn(
                [
                    self.python,
                    "-m",
                    ROUTER_MODULE,
                    "--endpoint",
                    name,
                    "--registry",
                    str(registry_path(name)),
                    "--fd",
                    str(sock.fileno()),
                ],
                log,
                dict(os.environ),
                endpoint_dir(name),
                pass_fds=(sock.fileno(),),
            )
        finally:
            sock.close()
        return _record(proc, "router", bound, log), proc

    def _await_router_up(
        self, name: str, router: ProcessRecord, proc: subprocess.Popen[bytes] | None
    ) -> None:
        """Wait until the router answers its status path (it was started by _spawn_router)."""
        log = Path(router.log)
        deadline = time.monotonic() + 30.0
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    raise ServingError(
                        f"the router of endpoint {name!r} exited with code {proc.returncode} "
                        f"while starting; its log {str(log)!r} ends with:\n{log_tail(log)}"
                    )
                try:
                    if client.get(f"{router.url}/kfp-serve/router").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        router.terminate(self.stop_grace)
        raise ServingError(
            f"the router of endpoint {name!r} did not answer within 30 s; see {str(log)!r}"
        )

    def _start_revision(
        self,
        plan: Plan,
        number: int,
        dirs: dict[str, Path],
        deadline: float,
        timeout: float,
        progress: _Progress,
        *,
        wait: bool,
    ) -> RevisionRecord:
        """Start the predictor (and transformer) of revision ``number``; wait if asked.

        On failure nothing of the revision is left running.
        """
        for attempt in range(_PORT_ATTEMPTS):
            procs = self._spawn_revision(plan, number, dirs)
            revision = RevisionRecord(
                revision=number,
                created=_now(),
                manifest=plan.manifest,
                spec_hash=plan.spec_hash,
                protocol=plan.protocol,
                model_name=(plan.transformer or plan.predictor).model_name,
                predictor=procs["predictor"],
                transformer=procs.get("transformer"),
                model_ids=plan.model_ids,
            )
            if not wait:
                return revision
            try:
                self._await_ready(plan.name, revision, deadline, timeout, progress)
                return revision
            except _PortTaken:
                _terminate_all(revision.processes, self.stop_grace)
                if attempt == _PORT_ATTEMPTS - 1:
                    raise ServingError(
                        f"endpoint {plan.name!r} revision {number}: no free port after "
                        f"{_PORT_ATTEMPTS} attempts"
                    ) from None
            except BaseException:
                _terminate_all(revision.processes, self.stop_grace)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_revision(
        self, plan: Plan, number: int, dirs: dict[str, Path]
    ) -> dict[str, ProcessRecord]:
        """Start the servers of a revision through the runtimes' launcher
        (kfp_serve.serving.runtime)."""
        from kfp_serve.serving.runtime import launch

        logs = endpoint_dir(plan.name) / LOGS_DIR
        started: dict[str, ProcessRecord] = {}
        p = plan.predictor
        p_log = logs / f"rev{number}-predictor.log"
        p_log.unlink(missing_ok=True)
        proc = launch.start_server(
            "predictor",
            p.model_name,
            dirs["predictor"],
            log_path=p_log,
            host=LOOPBACK,
            env=_server_env(p.env),
            python=self.python,
        )
        _CHILDREN[proc.pid] = proc
        started["predictor"] = _record(proc, "predictor", proc.port, p_log, p.model_name)
        t = plan.transformer
        if t is not None:
            t_log = logs / f"rev{number}-transformer.log"
            t_log.unlink(missing_ok=True)
            try:
                # Started at once, next to the predictor: it does not need it to load.
                proc = launch.start_server(
                    "transformer",
                    t.model_name,
                    dirs["transformer"],
                    log_path=t_log,
                    host=LOOPBACK,
                    predictor_host=f"{LOOPBACK}:{started['predictor'].port}",
                    predictor_protocol=t.predictor_protocol,
                    env=_server_env(t.env),
                    python=self.python,
                )
            except BaseException:
                _terminate_all(list(started.values()), self.stop_grace)
                raise
            _CHILDREN[proc.pid] = proc
            started["transformer"] = _record(proc, "transformer", proc.port, t_log, t.model_name)
        return started

    def _await_ready(
        self,
        name: str,
        revision: RevisionRecord,
        deadline: float,
        timeout: float,
        progress: _Progress,
    ) -> None:
        """Poll the servers of ``revision`` until each answers Ready, one exits, or time is up."""
        pending = {p.role: p for p in revision.processes}
        started = time.monotonic()
        delay = 0.02
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while pending:
                for role, proc in list(pending.items()):
                    code = _exit_code(proc.pid)
                    if code is not None or not proc.alive():
                        tail = log_tail(proc.log)
                        if any(s in tail.lower() for s in _ADDRESS_IN_USE):
                            raise _PortTaken()
                        how = f"with code {code} " if code is not None else ""
                        raise ServingError(
                            f"endpoint {name!r} revision {revision.revision}: the {role} exited "
                            f"{how}while starting; its log {proc.log!r} ends with:\n{tail}"
                        )
                    if _probe(client, proc):
                        del pending[role]
                if not pending:
                    return
                elapsed = time.monotonic() - started
                progress.update(
                    f"endpoint {name!r} revision {revision.revision}: waiting for "
                    f"{' and '.join(sorted(pending))} ({elapsed:.1f} s of {timeout:.0f} s)"
                )
                if time.monotonic() >= deadline:
                    role, proc = next(iter(pending.items()))
                    raise ServingError(
                        f"endpoint {name!r} revision {revision.revision}: the {role} was not "
                        f"ready within {timeout:.0f} s (raise timeout= if the model is large); "
                        f"its log {proc.log!r} ends with:\n{log_tail(proc.log)}"
                    )
                # A refused connection costs microseconds: poll often, so the step that waits
                # finishes within a few tens of ms of the servers being ready.
                time.sleep(delay)
                delay = min(delay * 1.5, 0.05)

    # -- get / list / delete ------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> EndpointStatus:
        """The status of endpoint ``name`` (processes checked, servers probed over HTTP).

        Raises:
            ServingError: there is no local endpoint called ``name``.
        """
        record = read_record(validate_name(name, "endpoint name"))
        if record is None:
            raise ServingError(
                f"there is no local endpoint named {name!r}: run `kfp-serve endpoints` to list "
                "them, or serve the model first"
            )
        return self._status(record, probe=True)

    def list(self, namespace: str | None = None) -> list[EndpointStatus]:
        """The status of every local endpoint, by name (``namespace`` is ignored locally)."""
        result = []
        for name in list_names():
            record = read_record(name)
            if record is None:
                result.append(
                    EndpointStatus(
                        name=name,
                        backend=LOCAL,
                        url=None,
                        ready=False,
                        reason="RegistryUnreadable",
                        message=f"{str(registry_path(name))!r} cannot be read: "
                        f"`kfp-serve stop {name}` removes it",
                    )
                )
                continue
            result.append(self._status(record, probe=True))
        return result

    def delete(self, name: str, namespace: str | None = None) -> None:
        """Stop every process of endpoint ``name`` and remove its directory.

        Raises:
            ServingError: there is no local endpoint called ``name``.
        """
        validate_name(name, "endpoint name")
        with locked(name):
            directory = endpoint_dir(name)
            record = read_record(name)
            if record is None and not directory.exists():
                raise ServingError(
                    f"there is no local endpoint named {name!r} to stop: run `kfp-serve "
                    "endpoints` to list them"
                )
            if record is not None:
                _terminate_all(
                    [record.router, *(p for r in record.revisions for p in r.processes)],
                    self.stop_grace,
                )
            shutil.rmtree(directory, ignore_errors=True)

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
            with httpx.Client(timeout=self.probe_timeout, trust_env=False) as client:
                for role, rev, proc in checks[1:]:
                    if not _probe(client, proc):
                        status.ready = False
                        status.reason = REASON_NOT_READY
                        status.message = (
                            f"the {role} of revision {rev.revision if rev else '?'} of endpoint "
                            f"{record.name!r} runs (pid {proc.pid}) but does not answer ready "
                            f"at {proc.url}; see its log {proc.log!r}"
                        )
                        return status
        return status


class _PortTaken(Exception):
    """A server lost the race for its port: start the revision again on new ports."""


def _probe(client: httpx.Client, proc: ProcessRecord) -> bool:
    """True if the model server answers Ready for its model."""
    try:
        # Server-wide readiness: 200 once its model is loaded, on v1 and v2 servers alike.
        response = client.get(f"{proc.url}/v2/health/ready")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _terminate_all(processes: list[ProcessRecord], grace: float) -> None:
    """Stop ``processes`` together: SIGTERM to all, then SIGKILL what is left after ``grace``."""
    alive = [p for p in processes if p.alive()]
    for p in alive:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for p in alive:
            proc = _CHILDREN.get(p.pid)
            if proc is not None:
                proc.poll()
        alive = [p for p in alive if p.alive()]
        if alive:
            time.sleep(0.02)
    for p in alive:
        p.terminate(grace=0.5)
    for p in processes:
        proc = _CHILDREN.pop(p.pid, None)
        if proc is not None:
            proc.poll()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "LocalBackend",
    "Plan",
    "plan_manifest",
    "resolve_storage",
]
